"""The :class:`TeacherCache`: built once over a dataset, verified on opening, read per batch."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import send_to_device
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from kdistill.cache.folder import build_lock, changed_parts, check_replaceable, replace_folder
from kdistill.cache.keys import (
    FORMAT_VERSION,
    MANIFEST,
    MARKER,
    STORAGE_DTYPES,
    CacheError,
    CacheSpec,
    cache_key,
    cache_manifest,
    manifest_spec,
)
from kdistill.cache.sampling import head_log_probs, samples_from_hidden
from kdistill.cache.shards import (
    ShardWriter,
    check_layout,
    check_shard_arrays,
    from_storage,
    in_example_order,
    length_sorted_windows,
    to_storage,
)
from kdistill.capture import CaptureRequest, Features, SampledLogProbs, TopKLogProbs, attention_mask_of, capture
from kdistill.capture.features import nonfinite_teacher_fields
from kdistill.data.batch import example_indices, split_batch
from kdistill.errors import NonFiniteTeacherError
from kdistill.files.ownership import file_sha256

logger = logging.getLogger("kdistill.cache")


#: the per-token fields that hold token ids (checked against the vocabulary on opening)
_ID_FIELDS = ("topk_indices", "sample_indices")


def _compact_ids(indices: Tensor, vocab_size: int) -> np.ndarray:
    """Top-k or sampled ids in the narrowest unsigned type that holds every id of the vocabulary: 16
    bits for vocabularies up to 65,536 (chosen by the vocabulary, not the batch, so that every batch
    and shard of a cache has the dtype its manifest records)."""
    return indices.detach().cpu().numpy().astype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def _topk_from_hidden(features: Features, keep: Tensor, spec: CacheSpec) -> dict[str, Tensor]:
    """The top-k log-probabilities, ids and rest mass of each kept token, computed chunk by chunk from the
    final hidden states and the output layer (a causal LM's logits are never held whole)."""
    assert spec.top_k is not None
    values, ids, rests = [], [], []
    for log_probs in head_log_probs(features, keep, spec):
        vocab = log_probs.shape[-1]
        k = min(spec.top_k, vocab)
        top, index = log_probs.topk(k, dim=-1)
        kept = torch.logsumexp(top, dim=-1).clamp(max=0.0)
        rest = torch.log(-torch.expm1(kept)) if k < vocab else torch.full_like(kept, float("-inf"))
        values.append(top), ids.append(index), rests.append(rest)
    return {"topk_logprobs": torch.cat(values), "topk_indices": torch.cat(ids), "topk_rest": torch.cat(rests)}


class TeacherCache:
    """A teacher's outputs over a dataset, stored on disk and read back per batch.

    Build (or reuse) one with :meth:`build`; the training paths then take it as
    ``teacher_cache=`` and read the rows of each batch's example indices (see
    :func:`kdistill.data.batch.with_example_index`).

    Example:
        >>> cache = TeacherCache.build(teacher, train_dataset, "runs/cache", collate_fn=collator)  # doctest: +SKIP
        >>> distill(None, student, loader, teacher_cache=cache)  # doctest: +SKIP
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], spec: CacheSpec) -> None:
        """A cache over the files of ``folder`` (use :meth:`open`, which checks them first)."""
        self.folder = folder
        self.manifest = manifest
        self.spec = spec
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
        if (folder.exists() or folder.is_symlink()) and not (
            (folder / MARKER).is_file() or (folder / MANIFEST).is_file()
        ):
            check_replaceable(folder)  # before the lock file is made beside it: refuse a user's folder untouched
        with build_lock(folder):
            if folder.exists():
                try:
                    cache = cls.open(folder, fingerprint=fingerprint)
                    logger.info("reusing the teacher cache at %s", folder)
                    return cache
                except CacheError as error:
                    check_replaceable(folder)
                    logger.warning("%s%s; rebuilding it", error, changed_parts(folder, parts))
            cls._write(
                teacher,
                dataset,
                folder,
                spec,
                fingerprint,
                parts,
                batch_size,
                collate_fn,
                device,
                precision,
                shard_megabytes,
                progress,
            )
            return cls.open(folder, fingerprint=fingerprint)

    @classmethod
    def _write(
        cls,
        teacher: nn.Module,
        dataset: Any,
        folder: Path,
        spec: CacheSpec,
        fingerprint: str,
        parts: dict[str, str],
        batch_size: int,
        collate_fn: Callable | None,
        device: Any,
        precision: str,
        shard_megabytes: float,
        progress: bool,
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
            windows = length_sorted_windows(len(dataset), getattr(dataset, "lengths", None), batch_size)
            batches = [batch for window in windows for batch in window]
            loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_fn)  # type: ignore[arg-type]
            request = spec.request()
            fields: dict[str, dict[str, Any]] = {}
            shards: list[dict[str, Any]] = []
            writer = ShardWriter(staging, spec)
            shard_limit = shard_megabytes * 2**20
            position = 0
            half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
            batch_iter = iter(
                tqdm(loader, desc="caching teacher outputs", unit="batch", total=len(batches), disable=not progress)
            )
            for window in windows:
                done: list[tuple[list[int], dict[str, np.ndarray], list[int]]] = []
                for wanted in window:
                    rows, counts = cls._teacher_rows(
                        teacher, next(batch_iter), wanted, request, device, half, fields, spec
                    )
                    done.append((wanted, rows, counts))
                rows, counts = in_example_order(done, fields)
                for name, array in rows.items():
                    writer.add(name, array)
                writer.token_counts.extend(counts)
                size = sum(len(wanted) for wanted in window)
                writer.num_examples += size
                position += size
                if writer.nbytes >= shard_limit:
                    shards.append(writer.write(len(shards), position - writer.num_examples))
                    writer = ShardWriter(staging, spec)
            if writer.num_examples:
                shards.append(writer.write(len(shards), position - writer.num_examples))
            manifest = cache_manifest(fingerprint, parts, spec, position, fields, shards)
            # the manifest is written last: a folder without one is never taken for a cache
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
            replace_folder(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @classmethod
    def _teacher_rows(
        cls,
        teacher: nn.Module,
        batch: Any,
        wanted: list[int],
        request: CaptureRequest,
        device: torch.device,
        half: torch.dtype | None,
        fields: dict[str, dict[str, Any]],
        spec: CacheSpec,
    ) -> tuple[dict[str, np.ndarray], list[int]]:
        """Run the teacher on the batch of examples ``wanted``; the rows to store and each
        example's token count (see :meth:`_batch_rows`)."""
        indices = example_indices(batch)
        inputs, _ = split_batch(batch)
        inputs = send_to_device(inputs, device)
        if indices is not None and indices.cpu().tolist() != wanted:
            raise ValueError(
                "the dataset's kd_index column is not 0..N-1 in order; build the cache "
                "from the dataset before shuffling or wrapping it"
            )
        autocast = torch.autocast(device.type, dtype=half) if half else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            features = capture(teacher, inputs, request)
        broken = nonfinite_teacher_fields(features)
        if broken:
            raise NonFiniteTeacherError(
                f"the teacher's {', '.join(broken)} hold NaN or infinite values for examples "
                f"{wanted[0]}..{wanted[-1]}: a cache of them would poison every step; the teacher is "
                "broken: check its weights, or run it in float32 (cache precision fp16 overflows)"
            )
        return cls._batch_rows(fields, features, attention_mask_of(inputs), spec, wanted)

    @staticmethod
    def _batch_rows(
        fields: dict[str, dict[str, Any]],
        features: Features,
        mask: Tensor | None,
        spec: CacheSpec,
        examples: list[int],
    ) -> tuple[dict[str, np.ndarray], list[int]]:
        """The stored rows of one batch of the dataset's ``examples`` (per-token fields: only real
        tokens, flattened) and each example's token count (empty without per-token fields);
        registers new fields."""
        per_token_rows: dict[str, Tensor] = {}
        per_example_rows: dict[str, Tensor] = {}
        # a from_hidden cache computes its top-k below; the logits a causal LM returns then are empty
        logits = None if spec.from_hidden else features.logits
        vocab_size = 0  # the ids a top-k is drawn from: the top-k ids are checked against it on opening
        if spec.top_k and logits is not None:
            vocab_size = int(logits.shape[-1])
        elif spec.from_hidden and features.output_layer is not None:
            vocab_size = int(features.output_layer.weight[: spec.vocab_size].shape[0])
        if logits is not None and (spec.logits or spec.top_k):
            target = per_token_rows if logits.dim() == 3 else per_example_rows
            if spec.top_k:
                k = min(spec.top_k, logits.shape[-1])
                log_probs = torch.log_softmax(logits.float() / spec.temperature, dim=-1)
                values, indices = log_probs.topk(k, dim=-1)
                kept = torch.logsumexp(values, dim=-1).clamp(max=0.0)
                target["topk_logprobs"] = values
                target["topk_indices"] = indices
                rest = torch.log(-torch.expm1(kept))  # log(1 - kept mass)
                if k == logits.shape[-1]:
                    rest = torch.full_like(rest, float("-inf"))  # nothing is left out; the rest is rounding
                target["topk_rest"] = rest
            else:
                target["logits"] = logits
        for layer in spec.hidden_states:
            per_token_rows[f"hidden.{layer}"] = features.hidden_states[layer]
        counts: list[int] = []
        if per_token_rows or spec.from_hidden:
            first = features.final_hidden if spec.from_hidden else next(iter(per_token_rows.values()))
            keep = (
                mask.bool() if mask is not None else torch.ones(first.shape[:2], dtype=torch.bool, device=first.device)
            )
            counts = keep.sum(dim=1).tolist()
            per_token_rows = {name: value[keep] for name, value in per_token_rows.items()}
            if spec.from_hidden and spec.samples:
                per_token_rows.update(samples_from_hidden(features, keep, spec, examples))
            elif spec.from_hidden:
                per_token_rows.update(_topk_from_hidden(features, keep, spec))
        out: dict[str, np.ndarray] = {}
        for per_token, rows in ((True, per_token_rows), (False, per_example_rows)):
            for name, value in rows.items():
                is_float = value.is_floating_point()
                if name in _ID_FIELDS:
                    array = _compact_ids(value, vocab_size)
                elif name == "sample_counts":
                    array = value.detach().cpu().numpy().astype(np.uint8)  # at most MAX_SAMPLES = 255
                elif is_float and name != "topk_rest":
                    array = to_storage(value, spec.dtype)
                else:
                    array = value.detach().float().cpu().numpy() if is_float else value.detach().cpu().numpy()
                info = {
                    "per_token": per_token,
                    "row_shape": list(array.shape[1:]),
                    "storage": spec.dtype if is_float and name != "topk_rest" else str(array.dtype),
                }
                if name in _ID_FIELDS:
                    info["vocab_size"] = vocab_size
                if name == "sample_counts":
                    info["samples"] = spec.samples  # what every stored token's counts sum to (checked on opening)
                fields.setdefault(name, info)
                out[name] = array
        return out, counts

    # -- opening ------------------------------------------------------------

    @classmethod
    def open(cls, folder: str | os.PathLike[str], fingerprint: str | None = None, verify: bool = True) -> TeacherCache:
        """Open a complete cache; raise :class:`CacheError` if it is missing, incomplete, damaged
        or, given ``fingerprint``, built for other inputs.

        Damaged: a manifest that is not the one kdistill wrote (its fingerprint is not that of its
        own parts, or its shards do not cover the examples one after another), a shard whose size or
        SHA-256 differs from the manifest's, or whose dtype, shape or offsets disagree with it, or
        top-k or sampled ids past the vocabulary, or sampled counts that do not add up to the draws.
        ``verify=False`` skips what reads every byte (the SHA-256 and the scan of the ids and counts);
        the sizes, shapes and offsets are checked all the same.
        """
        folder = Path(folder)
        manifest_path = folder / MANIFEST
        if not manifest_path.exists():
            raise CacheError(f"no complete teacher cache at {folder} (manifest.json is missing)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as error:
            raise CacheError(f"the teacher cache manifest at {manifest_path} is unreadable ({error})") from error
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION or not manifest.get("complete"):
            raise CacheError(f"the teacher cache at {folder} is incomplete or from another kdistill version")
        if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
            raise CacheError(f"the teacher cache at {folder} was built for other inputs")
        try:
            spec = manifest_spec(manifest)
            check_layout(manifest)
        except (TypeError, ValueError) as error:
            raise CacheError(f"the teacher cache at {folder} is damaged: manifest.json {error}") from error
        for shard in manifest["shards"]:
            for _name, entry in shard["files"].items():
                path = folder / entry["path"]
                if not path.exists():
                    raise CacheError(f"the teacher cache at {folder} is damaged: {entry['path']} is missing")
                if path.stat().st_size != entry["bytes"]:
                    raise CacheError(
                        f"the teacher cache at {folder} is damaged: {entry['path']} is truncated "
                        f"({path.stat().st_size} of {entry['bytes']} bytes)"
                    )
                if verify and file_sha256(path) != entry["sha256"]:
                    raise CacheError(f"the teacher cache at {folder} is damaged: {entry['path']} fails its checksum")
        try:
            cache = cls(folder, manifest, spec)
            check_shard_arrays(cache.fields, manifest["shards"], cache._arrays, scan=verify)
        except (OSError, ValueError) as error:
            raise CacheError(f"the teacher cache at {folder} is damaged: {error}") from error
        return cache

    # -- reading ------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.manifest["num_examples"])

    def __repr__(self) -> str:
        stored = ", ".join(self.fields)
        return f"TeacherCache({str(self.folder)!r}, examples={len(self)}, fields=[{stored}], dtype={self.spec.dtype})"

    def provides(self, request: CaptureRequest) -> str | None:
        """None if the cache holds what ``request`` asks of the teacher, else what is missing."""
        if request.final_hidden and not ((self.spec.top_k or self.spec.samples) and self.spec.from_hidden):
            return "the teacher's next-token distributions (build the cache with top_k or samples, and from_hidden)"
        if request.logits and self.spec.samples:
            return "the teacher's logits (a sampled cache holds ids drawn per token, for token_kd's forward_kl)"
        if request.logits and not (self.spec.logits or self.spec.top_k):
            return "the teacher's logits (build the cache with logits=True or top_k)"
        missing = sorted(set(request.hidden_states) - set(self.spec.hidden_states))
        if missing:
            return f"hidden states of teacher layers {missing} (the cache has {list(self.spec.hidden_states)})"
        online_only = {
            "attention maps": request.attentions,
            "attention scores": request.attention_scores,
            "queries, keys and values": request.qkv,
            "module outputs": request.modules,
        }
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
                return from_storage(stacked, storage).to(device)
            return torch.from_numpy(stacked.copy()).to(device)
        flat = np.concatenate(rows)
        if storage in STORAGE_DTYPES:
            values = from_storage(flat, storage)
        else:
            # ids kept as unsigned 16 bits where the vocabulary fits (counts as 8): widened to int64 on reading
            values = torch.from_numpy(flat.astype(np.int64) if flat.dtype.kind == "u" else flat.copy())
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

    def features(
        self, indices: Tensor, attention_mask: Tensor | None = None, device: torch.device | str | None = None
    ) -> Features:
        """The teacher's :class:`Features` for a batch of example indices.

        Args:
            indices: ``(B,)`` example indices (the batch's ``kd_index``).
            attention_mask: ``(B, L)`` mask of the training batch, where per-token fields are
                scattered back (padding positions get zeros).
            device: where to put the tensors (default: that of ``attention_mask``, else CPU).
        """
        device = (
            torch.device(device)
            if device is not None
            else (attention_mask.device if attention_mask is not None else torch.device("cpu"))
        )
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
        if "sample_indices" in self.fields:
            features.sampled = SampledLogProbs(
                indices=self._field("sample_indices", index_array, attention_mask, device),
                counts=self._field("sample_counts", index_array, attention_mask, device),
                log_probs=self._field("sample_logprobs", index_array, attention_mask, device),
                temperature=float(self.spec.temperature),  # type: ignore[arg-type]
                samples=int(self.spec.samples),  # type: ignore[arg-type]
            )
        for layer in self.spec.hidden_states:
            features.hidden_states[layer] = self._field(f"hidden.{layer}", index_array, attention_mask, device)
        return features
