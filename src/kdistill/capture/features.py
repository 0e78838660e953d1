"""What a forward pass produced that the loss needs: :class:`Features`, and what a loss asks for:
:class:`CaptureRequest`; reading a model's output (its logits, hidden states, attention mask).

:mod:`kdistill.capture` fills these records from a forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.capture.attention_maps import AttentionInputs

__all__ = [
    "CaptureRequest",
    "Features",
    "LazyMaps",
    "SampledLogProbs",
    "TeacherBlend",
    "TopKLogProbs",
    "attention_mask_of",
    "features_from_output",
    "find_logits",
    "logits_from_output",
    "nonfinite_teacher_fields",
]


def _layer_set(value: Iterable[int], name: str, minimum: int) -> frozenset[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"CaptureRequest.{name} must be a set of layer indices, got {value!r}")
    layers = frozenset(value)
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < minimum:
            raise ValueError(f"CaptureRequest.{name} holds {layer!r}; layer indices are integers >= {minimum}")
    return layers


@dataclass(frozen=True)
class CaptureRequest:
    """What a loss needs from one model's forward pass.

    Layer indices follow :class:`Features`: 0 is the embedding output, ``i`` the output of layer ``i``
    (attention layers start at 1). Requests combine with ``|`` (the objective asks for the union of
    its terms' requests). Any iterable given for a set field is stored as a ``frozenset``.

    Attributes:
        logits: the model's logits.
        hidden_states: layers whose hidden states are needed (Hugging Face models).
        attentions: layers whose attention probabilities are needed.
        attention_scores: layers whose pre-softmax attention scores ``Q Kᵀ/√d`` are needed.
        qkv: layers whose query, key and value projections are needed (relation losses).
        modules: dotted paths of submodules whose outputs are needed (any ``nn.Module``).
        final_hidden: the final hidden states (after the last norm) and the output layer, from
            which token-level losses compute the logits chunk by chunk instead of holding them.
    """

    logits: bool = True
    hidden_states: frozenset[int] = frozenset()
    attentions: frozenset[int] = frozenset()
    attention_scores: frozenset[int] = frozenset()
    qkv: frozenset[int] = frozenset()
    modules: frozenset[str] = frozenset()
    final_hidden: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_states", _layer_set(self.hidden_states, "hidden_states", 0))
        for name in ("attentions", "attention_scores", "qkv"):
            object.__setattr__(self, name, _layer_set(getattr(self, name), name, 1))
        if isinstance(self.modules, str) or not isinstance(self.modules, Iterable):
            raise TypeError(f"CaptureRequest.modules must be a set of module paths, got {self.modules!r}")
        modules = frozenset(self.modules)
        if any(not isinstance(path, str) or not path for path in modules):
            raise ValueError(
                "CaptureRequest.modules must hold dotted module paths such as 'layer2', got "
                f"{sorted(map(repr, modules))}"
            )
        object.__setattr__(self, "modules", modules)

    def __or__(self, other: CaptureRequest) -> CaptureRequest:
        return CaptureRequest(
            logits=self.logits or other.logits,
            hidden_states=self.hidden_states | other.hidden_states,
            attentions=self.attentions | other.attentions,
            attention_scores=self.attention_scores | other.attention_scores,
            qkv=self.qkv | other.qkv,
            modules=self.modules | other.modules,
            final_hidden=self.final_hidden or other.final_hidden,
        )

    @property
    def empty(self) -> bool:
        """True when nothing at all is needed: the forward pass can be skipped."""
        return not self.logits and self.logits_only

    @property
    def logits_only(self) -> bool:
        """True when nothing but the logits is needed: a plain forward pass suffices."""
        return not (
            self.hidden_states
            or self.attentions
            or self.attention_scores
            or self.qkv
            or self.modules
            or self.final_hidden
        )

    @property
    def attention_layers(self) -> frozenset[int]:
        """Layers whose query/key projections must be hooked."""
        return self.attentions | self.attention_scores | self.qkv


@dataclass
class TopKLogProbs:
    """A teacher's distribution kept as its k most probable entries plus the rest of the mass.

    Attributes:
        log_probs: ``(..., k)`` log-probabilities at ``temperature`` of the top-k entries.
        indices: ``(..., k)`` their class or vocabulary ids.
        rest: ``(...)`` log of the probability mass outside the top k (``-inf`` when none).
        temperature: the temperature the log-probabilities were computed at.
    """

    log_probs: Tensor
    indices: Tensor
    rest: Tensor
    temperature: float


@dataclass
class SampledLogProbs:
    """A teacher's distribution kept as ``samples`` ids drawn from it, counted, per position.

    Attributes:
        indices: ``(..., W)`` the distinct ids drawn, ``W = min(samples, vocabulary)``; slots past
            the distinct ids repeat one of them with count 0.
        counts: ``(..., W)`` int64: how often each was drawn; they sum to ``samples`` at every
            stored position (0 at padding).
        log_probs: ``(..., W)`` the teacher's log-probabilities of those ids at ``temperature``.
        temperature: the temperature of the distribution the ids were drawn from.
        samples: the draws per position, N.
    """

    indices: Tensor
    counts: Tensor
    log_probs: Tensor
    temperature: float
    samples: int


@dataclass
class TeacherBlend:
    """Several teachers' final hidden states and output layers, and how much each counts where:
    a combined token-level target whose logits are computed chunk by chunk, never whole.

    Attributes:
        members: each teacher's :class:`Features` (with ``final_hidden`` and ``output_layer``), or
            None for a teacher absent from the batch (its weight is 0 everywhere).
        weights: ``(n, B, L)`` each teacher's weight at each position; they sum to 1 over teachers.
        combine: ``logit_mean`` averages logits; any other rule mixes probabilities
            (:mod:`kdistill.losses.combine`).
    """

    members: list[Features | None]
    weights: Tensor
    combine: str


class LazyMaps(MutableMapping[int, Tensor]):
    """Layer index -> attention map, each computed on first access and then kept.

    Recomputed attention maps are ``(B, heads, L, L)``: the largest tensors of a step. Holding
    them lazily lets a loss that can work from the layer's
    :class:`~kdistill.models.anatomy.AttentionInputs` block by block skip them entirely, while any
    other reader gets a plain tensor.
    """

    def __init__(self, pending: Mapping[int, Callable[[], Tensor]] | None = None) -> None:
        self._maps: dict[int, Tensor] = {}
        self._pending: dict[int, Callable[[], Tensor]] = dict(pending or {})

    def __getitem__(self, layer: int) -> Tensor:
        if layer not in self._maps:
            compute = self._pending.pop(layer)  # KeyError for an unknown layer, as a dict
            self._maps[layer] = compute()
        return self._maps[layer]

    def __setitem__(self, layer: int, value: Tensor) -> None:
        self._pending.pop(layer, None)
        self._maps[layer] = value

    def __delitem__(self, layer: int) -> None:
        if layer in self._maps:
            del self._maps[layer]
        else:
            del self._pending[layer]

    def __contains__(self, layer: object) -> bool:
        return layer in self._maps or layer in self._pending

    def __iter__(self) -> Iterator[int]:
        return iter(sorted({*self._maps, *self._pending}))

    def __len__(self) -> int:
        return len({*self._maps, *self._pending})

    def is_computed(self, layer: int) -> bool:
        """Whether the map of ``layer`` has been computed (or was given) already."""
        return layer in self._maps

    def __repr__(self) -> str:
        states = ", ".join(f"{layer}: {'computed' if layer in self._maps else 'pending'}" for layer in self)
        return f"LazyMaps({{{states}}})"


@dataclass
class Features:
    """Tensors captured from one forward pass.

    Attributes:
        logits: ``(B, C)`` for sequence/image classification or ``(B, L, V)`` per token.
        hidden_states: layer index -> ``(B, L, H)``; index 0 is the embedding output and
            ``i`` the output of layer ``i`` (Hugging Face's ``hidden_states`` convention).
        attentions: layer index -> ``(B, heads, L, L)`` attention probabilities (float32);
            recomputed maps are a :class:`LazyMaps`, computed when first read.
        attention_scores: layer index -> ``(B, heads, L, L)`` pre-softmax scores ``Q Kᵀ/√d``,
            without the padding mask (float32); lazy like ``attentions``.
        attention_inputs: layer index -> the :class:`~kdistill.models.anatomy.AttentionInputs` that
            recomputed maps come from.
        queries: layer index -> ``(B, heads, L, d)`` query projections.
        keys: layer index -> ``(B, heads, L, d)`` key projections.
        values: layer index -> ``(B, heads, L, d)`` value projections.
        modules: module path -> that module's output (its first tensor).
        attention_mask: ``(B, L)``, 1 for real tokens and 0 for padding.
        extras: anything else a custom term asked for, by name.
        output: the model's raw output (the Trainer returns it from ``compute_loss``).
        topk: a teacher's top-k distribution read from a cache, in place of ``logits``.
        sampled: a teacher's distribution as ids drawn from it, read from a sampled cache.
        final_hidden: ``(B, L, H)`` the final hidden states, the output layer's input.
        output_layer: the output layer (``lm_head``) that turns ``final_hidden`` into logits.
        blend: several teachers' heads combined into one token-level target (:class:`TeacherBlend`).
    """

    logits: Tensor | None = None
    hidden_states: dict[int, Tensor] = field(default_factory=dict)
    attentions: MutableMapping[int, Tensor] = field(default_factory=dict)
    attention_scores: MutableMapping[int, Tensor] = field(default_factory=dict)
    attention_inputs: dict[int, AttentionInputs] = field(default_factory=dict)
    queries: dict[int, Tensor] = field(default_factory=dict)
    keys: dict[int, Tensor] = field(default_factory=dict)
    values: dict[int, Tensor] = field(default_factory=dict)
    modules: dict[str, Tensor] = field(default_factory=dict)
    attention_mask: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    topk: TopKLogProbs | None = None
    sampled: SampledLogProbs | None = None
    final_hidden: Tensor | None = None
    output_layer: nn.Module | None = None
    blend: TeacherBlend | None = None

    def position_mask(self) -> Tensor | None:
        """The mask that selects counted positions of ``logits``.

        ``None`` (every row counts) for ``(B, C)`` logits; the attention mask for per-token
        ``(B, L, V)`` logits, so that padded tokens never count.
        """
        if self.logits is None or self.logits.dim() < 3 or self.attention_mask is None:
            return None
        return self.attention_mask


def find_logits(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, Sequence) and len(output) > 0 and isinstance(output[0], Tensor):
        logits = output[0]
    return logits if isinstance(logits, Tensor) else None


def logits_from_output(output: Any) -> Tensor:
    """Find the logits in a model's output.

    Accepts a tensor, a Hugging Face ``ModelOutput`` or mapping with ``logits``, or a tuple
    whose first element is the logits.
    """
    logits = find_logits(output)
    if logits is None:
        raise TypeError(
            f"cannot find logits in a model output of type {type(output).__name__}: a model must return a "
            "tensor, an object with a .logits attribute (Hugging Face), or a tuple whose first item is the logits"
        )
    return logits


def features_from_output(output: Any, attention_mask: Tensor | None = None) -> Features:
    """Build :class:`Features` from a model output (logits only; hidden states where present)."""
    features = Features(logits=logits_from_output(output), attention_mask=attention_mask, output=output)
    hidden_states = getattr(output, "hidden_states", None)
    if isinstance(hidden_states, (tuple, list)):
        features.hidden_states = dict(enumerate(hidden_states))
    attentions = getattr(output, "attentions", None)
    if isinstance(attentions, (tuple, list)):
        # HF counts attentions from the first layer; kdistill numbers layers from 1 (0 = embeddings)
        features.attentions = {i + 1: a for i, a in enumerate(attentions)}
    return features


def attention_mask_of(inputs: Any) -> Tensor | None:
    """The ``attention_mask`` of Hugging Face-style keyword inputs, if any."""
    if isinstance(inputs, Mapping):
        mask = inputs.get("attention_mask")
        return mask if isinstance(mask, Tensor) else None
    return None


def nonfinite_teacher_fields(features: Features) -> list[str]:
    """Names of the teacher's fields that hold NaN or +/-infinity (top-k rest may be -inf: no mass left).

    Only called once a loss has gone non-finite, to say whether the teacher is the cause: it
    reads every tensor, which a training step should not pay for.
    """
    found = []
    if features.logits is not None and not bool(torch.isfinite(features.logits).all()):
        found.append("logits")
    if features.topk is not None and not bool(torch.isfinite(features.topk.log_probs).all()):
        found.append("top-k log-probabilities")
    if features.sampled is not None and not bool(torch.isfinite(features.sampled.log_probs).all()):
        found.append("log-probabilities of the sampled ids")
    for layer, states in features.hidden_states.items():
        if not bool(torch.isfinite(states).all()):
            found.append(f"hidden states of layer {layer}")
    return found
