"""Where a model's parts live and how it is called: its body without the task head, its stack of
transformer layers, its sizes (:class:`ModelDims`), and per architecture where layer ``i``'s
attention projections are (an :class:`AttentionLayout`).

``output_attentions=True`` forces a Hugging Face model onto the slow eager attention for every
layer (with SDPA it returns nothing at all). kdistill instead hooks the query, key and value
projections of the layers a loss needs (found here) and recomputes ``softmax(Q Kᵀ · scale + mask)``
for those layers only (:mod:`kdistill.capture.attention_maps`), while the model keeps running SDPA.
Architectures kdistill does not know can still be distilled on attention maps when loaded with
``attn_implementation="eager"`` (their maps then come from ``output_attentions``), or after
:func:`register_attention_layout`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = [
    "AttentionLayout",
    "LayerAttention",
    "ModelDims",
    "UnsupportedArchitectureError",
    "attention_layout",
    "base_model",
    "call_model",
    "config_int",
    "layer_attention",
    "layer_stack",
    "model_dims",
    "model_type_of",
    "register_attention_layout",
    "supported_model_types",
    "unsupported_message",
]

EAGER_FALLBACK = 'attn_implementation="eager"'


class UnsupportedArchitectureError(ValueError):
    """Raised when kdistill cannot find or recompute a model's attention."""


@dataclass(frozen=True)
class AttentionLayout:
    """Where the attention projections of an encoder live.

    Paths are dotted submodule paths. Each projection lists candidates, tried in order, so that
    one layout covers renames across Transformers versions.

    Attributes:
        layers: candidate paths of the ``nn.ModuleList`` of layers, relative to the base model
            (``model.base_model`` for a Hugging Face model with a task head); a single path may be
            given as a string.
        query: candidate paths of the query ``nn.Linear``, relative to one layer.
        key: candidate paths of the key ``nn.Linear``.
        value: candidate paths of the value ``nn.Linear``.
    """

    layers: tuple[str, ...]
    query: tuple[str, ...]
    key: tuple[str, ...]
    value: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("layers", "query", "key", "value"):
            paths = getattr(self, name)
            paths = (paths,) if isinstance(paths, str) else tuple(paths)
            if not paths or not all(isinstance(path, str) and path for path in paths):
                raise ValueError(f"AttentionLayout.{name} must be one or more dotted module paths, got {paths!r}")
            object.__setattr__(self, name, paths)

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None:
        """The layer list of ``model`` (under its base model), or None where no candidate path fits."""
        body = base_model(model)
        for path in self.layers:
            try:
                stack = body.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(stack, nn.ModuleList):
                return stack
        return None


_BERT_LIKE = AttentionLayout(
    layers="encoder.layer",
    query=("attention.self.query",),
    key=("attention.self.key",),
    value=("attention.self.value",),
)
_VIT_LIKE = AttentionLayout(
    # Transformers 5 moved ViT's layers from encoder.layer to layers
    layers=("layers", "encoder.layer"),
    # Transformers 5 renamed ViT's projections from attention.attention.{query,key,value}
    query=("attention.q_proj", "attention.attention.query"),
    key=("attention.k_proj", "attention.attention.key"),
    value=("attention.v_proj", "attention.attention.value"),
)

_LAYOUTS: dict[str, AttentionLayout] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "distilbert": AttentionLayout(
        layers="transformer.layer",
        query=("attention.q_lin",),
        key=("attention.k_lin",),
        value=("attention.v_lin",),
    ),
    "vit": _VIT_LIKE,
    "deit": _VIT_LIKE,
}


