"""Tokenised examples, dynamic padding and length-grouped batches: the data plumbing every task shares.

A task turns its files into a :class:`TokenizedDataset` (token-id lists, unpadded, plus labels);
:class:`PaddingCollator` pads each batch to its longest example (labels of a sequence are padded
with -100, which no loss counts); :func:`make_loader` batches examples of similar length
together. When teacher and student read different tokens, the teacher's ids ride in the same
batch under :data:`TEACHER_PREFIX` and :class:`Routed` feeds each model its own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from kdistill.data.batch import batches_by_length

__all__ = [
    "IGNORE_INDEX",
    "PADDED_KEYS",
    "TEACHER_PREFIX",
    "Example",
    "LengthGroupedSampler",
    "PaddingCollator",
    "Routed",
    "TokenizedDataset",
    "make_loader",
    "model_inputs",
]

#: keys of a tokenizer's output that a collator pads
PADDED_KEYS = ("input_ids", "attention_mask", "token_type_ids")
#: prefix of the teacher's own token ids when the two tokenizers differ
TEACHER_PREFIX = "teacher_"
#: the label of a position (or an example) that no loss counts
IGNORE_INDEX = -100

Example = dict[str, Any]


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
            if isinstance(examples[0][key], int):
                # one number per example: a class label, and the example index a teacher cache reads
                batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.long)
                continue
            rows = [e[key] for e in examples]
            longest = max(len(r) for r in rows)
            if key.endswith("input_ids"):
                pad = self.teacher_pad_token_id if key.startswith(TEACHER_PREFIX) else self.pad_token_id
            elif key == "labels":
                pad = IGNORE_INDEX  # a sequence's labels: padding never counts in a loss
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
            batches += batches_by_length(order[start : start + self.pool], self.lengths, self.batch_size)
        rng.shuffle(batches)
        return iter(batches)


def make_loader(
    dataset: Dataset,
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
            in another order than the dataset's, but every pass the same). Only for a dataset
            that knows its examples' ``lengths``; others are batched in order.
        seed: seed of the shuffling.
    """
    group_by_length = group_by_length and hasattr(dataset, "lengths")
    if shuffle and group_by_length:
        return DataLoader(
            dataset, batch_sampler=LengthGroupedSampler(dataset.lengths, batch_size, seed), collate_fn=collator
        )
    if group_by_length:
        batches = batches_by_length(range(len(dataset)), dataset.lengths, batch_size)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collator)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collator)


def model_inputs(batch: Mapping[str, torch.Tensor], teacher_side: bool = False) -> dict[str, torch.Tensor]:
    """The inputs one model takes from a batch: its own token ids, never the labels.

    With separate teacher tokens, the teacher reads the ``teacher_*`` keys (renamed) and the
    student the others.
    """
    has_teacher_keys = any(key.startswith(TEACHER_PREFIX) for key in batch)
    inputs = {}
    for key, value in batch.items():
        if key in ("labels", "label"):
            continue
        if key.startswith(TEACHER_PREFIX):
            if teacher_side:
                inputs[key[len(TEACHER_PREFIX) :]] = value
        elif not (teacher_side and has_teacher_keys):
            inputs[key] = value
    return inputs


class Routed(nn.Module):
    """Feeds a model its own token ids when the teacher and the student were tokenised apart.

    The batch holds the student's ``input_ids`` and the teacher's ``teacher_input_ids``; the
    wrapper picks one side's and drops the other's. Only sequence-level terms are allowed with
    separate tokens (the config checks it), so nothing looks inside the wrapped model.
    """

    def __init__(self, model: nn.Module, teacher_side: bool) -> None:
        super().__init__()
        self.model = model
        self.teacher_side = teacher_side

    def forward(self, **inputs: Any) -> Any:
        return self.model(**model_inputs(inputs, self.teacher_side))
