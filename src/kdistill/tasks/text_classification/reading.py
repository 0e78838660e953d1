"""Reading labelled text: CSV, TSV, JSON(L) or Parquet files, or a hub data set, into table splits.

A :class:`TableSplit` is one split as read (texts, optional second texts, raw labels); the
missing validation and test splits are held out of the training file, stratified and seeded.
Files are read with pandas (no cache folder, any text encoding); a hub data set goes through
``datasets.load_dataset``. Everything a file can get wrong is one :class:`~kdistill.errors.DataError`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdistill.errors import DataError
from kdistill.tasks.common import decode_text
from kdistill.tasks.text_classification.config import DATA_FORMATS, DataConfig

logger = logging.getLogger("kdistill.data")


__all__ = ["TableSplit", "infer_format", "load_splits", "load_table", "read_file", "split_table", "table_from_frame"]


@dataclass
class TableSplit:
    """One split as read: texts, optional second texts, and raw labels (strings or integers).

    Attributes:
        texts: the first text of each example.
        pairs: the second text of each example (sentence-pair tasks), or None.
        labels: the raw labels as found in the file.
        source: where the split came from, for messages.
    """

    texts: list[str]
    pairs: list[str] | None
    labels: list[Any]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int], source: str) -> TableSplit:
        """The examples at ``indices``."""
        return TableSplit(
            texts=[self.texts[i] for i in indices],
            pairs=[self.pairs[i] for i in indices] if self.pairs is not None else None,
            labels=[self.labels[i] for i in indices],
            source=source,
        )


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def infer_format(path: str | Path, given: str | None = None) -> str:
    """The file format: ``given``, else from the suffix (``.csv``, ``.tsv``, ``.json``, ``.jsonl``, ``.parquet``).

    Raises:
        DataError: the suffix says nothing known.
    """
    if given is not None:
        return given
    suffixes = [s.lower().lstrip(".") for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in ("gz", "bz2", "xz", "zst") and len(suffixes) > 1:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    aliases = {"txt": "tsv", "ndjson": "jsonl", "pq": "parquet", "tab": "tsv"}
    suffix = aliases.get(suffix, suffix)
    if suffix not in DATA_FORMATS:
        raise DataError(
            f"cannot tell the format of {str(path)!r} from its name: set data.format to one of "
            f"{', '.join(DATA_FORMATS)}"
        )
    return suffix


def read_file(path: str | Path, format: str | None = None, encoding: str = "utf-8") -> Any:
    """Read a table file into a pandas ``DataFrame``.

    Args:
        path: the file.
        format: ``csv``, ``tsv``, ``json`` (an array of records, or JSON lines), ``jsonl`` or
            ``parquet``; default from the suffix.
        encoding: the text encoding of CSV, TSV and JSON files.

    Raises:
        DataError: the file is missing, not in ``encoding``, or not in the format.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found" if not path.exists() else f"{str(path)!r} is not a file")
    kind = infer_format(path, format)
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        text = decode_text(path.read_bytes(), str(path), encoding)
        if kind in ("csv", "tsv"):
            separator = "," if kind == "csv" else "\t"
            _check_header(path, next(csv.reader(io.StringIO(text), delimiter=separator), []))
            # keep_default_na=False: a text "NA" or "null" stays a text, an empty label is found below
            return pd.read_csv(
                io.StringIO(text), sep=separator, keep_default_na=False, dtype=str, quoting=csv.QUOTE_MINIMAL
            )
        if kind == "jsonl" or (kind == "json" and not text.lstrip().startswith("[")):
            records = [
                _json_record(path, line, number) for number, line in enumerate(text.splitlines(), 1) if line.strip()
            ]
        else:
            records = json.loads(text, object_pairs_hook=_unique_keys)
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise DataError(f"{str(path)!r}: JSON data must be a list of records (objects), one per example")
        return pd.DataFrame.from_records(records)
    except DataError:
        raise
    except (ValueError, OSError, csv.Error) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"cannot read {str(path)!r} as {kind}: {first}") from None


