"""The storage of a teacher cache: tensors to and from their stored precision, shard files, and
the length-sorted windows of the cache pass (rows written back in example order)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdistill.cache.keys import CacheSpec
from kdistill.data.batch import batches_by_length
from kdistill.files.ownership import file_sha256

__all__ = [
    "SORT_WINDOW_BATCHES",
    "ShardWriter",
    "from_storage",
    "in_example_order",
    "length_sorted_windows",
    "to_storage",
]

#: the largest float16: fp16 storage clamps to it (larger logits would become inf and poison the loss)
_FP16_MAX = 65504.0

# ---------------------------------------------------------------------------
# storage helpers
# ---------------------------------------------------------------------------


def to_storage(tensor: Tensor, dtype: str) -> np.ndarray:
    """A tensor as the array a shard stores in precision ``dtype`` (fp32; fp16, clamped; bf16 as its bits)."""
    tensor = tensor.detach().float().cpu()
    if dtype == "fp16":
        # logits beyond fp16's range would become inf and poison the loss
        return tensor.clamp(-_FP16_MAX, _FP16_MAX).numpy().astype(np.float16)
    if dtype == "bf16":
        return tensor.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy().astype(np.float32)


def from_storage(array: np.ndarray, dtype: str) -> Tensor:
    """A stored array back as a float32 tensor (the inverse of :func:`to_storage`)."""
    if dtype == "bf16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(np.ascontiguousarray(array)).float()


@dataclass
class ShardWriter:
    """Collects rows of every field for one shard and writes them as .npy files."""

    folder: Path
    spec: CacheSpec
    rows: dict[str, list[np.ndarray]] = field(default_factory=dict)
    token_counts: list[int] = field(default_factory=list)
    num_examples: int = 0
    nbytes: int = 0

    def add(self, name: str, array: np.ndarray) -> None:
        self.rows.setdefault(name, []).append(array)
        self.nbytes += array.nbytes

    def write(self, shard: int, start: int) -> dict[str, Any]:
        files: dict[str, dict[str, Any]] = {}
        arrays = {name: np.concatenate(chunks) for name, chunks in self.rows.items()}
        if self.token_counts:
            arrays["offsets"] = np.concatenate([[0], np.cumsum(self.token_counts)]).astype(np.int64)
        for name, array in arrays.items():
            path = self.folder / f"{name}.{shard:05d}.npy"
            np.save(path, array)
            files[name] = {"path": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
        return {"start": start, "end": start + self.num_examples, "files": files}


#: batches of the cache pass sorted by length within windows of this many batches: far less
#: padding than dataset order, while only one window of outputs waits in memory to be reordered
SORT_WINDOW_BATCHES = 16


def length_sorted_windows(size: int, lengths: Sequence[int] | None, batch_size: int) -> list[list[list[int]]]:
    """Consecutive windows of example indices, each cut into batches of similar lengths.

    Without ``lengths`` every batch is its own window, in dataset order.
    """
    if lengths is None or len(lengths) != size:
        return [[list(range(start, min(start + batch_size, size)))] for start in range(0, size, batch_size)]
    span = batch_size * SORT_WINDOW_BATCHES
    windows = []
    for start in range(0, size, span):
        windows.append(batches_by_length(range(start, min(start + span, size)), lengths, batch_size))
    return windows


def in_example_order(
    done: list[tuple[list[int], dict[str, np.ndarray], list[int]]], fields: dict[str, dict[str, Any]]
) -> tuple[dict[str, np.ndarray], list[int]]:
    """The rows of a window's batches (run in length order) put back in example order."""
    positions = [index for wanted, _, _ in done for index in wanted]
    inverse = np.argsort(np.asarray(positions), kind="stable")
    counts = [count for _, _, batch_counts in done for count in batch_counts]
    out: dict[str, np.ndarray] = {}
    for name in done[0][1]:
        joined = np.concatenate([rows[name] for _, rows, _ in done])
        if not fields[name]["per_token"]:
            out[name] = joined[inverse]
            continue
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        out[name] = np.concatenate([joined[offsets[i] : offsets[i + 1]] for i in inverse])
    return out, [counts[i] for i in inverse] if counts else []


# ---------------------------------------------------------------------------
# the cache
# ---------------------------------------------------------------------------