def register_attention_layout(model_type: str, layout: AttentionLayout) -> None:
    """Teach kdistill where the attention projections of ``model_type`` live.

    The recompute assumes scaled dot-product self-attention over the projections' outputs with a
    padding mask on the keys (the standard encoder). Check the result against eager attention
    (``attn_implementation="eager"`` and ``output_attentions=True``) once for a new architecture.

    Args:
        model_type: ``model.config.model_type`` (``"bert"``, ``"electra"`` ...).
        layout: where the layers and their query/key/value projections are.
    """
    if not isinstance(model_type, str) or not model_type:
        raise ValueError(f"model_type must be a non-empty string such as 'electra', got {model_type!r}")
    if not isinstance(layout, AttentionLayout):
        raise TypeError(f"layout must be an AttentionLayout, got {type(layout).__name__}")
    _LAYOUTS[model_type] = layout


def supported_model_types() -> list[str]:
    """The ``config.model_type`` values whose attention maps kdistill recomputes."""
    return sorted(_LAYOUTS)


def model_type_of(model: nn.Module) -> str | None:
    """``model.config.model_type`` for a Hugging Face model, None for any other module."""
    return getattr(getattr(model, "config", None), "model_type", None)


def attention_layout(model: nn.Module) -> AttentionLayout | None:
    """The registered layout of ``model``'s architecture, or None when kdistill does not know it."""
    model_type = model_type_of(model)
    return _LAYOUTS.get(model_type) if model_type else None


