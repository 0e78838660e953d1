"""Text-classification data for a run: the splits read, labelled and tokenised once.

The flow of :func:`prepare_data`::

    CSV/TSV/JSON/JSONL/Parquet or hub id ─► table (text, [text pair], label)
        ─► train / validation / test (files, or a seeded stratified split of train)
        ─► label ids (written into the student's id2label / label2id)
        ─► token ids, once, shared by teacher and student ─► length-grouped, padded batches
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from kdistill.data.datasets import PADDED_KEYS, TEACHER_PREFIX, TokenizedDataset
from kdistill.errors import DataError
from kdistill.tasks.base import TaskData
from kdistill.tasks.text_classification.augment import NO_LABEL, Augmenter
from kdistill.tasks.text_classification.config import DataConfig
from kdistill.tasks.text_classification.labels import build_label_names, encode_labels
from kdistill.tasks.text_classification.reading import TableSplit, load_splits

logger = logging.getLogger("kdistill.data")

__all__ = ["PreparedData", "TextTaskData", "describe_tokenizer_difference", "prepare_data", "tokenize"]


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
            texts = table.texts[start : start + chunk_size]
            pairs = table.pairs[start : start + chunk_size] if table.pairs is not None else None
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
        augmented: the generated training sentences, tokenised, if any.
        augmented_texts: their texts (the vocabulary a pruned student keeps includes theirs).
    """

    train: TokenizedDataset
    validation: TokenizedDataset
    test: TokenizedDataset | None
    label_names: list[str]
    tables: dict[str, TableSplit] = field(default_factory=dict)
    separate_teacher_tokens: bool = False
    augmented: TokenizedDataset | None = None
    augmented_texts: list[str] = field(default_factory=list)

    def distillation_set(self) -> TokenizedDataset:
        """The examples the student is distilled on: train, then the generated sentences if any."""
        return self.train if self.augmented is None else self.train.concat(self.augmented)

    def sizes(self) -> dict[str, int]:
        """Examples per split."""
        sizes = {"train": len(self.train), "validation": len(self.validation)}
        if self.augmented is not None:
            sizes["augmented"] = len(self.augmented)
        if self.test is not None:
            sizes["test"] = len(self.test)
        return sizes


def _columns(
    table: TableSplit, tokenizer: Any, teacher_tokenizer: Any | None, max_length: int, name: str, progress: bool
) -> dict[str, list[list[int]]]:
    """A split's token ids (and the teacher's own, under ``teacher_*``, when it reads other tokens)."""
    columns = tokenize(tokenizer, table, max_length, desc=f"tokenising {name}", progress=progress)
    if teacher_tokenizer is not None:
        columns.update(
            tokenize(
                teacher_tokenizer,
                table,
                max_length,
                prefix=TEACHER_PREFIX,
                desc=f"tokenising {name} (teacher)",
                progress=progress,
            )
        )
    return columns


def prepare_data(
    config: DataConfig,
    student_tokenizer: Any,
    teacher_tokenizer: Any | None = None,
    *,
    label_names: Sequence[str] | None = None,
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
        label_names: the class names in id order (a run names them once, against its teacher);
            default: ``config.label_names``, else the training labels, sorted.
        splits: raw splits already loaded (default: :func:`load_splits`).
        augmenter: makes new, unlabelled training sentences for the teacher to label
            (``PreparedData.augmented``); the other splits are never augmented.
        progress: show progress bars.

    Raises:
        DataError: anything about the data that does not fit.
    """
    splits = dict(splits) if splits is not None else load_splits(config)
    if label_names is None:
        label_names = build_label_names(splits["train"].labels, given=config.label_names)
    label_names = list(label_names)
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
    teacher = teacher_tokenizer if separate else None

    def tokenised(table: TableSplit, name: str, labels: list[int]) -> TokenizedDataset:
        return TokenizedDataset(
            _columns(table, student_tokenizer, teacher, config.max_length, name, progress), labels, table.source
        )

    datasets = {role: tokenised(table, role, encode_labels(table, label_names)) for role, table in splits.items()}
    augmented, texts = None, []
    if augmenter is not None:
        texts, _ = augmenter.augment(splits["train"].texts)
        if texts:
            table = TableSplit(texts, None, [NO_LABEL] * len(texts), f"{splits['train'].source} (augmented)")
            augmented = tokenised(table, "augmented", [NO_LABEL] * len(texts))
    return PreparedData(
        train=datasets["train"],
        validation=datasets["validation"],
        test=datasets.get("test"),
        label_names=label_names,
        tables=splits,
        separate_teacher_tokens=separate,
        augmented=augmented,
        augmented_texts=list(texts),
    )


@dataclass
class TextTaskData(TaskData):
    """A run's :class:`~kdistill.tasks.base.TaskData` with the texts it was tokenised from, which
    vocabulary pruning reads (the training texts) and re-tokenises (the evaluated split).

    Attributes:
        prepared: the splits as read and tokenised.
        max_length: the tokens per example the splits were cut to.
    """

    prepared: PreparedData | None = None
    max_length: int = 512
