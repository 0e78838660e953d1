"""Text-classification data: read files or a hub data set, map labels, split, tokenise once, batch.

The flow of :func:`prepare_data`::

    CSV/TSV/JSON/JSONL/Parquet or hub id ─► table (text, [text pair], label)
        ─► train / validation / test (files, or a seeded stratified split of train)
        ─► label ids (written into the student's id2label / label2id)
        ─► token ids, once, shared by teacher and student ─► length-grouped, padded batches

Files are read with pandas (no cache folder, any text encoding); a hub data set goes through
``datasets.load_dataset``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from kdistill.batch import batches_by_length
from kdistill.config import DATA_FORMATS, DataConfig
from kdistill.errors import DataError

if TYPE_CHECKING:
    from kdistill.augment import Augmenter

__all__ = [
    "Example",
    "LengthGroupedSampler",
    "PaddingCollator",
    "PreparedData",
    "TableSplit",
    "TokenizedDataset",
    "build_label_names",
    "describe_tokenizer_difference",
    "encode_labels",
    "infer_format",
    "load_table",
    "make_loader",
    "prepare_data",
    "read_file",
    "split_table",
    "tokenize",
]

logger = logging.getLogger(__name__)

#: keys of a tokenizer's output that a collator pads
PADDED_KEYS = ("input_ids", "attention_mask", "token_type_ids")
#: prefix of the teacher's own token ids when the two tokenizers differ
TEACHER_PREFIX = "teacher_"

Example = dict[str, Any]


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
            f"cannot tell the format of {str(path)!r} from its name: set data.format to one of {', '.join(DATA_FORMATS)}"
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
        raw = path.read_bytes()
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as error:
            line = raw[:error.start].count(b"\n") + 1
            raise DataError(
                f"{str(path)!r} is not valid {encoding} text (line {line}, byte {error.start}): set data.encoding "
                "(kdistill eval: --encoding), e.g. latin-1 or cp1252"
            ) from None
        text = text.removeprefix("\ufeff")
        if kind in ("csv", "tsv"):
            separator = "," if kind == "csv" else "\t"
            _check_header(path, next(csv.reader(io.StringIO(text), delimiter=separator), []))
            # keep_default_na=False: a text "NA" or "null" stays a text, an empty label is found below
            return pd.read_csv(io.StringIO(text), sep=separator, keep_default_na=False, dtype=str,
                               quoting=csv.QUOTE_MINIMAL)
        if kind == "jsonl" or (kind == "json" and not text.lstrip().startswith("[")):
            records = [_json_record(path, line, number) for number, line in enumerate(text.splitlines(), 1)
                       if line.strip()]
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
            raise DataError(f"{str(path)!r}: the header names the column {_printable(name.strip())!r} twice (columns {first} and "
                            f"{number}); rename one so that kdistill reads the column you mean")


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
            raise DataError(f"{source}: the label of data row {wrong[0] + 1} is {_kind(raw_labels[wrong[0]])}; a label "
                            "is one class name or number")
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
            raise DataError(f"{source}: the {name} of data row {wrong[0] + 1} is {_kind(values[wrong[0]])}, not a "
                            f"string ({len(wrong)} such row(s)); give every {name} as a string")
        empty = [i for i, v in enumerate(values) if not v.strip()]
        if empty:
            raise DataError(f"{source}: {len(empty)} example(s) with an empty {name} (data row {empty[0] + 1}); "
                            "remove them or give them a text")
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
    except Exception as error:  # noqa: BLE001 - the datasets library raises many kinds; all mean "cannot load"
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


# ---------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------


def _is_default_names(id2label: Mapping[int, str] | None) -> bool:
    return not id2label or all(str(name) == f"LABEL_{i}" for i, name in id2label.items())


def _sort_key(label: Any) -> tuple[int, Any]:
    return (0, label) if isinstance(label, int) else (1, str(label))


def _check_class_labels(names: Sequence[str], count: int) -> None:
    """Refuse labels that are not classes: measurements (0.37, 1.25) or a column of ids or texts.

    Either would silently become a classifier with a class per value.
    """
    fractional = []
    for name in names:
        try:
            fractional.append(not float(name).is_integer())
        except ValueError:
            fractional = []
            break
    if fractional and any(fractional):
        example = next(name for name, frac in zip(names, fractional) if frac)
        raise DataError(f"the labels are numbers with fractions ({example} among {len(names):,} values): kdistill "
                        "distils classifiers, which need class labels; check data.label_column")
    if count >= 20 and len(names) > count / 2:
        raise DataError(f"data.label_column has {len(names):,} different values in {count:,} training examples: it "
                        f"looks like ids or texts, not class labels ({', '.join(names[:3])} ...); check "
                        "data.label_column")


def build_label_names(
    labels: Sequence[Any], teacher_id2label: Mapping[int, str] | None = None, teacher_num_labels: int | None = None
) -> list[str]:
    """The class names in id order.

    The teacher's own order is kept where its ``id2label`` names exactly the data's labels;
    otherwise the labels are sorted (integers numerically, strings alphabetically).

    Raises:
        DataError: the data has a different number of classes than the teacher.
    """
    distinct = sorted({label for label in labels}, key=_sort_key)
    names = [str(label) for label in distinct]
    _check_class_labels(names, len(labels))
    if len(names) < 2:
        raise DataError(f"the training data has {len(names)} distinct label(s) ({', '.join(names)}): at least 2 are needed")
    if teacher_num_labels is not None and teacher_num_labels != len(names):
        raise DataError(
            f"the teacher predicts {teacher_num_labels} classes but the training data has {len(names)} labels "
            f"({', '.join(names[:10])}); give a teacher trained for these labels, or teacher.num_labels for a new head"
        )
    if not _is_default_names(teacher_id2label):
        assert teacher_id2label is not None
        teacher_names = [str(teacher_id2label[i]) for i in sorted(teacher_id2label)]
        if set(teacher_names) == set(names):
            return teacher_names
        lowered = {n.lower(): n for n in names}
        if set(lowered) == {n.lower() for n in teacher_names}:
            return [lowered[n.lower()] for n in teacher_names]
        logger.warning(
            "the teacher's classes (%s) do not name the data's labels (%s): data label i is taken as teacher class i",
            ", ".join(teacher_names), ", ".join(names),
        )
    return names


def encode_labels(table: TableSplit, label_names: Sequence[str]) -> list[int]:
    """Map ``table``'s raw labels to ids by name.

    Raises:
        DataError: a label the training data (and so the student) does not know.
    """
    index = {name: i for i, name in enumerate(label_names)}
    ids = []
    for row, label in enumerate(table.labels):
        key = str(label)
        if key not in index:
            raise DataError(
                f"{table.source}: label {key!r} (data row {row + 1}) is not among the known labels "
                f"{', '.join(label_names[:10])}"
            )
        ids.append(index[key])
    return ids


# ---------------------------------------------------------------------------
# tokenising
# ---------------------------------------------------------------------------


def tokenize(
    tokenizer: Any,
    table: TableSplit,
    max_length: int,
    *,
    prefix: str = "",
    desc: str = "tokenising",
    chunk_size: int = 1000,
    progress: bool = True,
) -> dict[str, list[list[int]]]:
    """Token ids of every example, unpadded, truncated to ``max_length``, with a progress bar.

    Returns:
        ``{prefix + "input_ids": [...], prefix + "attention_mask": [...], ...}``.
    """
    columns: dict[str, list[list[int]]] = {}
    with tqdm(total=len(table), desc=desc, unit="ex", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(table), chunk_size):
            texts = table.texts[start:start + chunk_size]
            pairs = table.pairs[start:start + chunk_size] if table.pairs is not None else None
            encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
            for key in PADDED_KEYS:
                if key in encoded:
                    columns.setdefault(prefix + key, []).extend(encoded[key])
            bar.update(len(texts))
    return columns


def describe_tokenizer_difference(teacher: Any, student: Any, sample: Sequence[str]) -> str | None:
    """How two tokenizers differ on ``sample`` texts, or None when they give the same tokens.

    Compares the vocabulary size, the padding id and the token ids of every sample text.
    """
    if len(teacher) != len(student):
        return f"vocabularies of {len(teacher):,} and {len(student):,} tokens"
    if teacher.pad_token_id != student.pad_token_id:
        return f"padding ids {teacher.pad_token_id} and {student.pad_token_id}"
    for text in sample:
        a = teacher(text, truncation=True, max_length=512)["input_ids"]
        b = student(text, truncation=True, max_length=512)["input_ids"]
        if a != b:
            return f"different tokens for {text[:40]!r}: {a[:8]} vs {b[:8]}"
    return None


class TokenizedDataset(Dataset):
    """Tokenised examples: each item is a dict of token-id lists plus its ``labels`` id."""

    def __init__(self, columns: Mapping[str, list[list[int]]], labels: Sequence[int] | None, source: str = "") -> None:
        self.columns = dict(columns)
        self.labels = list(labels) if labels is not None else None
        self.source = source
        lengths = {len(values) for values in self.columns.values()}
        if self.labels is not None:
            lengths.add(len(self.labels))
        if len(lengths) > 1:
            raise ValueError(f"columns of different lengths: {sorted(lengths)}")
        self.lengths = [len(ids) for ids in self.columns["input_ids"]]

    def __len__(self) -> int:
        return len(self.lengths)

    def concat(self, other: TokenizedDataset) -> TokenizedDataset:
        """The examples of this dataset followed by those of ``other`` (same columns)."""
        if set(self.columns) != set(other.columns) or (self.labels is None) != (other.labels is None):
            raise ValueError(f"cannot join datasets with columns {sorted(self.columns)} and {sorted(other.columns)}")
        columns = {key: values + other.columns[key] for key, values in self.columns.items()}
        labels = self.labels + other.labels if self.labels is not None and other.labels is not None else None
        return TokenizedDataset(columns, labels, f"{self.source} + {other.source}")

    def __getitem__(self, index: int) -> Example:
        item: Example = {key: values[index] for key, values in self.columns.items()}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


@dataclass
class PaddingCollator:
    """Pads a list of examples to the longest one in the batch (dynamic padding).

    Attributes:
        pad_token_id: the padding id of ``input_ids``.
        teacher_pad_token_id: the padding id of ``teacher_input_ids`` (separate tokenisation).
    """

    pad_token_id: int = 0
    teacher_pad_token_id: int = 0

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for key in examples[0]:
            if key == "labels" or isinstance(examples[0][key], int):
                # one number per example: labels, and the example index a teacher cache reads
                batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.long)
                continue
            rows = [e[key] for e in examples]
            longest = max(len(r) for r in rows)
            if key.endswith("input_ids"):
                pad = self.teacher_pad_token_id if key.startswith(TEACHER_PREFIX) else self.pad_token_id
            else:
                pad = 0
            batch[key] = torch.tensor([list(r) + [pad] * (longest - len(r)) for r in rows], dtype=torch.long)
        return batch


class LengthGroupedSampler(Sampler[list[int]]):
    """Batches of examples of similar length, in random order (less padding, same randomness).

    The indices are shuffled, cut into pools of ``pool_batches`` batches, each pool is sorted
    by length and cut into batches, and the batches are shuffled. Seeded per epoch.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, pool_batches: int = 50) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.pool = batch_size * pool_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle differently for each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), self.pool):
            batches += batches_by_length(order[start:start + self.pool], self.lengths, self.batch_size)
        rng.shuffle(batches)
        return iter(batches)


