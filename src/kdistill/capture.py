"""What a forward pass produced that the loss needs.

A :class:`Features` record is the common currency between models and loss terms: the
training paths run a model, turn its output into ``Features`` and hand the teacher's and the
student's records to the :class:`~kdistill.losses.objective.Objective`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

__all__ = [
    "CaptureRequest",
    "Features",
    "attention_mask_of",
    "call_model",
    "capture",
    "features_from_output",
    "logits_from_output",
]


@dataclass(frozen=True)
class CaptureRequest:
    """What a loss needs from one model's forward pass.

    Layer indices follow :class:`Features`: 0 is the embedding output, ``i`` the output of layer ``i``.
    Requests combine with ``|`` (the objective asks for the union of its terms' requests).

    Attributes:
        logits: the model's logits.
        hidden_states: layers whose hidden states are needed.
        attentions: layers whose attention probabilities are needed.
    """

    logits: bool = True
    hidden_states: frozenset[int] = frozenset()
    attentions: frozenset[int] = frozenset()

    def __or__(self, other: CaptureRequest) -> CaptureRequest:
        return CaptureRequest(
            logits=self.logits or other.logits,
            hidden_states=self.hidden_states | other.hidden_states,
            attentions=self.attentions | other.attentions,
        )

    @property
    def empty(self) -> bool:
        """True when nothing at all is needed: the forward pass can be skipped."""
        return not self.logits and self.logits_only

    @property
    def logits_only(self) -> bool:
        """True when nothing but the logits is needed: a plain forward pass suffices."""
        return not (self.hidden_states or self.attentions)


@dataclass
class Features:
    """Tensors captured from one forward pass.

    Attributes:
        logits: ``(B, C)`` for sequence/image classification or ``(B, L, V)`` per token.
        hidden_states: layer index -> ``(B, L, H)``; index 0 is the embedding output and
            ``i`` the output of layer ``i`` (Hugging Face's ``hidden_states`` convention).
        attentions: layer index -> ``(B, heads, L, L)`` attention probabilities.
        attention_mask: ``(B, L)``, 1 for real tokens and 0 for padding.
        extras: anything else a custom term asked for, by name.
        output: the model's raw output (the Trainer returns it from ``compute_loss``).
    """

    logits: Tensor | None = None
    hidden_states: dict[int, Tensor] = field(default_factory=dict)
    attentions: dict[int, Tensor] = field(default_factory=dict)
    attention_mask: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    output: Any = None

    def position_mask(self) -> Tensor | None:
        """The mask that selects counted positions of ``logits``.

        ``None`` (every row counts) for ``(B, C)`` logits; the attention mask for per-token
        ``(B, L, V)`` logits, so that padded tokens never count.
        """
        if self.logits is None or self.logits.dim() < 3 or self.attention_mask is None:
            return None
        return self.attention_mask


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Run ``model`` on ``inputs``: a mapping as keyword arguments (Hugging Face style), a
    tuple or list as positional arguments, anything else as the single argument."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def logits_from_output(output: Any) -> Tensor:
    """Find the logits in a model's output.

    Accepts a tensor, a Hugging Face ``ModelOutput`` or mapping with ``logits``, or a tuple
    whose first element is the logits.
    """
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, Sequence) and len(output) > 0 and isinstance(output[0], Tensor):
        logits = output[0]
    if not isinstance(logits, Tensor):
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



def capture(model: nn.Module, inputs: Any, request: CaptureRequest | None = None, *, module: nn.Module | None = None) -> Features:
    """Run ``model`` on ``inputs`` and collect what ``request`` asks for.

    Args:
        model: the callable to run (possibly wrapped, e.g. by DDP).
        inputs: model inputs (see :func:`call_model`).
        request: what to collect; default: logits only.
        module: the unwrapped model, for configuration look-ups; default ``model``.

    Returns:
        :class:`Features` with the requested fields and the attention mask of ``inputs``.
    """
    request = request or CaptureRequest()
    if request.logits_only:
        return features_from_output(call_model(model, inputs), attention_mask_of(inputs))
    if not isinstance(inputs, Mapping):
        raise ValueError(
            "hidden states and attention maps can only be captured from Hugging Face-style models called "
            "with keyword inputs (a dict batch)"
        )
    output = model(**inputs, output_hidden_states=bool(request.hidden_states), output_attentions=bool(request.attentions))
    features = features_from_output(output, attention_mask_of(inputs))
    for kind, layers in (("hidden_states", request.hidden_states), ("attentions", request.attentions)):
        available = getattr(features, kind)
        missing = sorted(set(layers) - set(available))
        if missing:
            raise ValueError(f"the model returned no {kind} for layers {missing}; it has layers {sorted(available)}")
        setattr(features, kind, {layer: available[layer] for layer in layers})
    return features
