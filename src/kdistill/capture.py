"""What a forward pass produced that the loss needs.

A :class:`Features` record is the common currency between models and loss terms: the
training paths run a model, turn its output into ``Features`` and hand the teacher's and the
student's records to the :class:`~kdistill.losses.objective.Objective`.

:func:`capture` collects only what a :class:`CaptureRequest` asks for, from two sources:

* Hugging Face outputs: logits, and hidden states by layer index (``output_hidden_states``);
* forward hooks: the output of any submodule by its dotted path (``"layer2"``,
  ``"bert.encoder.layer.3.output"``), so any ``nn.Module`` can be distilled, and the query/key/value
  projections of the layers whose attention is needed, from which :mod:`kdistill.attention`
  recomputes the attention maps while the model keeps its SDPA attention.

Hooks live only for the one forward pass and are removed even when it raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kdistill import attention as attn
from kdistill.attention import AttentionInputs

__all__ = [
    "AttentionInputs",
    "CaptureRequest",
    "Features",
    "LazyMaps",
    "TopKLogProbs",
    "attention_mask_of",
    "call_model",
    "capture",
    "check_capture",
    "features_from_output",
    "logits_from_output",
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
    """

    logits: bool = True
    hidden_states: frozenset[int] = frozenset()
    attentions: frozenset[int] = frozenset()
    attention_scores: frozenset[int] = frozenset()
    qkv: frozenset[int] = frozenset()
    modules: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_states", _layer_set(self.hidden_states, "hidden_states", 0))
        for name in ("attentions", "attention_scores", "qkv"):
            object.__setattr__(self, name, _layer_set(getattr(self, name), name, 1))
        if isinstance(self.modules, str) or not isinstance(self.modules, Iterable):
            raise TypeError(f"CaptureRequest.modules must be a set of module paths, got {self.modules!r}")
        modules = frozenset(self.modules)
        if any(not isinstance(path, str) or not path for path in modules):
            raise ValueError(f"CaptureRequest.modules must hold dotted module paths such as 'layer2', got {sorted(map(repr, modules))}")
        object.__setattr__(self, "modules", modules)

    def __or__(self, other: CaptureRequest) -> CaptureRequest:
        return CaptureRequest(
            logits=self.logits or other.logits,
            hidden_states=self.hidden_states | other.hidden_states,
            attentions=self.attentions | other.attentions,
            attention_scores=self.attention_scores | other.attention_scores,
            qkv=self.qkv | other.qkv,
            modules=self.modules | other.modules,
        )

    @property
    def empty(self) -> bool:
        """True when nothing at all is needed: the forward pass can be skipped."""
        return not self.logits and self.logits_only

    @property
    def logits_only(self) -> bool:
        """True when nothing but the logits is needed: a plain forward pass suffices."""
        return not (self.hidden_states or self.attentions or self.attention_scores or self.qkv or self.modules)

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


