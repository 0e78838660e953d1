"""Splitting a batch into model inputs and labels, for tuple (PyTorch) and dict (Hugging Face) batches."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "INDEX_KEY",
    "LABEL_KEYS",
    "ROUTE_KEY",
    "IndexedExample",
    "batch_size_of",
    "example_indices",
    "example_routes",
    "is_indexed",
    "split_batch",
    "with_example_index",
    "with_routes",
]

#: keys that hold hard labels in a dict batch, in the order they are looked up
LABEL_KEYS = ("labels", "label")

#: key of the example indices in a dict batch (added by ``with_example_index``; never fed to a model)
INDEX_KEY = "kd_index"
#: key of each example's teacher index in a dict batch (``combine: route``; never fed to a model)
ROUTE_KEY = "kd_teacher"


def _indexed_tuple(size: int) -> type:
    # named tuples: PyTorch's default collate and Accelerate's device transfer keep their type
    # (plain tuple subclasses come back as lists), so split_batch can tell the index from labels
    fields = [f"item{i}" for i in range(size)] + [INDEX_KEY]
    cls = namedtuple(f"IndexedExample{size}", fields)  # type: ignore[misc]
    cls.__module__ = __name__
    return cls


# defined at module level so that DataLoader workers can pickle them
IndexedExample1 = _indexed_tuple(1)
IndexedExample2 = _indexed_tuple(2)
IndexedExample3 = _indexed_tuple(3)
IndexedExample4 = _indexed_tuple(4)
_INDEXED = {1: IndexedExample1, 2: IndexedExample2, 3: IndexedExample3, 4: IndexedExample4}


def IndexedExample(items: tuple[Any, ...]) -> tuple:
    """A tuple example ``(*items, index)`` whose last item is the example index (see ``with_example_index``)."""
    if not 2 <= len(items) <= 5:
        raise ValueError(f"indexed tuple examples hold 1 to 4 items plus the index, got {len(items) - 1} items")
    return _INDEXED[len(items) - 1](*items)


def is_indexed(batch: Any) -> bool:
    """True for a tuple example or batch made by :func:`IndexedExample`."""
    return isinstance(batch, tuple) and getattr(type(batch), "_fields", ())[-1:] == (INDEX_KEY,)


def example_indices(batch: Any) -> Tensor | None:
    """The example indices a batch carries, ``(B,)``, or None."""
    if isinstance(batch, Mapping):
        index = batch.get(INDEX_KEY)
    elif is_indexed(batch):
        index = batch[-1]
    else:
        return None
    if index is None:
        return None
    return index if isinstance(index, Tensor) else torch.as_tensor(index)


def example_routes(batch: Any) -> Tensor | None:
    """The ``(B,)`` teacher index of each example of a dict batch (:data:`ROUTE_KEY`), or None."""
    if isinstance(batch, Mapping) and ROUTE_KEY in batch:
        route = batch[ROUTE_KEY]
        return route if isinstance(route, Tensor) else torch.as_tensor(route)
    return None


def split_batch(batch: Any, label_key: str | None = None) -> tuple[Any, Tensor | None]:
    """Return ``(model_inputs, labels)`` for one batch.

    * a mapping (``dict``, ``BatchEncoding``): labels under ``label_key`` (default: ``labels``
      or ``label``), everything else is passed to the model as keyword arguments;
    * a tuple or list ``(inputs, labels)``; with more items, all but the last are positional
      model inputs and the last is the labels; a 1-tuple has no labels;
    * a tensor: the model input, no labels.

    Example indices (:data:`INDEX_KEY` or an :class:`IndexedExample`'s last item) and teacher
    routes (:data:`ROUTE_KEY`) are never part of the model inputs.
    """
    if is_indexed(batch):
        batch = tuple(batch[:-1])
    if isinstance(batch, Mapping):
        keys = (label_key,) if label_key else LABEL_KEYS
        found = next((key for key in keys if key in batch), None)
        inputs = {key: value for key, value in batch.items() if key not in (found, INDEX_KEY, ROUTE_KEY)}
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


class _Wrapped(Dataset):
    """A map-style dataset that adds something to each example of another."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        # samplers read attributes of the dataset they wrap (e.g. ``lengths`` for length grouping)
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class _IndexedDataset(_Wrapped):
    """A map-style dataset whose examples carry their own index."""

    def __getitem__(self, index: int) -> Any:
        example = self.dataset[index]
        if isinstance(example, Mapping):
            return {**example, INDEX_KEY: index}
        if isinstance(example, (tuple, list)):
            return IndexedExample((*example, index))
        return IndexedExample((example, index))


def with_example_index(dataset: Any) -> Any:
    """Return ``dataset`` with each example's index attached, so a teacher cache can serve its batches.

    Dict examples get a ``kd_index`` entry; tuple examples ``(inputs, labels)`` become
    :class:`IndexedExample` ``(inputs, labels, index)``; a Hugging Face ``datasets.Dataset``
    gets a ``kd_index`` column. The index is never passed to a model, and shuffling,
    sharding and gradient accumulation keep it with its example.
    """
    if hasattr(dataset, "add_column") and hasattr(dataset, "column_names"):
        if INDEX_KEY in dataset.column_names:
            return dataset
        return dataset.add_column(INDEX_KEY, list(range(len(dataset))))
    if isinstance(dataset, _IndexedDataset):
        return dataset
    return _IndexedDataset(dataset)


class _RoutedDataset(_Wrapped):
    """A map-style dataset of dict examples, each carrying the index of the teacher it names."""

    def __init__(self, dataset: Any, routes: Sequence[int]) -> None:
        super().__init__(dataset)
        self.routes = list(routes)

    def __getitem__(self, index: int) -> Any:
        example = self.dataset[index]
        if not isinstance(example, Mapping):
            raise TypeError("routed examples must be dicts (Hugging Face style)")
        return {**example, ROUTE_KEY: self.routes[index]}


def with_routes(dataset: Any, routes: Sequence[int]) -> Any:
    """Return ``dataset`` with each example's teacher index (``combine: route``) under :data:`ROUTE_KEY`.

    Args:
        dataset: a map-style dataset of dict examples.
        routes: the index of each example's teacher, one per example.
    """
    if len(routes) != len(dataset):
        raise ValueError(f"{len(routes)} routes for {len(dataset)} examples: give one teacher per example")
    return _RoutedDataset(dataset, routes)


def batches_by_length(indices: Sequence[int], lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """``indices`` sorted by ``lengths[i]`` (stable) and cut into batches of ``batch_size``:
    examples of similar length share a batch, so little of it is padding."""
    ordered = sorted(indices, key=lambda i: lengths[i])
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