def _printable(name: str) -> str:
    """A column name as it can stand in a one-line message (control characters escaped)."""
    return name if name.isprintable() else repr(name)


def _check_header(path: Path, header: list[str]) -> None:
    """Refuse a header that names a column twice: pandas would rename the second and kdistill
    would read the first without a word."""
    seen: dict[str, int] = {}
    for number, name in enumerate(header, 1):
        first = seen.setdefault(name.strip(), number)
        if first != number:
            raise DataError(
                f"{str(path)!r}: the header names the column {_printable(name.strip())!r} twice (columns {first} and "
                f"{number}); rename one so that kdistill reads the column you mean"
            )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"the key {key!r} is given twice in one record")
    return dict(pairs)


def _json_record(path: Path, line: str, number: int) -> Any:
    try:
        return json.loads(line, object_pairs_hook=_unique_keys)
    except ValueError as error:
        raise DataError(f"cannot read {str(path)!r} as JSON lines: line {number}: {error}") from None


def _column(frame: Any, name: str, source: str, role: str) -> list[Any]:
    if name not in frame.columns:
        raise DataError(
            f"{source} has no column {name!r} (data.{role}); its columns are "
            f"{', '.join(_printable(str(column)) for column in frame.columns[:20])}"
        )
    return frame[name].tolist()


def _clean_label(value: Any) -> Any:
    """A label as an int where it is a whole number (``"3"``, ``3.0``), else a stripped string."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return int(value) if float(value).is_integer() else str(value)
    if value is None:
        return None
    text = str(value).strip()
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list", tuple: "a list", dict: "an object"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


def table_from_frame(frame: Any, config: DataConfig, source: str, labelled: bool = True) -> TableSplit:
    """Pick the text, pair and label columns of a ``DataFrame``.

    Raises:
        DataError: a column is missing, or a label or text is empty.
    """
    texts = _column(frame, config.text_column, source, "text_column")
    pairs = _column(frame, config.text_pair_column, source, "text_pair_column") if config.text_pair_column else None
    labels: list[Any] = []
    if labelled:
        raw_labels = _column(frame, config.label_column, source, "label_column")
        wrong = [i for i, v in enumerate(raw_labels) if isinstance(v, (list, tuple, dict, np.ndarray))]
        if wrong:
            raise DataError(
                f"{source}: the label of data row {wrong[0] + 1} is {_kind(raw_labels[wrong[0]])}; a label "
                "is one class name or number"
            )
        labels = [_clean_label(v) for v in raw_labels]
        missing = [i for i, label in enumerate(labels) if label is None]
        if missing:
            rows = ", ".join(str(i + 1) for i in missing[:5])
            raise DataError(f"{source}: {len(missing)} example(s) without a label (data row {rows})")
    for name, values in (("text", texts), ("text pair", pairs)):
        if values is None:
            continue
        bad = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and math.isnan(v))]
        if bad:
            raise DataError(f"{source}: {len(bad)} example(s) without a {name} (data row {bad[0] + 1})")
        # a number, list or object would become text through str() without a word
        wrong = [i for i, v in enumerate(values) if not isinstance(v, str)]
        if wrong:
            raise DataError(
                f"{source}: the {name} of data row {wrong[0] + 1} is {_kind(values[wrong[0]])}, not a "
                f"string ({len(wrong)} such row(s)); give every {name} as a string"
            )
        empty = [i for i, v in enumerate(values) if not v.strip()]
        if empty:
            raise DataError(
                f"{source}: {len(empty)} example(s) with an empty {name} (data row {empty[0] + 1}); "
                "remove them or give them a text"
            )
    return TableSplit(
        texts=[str(t) for t in texts],
        pairs=[str(p) for p in pairs] if pairs is not None else None,
        labels=labels,
        source=source,
    )


def load_table(path: str | Path, config: DataConfig, labelled: bool = True) -> TableSplit:
    """Read one file into a :class:`TableSplit` with the config's columns and encoding."""
    frame = read_file(path, config.format, config.encoding)
    if len(frame) == 0:
        raise DataError(f"data file {str(path)!r} holds no examples (only a header? is data.encoding right?)")
    return table_from_frame(frame, config, str(path), labelled)


