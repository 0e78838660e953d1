"""Reading one data file into a pandas ``DataFrame``, whatever its layout.

Table files (CSV and TSV with or without a header row, JSON, JSON lines, Parquet) and line
files (fastText's ``__label__X text``, or any line layout described by a regular expression),
each optionally compressed (``.gz``, ``.bz2``, ``.xz``, or a ``.zip`` holding one file). The
file is decompressed in memory, never to a temporary file, and its format is told by the name
inside (``train.csv.gz`` is a CSV). What a compressed file may hold is bounded
(:func:`decompressed_limit`, an eighth of the machine's memory): a compression bomb is one line
that names the file, not an out-of-memory that blames the batch size. Everything a file can get
wrong is one :class:`~kdistill.errors.DataError`.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kdistill.errors import DataError
from kdistill.tasks.common import decode_text
from kdistill.tasks.text_classification.config import DATA_FORMATS

__all__ = [
    "COMPRESSIONS",
    "FASTTEXT_PREFIX",
    "data_row_hint",
    "decompressed_limit",
    "infer_format",
    "printable",
    "read_file",
    "read_frame",
]

#: what starts a label in fastText's format (``__label__sports Some text``)
FASTTEXT_PREFIX = "__label__"
#: suffixes of the compressed files read as the file they hold
COMPRESSIONS = ("gz", "bz2", "xz", "zip")
_ALIASES = {
    "txt": "tsv",
    "tab": "tsv",
    "ndjson": "jsonl",
    "pq": "parquet",
    "ft": "fasttext",
}
#: a header longer than this, a number, or many words reads like a text, not a column name
_LONG_NAME = 40
_MANY_WORDS = 5


def printable(name: str) -> str:
    """A column name as it can stand in a one-line message (control characters escaped, long ones cut)."""
    name = name if name.isprintable() else repr(name)
    return name if len(name) <= _LONG_NAME else name[: _LONG_NAME - 3] + "..."


def infer_format(path: str | Path, given: str | None = None, *, shown: str | None = None) -> str:
    """The file format: ``given``, else from the suffix, a compression suffix skipped
    (``.csv``, ``.tsv``, ``.json``, ``.jsonl``, ``.parquet``, ``.ft``/``.fasttext``).

    Args:
        path: the file name.
        given: the format the config names, if any.
        shown: how the file is named in a message (default ``path``, quoted).

    Raises:
        DataError: the suffix says nothing known.
    """
    if given is not None:
        return given
    suffixes = [s.lower().lstrip(".") for s in Path(path).suffixes]
    while len(suffixes) > 1 and suffixes[-1] in (*COMPRESSIONS, "zst"):
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    suffix = _ALIASES.get(suffix, suffix)
    if suffix not in DATA_FORMATS or suffix == "lines":
        named = [kind for kind in DATA_FORMATS if kind != "lines"]
        where = shown if shown is not None else repr(str(path))
        raise DataError(
            f"cannot tell the format of {where} from its name: set data.format to one of "
            f"{', '.join(named)} (or data.line_pattern for other line layouts)"
        )
    return suffix


def decompressed_limit() -> int:
    """The most bytes kdistill takes out of one compressed data file: an eighth of this machine's
    memory (the file is read whole, then as text, then as a table: several times its size), 4 GB
    where the memory is unknown."""
    try:
        memory = int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 10**9
    return max(memory // 8, 1)


def _gigabytes(count: float) -> str:
    return f"{count / 1e9:,.1f} GB" if count >= 1e8 else f"{count / 1e6:,.1f} MB"


class _TooLarge(Exception):
    """A compressed file holds more than :func:`decompressed_limit`."""


#: bytes decompressed at a time: a bomb is stopped within one block of the limit
_BLOCK = 1 << 22


def _read_bounded(stream: Any, limit: int) -> bytes:
    """What ``stream`` (a decompressing file object) holds, refused past ``limit`` bytes."""
    held = io.BytesIO()
    while True:
        block = stream.read(min(_BLOCK, limit + 1 - held.tell()))
        if not block:
            return held.getvalue()
        held.write(block)
        if held.tell() > limit:
            raise _TooLarge


def _unzip(raw: bytes, name: str, source: str, limit: int) -> tuple[bytes, str]:
    """The one file a zip archive holds (folders and macOS's ``__MACOSX/`` and dot files aside)."""
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        members = [
            info
            for info in archive.infolist()
            if not info.is_dir()
            and not info.filename.startswith("__MACOSX/")
            and not Path(info.filename).name.startswith(".")
        ]
        if len(members) != 1:
            names = ", ".join(printable(info.filename) for info in members[:10])
            more = f" and {len(members) - 10} more" if len(members) > 10 else ""
            held = f"{len(members)} files ({names}{more})" if members else "no file"
            raise DataError(
                f"{source!r} holds {held}: kdistill reads a zip that holds exactly one data file; extract the "
                "one you mean and give its path (data.train, data.validation, data.test)"
            )
        with archive.open(members[0]) as stream:
            return _read_bounded(stream, limit), Path(members[0].filename).name


def _stream(opener: Callable[[Any], Any], suffix: str) -> Callable[[bytes, str, str, int], tuple[bytes, str]]:
    """A decompressor of one suffix: the bytes a ``gzip.GzipFile``-like ``opener`` gives (at most the limit)."""

    def decompress(raw: bytes, name: str, source: str, limit: int) -> tuple[bytes, str]:
        with opener(io.BytesIO(raw)) as stream:
            return _read_bounded(stream, limit), name[: -len(suffix)]

    return decompress


#: per suffix: (bytes, name, source, limit) -> the bytes held (at most limit) and their name
_DECOMPRESS: dict[str, Callable[[bytes, str, str, int], tuple[bytes, str]]] = {
    "gz": _stream(lambda raw: gzip.GzipFile(fileobj=raw), ".gz"),
    "bz2": _stream(bz2.BZ2File, ".bz2"),
    "xz": _stream(lzma.LZMAFile, ".xz"),
    "zip": _unzip,
}


#: the command that shows what a compressed file holds, per suffix
_LISTING = {"gz": "gzip -l", "bz2": "bzip2 -tv", "xz": "xz -l", "zip": "unzip -l"}


def _open(path: Path) -> tuple[bytes, str]:
    """The bytes of ``path``, decompressed (layer by layer), and the name that tells their format."""
    raw, name = path.read_bytes(), path.name
    while True:
        suffix = Path(name).suffix.lower().lstrip(".")
        if suffix == "zst":
            raise DataError(
                f"{str(path)!r} is compressed with zstd, which kdistill does not read: decompress it "
                "(zstd -d), or compress it with gzip, bzip2, xz or zip"
            )
        if suffix not in _DECOMPRESS:
            return raw, name
        limit = decompressed_limit()
        try:
            raw, name = _DECOMPRESS[suffix](raw, name, str(path), limit)
        except DataError:
            raise
        except (_TooLarge, MemoryError) as error:
            size = (
                f"more than {_gigabytes(limit)}, the most kdistill reads from one compressed data file on this "
                "machine (an eighth of its memory)"
                if isinstance(error, _TooLarge)
                else "more than this machine's free memory holds"
            )
            raise DataError(
                f"{str(path)!r} decompresses to {size}: a compression bomb, or a data set too large to read whole; "
                f"check what it holds ({_LISTING[suffix]}), or give a smaller file"
            ) from None
        except (
            OSError,
            EOFError,
            lzma.LZMAError,
            zlib.error,
            zipfile.BadZipFile,
            RuntimeError,
            NotImplementedError,
        ) as error:
            # RuntimeError / NotImplementedError: an encrypted zip, or a compression method zipfile lacks
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DataError(f"cannot decompress {str(path)!r} as a {suffix} file: {first}") from None


def read_frame(
    path: str | Path,
    format: str | None = None,
    encoding: str = "utf-8",
    *,
    columns: Sequence[str] | None = None,
    line_pattern: str | None = None,
) -> tuple[Any, str]:
    """Read a data file into a pandas ``DataFrame``; also the format it was read as.

    Args:
        path: the file, optionally ``.gz``, ``.bz2``, ``.xz`` or a ``.zip`` holding one file.
        format: ``csv``, ``tsv``, ``json`` (an array of records, or JSON lines), ``jsonl``,
            ``parquet``, ``fasttext`` or ``lines``; default from the (inner) file name, or ``lines``
            when ``line_pattern`` is given.
        encoding: the text encoding of every format but Parquet.
        columns: the column names of a CSV or TSV file without a header row.
        line_pattern: a regular expression that matches a whole line of a ``lines`` file; each
            named group becomes a column.

    Raises:
        DataError: the file is missing, not in ``encoding``, or not in the format.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found" if not path.exists() else f"{str(path)!r} is not a file")
    raw, name = _open(path)
    shown = repr(str(path)) if name == path.name else f"{str(path)!r} (which holds {name!r})"
    kind = infer_format(name, format or ("lines" if line_pattern else None), shown=shown)
    if columns is not None and kind not in ("csv", "tsv"):
        raise DataError(
            f"data.columns names the columns of a CSV or TSV file without a header, but {str(path)!r} is read as "
            f"{kind}, whose examples name their own fields: remove data.columns"
        )
    try:
        return _parse(raw, str(path), kind, encoding, columns, line_pattern), kind
    except DataError:
        raise
    except (ValueError, OSError, csv.Error) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"cannot read {str(path)!r} as {kind}: {first}") from None


def read_file(path: str | Path, format: str | None = None, encoding: str = "utf-8", **options: Any) -> Any:
    """Read a data file into a pandas ``DataFrame`` (:func:`read_frame` without the format)."""
    return read_frame(path, format, encoding, **options)[0]


def _parse(
    raw: bytes, source: str, kind: str, encoding: str, columns: Sequence[str] | None, line_pattern: str | None
) -> Any:
    """The ``DataFrame`` of a file's (decompressed) bytes in format ``kind``."""
    import pandas as pd

    if kind == "parquet":
        return pd.read_parquet(io.BytesIO(raw))
    text = decode_text(raw, source, encoding)
    if kind in ("csv", "tsv"):
        return _read_delimited(text, source, "," if kind == "csv" else "\t", columns)
    if kind == "fasttext":
        return _read_lines(text, source, lambda line, number: _fasttext_row(line, number, source), ["label", "text"])
    if kind == "lines":
        if line_pattern is None:
            raise DataError("data.format: lines needs data.line_pattern, e.g. '(?P<label>\\S+) (?P<text>.*)'")
        pattern = re.compile(line_pattern)
        return _read_lines(
            text, source, lambda line, number: _pattern_row(pattern, line, number, source), list(pattern.groupindex)
        )
    if kind == "jsonl" or (kind == "json" and not text.lstrip().startswith("[")):
        records = [
            _json_record(source, line, number) for number, line in enumerate(text.splitlines(), 1) if line.strip()
        ]
    else:
        records = json.loads(text, object_pairs_hook=_unique_keys)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{source!r}: JSON data must be a list of records (objects), one per example")
    return pd.DataFrame.from_records(records)


# ---------------------------------------------------------------------------
# CSV and TSV
# ---------------------------------------------------------------------------


def _read_delimited(text: str, source: str, separator: str, columns: Sequence[str] | None) -> Any:
    import pandas as pd

    first = next(csv.reader(io.StringIO(text), delimiter=separator), [])
    if columns is None:
        _check_header(source, first)
    else:
        _check_first_row(source, first, columns)
    # keep_default_na=False: a text "NA" or "null" stays a text, an empty label is found later
    return pd.read_csv(
        io.StringIO(text),
        sep=separator,
        keep_default_na=False,
        dtype=str,
        quoting=csv.QUOTE_MINIMAL,
        **({"header": None, "names": list(columns)} if columns is not None else {}),
    )


def data_row_hint(names: Sequence[Any]) -> str:
    """A note for a header that reads like data (a number, a long or many-word name), or ``""``.

    A file without a header row, read as if it had one, takes its first example for column
    names: the note tells how to name the columns instead.
    """
    texts = [str(name).strip() for name in names]

    def like_data(name: str) -> bool:
        try:
            float(name)
            return True
        except ValueError:
            return len(name) > _LONG_NAME or len(name.split()) >= _MANY_WORDS

    if not any(like_data(name) for name in texts):
        return ""
    placeholder = ", ".join(f"column{i}" for i in range(1, len(texts) + 1))
    return (
        f"; its first row looks like data, not a header: if the file has no header row, name its {len(texts)} "
        f"columns in order with data.columns: [{placeholder}] (names of your choice, which data.text_column and "
        "data.label_column then use)"
    )


def _check_header(source: str, header: list[str]) -> None:
    """Refuse a header that names a column twice: pandas would rename the second and kdistill
    would read the first without a word."""
    seen: dict[str, int] = {}
    for number, name in enumerate(header, 1):
        first = seen.setdefault(name.strip(), number)
        if first != number:
            raise DataError(
                f"{source!r}: the header names the column {printable(name.strip())!r} twice (columns {first} and "
                f"{number}); rename one so that kdistill reads the column you mean{data_row_hint(header)}"
            )


def _check_first_row(source: str, row: list[str], columns: Sequence[str]) -> None:
    """The first row of a header-less file has one field per name in ``data.columns``, and is no header."""
    if [field.strip() for field in row] == list(columns):
        raise DataError(
            f"{source!r} starts with a header row ({', '.join(row)}) but data.columns says it has none: remove "
            "data.columns to read the names from the header"
        )
    if row and len(row) != len(columns):
        raise DataError(
            f"{source!r} has {len(row)} column(s) but data.columns names {len(columns)} ({', '.join(columns)}): give "
            f"{len(row)} names, one per column in the file's order"
        )


# ---------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"the key {key!r} is given twice in one record")
    return dict(pairs)


def _json_record(source: str, line: str, number: int) -> Any:
    try:
        return json.loads(line, object_pairs_hook=_unique_keys)
    except ValueError as error:
        raise DataError(f"cannot read {source!r} as JSON lines: line {number}: {error}") from None


# ---------------------------------------------------------------------------
# line files: fastText and data.line_pattern
# ---------------------------------------------------------------------------


def _read_lines(text: str, source: str, row: Callable[[str, int], tuple[Any, ...]], names: list[str]) -> Any:
    """One example per non-blank line; ``row`` parses a line into the values of ``names``."""
    import pandas as pd

    # split on "\n" alone (str.splitlines also breaks at form feeds and other separators inside a text)
    lines = (line.removesuffix("\r") for line in text.split("\n"))
    rows = [row(line, number) for number, line in enumerate(lines, 1) if line.strip()]
    return pd.DataFrame.from_records(rows, columns=names)


def _quoted_line(line: str) -> str:
    return repr(line if len(line) <= 60 else line[:57] + "...")


_FASTTEXT_LABEL = re.compile(rf"{FASTTEXT_PREFIX}(\S*)\s*")


def _fasttext_row(line: str, number: int, source: str) -> tuple[str, str]:
    """``__label__X some text`` as ``(X, "some text")``; a line of several labels is refused."""
    rest, labels = line.strip(), []
    while (match := _FASTTEXT_LABEL.match(rest)) is not None:
        labels.append(match.group(1))
        rest = rest[match.end() :]
    if not labels:
        raise DataError(
            f"{source!r} line {number} does not start with a {FASTTEXT_PREFIX} label: {_quoted_line(line)}; fastText "
            f"lines read '{FASTTEXT_PREFIX}sports Some text' (for another layout set data.line_pattern)"
        )
    if len(labels) > 1:
        raise DataError(
            f"{source!r} line {number} has {len(labels)} labels ({', '.join(labels[:5])}): kdistill distils "
            "single-label classifiers; keep one label per line, or keep the first with data.line_pattern: "
            rf"'{FASTTEXT_PREFIX}(?P<label>\S+)(\s+{FASTTEXT_PREFIX}\S+)*\s+(?P<text>.*)'"
        )
    return labels[0], rest


def _pattern_row(pattern: re.Pattern[str], line: str, number: int, source: str) -> tuple[Any, ...]:
    """The named groups of ``pattern`` matched against the whole line."""
    match = pattern.fullmatch(line)
    if match is None:
        raise DataError(
            f"{source!r} line {number} does not match data.line_pattern {pattern.pattern!r}: {_quoted_line(line)}; "
            "the pattern must match a whole line: correct the pattern or the line"
        )
    return tuple(match.group(name) for name in pattern.groupindex)
