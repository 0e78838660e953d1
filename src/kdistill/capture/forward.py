"""What a forward pass produced that the loss needs.

A :class:`Features` record is the common currency between models and loss terms: the
training paths run a model, turn its output into ``Features`` and hand the teacher's and the
student's records to the :class:`~kdistill.losses.objective.Objective`.

:func:`capture` collects only what a :class:`CaptureRequest` asks for, from two sources:

* Hugging Face outputs: logits, and hidden states by layer index (``output_hidden_states``);
* forward hooks: the output of any submodule by its dotted path (``"layer2"``,
  ``"bert.encoder.layer.3.output"``), so any ``nn.Module`` can be distilled, and the query/key/value
  projections of the layers whose attention is needed, from which :mod:`kdistill.capture.attention_maps`
  recomputes the attention maps while the model keeps its SDPA attention.

Hooks live only for the one forward pass and are removed even when it raises.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.capture import attention_maps as maps
from kdistill.capture.attention_maps import AttentionInputs
from kdistill.capture.features import (
    CaptureRequest,
    Features,
    LazyMaps,
    attention_mask_of,
    features_from_output,
    find_logits,
    logits_from_output,
)
from kdistill.models import anatomy
from kdistill.models.anatomy import call_model

__all__ = ["capture", "check_capture"]


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
    return anatomy.model_type_of(module) is not None


def _eager_attention(module: nn.Module) -> bool:
    config = getattr(module, "config", None)
    return getattr(config, "_attn_implementation", None) == "eager"


def _check_hidden_states(module: nn.Module) -> None:
    if not _is_hf(module):
        raise ValueError(
            f"hidden states by layer index need a Hugging Face model; {type(module).__name__} is not one. "
            "Name the modules whose outputs to compare instead (e.g. {'layer2': 'layer3'})"
        )


def _attention_plan(module: nn.Module, request: CaptureRequest) -> tuple[dict[int, anatomy.LayerAttention], bool]:
    """The layers whose query/key projections are hooked, and whether the maps come from
    ``output_attentions`` instead (an unknown architecture running eager attention).

    Raises:
        UnsupportedArchitectureError: the attention the request needs cannot be had from this model.
    """
    if not request.attention_layers:
        return {}, False
    if anatomy.attention_layout(module) is not None:
        return anatomy.layer_attention(module, request.attention_layers), False
    if request.attention_scores or request.qkv or not _eager_attention(module):
        what = (
            "attention scores or query/key/value projections"
            if request.attention_scores or request.qkv
            else "attention maps"
        )
        message = anatomy.unsupported_message(module, what)
        if request.attention_scores or request.qkv:
            message += (
                "; note that eager attention yields probabilities only: compare probabilities "
                "(e.g. AttentionMSE(..., on='probs')) for such a model"
            )
        raise anatomy.UnsupportedArchitectureError(message)
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
    if request.final_hidden:
        _check_final_hidden(module)
    for path in sorted(request.modules):
        _submodule(module, path)
    _attention_plan(module, request)


def capture(
    model: nn.Module, inputs: Any, request: CaptureRequest | None = None, *, module: nn.Module | None = None
) -> Features:
    """Run ``model`` on ``inputs`` and collect what ``request`` asks for.

    Hidden states by index come from the Hugging Face output (``output_hidden_states=True``);
    module outputs and attention projections come from forward hooks on ``module``. Attention
    probabilities and scores of the requested layers are recomputed from the hooked query and key
    projections and the attention mask (see :mod:`kdistill.models.anatomy`), so the model keeps its SDPA
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
    if request.hidden_states or request.final_hidden:
        _check_hidden_states(module)
        call_kwargs["output_hidden_states"] = True
    if request.final_hidden and not request.logits and _keeps_logits(module):
        # no position's logits: the loss computes them in chunks from the final hidden states
        call_kwargs["logits_to_keep"] = torch.zeros(0, dtype=torch.long)

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

    features = Features(logits=find_logits(output), attention_mask=attention_mask, output=output)
    if request.logits and features.logits is None:
        logits_from_output(output)  # raises the explanatory error
    for path in request.modules:
        if f"module:{path}" not in recorded:
            raise ValueError(f"module {path!r} did not run during the forward pass, so it has no output to compare")
        features.modules[path] = _first_tensor(recorded[f"module:{path}"], path)
    if request.hidden_states:
        features.hidden_states = _select_layers(output, "hidden_states", request.hidden_states, offset=0)
    if request.final_hidden:
        features.final_hidden, features.output_layer = _final_hidden(output, module)
    if call_kwargs.get("output_attentions"):
        features.attentions = _select_layers(output, "attentions", request.attentions, offset=1)
    if layer_specs:
        _recompute_attention(features, recorded, layer_specs, request, attention_mask)
    return features


def _keeps_logits(module: nn.Module) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (Hugging Face causal LMs do)."""
    return "logits_to_keep" in inspect.signature(module.forward).parameters


#: config attributes of families whose logits are not ``head(final_hidden)`` alone (Gemma 2's tanh
#: soft-capping, Cohere's scale): the chunked token loss would compute other logits than the model's
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _check_final_hidden(module: nn.Module) -> None:
    _check_hidden_states(module)
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"{type(module).__name__} has no linear output layer (get_output_embeddings): token-level "
            "terms need a Hugging Face causal LM"
        )
    config = getattr(module, "config", None)
    transforms = [name for name in _LOGIT_TRANSFORMS if getattr(config, name, None) not in (None, 1, 1.0)]
    if transforms:
        raise ValueError(
            f"{type(module).__name__} transforms its logits ({', '.join(transforms)}), which the "
            "chunked token loss does not reproduce; use a model whose logits are its output layer's"
        )


def _final_hidden(output: Any, module: nn.Module) -> tuple[Tensor, nn.Module]:
    """The last of the output's hidden states (after the final norm: what the output layer reads) and
    the output layer."""
    states = getattr(output, "hidden_states", None)
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    if not isinstance(states, (tuple, list)) or not states or not isinstance(head, nn.Linear):
        raise ValueError(
            f"{type(module).__name__} gives no final hidden states and output layer (get_output_embeddings): "
            "token-level terms need a Hugging Face causal LM"
        )
    return states[-1], head


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
    layer_specs: Mapping[int, anatomy.LayerAttention],
    request: CaptureRequest,
    attention_mask: Tensor | None,
) -> None:
    masks: dict[bool, Tensor | None] = {}
    probs: dict[int, Callable[[], Tensor]] = {}
    scores: dict[int, Callable[[], Tensor]] = {}
    for layer, spec in sorted(layer_specs.items()):
        if f"query:{layer}" not in recorded or f"key:{layer}" not in recorded:
            raise ValueError(f"the attention projections of layer {layer} did not run during the forward pass")
        query = maps.split_heads(recorded[f"query:{layer}"], spec.num_heads)
        key = maps.split_heads(recorded[f"key:{layer}"], spec.num_heads)
        if layer in request.attentions or layer in request.attention_scores:
            if spec.causal not in masks:
                masks[spec.causal] = maps.additive_mask(
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
            features.values[layer] = maps.split_heads(recorded[f"value:{layer}"], spec.num_heads)
    # the maps are computed when a loss reads them: one that works from attention_inputs never does
    features.attentions = LazyMaps(probs)
    features.attention_scores = LazyMaps(scores)