def _load_hub(config: DataConfig) -> dict[str, TableSplit]:
    """Load the splits of a hub data set (needs the network, or the data set in the local cache)."""
    import datasets

    hub = config.hub
    assert hub is not None
    names = {"train": hub.train_split, "validation": hub.validation_split, "test": hub.test_split}
    try:
        loaded = datasets.load_dataset(hub.id, hub.name, revision=hub.revision)
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"cannot load hub data set {hub.id!r}: {first}") from None
    splits: dict[str, TableSplit] = {}
    for role, name in names.items():
        if name is None:
            continue
        if name not in loaded:
            if role == "train":
                raise DataError(f"hub data set {hub.id!r} has no split {name!r}; it has {', '.join(loaded)}")
            continue
        splits[role] = table_from_frame(loaded[name].to_pandas(), config, f"{hub.id}[{name}]")
    return splits


def split_table(table: TableSplit, fraction: float, seed: int, name: str) -> tuple[TableSplit, TableSplit]:
    """Hold out ``fraction`` of ``table``, stratified by label where every class allows it, seeded.

    Returns:
        ``(rest, held_out)``.

    Raises:
        DataError: the table is too small to hold out an example.
    """
    from sklearn.model_selection import train_test_split

    count = len(table)
    held = max(1, round(count * fraction))
    if count - held < 1:
        raise DataError(f"{table.source} has {count} example(s): too few to hold out a {name} split")
    indices = np.arange(count)
    keys = [str(label) for label in table.labels]
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    stratify = keys if min(counts.values()) >= 2 and held >= len(counts) and count - held >= len(counts) else None
    rest, out = train_test_split(indices, test_size=held, random_state=seed, stratify=stratify)
    return (
        table.subset(sorted(rest.tolist()), table.source),
        table.subset(sorted(out.tolist()), f"{table.source} ({name} split, seed {seed})"),
    )


def load_splits(config: DataConfig) -> dict[str, TableSplit]:
    """Read the raw splits named by ``config`` and hold out the missing ones, seeded.

    Returns:
        ``{"train": ..., "validation": ..., ["test": ...]}``.
    """
    if config.hub is not None:
        splits = _load_hub(config)
    else:
        assert config.train is not None
        for role in ("validation", "test"):
            path = getattr(config, role)
            if path is not None and Path(path).exists() and Path(path).resolve() == Path(config.train).resolve():
                # measuring on the training examples reports memorisation as accuracy
                raise DataError(
                    f"data.{role} is the training file {config.train!r}: give held-out examples, or leave "
                    f"data.{role} out to hold some out of the training file"
                )
        splits = {"train": load_table(config.train, config)}
        for role in ("validation", "test"):
            path = getattr(config, role)
            if path is not None:
                splits[role] = load_table(path, config)
    if "test" not in splits and config.test_fraction is not None:
        splits["train"], splits["test"] = split_table(splits["train"], config.test_fraction, config.split_seed, "test")
    if "validation" not in splits:
        splits["train"], splits["validation"] = split_table(
            splits["train"], config.validation_fraction, config.split_seed + 1, "validation"
        )
    if config.max_train_examples is not None and len(splits["train"]) > config.max_train_examples:
        chosen = sorted(
            random.Random(config.split_seed).sample(range(len(splits["train"])), config.max_train_examples)
        )
        splits["train"] = splits["train"].subset(
            chosen, f"{splits['train'].source} (first {config.max_train_examples})"
        )
    return splits
