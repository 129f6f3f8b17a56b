"""Vendor integrations, leaves of the package graph: nothing in the core imports them; the stage
scripts import the one a config selects."""
