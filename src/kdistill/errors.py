"""The error a user can fix: a bad config, a missing file, a data set that does not fit.

The ``kdistill`` command prints a :class:`KdistillError` as one line on stderr and exits with
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "KdistillError", "ModelLoadError"]


class KdistillError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class ConfigError(KdistillError):
    """The configuration is invalid: an unknown key, a wrong type or an impossible value."""


class DataError(KdistillError):
    """The data cannot be used: a missing file or column, an unknown label, an empty split."""


class ModelLoadError(KdistillError):
    """A teacher, student or tokenizer cannot be loaded, or the two do not fit together."""
