"""What a teacher cache stores (:class:`CacheSpec`), its errors, the fingerprints that key it (the
teacher's weights, the dataset's content and order, the tokenisation and what is stored), and its
manifest, whose fingerprint must be that of its own parts when it is read back."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdistill.capture import CaptureRequest
from kdistill.errors import KdistillError
from kdistill.losses.functional import check_temperature

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: written first into every cache folder: the cache's identity (a folder without it is not a cache)
MARKER = ".kdistill-cache.json"
#: storage precisions and the numpy dtype of their files (bf16 is kept as its raw 16 bits)
STORAGE_DTYPES = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}
#: the most draws per token of a sampled cache: each id's count is stored in 8 bits
MAX_SAMPLES = 255


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
        samples: instead of full logits or a top-k, N ids drawn i.i.d. per token from the teacher's
            distribution at ``temperature`` (1 to :data:`MAX_SAMPLES`; ``from_hidden`` only): the
            distinct ids drawn, how often each was drawn and their log-probabilities (random-sampling
            KD, see :func:`kdistill.losses.tokens.token_loss_sampled`). Draws are seeded per example.
        temperature: the temperature of the stored top-k or sampled log-probabilities (the rest
            mass, or the distribution drawn from, at another temperature cannot be recovered).
        dtype: storage precision of floating-point fields: ``fp32``, ``fp16`` or ``bf16``.
        from_hidden: compute the top-k per token from the teacher's final hidden states and output
            layer, chunk by chunk (causal LMs: a batch's full logits are never held).
        vocab_size: with ``from_hidden``, the distribution over the first ``vocab_size`` ids only
            (the ids a student with a smaller padded head shares with the teacher); None: all.
    """

    logits: bool = True
    hidden_states: tuple[int, ...] = ()
    top_k: int | None = None
    temperature: float | None = None
    dtype: str = "fp32"
    from_hidden: bool = False
    vocab_size: int | None = None
    samples: int | None = None

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
        if self.samples is not None:
            if isinstance(self.samples, bool) or not isinstance(self.samples, int):
                raise ValueError(f"samples must be an integer from 1 to {MAX_SAMPLES}, got {self.samples!r}")
            if not 1 <= self.samples <= MAX_SAMPLES:
                raise ValueError(
                    f"samples must be from 1 to {MAX_SAMPLES} (each id's count is stored in 8 bits), "
                    f"got {self.samples}"
                )
            if self.top_k is not None:
                raise ValueError("give top_k or samples, not both: a cache keeps a token's top k or its draws")
            if not self.from_hidden:
                raise ValueError("a sampled cache is drawn per token of a causal LM: give from_hidden=True")
            if self.temperature is None:
                raise ValueError("a sampled cache needs the temperature of the loss that will read it (e.g. 1.0)")
            check_temperature(self.temperature)
            if self.logits:
                object.__setattr__(self, "logits", False)  # the draws replace the full logits
        object.__setattr__(self, "hidden_states", tuple(sorted(set(self.hidden_states))))
        if self.from_hidden and self.top_k is None and self.samples is None:
            raise ValueError("from_hidden computes a top-k or sampled cache: give top_k or samples too")
        if self.vocab_size is not None and (not self.from_hidden or self.vocab_size < 1):
            raise ValueError(f"vocab_size must be a positive id count of a from_hidden cache, got {self.vocab_size!r}")
        if not (self.logits or self.top_k or self.samples or self.hidden_states):
            raise ValueError("the cache spec stores nothing: enable logits, top_k, samples or hidden_states")

    def request(self) -> CaptureRequest:
        """What the teacher's forward pass must produce to fill this cache."""
        return CaptureRequest(
            logits=self.logits or (self.top_k is not None and not self.from_hidden),
            hidden_states=frozenset(self.hidden_states),
            final_hidden=self.from_hidden,
        )


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


def cache_key(
    teacher: nn.Module, dataset: Any, spec: CacheSpec | None = None, tokenization: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, str]]:
    """The fingerprint of a cache of ``teacher`` over ``dataset``, and the hash of each of its parts.

    The parts (teacher weights, dataset content and order, tokenisation settings, what is
    stored) let a rebuild say which of them changed.
    """
    parts = {
        "teacher": fingerprint_teacher(teacher),
        "dataset": fingerprint_dataset(dataset),
        "tokenization": _hash_json(dict(tokenization or {})),
        "spec": _fingerprint_spec(spec or CacheSpec()),
    }
    return _fingerprint_of(parts), parts


def _fingerprint_of(parts: Mapping[str, str]) -> str:
    """The fingerprint :func:`cache_key` gives a cache whose parts hash to ``parts``: a manifest's
    fingerprint must be that of its own parts (a manifest edited by hand is not)."""
    return _hash_json({"format": FORMAT_VERSION, **parts})


def _fingerprint_spec(spec: CacheSpec) -> str:
    """The hash of what ``spec`` stores, as the ``spec`` part of :func:`cache_key`."""
    return _hash_json(_spec_key(spec))


def _spec_key(spec: CacheSpec) -> dict[str, Any]:
    """What is stored, as the key sees it: ``from_hidden`` only where set, so that the keys of caches
    built before it existed stay valid."""
    fields = _spec_record(spec)
    if not fields["from_hidden"]:
        del fields["from_hidden"]
    return fields


def _spec_record(spec: CacheSpec) -> dict[str, Any]:
    """The spec as its manifest records it: ``samples`` only in a sampled cache, so that the
    manifests and keys of the other caches are those of kdistill before sampled caches."""
    fields = asdict(spec)
    if fields["samples"] is None:
        del fields["samples"]
    return fields


def _hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------
# the manifest
# ---------------------------------------------------------------------------


def cache_manifest(
    fingerprint: str,
    parts: dict[str, str],
    spec: CacheSpec,
    num_examples: int,
    fields: dict[str, dict[str, Any]],
    shards: list[dict[str, Any]],
) -> dict[str, Any]:
    """The manifest of a complete cache: its key, what it stores and where."""
    return {
        "format": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "parts": parts,
        "spec": _spec_record(spec),
        "num_examples": num_examples,
        "fields": fields,
        "shards": shards,
        "complete": True,
    }


def manifest_spec(manifest: dict[str, Any]) -> CacheSpec:
    """The :class:`CacheSpec` a manifest records, once its fingerprint is shown to be that of its own
    parts and its spec that of its ``spec`` part (a manifest edited by hand is neither).

    Raises:
        ValueError: what is wrong, to follow "manifest.json ".
    """
    parts, stored = manifest.get("parts"), manifest.get("spec")
    if not (isinstance(parts, dict) and isinstance(stored, dict)):
        raise ValueError("lacks the parts of its fingerprint or its spec")
    if manifest.get("fingerprint") != _fingerprint_of(parts):
        raise ValueError("does not match its own fingerprint")
    try:
        spec = CacheSpec(**{**stored, "hidden_states": tuple(stored.get("hidden_states", ()))})
    except (TypeError, ValueError) as error:
        raise ValueError(f"records an impossible spec ({error})") from error
    if _fingerprint_spec(spec) != parts.get("spec"):
        raise ValueError("records a spec that does not match its fingerprint")
    return spec