def base_model(model: nn.Module) -> nn.Module:
    """The body of a Hugging Face model without its task head (``model.base_model``), else ``model``."""
    body = getattr(model, "base_model", None)
    return body if isinstance(body, nn.Module) else model


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The path (from ``model``) and the ``nn.ModuleList`` of a Hugging Face model's transformer layers.

    Uses the registered layout where there is one, else the first ``ModuleList`` whose length is
    the config's layer count; None when neither is found.
    """
    layout = attention_layout(model)
    names = {id(module): name for name, module in model.named_modules()}
    if layout is not None:
        stack = layout.find_layers(model)
        if stack is not None and id(stack) in names:
            return names[id(stack)], stack
    try:
        depth = model_dims(model).num_layers
    except TypeError:
        return None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth and depth > 0:
            return name, module
    return None


def unsupported_message(model: nn.Module, what: str) -> str:
    """Why kdistill cannot recompute ``what`` for ``model``, and the two ways out (eager attention, a layout)."""
    model_type = model_type_of(model)
    name = f"model type {model_type!r}" if model_type else f"{type(model).__name__} (not a Hugging Face model)"
    return (
        f"kdistill cannot recompute {what} for {name}: it knows {', '.join(supported_model_types())}. "
        f"Load the model with {EAGER_FALLBACK} (for example "
        f'AutoModel.from_pretrained(name, attn_implementation="eager"), or model.set_attn_implementation("eager")) '
        "so that attention probabilities come from output_attentions, or describe its layers with "
        "kdistill.models.anatomy.register_attention_layout()"
    )


def call_model(model: nn.Module, inputs: Any, **kwargs: Any) -> Any:
    """Run ``model`` on ``inputs``: a mapping as keyword arguments (Hugging Face style), a
    tuple or list as positional arguments, anything else as the single argument. ``kwargs``
    (such as ``output_hidden_states=True``) are passed on as keyword arguments."""
    if isinstance(inputs, Mapping):
        return model(**inputs, **kwargs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs, **kwargs)
    return model(inputs, **kwargs)


# ---------------------------------------------------------------------------
# model dimensions
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelDims:
    """The sizes of an encoder that layer maps and projections need.

    Attributes:
        num_layers: number of transformer layers (hidden-state indices run 0..num_layers).
        hidden_size: width of the hidden states.
        num_heads: attention heads per layer, if known.
    """

    num_layers: int
    hidden_size: int
    num_heads: int | None


def config_int(config: Any, *names: str) -> int | None:
    """The first of a config's attributes ``names`` that holds an integer (names differ across families)."""
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def model_dims(model: nn.Module) -> ModelDims:
    """Depth, width and head count of a Hugging Face model, read from its config.

    Raises:
        TypeError: ``model`` has no Hugging Face config; name its modules instead of layer indices.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(
            f"{type(model).__name__} has no Hugging Face config, so kdistill cannot tell its depth or width; "
            "name the modules to compare by path (e.g. {'layer2': 'layer3'}) and give the widths explicitly"
        )
    num_layers = config_int(config, "num_hidden_layers", "n_layers", "num_layers")
    hidden_size = config_int(config, "hidden_size", "dim", "d_model")
    if num_layers is None or hidden_size is None:
        raise TypeError(
            f"cannot read the depth and width of {type(model).__name__} from its config "
            "(num_hidden_layers/hidden_size); give them explicitly"
        )
    return ModelDims(num_layers, hidden_size, config_int(config, "num_attention_heads", "n_heads", "num_heads"))


# ---------------------------------------------------------------------------
# finding layer i's projections
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerAttention:
    """The attention projections of one layer and how to read them.

    Attributes:
        query: the query projection; its output is ``(B, L, num_heads · head_dim)``.
        key: the key projection.
        value: the value projection.
        num_heads: attention heads of the layer.
        scaling: factor applied to ``Q Kᵀ`` (``head_dim ** -0.5``).
        causal: whether each position attends only to itself and earlier positions.
    """

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    num_heads: int
    scaling: float
    causal: bool = False


def _find(layer: nn.Module, candidates: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    for path in candidates:
        try:
            return path, layer.get_submodule(path)
        except AttributeError:
            continue
    return None


def layer_attention(model: nn.Module, layers: Iterable[int]) -> dict[int, LayerAttention]:
    """The attention projections of ``layers`` (1-based: layer 1 is the first transformer layer).

    Args:
        model: an unwrapped Hugging Face model of a supported architecture.
        layers: layer indices ``1..num_layers``.

    Raises:
        UnsupportedArchitectureError: the architecture is unknown or its modules are not where
            its layout says; the message names the eager fallback.
        ValueError: a layer index outside ``1..num_layers``.
    """
    layout = attention_layout(model)
    if layout is None:
        raise UnsupportedArchitectureError(unsupported_message(model, "attention maps"))
    stack = layout.find_layers(model)
    if stack is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no layer list at {' or '.join(layout.layers)}, where kdistill's layout for "
            f"{model_type_of(model)!r} expects it; " + unsupported_message(model, "attention maps")
        )
    config = getattr(model, "config", None)
    causal = bool(getattr(config, "is_decoder", False))
    found: dict[int, LayerAttention] = {}
    for index in sorted(set(layers)):
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= len(stack):
            raise ValueError(
                f"attention layer {index!r} does not exist: {type(model).__name__} has attention layers "
                f"1..{len(stack)} (0 is the embedding output, which has no attention)"
            )
        layer = stack[index - 1]
        projections = []
        for role, candidates in (("query", layout.query), ("key", layout.key), ("value", layout.value)):
            hit = _find(layer, candidates)
            if hit is None or not isinstance(hit[1], nn.Linear):
                raise UnsupportedArchitectureError(
                    f"layer {index} of {type(model).__name__} has no {role} projection at {' or '.join(candidates)}; "
                    + unsupported_message(model, "attention maps")
                )
            projections.append(hit)
        (query_path, query), (_, key), (_, value) = projections
        attention_module = layer.get_submodule(query_path.rsplit(".", 1)[0]) if "." in query_path else layer
        num_heads = config_int(attention_module, "num_attention_heads", "n_heads", "num_heads")
        if num_heads is None:
            num_heads = model_dims(model).num_heads
        if num_heads is None or query.out_features % num_heads:
            raise UnsupportedArchitectureError(
                f"cannot tell the head count of layer {index} of {type(model).__name__}; "
                + unsupported_message(model, "attention maps")
            )
        scaling = getattr(attention_module, "scaling", None)
        if not isinstance(scaling, float):
            scaling = (query.out_features // num_heads) ** -0.5
        found[index] = LayerAttention(query, key, value, num_heads, scaling, causal)  # type: ignore[arg-type]
    return found
