"""Vocabulary pruning of a trained text classifier (``student.prune_vocabulary``).

The student trains with the teacher's whole vocabulary (both read the same token ids during
distillation); once it is final, :func:`prune_student` keeps the vocabulary of what it was
distilled on (the training texts, their second texts, and the augmented sentences) with
:func:`.vocab_pruning.prune_vocabulary`, and measures what that changed on the evaluated
split: both students' metrics, the pruned one reading the texts re-tokenised by its own tokenizer.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from torch import nn

from kdistill.data.datasets import PaddingCollator, TokenizedDataset, make_loader
from kdistill.tasks.base import Models, TaskData
from kdistill.tasks.text_classification.data import TextTaskData, tokenize
from kdistill.tasks.text_classification.labels import encode_labels
from kdistill.tasks.text_classification.metrics import agreement, classification_metrics, predict
from kdistill.tasks.text_classification.reading import TableSplit
from kdistill.tasks.text_classification.vocab_pruning import prune_vocabulary, tokenization_drift

__all__ = ["prune_student", "training_texts"]

logger = logging.getLogger("kdistill.run")


def training_texts(data: TextTaskData) -> list[str]:
    """Every text the student was distilled on: the training texts, their second texts, the augmented ones."""
    assert data.prepared is not None
    train = data.prepared.tables["train"]
    return [*train.texts, *(train.pairs or []), *data.prepared.augmented_texts]


def _logits(
    model: nn.Module, tokenizer: Any, table: TableSplit, data: TextTaskData, batch_size: int, progress: bool
) -> Any:
    """The model's logits on ``table`` tokenised by ``tokenizer``, in the table's order, and the gold labels."""
    assert data.prepared is not None
    columns = tokenize(tokenizer, table, data.max_length, progress=progress)
    dataset = TokenizedDataset(columns, encode_labels(table, data.prepared.label_names), table.source)
    loader = make_loader(dataset, batch_size, PaddingCollator(tokenizer.pad_token_id or 0, 0))
    return predict(model, loader, progress=progress)


def _metrics(logits: np.ndarray, gold: np.ndarray, num_labels: int) -> dict[str, float]:
    return classification_metrics(logits, gold, num_labels) if len(gold) else {}


def prune_student(
    models: Models, data: TaskData, *, batch_size: int, progress: bool = False
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The student with the vocabulary of its distillation data, its tokenizer, and what pruning changed.

    Returns:
        ``(student, tokenizer, record)``: the record holds the sizes of
        :class:`~.vocab_pruning.VocabularyReport`, the evaluated split's name and size,
        both students' accuracy and macro-F1 on it (``student`` pruned, re-tokenised;
        ``unpruned_student`` as trained), the share of its examples with an unknown token
        (``with_unknown``) or other tokens than before (``changed``), and both students' accuracy on
        the examples whose tokens did not change (``unchanged``: equal, as their logits are).
    """
    assert isinstance(data, TextTaskData) and data.prepared is not None, "the task's prepare() keeps the texts"
    assert models.student is not None
    prepared = data.prepared
    student, tokenizer, report = prune_vocabulary(models.student, models.tokenizer, training_texts(data))
    logger.info("%s", report)
    name = "test" if prepared.test is not None else "validation"
    table = prepared.tables[name]
    # a pair's words are tokenised one by one, so the two texts joined read as the pair does
    joined = table.texts if table.pairs is None else [f"{a} {b}" for a, b in zip(table.texts, table.pairs)]
    drift = tokenization_drift(models.tokenizer, tokenizer, joined)
    before, gold = _logits(models.student, models.tokenizer, table, data, batch_size, progress)
    after, _ = _logits(student, tokenizer, table, data, batch_size, progress)
    classes = len(prepared.label_names)
    kept = np.asarray(drift["unchanged"], dtype=np.int64)
    record = {
        **report.as_dict(),
        "evaluated_on": name,
        "examples": len(table),
        "student": {**_metrics(after, gold, classes), "agreement_with_unpruned": agreement(after, before)},
        "unpruned_student": _metrics(before, gold, classes),
        "with_unknown": drift["with_unknown"],
        "with_unknown_before": drift["with_unknown_before"],
        "changed": drift["changed"],
        "unchanged": {
            "examples": len(kept),
            "accuracy": _metrics(after[kept], gold[kept], classes).get("accuracy"),
            "unpruned_accuracy": _metrics(before[kept], gold[kept], classes).get("accuracy"),
        },
    }
    logger.info(
        "pruned student on %s (re-tokenised): accuracy %.4f (unpruned %.4f); %.1f%% of its examples have an "
        "unknown token, %.1f%% other tokens than before",
        name,
        record["student"].get("accuracy", float("nan")),
        record["unpruned_student"].get("accuracy", float("nan")),
        100 * drift["with_unknown"],
        100 * drift["changed"],
    )
    return student, tokenizer, record
