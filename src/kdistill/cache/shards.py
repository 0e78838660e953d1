"""The storage of a teacher cache: tensors to and from their stored precision, shard files and the
checks of their layout on opening, and the length-sorted windows of the cache pass (rows written
back in example order)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdistill.cache.keys import STORAGE_DTYPES, CacheSpec
from kdistill.data.batch import batches_by_length
from kdistill.files.ownership import file_sha256

__all__ = [
    "SORT_WINDOW_BATCHES",
    "ShardWriter",
    "check_layout",
    "check_shard_arrays",
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


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _stored_dtype(storage: Any) -> np.dtype:
    """The numpy dtype of a field's files: that of a storage precision, or the dtype named."""
    if storage in STORAGE_DTYPES:
        return np.dtype(STORAGE_DTYPES[storage])
    if not isinstance(storage, str):
        raise ValueError(f"names the storage {storage!r}")
    try:
        return np.dtype(storage)
    except TypeError as error:
        raise ValueError(f"names the storage {storage!r}") from error


def check_layout(manifest: dict[str, Any]) -> None:
    """Check a cache manifest's layout: what each field stores, and shards that cover examples
    ``0..num_examples`` one after another, each with one plain file name per field.

    Raises:
        ValueError: the layout that is wrong, to follow "manifest.json ".
    """
    fields, shards, total = manifest.get("fields"), manifest.get("shards"), manifest.get("num_examples")
    if not (isinstance(fields, dict) and fields and isinstance(shards, list) and shards and _is_count(total)):
        raise ValueError("lacks its fields, shards or number of examples")
    for name, info in fields.items():
        if not (
            isinstance(info, dict)
            and isinstance(info.get("per_token"), bool)
            and isinstance(info.get("row_shape"), list)
            and all(_is_count(size) for size in info["row_shape"])
        ):
            raise ValueError(f"describes the field {name!r} wrongly")
        _stored_dtype(info.get("storage"))
    names = set(fields) | ({"offsets"} if any(info["per_token"] for info in fields.values()) else set())
    end = 0
    for number, shard in enumerate(shards):
        if not isinstance(shard, dict) or not isinstance(shard.get("files"), dict):
            raise ValueError(f"describes shard {number} wrongly")
        if shard.get("start") != end or not _is_count(shard.get("end")) or shard["end"] <= end:
            raise ValueError(
                f"has shard {number} at examples {shard.get('start')}..{shard.get('end')}, not from example {end} on"
            )
        end = shard["end"]
        if set(shard["files"]) != names:
            raise ValueError(f"lists the files {sorted(shard['files'])} for shard {number}, not {sorted(names)}")
        for name, entry in shard["files"].items():
            path = entry.get("path") if isinstance(entry, dict) else None
            if not isinstance(path, str) or Path(path).name != path or not path.endswith(".npy") or path[0] == ".":
                raise ValueError(f"names the file {path!r} for {name!r} of shard {number}")
            if not _is_count(entry.get("bytes")) or not isinstance(entry.get("sha256"), str):
                raise ValueError(f"records no size and checksum of {path}")
    if end != total:
        raise ValueError(f"counts {total} examples but its shards hold {end}")


def check_shard_arrays(
    fields: dict[str, dict[str, Any]], shards: list[dict[str, Any]], arrays: list[dict[str, np.ndarray]], scan: bool
) -> None:
    """Check that each shard's (memory-mapped) arrays are what the manifest says: dtypes and shapes,
    offsets from 0 that never decrease and end at the token count, and, with ``scan``, top-k or
    sampled ids within the vocabulary recorded when the cache was written and sampled counts that
    add up to the draws of every token (the fields read whole).

    Raises:
        ValueError: the file that disagrees, and how.
    """
    for shard, stored in zip(shards, arrays, strict=True):
        examples, tokens = shard["end"] - shard["start"], None
        if "offsets" in stored:
            offsets, path = stored["offsets"], shard["files"]["offsets"]["path"]
            if offsets.dtype.kind not in "iu" or offsets.shape != (examples + 1,):
                raise ValueError(
                    f"{path} holds {offsets.dtype} offsets of shape {offsets.shape}, not the {examples + 1} "
                    f"offsets of its {examples} examples"
                )
            steps = np.diff(offsets)
            if int(offsets[0]) != 0 or (steps.size and int(steps.min()) < 0):
                raise ValueError(f"{path} holds offsets that do not increase from 0")
            tokens = int(offsets[-1])
        for name, info in fields.items():
            array, path = stored[name], shard["files"][name]["path"]
            rows = tokens if info["per_token"] else examples
            expected = (rows, *info["row_shape"])
            if array.shape != expected or array.dtype != _stored_dtype(info["storage"]):
                raise ValueError(
                    f"{path} holds {array.dtype} of shape {array.shape}; the manifest says "
                    f"{_stored_dtype(info['storage'])} of shape {expected}"
                )
            vocab = info.get("vocab_size")
            if scan and _is_count(vocab) and array.size and int(array.max()) >= vocab:
                raise ValueError(f"{path} holds id {int(array.max())}, past the teacher's vocabulary of {vocab} ids")
            samples = info.get("samples")
            if scan and _is_count(samples) and array.ndim == 2 and array.size:
                sums = array.sum(axis=-1, dtype=np.int64)
                if int(sums.min()) != samples or int(sums.max()) != samples:
                    raise ValueError(f"{path} holds tokens whose counts do not add up to their {samples} draws")


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