def make_loader(
    dataset: TokenizedDataset,
    batch_size: int,
    collator: PaddingCollator,
    *,
    shuffle: bool = False,
    group_by_length: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A ``DataLoader`` of padded dict batches.

    Args:
        dataset: the tokenised split.
        batch_size: examples per batch.
        collator: pads each batch.
        shuffle: shuffle every epoch (training).
        group_by_length: batch examples of similar length together: with ``shuffle`` in random
            pools (training), without it in one fixed shortest-first order (evaluation: batches
            in another order than the dataset's, but every pass the same).
        seed: seed of the shuffling.
    """
    if shuffle and group_by_length:
        return DataLoader(dataset, batch_sampler=LengthGroupedSampler(dataset.lengths, batch_size, seed), collate_fn=collator)
    if group_by_length:
        batches = batches_by_length(range(len(dataset)), dataset.lengths, batch_size)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collator)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collator)


# ---------------------------------------------------------------------------
# all together
# ---------------------------------------------------------------------------


@dataclass
class PreparedData:
    """The splits of a run, tokenised once, and the label names.

    Attributes:
        train: the training split.
        validation: the validation split (from a file or held out of train).
        test: the test split, if any.
        label_names: class names in id order (the student's ``id2label``).
        tables: the raw splits, for reports.
        separate_teacher_tokens: the teacher has its own ``teacher_*`` token ids.
    """

    train: TokenizedDataset
    validation: TokenizedDataset
    test: TokenizedDataset | None
    label_names: list[str]
    tables: dict[str, TableSplit] = field(default_factory=dict)
    separate_teacher_tokens: bool = False
    augmented: TokenizedDataset | None = None

    def distillation_set(self) -> TokenizedDataset:
        """The examples the student is distilled on: train, then the generated sentences if any."""
        return self.train if self.augmented is None else self.train.concat(self.augmented)

    @property
    def id2label(self) -> dict[int, str]:
        """``{id: name}`` for the model config."""
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        """``{name: id}`` for the model config."""
        return {name: i for i, name in enumerate(self.label_names)}

    def sizes(self) -> dict[str, int]:
        """Examples per split."""
        sizes = {"train": len(self.train), "validation": len(self.validation)}
        if self.augmented is not None:
            sizes["augmented"] = len(self.augmented)
        if self.test is not None:
            sizes["test"] = len(self.test)
        return sizes


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
                raise DataError(f"data.{role} is the training file {config.train!r}: give held-out examples, or leave "
                                f"data.{role} out to hold some out of the training file")
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
        chosen = sorted(random.Random(config.split_seed).sample(range(len(splits["train"])), config.max_train_examples))
        splits["train"] = splits["train"].subset(chosen, f"{splits['train'].source} (first {config.max_train_examples})")
    return splits


def prepare_data(
    config: DataConfig,
    student_tokenizer: Any,
    teacher_tokenizer: Any | None = None,
    *,
    teacher_id2label: Mapping[int, str] | None = None,
    teacher_num_labels: int | None = None,
    splits: Mapping[str, TableSplit] | None = None,
    augmenter: Augmenter | None = None,
    progress: bool = True,
) -> PreparedData:
    """Load, split, label and tokenise the data of a run.

    The texts are tokenised once with the student's tokenizer and the same ids feed both
    models. A teacher whose tokenizer gives other tokens is an error, unless
    ``config.allow_different_tokenizers``: then the teacher gets its own ``teacher_*`` ids.

    Args:
        config: the ``data:`` block of the run.
        student_tokenizer: the student's tokenizer.
        teacher_tokenizer: the teacher's tokenizer, to check (and use) when it differs.
        teacher_id2label: the teacher's class names, to keep its class order.
        teacher_num_labels: the teacher's number of classes, checked against the data.
        splits: raw splits already loaded (default: :func:`load_splits`).
        augmenter: makes new, unlabelled training sentences for the teacher to label
            (``PreparedData.augmented``); the other splits are never augmented.
        progress: show progress bars.

    Raises:
        DataError: anything about the data that does not fit.
    """
    splits = dict(splits) if splits is not None else load_splits(config)
    label_names = build_label_names(splits["train"].labels, teacher_id2label, teacher_num_labels)
    separate = False
    if teacher_tokenizer is not None and teacher_tokenizer is not student_tokenizer:
        difference = describe_tokenizer_difference(teacher_tokenizer, student_tokenizer, splits["train"].texts[:200])
        if difference is not None:
            if not config.allow_different_tokenizers:
                raise DataError(
                    f"the teacher's and the student's tokenizers differ ({difference}); the same token ids must feed "
                    "both: give the student the teacher's tokenizer (student.tokenizer:), or set "
                    "data.allow_different_tokenizers: true for sequence-level terms (kd, ce ...)"
                )
            separate = True
    datasets: dict[str, TokenizedDataset] = {}
    for role, table in splits.items():
        columns = tokenize(student_tokenizer, table, config.max_length, desc=f"tokenising {role}", progress=progress)
        if separate:
            columns.update(tokenize(teacher_tokenizer, table, config.max_length, prefix=TEACHER_PREFIX,
                                    desc=f"tokenising {role} (teacher)", progress=progress))
        datasets[role] = TokenizedDataset(columns, encode_labels(table, label_names), table.source)
    augmented = None
    if augmenter is not None:
        from kdistill.augment import NO_LABEL

        texts, _ = augmenter.augment(splits["train"].texts)
        if texts:
            table = TableSplit(texts, None, [NO_LABEL] * len(texts), f"{splits['train'].source} (augmented)")
            columns = tokenize(student_tokenizer, table, config.max_length, desc="tokenising augmented",
                               progress=progress)
            if separate:
                columns.update(tokenize(teacher_tokenizer, table, config.max_length, prefix=TEACHER_PREFIX,
                                        desc="tokenising augmented (teacher)", progress=progress))
            augmented = TokenizedDataset(columns, [NO_LABEL] * len(texts), table.source)
    return PreparedData(
        train=datasets["train"],
        validation=datasets["validation"],
        test=datasets.get("test"),
        label_names=label_names,
        tables=splits,
        separate_teacher_tokens=separate,
        augmented=augmented,
    )
