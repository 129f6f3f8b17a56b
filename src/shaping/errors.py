"""Errors a user can cause: stage scripts print their message without a traceback."""


class ShapingError(Exception):
    """A bad config, a missing file, a malformed row: something the user can fix.

    The message names the file, line or key and says what to do.
    """
