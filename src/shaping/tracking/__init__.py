"""Run metadata: what ran, on which inputs and params, with which libraries, and how it ended."""

from shaping.tracking.metadata import RunRecord, git_commit, hash_inputs, library_versions, sha256_file

__all__ = ["RunRecord", "git_commit", "hash_inputs", "library_versions", "sha256_file"]
