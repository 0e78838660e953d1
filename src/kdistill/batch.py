"""Splitting a batch into model inputs and labels, for tuple (PyTorch) and dict (Hugging Face) batches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = ["LABEL_KEYS", "split_batch", "batch_size_of"]

#: keys that hold hard labels in a dict batch, in the order they are looked up
LABEL_KEYS = ("labels", "label")


def split_batch(batch: Any, label_key: str | None = None) -> tuple[Any, Tensor | None]:
    """Return ``(model_inputs, labels)`` for one batch.

    * a mapping (``dict``, ``BatchEncoding``): labels under ``label_key`` (default: ``labels``
      or ``label``), everything else is passed to the model as keyword arguments;
    * a tuple or list ``(inputs, labels)``; with more items, all but the last are positional
      model inputs and the last is the labels; a 1-tuple has no labels;
    * a tensor: the model input, no labels.
    """
    if isinstance(batch, Mapping):
        keys = (label_key,) if label_key else LABEL_KEYS
        found = next((key for key in keys if key in batch), None)
        inputs = {key: value for key, value in batch.items() if key != found}
        if not inputs:
            raise ValueError(f"the batch holds only labels ({found!r}) and nothing to feed the model")
        return inputs, (batch[found] if found else None)
    if isinstance(batch, (tuple, list)):
        if len(batch) == 0:
            raise ValueError("received an empty batch")
        if len(batch) == 1:
            return batch[0], None
        if len(batch) == 2:
            return batch[0], batch[1]
        return tuple(batch[:-1]), batch[-1]
    if isinstance(batch, Tensor):
        return batch, None
    raise TypeError(
        f"cannot read a batch of type {type(batch).__name__}: use a dict of tensors (Hugging Face style) "
        "or a tuple (inputs, labels)"
    )


def batch_size_of(inputs: Any) -> int:
    """The number of examples in model inputs (first dimension of the first tensor found)."""
    if isinstance(inputs, Tensor):
        return int(inputs.shape[0])
    values = inputs.values() if isinstance(inputs, Mapping) else inputs if isinstance(inputs, (tuple, list)) else ()
    for value in values:
        if isinstance(value, Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise ValueError("cannot tell the batch size: the batch holds no tensor")
