"""Teacher-output cache: run the teacher once, then train from its stored outputs.

In online distillation every epoch pays for a teacher forward pass on every batch although the
teacher never changes. :class:`TeacherCache` runs the teacher once over a dataset and stores,
per example, what the objective needs: logits, optionally the hidden states of chosen layers,
and for large vocabularies the top-k log-probabilities with the rest of the probability mass
kept as one extra bucket (see :func:`kdistill.losses.functional.soft_kd_topk`).

On disk a cache is a folder with ``manifest.json`` and memory-mapped ``.npy`` shards. It is
written to a temporary folder and renamed into place when complete, so a half-written cache is
never read. The manifest holds a fingerprint of the teacher's weights, the dataset, the
tokenisation settings and what is captured, and the size and SHA-256 of every shard: a cache
that does not match or whose files are damaged or truncated is rebuilt, with a message saying
why, and never silently used.

Per-token fields (hidden states, per-token logits) store only the real tokens of each example
(positions where ``attention_mask`` is 1) and are scattered back into the positions of the
training batch, so dynamic padding and a different batch order do not matter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from accelerate.utils import send_to_device
from tqdm.auto import tqdm

from kdistill.batch import batches_by_length, example_indices, split_batch
from kdistill.capture import CaptureRequest, Features, TopKLogProbs, attention_mask_of, capture
from kdistill.errors import KdistillError
from kdistill.fileio import FolderInUseError, exclusive_lock, file_sha256, is_staging_name, unowned_files
from kdistill.losses.functional import check_temperature
from kdistill.train.teacher import NonFiniteTeacherError, nonfinite_teacher_fields

__all__ = ["CacheError", "CacheFolderError", "CacheSpec", "TeacherCache", "cache_key", "check_cache_folder", "fingerprint_dataset", "fingerprint_teacher"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: written first into every cache folder: the cache's identity (a folder without it is not a cache)
MARKER = ".kdistill-cache.json"
#: storage precisions and the numpy dtype of their files (bf16 is kept as its raw 16 bits)
STORAGE_DTYPES = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}
_FP16_MAX = 65504.0


class CacheError(RuntimeError):
    """A cache folder that cannot be used: missing, incomplete, damaged or built for other inputs."""


class CacheFolderError(KdistillError, RuntimeError):
    """The cache folder holds something kdistill did not write: it is never emptied or replaced."""


@dataclass(frozen=True)
class CacheSpec:
    """What the cache stores for each example.

    Attributes:
        logits: the full logits (``(C,)`` per example or ``(V,)`` per token).
        hidden_states: layers whose hidden states to store (0 = embedding output).
        top_k: instead of full logits, the k most probable classes/tokens per position with
            their log-probabilities at ``temperature``, plus the log of the remaining mass.
        temperature: the temperature of the stored top-k log-probabilities (top-k only: the
            rest mass at another temperature cannot be recovered from k values).
        dtype: storage precision of floating-point fields: ``fp32``, ``fp16`` or ``bf16``.
    """

    logits: bool = True
    hidden_states: tuple[int, ...] = ()
    top_k: int | None = None
    temperature: float | None = None
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"cache dtype must be one of {', '.join(STORAGE_DTYPES)}, got {self.dtype!r}")
        if self.top_k is not None:
            if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
                raise ValueError(f"top_k must be a positive integer, got {self.top_k!r}")
            if self.temperature is None:
                raise ValueError("a top-k cache needs the temperature of the loss that will read it (e.g. 4.0)")
            check_temperature(self.temperature)
            if self.logits:
                object.__setattr__(self, "logits", False)  # top-k replaces the full logits
        object.__setattr__(self, "hidden_states", tuple(sorted(set(self.hidden_states))))
        if not (self.logits or self.top_k or self.hidden_states):
            raise ValueError("the cache spec stores nothing: enable logits, top_k or hidden_states")

    def request(self) -> CaptureRequest:
        """What the teacher's forward pass must produce to fill this cache."""
        return CaptureRequest(logits=self.logits or self.top_k is not None,
                              hidden_states=frozenset(self.hidden_states))


