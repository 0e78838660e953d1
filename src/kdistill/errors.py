"""The error a user can fix: a bad config, a missing file, a data set that does not fit.

The ``kdistill`` command prints a :class:`KdistillError` as one line on stderr and exits with
status 2; anything else is a bug and keeps its traceback. In Python every one of them is a
``ValueError`` (``except ValueError`` catches them) with the same text.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "KdistillError",
    "ModelLoadError",
    "NonFiniteLossError",
    "NonFiniteTeacherError",
    "OutputFileError",
    "RunFolderError",
    "VocabularyError",
]


class KdistillError(ValueError):
    """A problem with the user's input, reported as one line without a traceback (a ``ValueError``)."""


class ConfigError(KdistillError):
    """The configuration is invalid: an unknown key, a wrong type or an impossible value."""


class DataError(KdistillError):
    """The data cannot be used: a missing file or column, an unknown label, an empty split."""


class ModelLoadError(KdistillError):
    """A teacher, student or tokenizer cannot be loaded, or the two do not fit together."""


class RunFolderError(ConfigError):
    """The output folder cannot take this run: it already holds a run (start again with
    ``--overwrite`` or continue it with ``--resume``), holds other files, or is not a run to resume."""


class OutputFileError(ConfigError):
    """A file kdistill was asked to write exists and is not one kdistill wrote: it is never replaced."""


class VocabularyError(KdistillError):
    """The vocabulary cannot be pruned: the tokenizer is not a WordPiece fast tokenizer, or the
    model has no word embeddings that fit it (:mod:`kdistill.tasks.text_classification.vocab_pruning`)."""


class NonFiniteLossError(KdistillError, FloatingPointError):
    """A loss part or the gradient norm became NaN or infinite; the update was not applied.

    The training settings (learning rate, precision) cause it, or a broken teacher
    (:class:`NonFiniteTeacherError`); the message says which.
    """


class NonFiniteTeacherError(NonFiniteLossError):
    """The teacher's outputs hold NaN or infinite values: the teacher is broken, not the training settings."""