class LazyMaps(MutableMapping[int, Tensor]):
    """Layer index -> attention map, each computed on first access and then kept.

    Recomputed attention maps are ``(B, heads, L, L)``: the largest tensors of a step. Holding
    them lazily lets a loss that can work from the layer's
    :class:`~kdistill.attention.AttentionInputs` block by block skip them entirely, while any
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
        attention_inputs: layer index -> the :class:`~kdistill.attention.AttentionInputs` that
            recomputed maps come from.
        queries: layer index -> ``(B, heads, L, d)`` query projections.
        keys: layer index -> ``(B, heads, L, d)`` key projections.
        values: layer index -> ``(B, heads, L, d)`` value projections.
        modules: module path -> that module's output (its first tensor).
        attention_mask: ``(B, L)``, 1 for real tokens and 0 for padding.
        extras: anything else a custom term asked for, by name.
        output: the model's raw output (the Trainer returns it from ``compute_loss``).
        topk: a teacher's top-k distribution read from a cache, in place of ``logits``.
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

    def position_mask(self) -> Tensor | None:
        """The mask that selects counted positions of ``logits``.

        ``None`` (every row counts) for ``(B, C)`` logits; the attention mask for per-token
        ``(B, L, V)`` logits, so that padded tokens never count.
        """
        if self.logits is None or self.logits.dim() < 3 or self.attention_mask is None:
            return None
        return self.attention_mask


def call_model(model: nn.Module, inputs: Any, **kwargs: Any) -> Any:
    """Run ``model`` on ``inputs``: a mapping as keyword arguments (Hugging Face style), a
    tuple or list as positional arguments, anything else as the single argument. ``kwargs``
    (such as ``output_hidden_states=True``) are passed on as keyword arguments."""
    if isinstance(inputs, Mapping):
        return model(**inputs, **kwargs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs, **kwargs)
    return model(inputs, **kwargs)


def _find_logits(output: Any) -> Tensor | None:
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
    logits = _find_logits(output)
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


# ---------------------------------------------------------------------------
# hooks
# ---------------------------------------------------------------------------


def _first_tensor(output: Any, path: str) -> Tensor:
    """The tensor a module produced: itself, the first tensor of a tuple, or ``last_hidden_state``."""
    if isinstance(output, Tensor):
        return output
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, Tensor):
        return hidden
    values = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else ()
    for value in values:
        if isinstance(value, Tensor):
            return value
    raise TypeError(f"module {path!r} returned {type(output).__name__}, which holds no tensor to compare")


def _submodule(module: nn.Module, path: str) -> nn.Module:
    try:
        return module.get_submodule(path)
    except AttributeError:
        top = [name for name, _ in module.named_children()]
        raise ValueError(
            f"{type(module).__name__} has no submodule {path!r}; its top-level modules are {top}. "
            "Module paths are dotted names as in model.named_modules(), e.g. 'layer2' or 'bert.encoder.layer.3'"
        ) from None


@contextmanager
def _hooked(targets: Mapping[str, tuple[nn.Module, str]]) -> Iterator[dict[str, Any]]:
    """Record the output of each target module under its key for one forward pass."""
    recorded: dict[str, Any] = {}
    handles = []

    def make_hook(key: str, description: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if key in recorded:
                raise RuntimeError(
                    f"{description} ran more than once in one forward pass (shared weights?); kdistill takes one "
                    "output per module: name a module that runs once"
                )
            recorded[key] = output

        return hook

    try:
        for key, (module, description) in targets.items():
            handles.append(module.register_forward_hook(make_hook(key, description)))
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------------------
# capture
# ---------------------------------------------------------------------------


def _check_differentiable(targets: Mapping[str, tuple[nn.Module, str]], recorded: Mapping[str, Any]) -> None:
    """Refuse hooked outputs of trainable modules that carry no gradient.

    Reentrant gradient checkpointing runs the checkpointed layers without autograd and recomputes
    them in the backward pass, so what a hook saw there cannot train the model: a loss on it
    would silently teach nothing.
    """
    for key, (target, description) in targets.items():
        value = recorded.get(key)
        tensor = value if isinstance(value, Tensor) else None
        if tensor is None and value is not None:
            try:
                tensor = _first_tensor(value, description)
            except TypeError:
                continue
        trainable = any(p.requires_grad for p in target.parameters())
        if tensor is not None and trainable and tensor.is_floating_point() and not tensor.requires_grad:
            raise ValueError(
                f"{description} ran without autograd although it has trainable weights, so a loss on it could "
                "not train the model; this happens under reentrant gradient checkpointing: turn it on with "
                "{'use_reentrant': False}, e.g. model.activation_checkpointing_enable({'use_reentrant': False}) "
                "(before Transformers 5: model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=...))"
            )


def _is_hf(module: nn.Module) -> bool:
    return attn.model_type_of(module) is not None


def _eager_attention(module: nn.Module) -> bool:
    config = getattr(module, "config", None)
    return getattr(config, "_attn_implementation", None) == "eager"


def _check_hidden_states(module: nn.Module) -> None:
    if not _is_hf(module):
        raise ValueError(
            f"hidden states by layer index need a Hugging Face model; {type(module).__name__} is not one. "
            "Name the modules whose outputs to compare instead (e.g. {'layer2': 'layer3'})"
        )


def _attention_plan(module: nn.Module, request: CaptureRequest) -> tuple[dict[int, attn.LayerAttention], bool]:
    """The layers whose query/key projections are hooked, and whether the maps come from
    ``output_attentions`` instead (an unknown architecture running eager attention).

    Raises:
        UnsupportedArchitectureError: the attention the request needs cannot be had from this model.
    """
    if not request.attention_layers:
        return {}, False
    if attn.attention_layout(module) is not None:
        return attn.layer_attention(module, request.attention_layers), False
    if request.attention_scores or request.qkv or not _eager_attention(module):
        what = "attention scores or query/key/value projections" if request.attention_scores or request.qkv else "attention maps"
        message = attn._unsupported_message(module, what)
        if request.attention_scores or request.qkv:
            message += (
                "; note that eager attention yields probabilities only: compare probabilities "
                "(e.g. AttentionMSE(..., on='probs')) for such a model"
            )
        raise attn.UnsupportedArchitectureError(message)
    return {}, True


def check_capture(module: nn.Module, request: CaptureRequest) -> None:
    """Raise the error :func:`capture` would raise for ``request`` on ``module``, without running it:
    hidden states from a model that is not a Hugging Face one, attention from an architecture
    kdistill cannot read it from, a layer or module that does not exist.

    Raises:
        ValueError: as :func:`capture` (``UnsupportedArchitectureError`` for the attention).
    """
    if request.hidden_states:
        _check_hidden_states(module)
    for path in sorted(request.modules):
        _submodule(module, path)
    _attention_plan(module, request)


def capture(model: nn.Module, inputs: Any, request: CaptureRequest | None = None, *, module: nn.Module | None = None) -> Features:
    """Run ``model`` on ``inputs`` and collect what ``request`` asks for.

    Hidden states by index come from the Hugging Face output (``output_hidden_states=True``);
    module outputs and attention projections come from forward hooks on ``module``. Attention
    probabilities and scores of the requested layers are recomputed from the hooked query and key
    projections and the attention mask (see :mod:`kdistill.attention`), so the model keeps its SDPA
    attention. For an architecture kdistill does not know, attention probabilities come from
    ``output_attentions`` if the model runs eager attention.

    Args:
        model: the callable to run (possibly wrapped, e.g. by DDP).
        inputs: model inputs (see :func:`call_model`).
        request: what to collect; default: logits only.
        module: the unwrapped model, on which hooks are registered; default ``model``.

    Returns:
        :class:`Features` with the requested fields and the attention mask of ``inputs``.

    Raises:
        ValueError: a requested layer or module does not exist, or the architecture's attention
            cannot be recomputed (the message names the ``attn_implementation="eager"`` fallback).
    """
    request = request or CaptureRequest()
    if request.logits_only:
        return features_from_output(call_model(model, inputs), attention_mask_of(inputs))
    module = model if module is None else module
    attention_mask = attention_mask_of(inputs)

    call_kwargs: dict[str, Any] = {}
    if request.hidden_states:
        _check_hidden_states(module)
        call_kwargs["output_hidden_states"] = True

    targets: dict[str, tuple[nn.Module, str]] = {
        f"module:{path}": (_submodule(module, path), f"module {path!r}") for path in sorted(request.modules)
    }
    layer_specs, eager_maps = _attention_plan(module, request)
    if eager_maps:
        call_kwargs["output_attentions"] = True
    for layer, spec in layer_specs.items():
        targets[f"query:{layer}"] = (spec.query, f"the query projection of layer {layer}")
        targets[f"key:{layer}"] = (spec.key, f"the key projection of layer {layer}")
        if layer in request.qkv:
            targets[f"value:{layer}"] = (spec.value, f"the value projection of layer {layer}")

    with _hooked(targets) as recorded:
        output = call_model(model, inputs, **call_kwargs)
    if torch.is_grad_enabled():
        _check_differentiable(targets, recorded)

    features = Features(logits=_find_logits(output), attention_mask=attention_mask, output=output)
    if request.logits and features.logits is None:
        logits_from_output(output)  # raises the explanatory error
    for path in request.modules:
        if f"module:{path}" not in recorded:
            raise ValueError(f"module {path!r} did not run during the forward pass, so it has no output to compare")
        features.modules[path] = _first_tensor(recorded[f"module:{path}"], path)
    if request.hidden_states:
        features.hidden_states = _select_layers(output, "hidden_states", request.hidden_states, offset=0)
    if call_kwargs.get("output_attentions"):
        features.attentions = _select_layers(output, "attentions", request.attentions, offset=1)
    if layer_specs:
        _recompute_attention(features, recorded, layer_specs, request, attention_mask)
    return features


def _select_layers(output: Any, kind: str, layers: frozenset[int], offset: int) -> dict[int, Tensor]:
    found = getattr(output, kind, None)
    if not isinstance(found, (tuple, list)) or not found:
        raise ValueError(
            f"the model returned no {kind}; kdistill asked for them with output_{kind}=True, which this model "
            "ignores: name the modules to compare by path instead"
        )
    available = range(offset, len(found) + offset)
    missing = sorted(layer for layer in layers if layer not in available)
    if missing:
        kind_name = "hidden states" if kind == "hidden_states" else "attention maps"
        raise ValueError(
            f"the model has no {kind_name} for layers {missing}: valid layers are {available.start}.."
            f"{available.stop - 1}" + (" (0 is the embedding output)" if offset == 0 else "")
        )
    return {layer: found[layer - offset] for layer in sorted(layers)}


def _recompute_attention(
    features: Features,
    recorded: Mapping[str, Any],
    layer_specs: Mapping[int, attn.LayerAttention],
    request: CaptureRequest,
    attention_mask: Tensor | None,
) -> None:
    masks: dict[bool, Tensor | None] = {}
    probs: dict[int, Callable[[], Tensor]] = {}
    scores: dict[int, Callable[[], Tensor]] = {}
    for layer, spec in sorted(layer_specs.items()):
        if f"query:{layer}" not in recorded or f"key:{layer}" not in recorded:
            raise ValueError(f"the attention projections of layer {layer} did not run during the forward pass")
        query = attn.split_heads(recorded[f"query:{layer}"], spec.num_heads)
        key = attn.split_heads(recorded[f"key:{layer}"], spec.num_heads)
        if layer in request.attentions or layer in request.attention_scores:
            if spec.causal not in masks:
                masks[spec.causal] = attn.additive_mask(
                    attention_mask, query.shape[2], causal=spec.causal, device=query.device
                )
            inputs = AttentionInputs(query, key, spec.scaling, masks[spec.causal])
            features.attention_inputs[layer] = inputs
            if layer in request.attentions:
                probs[layer] = inputs.probs
            if layer in request.attention_scores:
                scores[layer] = inputs.scores
        if layer in request.qkv:
            features.queries[layer] = query
            features.keys[layer] = key
            features.values[layer] = attn.split_heads(recorded[f"value:{layer}"], spec.num_heads)
    # the maps are computed when a loss reads them: one that works from attention_inputs never does
    features.attentions = LazyMaps(probs)
    features.attention_scores = LazyMaps(scores)
