"""Reading labelled text: data files (:mod:`.formats`) or a hub data set, into table splits.

A :class:`TableSplit` is one split as read (texts, optional second texts, raw labels); the
missing test and validation splits are held out of the training file, stratified and seeded.
Files are read with pandas (no cache folder, any text encoding); a hub data set goes through
``datasets.load_dataset``. Everything a file can get wrong is one :class:`~kdistill.errors.DataError`.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdistill.errors import DataError
from kdistill.models.hub import hub_offline_reason, offline_data_hint
from kdistill.tasks.text_classification.config import DataConfig
from kdistill.tasks.text_classification.formats import data_row_hint, infer_format, printable, read_file, read_frame

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
    #: the teacher each example names (``data.teacher_column``), where the file has that column
    routes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int], source: str) -> TableSplit:
        """The examples at ``indices``."""
        return TableSplit(
            texts=[self.texts[i] for i in indices],
            pairs=[self.pairs[i] for i in indices] if self.pairs is not None else None,
            labels=[self.labels[i] for i in indices],
            source=source,
            routes=[self.routes[i] for i in indices] if self.routes is not None else None,
        )


def _column(frame: Any, name: str, source: str, role: str, hint: str = "") -> list[Any]:
    if name not in frame.columns:
        raise DataError(
            f"{source} has no column {name!r} (data.{role}); its columns are "
            f"{', '.join(printable(str(column)) for column in frame.columns[:20])}{hint}"
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


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _check_texts(values: list[Any], source: str, name: str, *, part: bool = False) -> None:
    """Every value is a non-empty string; a ``part`` of a joined text may also be missing or empty."""
    bad = [i for i, v in enumerate(values) if _missing(v)]
    if bad and not part:
        raise DataError(f"{source}: {len(bad)} example(s) without a {name} (data row {bad[0] + 1})")
    # a number, list or object would become text through str() without a word
    wrong = [i for i, v in enumerate(values) if not isinstance(v, str) and not _missing(v)]
    if wrong:
        raise DataError(
            f"{source}: the {name} of data row {wrong[0] + 1} is {_kind(values[wrong[0]])}, not a "
            f"string ({len(wrong)} such row(s)); give every {name} as a string"
        )
    empty = [i for i, v in enumerate(values) if not part and not v.strip()]
    if empty:
        raise DataError(
            f"{source}: {len(empty)} example(s) with an empty {name} (data row {empty[0] + 1}); "
            "remove them or give them a text"
        )


def _texts(frame: Any, config: DataConfig, source: str, hint: str) -> list[Any]:
    """The text column, or the text columns joined with ``data.text_separator`` (empty parts left out)."""
    names = config.text_columns
    columns = [_column(frame, name, source, "text_column", hint) for name in names]
    if len(columns) == 1:
        return columns[0]
    for name, values in zip(names, columns):
        _check_texts(values, source, f"text (column {printable(name)!r})", part=True)
    return [
        config.text_separator.join(part for part in parts if not _missing(part) and part.strip())
        for parts in zip(*columns)
    ]


def _labels(frame: Any, config: DataConfig, source: str, hint: str) -> list[Any]:
    raw_labels = _column(frame, config.label_column, source, "label_column", hint)
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
    return labels if config.label_names is None else _named(labels, config.label_names, source)


def _named(labels: list[Any], names: Sequence[str], source: str) -> list[str]:
    """Integer labels as their ``data.label_names``: value i is ``names[i]``; a label that is one of
    the names already is that class (a run's test file labelled with the names reads alike).

    Raises:
        DataError: a label that is neither an integer 0 to n-1 nor one of the names.
    """
    count = len(names)
    known = set(names)
    for row, label in enumerate(labels):
        if label in known:
            continue
        if not isinstance(label, int):
            raise DataError(
                f"{source}: label {label!r} (data row {row + 1}) is not a number, but data.label_names names "
                f"the integer labels 0 to {count - 1}; labels that are names already need no data.label_names: "
                "remove it"
            )
        if not 0 <= label < count:
            raise DataError(
                f"{source}: label {label} (data row {row + 1}) is not among 0 to {count - 1}, the values "
                f"data.label_names names ({', '.join(names[:10])}); give one name per label value, in order"
            )
    return [label if label in known else names[label] for label in labels]


def table_from_frame(
    frame: Any, config: DataConfig, source: str, labelled: bool = True, *, missing_hint: str = ""
) -> TableSplit:
    """Pick the text (one column, or several joined), pair and label columns of a ``DataFrame``.

    Args:
        frame: a pandas ``DataFrame`` (``datasets.Dataset.to_pandas()`` gives one).
        config: the ``data:`` section: its column names and ``text_separator``.
        source: names the data in messages.
        labelled: read the label column too.
        missing_hint: added to the message of a missing column (e.g. :func:`.formats.data_row_hint`).

    Raises:
        DataError: a column is missing, or a label or text is empty or not a string.
    """
    texts = _texts(frame, config, source, missing_hint)
    pairs = (
        _column(frame, config.text_pair_column, source, "text_pair_column", missing_hint)
        if config.text_pair_column
        else None
    )
    labels = _labels(frame, config, source, missing_hint) if labelled else []
    for name, values in (("text", texts), ("text pair", pairs)):
        if values is not None:
            _check_texts(values, source, name)
    routes = None
    column = getattr(config, "teacher_column", None)
    if column is not None and column in frame.columns:
        # only the training split needs it (prepare says so); the others may carry it
        routes = _column(frame, column, source, "teacher_column")
        _check_texts(routes, source, "teacher_column")
    return TableSplit(
        texts=[str(t) for t in texts],
        pairs=[str(p) for p in pairs] if pairs is not None else None,
        labels=labels,
        source=source,
        routes=[str(r) for r in routes] if routes is not None else None,
    )


def load_table(path: str | Path, config: DataConfig, labelled: bool = True) -> TableSplit:
    """Read one file into a :class:`TableSplit` with the config's layout, columns and encoding."""
    frame, kind = read_frame(
        path, config.format, config.encoding, columns=config.columns, line_pattern=config.line_pattern
    )
    if len(frame) == 0:
        raise DataError(f"data file {str(path)!r} holds no examples (only a header? is data.encoding right?)")
    # a file without a header row, read as if it had one, shows its first example as column names
    hint = data_row_hint(list(frame.columns)) if kind in ("csv", "tsv") and config.columns is None else ""
    return table_from_frame(frame, config, str(path), labelled, missing_hint=hint)


def _load_hub(config: DataConfig) -> dict[str, TableSplit]:
    """Load the splits of a hub data set (needs the network, or the data set in the local cache)."""
    import datasets

    hub = config.hub
    assert hub is not None
    names = {"train": hub.train_split, "validation": hub.validation_split, "test": hub.test_split}
    offline = hub_offline_reason()  # offline, load_dataset reads its cache at once instead of retrying
    try:
        loaded = datasets.load_dataset(hub.id, hub.name, revision=hub.revision)
    except Exception as error:
        if offline is not None:
            raise DataError(
                f"cannot load hub data set {hub.id!r}: the hub cannot be used ({offline}) and the local cache does "
                f"not hold it; {offline_data_hint()}"
            ) from None
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


def split_table(
    table: TableSplit, size: float | int, seed: int, name: str, *, note: str = ""
) -> tuple[TableSplit, TableSplit]:
    """Hold out examples of ``table``, stratified by label where every class allows it, seeded.

    Args:
        table: the examples to split.
        size: a fraction of them (a float in (0, 1)) or a number of them (an int).
        seed: the split's seed.
        name: the split held out (``test``, ``validation``): its config key is ``data.<name>_fraction``.
        note: what ``table`` is, after its source, in a message (e.g. `` left after the test split``).

    Returns:
        ``(rest, held_out)``.

    Raises:
        DataError: the table is too small to hold out that many and keep one to train on.
    """
    from sklearn.model_selection import train_test_split

    count = len(table)
    if isinstance(size, int) and count > 1:
        held = size
        if held >= count:
            raise DataError(
                f"data.{name}_fraction asks for {held:,} {name} example(s) but {table.source} has {count:,}{note}: "
                f"ask for fewer than {count:,} (some must be left to train on), or for a fraction such as 0.1"
            )
    else:
        held = size if isinstance(size, int) else max(1, round(count * size))
        if count - held < 1:
            raise DataError(f"{table.source} has {count} example(s){note}: too few to hold out a {name} split")
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
    held_test = "test" not in splits and config.test_fraction is not None
    if held_test:
        assert config.test_fraction is not None
        splits["train"], splits["test"] = split_table(splits["train"], config.test_fraction, config.split_seed, "test")
    if "validation" not in splits:
        # held out of what the test split left, so a fraction is a share of that remainder
        splits["train"], splits["validation"] = split_table(
            splits["train"],
            config.validation_fraction,
            config.split_seed + 1,
            "validation",
            note=" left after the test split" if held_test else "",
        )
    if config.max_train_examples is not None and len(splits["train"]) > config.max_train_examples:
        chosen = sorted(
            random.Random(config.split_seed).sample(range(len(splits["train"])), config.max_train_examples)
        )
        splits["train"] = splits["train"].subset(
            chosen, f"{splits['train'].source} (first {config.max_train_examples})"
        )
    return splits
