"""Argument types and flags shared by the ``kdistill`` subcommands (eval, predict, export)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from kdistill.errors import ConfigError, ModelLoadError
from kdistill.schema import local_path, model_location

__all__ = [
    "EVAL_FLAGS",
    "add_data_flags",
    "add_gguf_flag",
    "as_eval_flags",
    "data_flag_values",
    "file_argument",
    "model_argument",
    "positive_float",
    "positive_int",
    "resolve_model",
]


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def file_argument(text: str) -> str:
    """An argparse type: a file or folder here, ``~`` expanded as the shell does outside quotes
    (``--output=~/x`` and ``'~/x'`` reach kdistill unexpanded); a URL refused."""
    try:
        return local_path(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def model_argument(text: str) -> str:
    """An argparse type: a run folder, a model folder or a hub id, ``~`` expanded; a URL refused."""
    try:
        return model_location(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_data_flags(parser: argparse.ArgumentParser, *, labels: bool) -> None:
    """The flags that say how to read a data file, as ``data.*`` keys say it in a config."""
    from kdistill.tasks.text_classification.config import DATA_FORMATS

    parser.add_argument("--text-column", help="column of the texts (default: a run's, else text)")
    parser.add_argument("--text-pair-column", help="column of the second texts, for sentence pairs")
    if labels:
        parser.add_argument("--label-column", help="column of the labels (default: a run's, else label)")
    parser.add_argument(
        "--format", choices=tuple(DATA_FORMATS), help="default: from the suffix (lines: with --line-pattern)"
    )
    parser.add_argument("--columns", help="comma-separated column names of a CSV/TSV file without a header row")
    group = "text and label" if labels else "text"
    parser.add_argument("--line-pattern", metavar="REGEX", help=f"a regex with the named groups {group}, per line")
    parser.add_argument("--encoding", help="text encoding of the file (default utf-8)")


def data_flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The ``data.*`` values the user gave as flags (:func:`add_data_flags`), by config key."""
    values = {
        "text_column": args.text_column,
        "text_pair_column": args.text_pair_column,
        "label_column": getattr(args, "label_column", None),
        "format": args.format,
        "encoding": args.encoding,
        "columns": args.columns.split(",") if args.columns else None,
        "line_pattern": args.line_pattern,
    }
    return {key: value for key, value in values.items() if value is not None}


#: the config keys a data message may name, as the flags of ``kdistill eval`` that set them
EVAL_FLAGS = {
    "data.text_pair_column": "--text-pair-column",
    "data.text_column": "--text-column",
    "data.label_column": "--label-column",
    "data.format": "--format",
    "data.encoding": "--encoding",
    "data.columns": "--columns",
    "data.line_pattern": "--line-pattern",
    "data.max_length": "--max-length",
    "data.train": "--data",
    "data.test": "--data",
}


def as_eval_flags(message: str) -> str:
    """A data message in the words the user typed: ``set data.format`` becomes ``set --format``."""
    for key, flag in EVAL_FLAGS.items():
        message = re.sub(rf"{re.escape(key)}\b", flag, message)
    return message


def add_gguf_flag(parser: argparse.ArgumentParser, whose: str = "MODEL") -> None:
    """``--gguf-file NAME``: the GGUF file in ``whose`` folder (see :func:`resolve_model`)."""
    parser.add_argument(
        "--gguf-file",
        metavar="NAME",
        help=f"a GGUF file in {whose}'s folder (a causal LM, dequantised to float32 on loading); "
        f"or give the .gguf file itself as {whose}",
    )


def _not_gguf(path: str) -> str:
    return (
        f"{path!r} is not a GGUF file (it does not begin with the bytes GGUF): give a .gguf file as llama.cpp "
        "writes them, or a model folder written by save_pretrained"
    )


def resolve_model(model: str, gguf_file: str | None, name: str = "MODEL") -> str:
    """The model as kdistill passes it on: ``model`` itself, or with ``--gguf-file`` the path of that
    GGUF file in ``model``'s folder (:func:`kdistill.models.loading.split_gguf` reads it back).

    Raises:
        ConfigError: ``gguf_file`` is a path rather than a file name.
        ModelLoadError: ``model`` is a missing ``.gguf`` file or one that is not GGUF; with
            ``gguf_file``, ``model`` is not a local folder or lacks the file.
    """
    from kdistill.models.gguf import gguf_files, is_gguf_file
    from kdistill.models.loading import looks_local

    path = Path(model).expanduser()
    if gguf_file is None:
        if path.suffix.lower() == ".gguf" and not path.exists():
            raise ModelLoadError(f"{name} {model!r}: no such file")
        if path.is_file() and path.suffix.lower() == ".gguf" and not is_gguf_file(path):
            raise ModelLoadError(_not_gguf(model))
        return model
    if Path(gguf_file).name != gguf_file or "\\" in gguf_file:
        raise ConfigError(
            f"--gguf-file {gguf_file!r}: give the name of a file in {name}'s folder, or the file's path as "
            f"{name} without --gguf-file"
        )
    if not path.exists():
        where = "" if looks_local(model) else " (a hub id: download the file first and give its folder)"
        raise ModelLoadError(f"{name} {model!r}: no such folder, and --gguf-file names a file in one{where}")
    if not path.is_dir():
        raise ModelLoadError(
            f"{name} {model!r} is a file, and --gguf-file names a file in a folder: give the folder, or "
            "the GGUF file alone without --gguf-file"
        )
    file = path / gguf_file
    if not file.is_file():
        found = gguf_files(path)
        raise ModelLoadError(
            f"{name} folder {model!r} has no file {gguf_file!r} (--gguf-file); "
            + (f"its .gguf files: {', '.join(found)}" if found else "it holds no .gguf file")
        )
    if not is_gguf_file(file):
        raise ModelLoadError(_not_gguf(str(file)))
    return str(file)