# ---------------------------------------------------------------------------
# fingerprints
# ---------------------------------------------------------------------------


def _tensor_bytes(tensor: Tensor) -> bytes:
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.numpy().tobytes()


def fingerprint_teacher(model: nn.Module) -> str:
    """A hash of the model's class and every weight and buffer (names, dtypes, shapes, values)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(type(model).__qualname__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _hash_value(digest: Any, value: Any) -> None:
    if isinstance(value, Tensor):
        digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        digest.update(_tensor_bytes(value))
    elif isinstance(value, np.ndarray):
        digest.update(f"N{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Mapping):
        for key in sorted(value, key=str):
            digest.update(f"K{key}".encode())
            _hash_value(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _hash_value(digest, item)
    else:
        digest.update(f"V{type(value).__name__}:{value!r}".encode())


def fingerprint_dataset(dataset: Any) -> str:
    """A hash of a dataset's content and order.

    A Hugging Face ``datasets.Dataset`` has a content fingerprint of its own (it changes with
    the files and with every transform), used as is; other datasets are hashed example by example.
    """
    own = getattr(dataset, "_fingerprint", None)
    if isinstance(own, str):
        return f"hf:{own}:{len(dataset)}"
    digest = hashlib.blake2b(digest_size=16)
    for index in range(len(dataset)):
        _hash_value(digest, dataset[index])
    return digest.hexdigest()


def fingerprint_tokenizer(tokenizer: Any) -> str:
    """A hash of what a tokenizer maps text to: its class, vocabulary and special tokens.

    Not its ``name_or_path``: a student saved by an earlier run carries the teacher's tokenizer
    in another folder, and a cache of the same inputs must stay valid for it.
    """
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if get_vocab is None:
        return type(tokenizer).__name__
    special = {name: str(value) for name, value in getattr(tokenizer, "special_tokens_map", {}).items()}
    return _hash_json({"class": type(tokenizer).__name__, "vocab": sorted(get_vocab().items()), "special": special})


def cache_key(teacher: nn.Module, dataset: Any, spec: CacheSpec | None = None,
              tokenization: Mapping[str, Any] | None = None) -> tuple[str, dict[str, str]]:
    """The fingerprint of a cache of ``teacher`` over ``dataset``, and the hash of each of its parts.

    The parts (teacher weights, dataset content and order, tokenisation settings, what is
    stored) let a rebuild say which of them changed.
    """
    parts = {
        "teacher": fingerprint_teacher(teacher),
        "dataset": fingerprint_dataset(dataset),
        "tokenization": _hash_json(dict(tokenization or {})),
        "spec": _hash_json(asdict(spec or CacheSpec())),
    }
    return _hash_json({"format": FORMAT_VERSION, **parts}), parts


def _hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------
# storage helpers
# ---------------------------------------------------------------------------


def _to_storage(tensor: Tensor, dtype: str) -> np.ndarray:
    tensor = tensor.detach().float().cpu()
    if dtype == "fp16":
        # logits beyond fp16's range would become inf and poison the loss
        return tensor.clamp(-_FP16_MAX, _FP16_MAX).numpy().astype(np.float16)
    if dtype == "bf16":
        return tensor.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy().astype(np.float32)


def _from_storage(array: np.ndarray, dtype: str) -> Tensor:
    if dtype == "bf16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(np.ascontiguousarray(array)).float()


@dataclass
class _ShardWriter:
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


def _length_sorted_windows(size: int, lengths: Sequence[int] | None, batch_size: int) -> list[list[list[int]]]:
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


def _in_example_order(done: list[tuple[list[int], dict[str, np.ndarray], list[int]]],
                      fields: dict[str, dict[str, Any]]) -> tuple[dict[str, np.ndarray], list[int]]:
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
        out[name] = np.concatenate([joined[offsets[i]:offsets[i + 1]] for i in inverse])
    return out, [counts[i] for i in inverse] if counts else []


# ---------------------------------------------------------------------------
# the cache
# ---------------------------------------------------------------------------


class TeacherCache:
    """A teacher's outputs over a dataset, stored on disk and read back per batch.

    Build (or reuse) one with :meth:`build`; the training paths then take it as
    ``teacher_cache=`` and read the rows of each batch's example indices (see
    :func:`kdistill.batch.with_example_index`).

    Example:
        >>> cache = TeacherCache.build(teacher, train_dataset, "runs/cache", collate_fn=collator)  # doctest: +SKIP
        >>> distill(None, student, loader, teacher_cache=cache)  # doctest: +SKIP
    """

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.spec = CacheSpec(**{**manifest["spec"], "hidden_states": tuple(manifest["spec"]["hidden_states"])})
        self.fields: dict[str, dict[str, Any]] = manifest["fields"]
        self._starts = np.array([shard["start"] for shard in manifest["shards"]], dtype=np.int64)
        self._arrays: list[dict[str, np.ndarray]] = [
            {name: np.load(folder / entry["path"], mmap_mode="r") for name, entry in shard["files"].items()}
            for shard in manifest["shards"]
        ]

    # -- building -----------------------------------------------------------

    @classmethod
    def build(
        cls,
        teacher: nn.Module,
        dataset: Dataset | Sequence[Any],
        folder: str | os.PathLike[str],
        *,
        spec: CacheSpec | None = None,
        batch_size: int = 64,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        tokenization: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        precision: str = "no",
        shard_megabytes: float = 256.0,
        progress: bool = True,
        key: tuple[str, dict[str, str]] | None = None,
    ) -> TeacherCache:
        """Return the cache of ``teacher`` over ``dataset`` in ``folder``, building it if needed.

        A complete cache whose fingerprint matches and whose shards are intact is reused as is;
        otherwise the reason is logged and the cache is rebuilt atomically.

        Args:
            teacher: the teacher model.
            dataset: a map-style dataset in the order training will index it.
            folder: where the cache lives.
            spec: what to store (default: full logits in float32).
            batch_size: batch size of the teacher's pass.
            collate_fn: collate function of the teacher's pass (use the training collator).
            tokenization: settings that shaped the inputs (tokenizer name, max_length, ...): they
                are part of the fingerprint, so changing them invalidates the cache.
            device: where to run the teacher (default: CUDA if available, else CPU).
            precision: ``"no"`` or ``"bf16"``/``"fp16"`` autocast for the teacher's pass.
            shard_megabytes: approximate size of one shard file.
            progress: show a progress bar.
            key: :func:`cache_key` of these inputs when the caller computed it already (to
                name the folder after it), so the weights and data are not hashed twice.
        """
        spec = spec or CacheSpec()
        folder = Path(folder)
        fingerprint, parts = key if key is not None else cache_key(teacher, dataset, spec, tokenization)
        # runs started side by side (a sweep over seeds or students) share one cache folder: the
        # first builds it and the others wait for it instead of each running the teacher again
        if (folder.exists() or folder.is_symlink()) and not ((folder / MARKER).is_file() or (folder / MANIFEST).is_file()):
            _check_replaceable(folder)  # before the lock file is made beside it: refuse a user's folder untouched
        with _build_lock(folder):
            if folder.exists():
                try:
                    cache = cls.open(folder, fingerprint=fingerprint)
                    logger.info("reusing the teacher cache at %s", folder)
                    return cache
                except CacheError as error:
                    _check_replaceable(folder)
                    logger.warning("%s%s; rebuilding it", error, _changed_parts(folder, parts))
            cls._write(teacher, dataset, folder, spec, fingerprint, parts, batch_size, collate_fn, device,
                       precision, shard_megabytes, progress)
            return cls.open(folder, fingerprint=fingerprint)

    @classmethod
    def _write(
        cls, teacher: nn.Module, dataset: Any, folder: Path, spec: CacheSpec, fingerprint: str,
        parts: dict[str, str], batch_size: int, collate_fn: Callable | None, device: Any, precision: str,
        shard_megabytes: float, progress: bool,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("cannot cache the teacher's outputs over an empty dataset")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        teacher.to(device).eval()
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.building-", dir=folder.parent))
        try:
            # the identity first: whatever is later found in a folder without it is not kdistill's
            (staging / MARKER).write_text(json.dumps({"kdistill": "teacher-cache", "fingerprint": fingerprint}) + "\n")
            windows = _length_sorted_windows(len(dataset), getattr(dataset, "lengths", None), batch_size)
            batches = [batch for window in windows for batch in window]
            loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_fn)  # type: ignore[arg-type]
            request = spec.request()
            fields: dict[str, dict[str, Any]] = {}
            shards: list[dict[str, Any]] = []
            writer = _ShardWriter(staging, spec)
            shard_limit = shard_megabytes * 2**20
            position = 0
            half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
            batch_iter = iter(tqdm(loader, desc="caching teacher outputs", unit="batch", total=len(batches),
                                   disable=not progress))
            for window in windows:
                done: list[tuple[list[int], dict[str, np.ndarray], list[int]]] = []
                for wanted in window:
                    batch = next(batch_iter)
                    indices = example_indices(batch)
                    inputs, _ = split_batch(batch)
                    inputs = send_to_device(inputs, device)
                    if indices is not None and indices.cpu().tolist() != wanted:
                        raise ValueError("the dataset's kd_index column is not 0..N-1 in order; build the cache "
                                         "from the dataset before shuffling or wrapping it")
                    autocast = torch.autocast(device.type, dtype=half) if half else contextlib.nullcontext()
                    with torch.no_grad(), autocast:
                        features = capture(teacher, inputs, request)
                    broken = nonfinite_teacher_fields(features)
                    if broken:
                        raise NonFiniteTeacherError(
                            f"the teacher's {', '.join(broken)} hold NaN or infinite values for examples "
                            f"{wanted[0]}..{wanted[-1]}: a cache of them would poison every step; the teacher is "
                            "broken: check its weights, or run it in float32 (cache precision fp16 overflows)")
                    rows, counts = cls._batch_rows(fields, features, attention_mask_of(inputs), spec)
                    done.append((wanted, rows, counts))
                rows, counts = _in_example_order(done, fields)
                for name, array in rows.items():
                    writer.add(name, array)
                writer.token_counts.extend(counts)
                size = sum(len(wanted) for wanted in window)
                writer.num_examples += size
                position += size
                if writer.nbytes >= shard_limit:
                    shards.append(writer.write(len(shards), position - writer.num_examples))
                    writer = _ShardWriter(staging, spec)
            if writer.num_examples:
                shards.append(writer.write(len(shards), position - writer.num_examples))
            manifest = {
                "format": FORMAT_VERSION,
                "fingerprint": fingerprint,
                "parts": parts,
                "spec": asdict(spec),
                "num_examples": position,
                "fields": fields,
                "shards": shards,
                "complete": True,
            }
            # the manifest is written last: a folder without one is never taken for a cache
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
            _replace_folder(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @staticmethod
    def _batch_rows(fields: dict[str, dict[str, Any]], features: Features, mask: Tensor | None,
                    spec: CacheSpec) -> tuple[dict[str, np.ndarray], list[int]]:
        """The stored rows of one batch (per-token fields: only real tokens, flattened) and
        each example's token count (empty without per-token fields); registers new fields."""
        per_token_rows: dict[str, Tensor] = {}
        per_example_rows: dict[str, Tensor] = {}
        logits = features.logits
        if logits is not None and (spec.logits or spec.top_k):
            target = per_token_rows if logits.dim() == 3 else per_example_rows
            if spec.top_k:
                k = min(spec.top_k, logits.shape[-1])
                log_probs = torch.log_softmax(logits.float() / spec.temperature, dim=-1)
                values, indices = log_probs.topk(k, dim=-1)
                kept = torch.logsumexp(values, dim=-1).clamp(max=0.0)
                target["topk_logprobs"] = values
                target["topk_indices"] = indices.to(torch.int32 if logits.shape[-1] < 2**31 else torch.int64)
                rest = torch.log(-torch.expm1(kept))  # log(1 - kept mass)
                if k == logits.shape[-1]:
                    rest = torch.full_like(rest, float("-inf"))  # nothing is left out; the rest is rounding
                target["topk_rest"] = rest
            else:
                target["logits"] = logits
        for layer in spec.hidden_states:
            per_token_rows[f"hidden.{layer}"] = features.hidden_states[layer]
        counts: list[int] = []
        if per_token_rows:
            first = next(iter(per_token_rows.values()))
            keep = mask.bool() if mask is not None else torch.ones(first.shape[:2], dtype=torch.bool, device=first.device)
            counts = keep.sum(dim=1).tolist()
            per_token_rows = {name: value[keep] for name, value in per_token_rows.items()}
        out: dict[str, np.ndarray] = {}
        for per_token, rows in ((True, per_token_rows), (False, per_example_rows)):
            for name, value in rows.items():
                is_float = value.is_floating_point()
                array = _to_storage(value, spec.dtype) if is_float and name != "topk_rest" else (
                    value.detach().float().cpu().numpy() if is_float else value.detach().cpu().numpy())
                fields.setdefault(name, {
                    "per_token": per_token,
                    "row_shape": list(array.shape[1:]),
                    "storage": spec.dtype if is_float and name != "topk_rest" else str(array.dtype),
                })
                out[name] = array
        return out, counts

    # -- opening ------------------------------------------------------------

    @classmethod
    def open(cls, folder: str | os.PathLike[str], fingerprint: str | None = None, verify: bool = True) -> TeacherCache:
        """Open a complete cache; raise :class:`CacheError` if it is missing, incomplete,
        damaged (a shard's size or SHA-256 differs) or, given ``fingerprint``, built for other inputs."""
        folder = Path(folder)
        manifest_path = folder / MANIFEST
        if not manifest_path.exists():
            raise CacheError(f"no complete teacher cache at {folder} (manifest.json is missing)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as error:
            raise CacheError(f"the teacher cache manifest at {manifest_path} is unreadable ({error})") from error
        if manifest.get("format") != FORMAT_VERSION or not manifest.get("complete"):
            raise CacheError(f"the teacher cache at {folder} is incomplete or from another kdistill version")
        if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
            raise CacheError(f"the teacher cache at {folder} was built for other inputs")
        for shard in manifest["shards"]:
            for name, entry in shard["files"].items():
                path = folder / entry["path"]
                if not path.exists():
                    raise CacheError(f"the teacher cache at {folder} is damaged: {entry['path']} is missing")
                if path.stat().st_size != entry["bytes"]:
                    raise CacheError(f"the teacher cache at {folder} is damaged: {entry['path']} is truncated "
                                     f"({path.stat().st_size} of {entry['bytes']} bytes)")
                if verify and file_sha256(path) != entry["sha256"]:
                    raise CacheError(f"the teacher cache at {folder} is damaged: {entry['path']} fails its checksum")
        try:
            return cls(folder, manifest)
        except (OSError, ValueError) as error:
            raise CacheError(f"the teacher cache at {folder} is damaged: {error}") from error

    # -- reading ------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.manifest["num_examples"])

    def __repr__(self) -> str:
        stored = ", ".join(self.fields)
        return f"TeacherCache({str(self.folder)!r}, examples={len(self)}, fields=[{stored}], dtype={self.spec.dtype})"

    def provides(self, request: CaptureRequest) -> str | None:
        """None if the cache holds what ``request`` asks of the teacher, else what is missing."""
        if request.logits and not (self.spec.logits or self.spec.top_k):
            return "the teacher's logits (build the cache with logits=True or top_k)"
        missing = sorted(set(request.hidden_states) - set(self.spec.hidden_states))
        if missing:
            return f"hidden states of teacher layers {missing} (the cache has {list(self.spec.hidden_states)})"
        online_only = {"attention maps": request.attentions, "attention scores": request.attention_scores,
                       "queries, keys and values": request.qkv, "module outputs": request.modules}
        for what, wanted in online_only.items():
            if wanted:
                return f"{what} (the cache stores logits and hidden states only; use online distillation)"
        return None

    def _rows(self, name: str, indices: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
        """Rows of field ``name`` for each example, and each example's token count (per-token fields)."""
        if np.any(indices < 0) or np.any(indices >= len(self)):
            raise IndexError(f"example index out of range for a cache of {len(self)} examples")
        shard_ids = np.searchsorted(self._starts, indices, side="right") - 1
        per_token = self.fields[name]["per_token"]
        rows, counts = [], []
        for index, shard_id in zip(indices.tolist(), shard_ids.tolist()):
            arrays = self._arrays[shard_id]
            local = index - int(self._starts[shard_id])
            if per_token:
                begin, end = int(arrays["offsets"][local]), int(arrays["offsets"][local + 1])
                rows.append(arrays[name][begin:end])
                counts.append(end - begin)
            else:
                rows.append(arrays[name][local])
        return rows, counts

    def _field(self, name: str, indices: np.ndarray, mask: Tensor | None, device: torch.device) -> Tensor:
        info = self.fields[name]
        rows, counts = self._rows(name, indices)
        storage = info["storage"]
        if not info["per_token"]:
            stacked = np.stack(rows)
            if storage in STORAGE_DTYPES:
                return _from_storage(stacked, storage).to(device)
            return torch.from_numpy(stacked.copy()).to(device)
        flat = np.concatenate(rows)
        values = _from_storage(flat, storage) if storage in STORAGE_DTYPES else torch.from_numpy(flat.copy())
        keep = mask.bool().cpu() if mask is not None else None
        if keep is None:
            length = max(counts)
            keep = torch.arange(length)[None, :] < torch.tensor(counts)[:, None]
        real = keep.sum(dim=1).tolist()
        if real != counts:
            bad = next(i for i, (a, b) in enumerate(zip(real, counts)) if a != b)
            raise ValueError(
                f"the teacher cache does not match this batch: example {int(indices[bad])} has {real[bad]} tokens "
                f"but the cache stored {counts[bad]}; was the tokenisation changed? Rebuild the cache"
            )
        fill = float("-inf") if name == "topk_rest" else 0
        out = torch.full((*keep.shape, *values.shape[1:]), fill, dtype=values.dtype)
        out[keep] = values
        return out.to(device)

    def features(self, indices: Tensor, attention_mask: Tensor | None = None,
                 device: torch.device | str | None = None) -> Features:
        """The teacher's :class:`Features` for a batch of example indices.

        Args:
            indices: ``(B,)`` example indices (the batch's ``kd_index``).
            attention_mask: ``(B, L)`` mask of the training batch, where per-token fields are
                scattered back (padding positions get zeros).
            device: where to put the tensors (default: that of ``attention_mask``, else CPU).
        """
        device = torch.device(device) if device is not None else (
            attention_mask.device if attention_mask is not None else torch.device("cpu"))
        index_array = indices.detach().cpu().numpy().astype(np.int64).reshape(-1)
        features = Features(attention_mask=attention_mask)
        if "logits" in self.fields:
            features.logits = self._field("logits", index_array, attention_mask, device)
        if "topk_logprobs" in self.fields:
            features.topk = TopKLogProbs(
                log_probs=self._field("topk_logprobs", index_array, attention_mask, device),
                indices=self._field("topk_indices", index_array, attention_mask, device).long(),
                rest=self._field("topk_rest", index_array, attention_mask, device),
                temperature=float(self.spec.temperature),  # type: ignore[arg-type]
            )
        for layer in self.spec.hidden_states:
            features.hidden_states[layer] = self._field(f"hidden.{layer}", index_array, attention_mask, device)
        return features


def _changed_parts(folder: Path, parts: dict[str, str]) -> str:
    """' (changed: teacher weights, dataset)' for a cache built for other inputs, else ''."""
    try:
        stored = json.loads((folder / MANIFEST).read_text()).get("parts", {})
    except (OSError, ValueError):
        return ""
    names = {"teacher": "teacher weights", "dataset": "dataset", "tokenization": "tokenisation settings",
             "spec": "what is captured"}
    changed = [names[key] for key in names if key in stored and stored[key] != parts[key]]
    return f" (changed: {', '.join(changed)})" if changed else ""


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder``'s cache (a ``.<name>.lock`` file beside it) while inside;
    a second builder waits for the first and then reads what it built."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock_file = folder.with_name(f".{folder.name}.lock")
    try:
        with exclusive_lock(lock_file, wait=False):
            yield
        return
    except FolderInUseError:
        logger.info("another process is building the teacher cache at %s; waiting for it", folder)
    with exclusive_lock(lock_file, wait=True):
        yield


_SHARD_NAME = re.compile(r"^[A-Za-z0-9_.]+\.\d{5}\.npy$")


def _marker_of(folder: Path) -> dict[str, Any] | None:
    try:
        content = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and content.get("kdistill") == "teacher-cache" else None


def _check_replaceable(folder: Path) -> None:
    """Refuse to replace ``folder`` unless it is empty or every file in it belongs to a kdistill cache.

    Raises:
        CacheFolderError: ``folder`` is a file, or holds files no cache manifest names.
    """
    if folder.is_symlink() or not folder.is_dir():
        raise CacheFolderError(f"the teacher cache folder {str(folder)!r} is a file, not a folder; give a new or "
                               "empty folder for the cache")
    entries = [entry for entry in folder.iterdir() if not is_staging_name(entry.name)]
    if not entries:
        return
    foreign = unowned_files(folder) if (folder / MANIFEST).is_file() else entries
    if foreign and _marker_of(folder) is not None:
        # a cache whose manifest is damaged: its marker still proves the folder, and a shard is
        # known by its name; anything else in it is not kdistill's
        foreign = [path for path in foreign if path.parent != folder or not _SHARD_NAME.match(path.name)
                   and path.name not in (MARKER, MANIFEST)]
    if foreign:
        names = sorted(str(path.relative_to(folder)) for path in foreign)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise CacheFolderError(
            f"the teacher cache folder {str(folder)!r} holds files that are not a kdistill teacher cache ({shown}); "
            "kdistill never empties a folder it did not write: give a new or empty folder for the cache"
        )


def check_cache_folder(folder: str | os.PathLike[str]) -> None:
    """Check, writing nothing, that ``folder`` can take a teacher cache: absent, empty, or a kdistill cache.

    Raises:
        CacheFolderError: it is a file, or holds files that are not a kdistill cache's.
    """
    folder = Path(folder)
    if folder.exists() or folder.is_symlink():
        _check_replaceable(folder)


def _replace_folder(staging: Path, folder: Path) -> None:
    """Move a complete staging folder to ``folder``, replacing an earlier cache there, with renames only."""
    if folder.exists() or folder.is_symlink():
        _check_replaceable(folder)
        trash = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, trash)
        os.replace(staging, folder)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, folder)
