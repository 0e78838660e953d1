"""Attention maps without eager attention.

``output_attentions=True`` forces a Hugging Face model onto the slow eager attention for every
layer (with SDPA it returns nothing at all). kdistill instead hooks the query, key and value
projections of the layers a loss needs and recomputes ``softmax(Q Kᵀ · scale + mask)`` for
those layers only, while the model keeps running SDPA.

This module knows, per architecture, where layer ``i``'s projections live (an
:class:`AttentionLayout`), and does the recompute. :func:`kdistill.capture.capture` uses it.
Architectures it does not know can still be distilled on attention maps when loaded with
``attn_implementation="eager"`` (their maps then come from ``output_attentions``), or after
:func:`register_attention_layout`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "AttentionInputs",
    "AttentionLayout",
    "LayerAttention",
    "ModelDims",
    "UnsupportedArchitectureError",
    "additive_mask",
    "attention_layout",
    "attention_probs",
    "attention_scores",
    "base_model",
    "layer_attention",
    "layer_stack",
    "map_blocks",
    "model_dims",
    "model_type_of",
    "projected_maps_mse",
    "register_attention_layout",
    "split_heads",
    "supported_model_types",
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


def _unsupported_message(model: nn.Module, what: str) -> str:
    model_type = model_type_of(model)
    name = f"model type {model_type!r}" if model_type else f"{type(model).__name__} (not a Hugging Face model)"
    return (
        f"kdistill cannot recompute {what} for {name}: it knows {', '.join(supported_model_types())}. "
        f"Load the model with {EAGER_FALLBACK} (for example "
        f'AutoModel.from_pretrained(name, attn_implementation="eager"), or model.set_attn_implementation("eager")) '
        "so that attention probabilities come from output_attentions, or describe its layers with "
        "kdistill.attention.register_attention_layout()"
    )


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


def _config_int(config: Any, names: Iterable[str]) -> int | None:
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
    num_layers = _config_int(config, ("num_hidden_layers", "n_layers", "num_layers"))
    hidden_size = _config_int(config, ("hidden_size", "dim", "d_model"))
    if num_layers is None or hidden_size is None:
        raise TypeError(
            f"cannot read the depth and width of {type(model).__name__} from its config "
            "(num_hidden_layers/hidden_size); give them explicitly"
        )
    return ModelDims(num_layers, hidden_size, _config_int(config, ("num_attention_heads", "n_heads", "num_heads")))


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
        raise UnsupportedArchitectureError(_unsupported_message(model, "attention maps"))
    stack = layout.find_layers(model)
    if stack is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no layer list at {' or '.join(layout.layers)}, where kdistill's layout for "
            f"{model_type_of(model)!r} expects it; " + _unsupported_message(model, "attention maps")
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
                    + _unsupported_message(model, "attention maps")
                )
            projections.append(hit)
        (query_path, query), (_, key), (_, value) = projections
        attention_module = layer.get_submodule(query_path.rsplit(".", 1)[0]) if "." in query_path else layer
        num_heads = _config_int(attention_module, ("num_attention_heads", "n_heads", "num_heads"))
        if num_heads is None:
            num_heads = model_dims(model).num_heads
        if num_heads is None or query.out_features % num_heads:
            raise UnsupportedArchitectureError(
                f"cannot tell the head count of layer {index} of {type(model).__name__}; "
                + _unsupported_message(model, "attention maps")
            )
        scaling = getattr(attention_module, "scaling", None)
        if not isinstance(scaling, float):
            scaling = (query.out_features // num_heads) ** -0.5
        found[index] = LayerAttention(query, key, value, num_heads, scaling, causal)  # type: ignore[arg-type]
    return found


# ---------------------------------------------------------------------------
# the recompute
# ---------------------------------------------------------------------------


def split_heads(projected: Tensor, num_heads: int) -> Tensor:
    """Split a projection's output ``(B, L, heads · d)`` into ``(B, heads, L, d)``."""
    batch, length, width = projected.shape
    if width % num_heads:
        raise ValueError(f"a width of {width} does not split into {num_heads} heads")
    return projected.view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def additive_mask(
    attention_mask: Tensor | None, length: int, *, causal: bool = False, device: torch.device | None = None
) -> Tensor | None:
    """The float32 mask added to attention scores: 0 where attending is allowed, a very large
    negative number elsewhere (the finite minimum, as Transformers' eager attention uses, so that a
    row with no allowed key gives a uniform distribution instead of NaN).

    Args:
        attention_mask: ``(B, L)``, 1 for real tokens and 0 for padding; None for no padding.
        length: the sequence length ``L``.
        causal: also forbid attending to later positions.
        device: where to build the mask when ``attention_mask`` is None.

    Returns:
        ``(B, 1, 1, L)`` (padding only), ``(B or 1, 1, L, L)`` (causal), or None (nothing masked).
    """
    minimum = torch.finfo(torch.float32).min
    mask: Tensor | None = None
    if attention_mask is not None:
        if attention_mask.dim() != 2 or attention_mask.shape[1] != length:
            raise ValueError(
                f"attention_mask must have shape (B, {length}) to match the sequence, got {tuple(attention_mask.shape)}"
            )
        keep = attention_mask.to(dtype=torch.bool)[:, None, None, :]
        mask = torch.zeros(keep.shape, dtype=torch.float32, device=attention_mask.device).masked_fill(~keep, minimum)
        device = attention_mask.device
    if causal:
        future = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
        causal_mask = torch.zeros(1, 1, length, length, dtype=torch.float32, device=device).masked_fill(future, minimum)
        # adding two minima would overflow to -inf; take the smaller instead
        mask = causal_mask if mask is None else torch.minimum(mask, causal_mask)
    return mask


def attention_scores(query: Tensor, key: Tensor, scaling: float) -> Tensor:
    """Pre-softmax attention scores ``Q Kᵀ · scaling``, without any mask, in float32.

    Args:
        query: ``(B, heads, L, d)``.
        key: ``(B, heads, L, d)``.
        scaling: usually ``d ** -0.5``.

    Returns:
        ``(B, heads, L, L)``.
    """
    with torch.autocast(query.device.type, enabled=False):
        return torch.matmul(query.float() * scaling, key.float().transpose(-1, -2))


#: bytes of one block of attention maps processed at a time. Blocks stay well under the C
#: allocator's largest reuse threshold (32 MiB for glibc), so their buffers come from its free
#: lists instead of fresh page-faulting memory without growing its heap much, and are large
#: enough to keep the number of kernels small (measured: 8 and 16 MiB alike, 24 MiB +200 MiB RSS).
BLOCK_BYTES = 16 * 2**20


#: a loss works from the student's queries and keys without holding its attention maps (and
#: recomputes them block by block in the backward pass) when one layer's maps would take more
#: than this; smaller maps are cheaper to keep than to recompute
HOLD_MAPS_UP_TO_BYTES = 32 * 2**20


def map_blocks(num_maps: int, map_elements: int, element_size: int = 4) -> list[slice]:
    """Split ``num_maps`` maps of ``map_elements`` elements into blocks of about :data:`BLOCK_BYTES`."""
    per_block = max(1, BLOCK_BYTES // max(1, map_elements * element_size))
    return [slice(start, min(start + per_block, num_maps)) for start in range(0, num_maps, per_block)]


def _softmax_backward(grad: Tensor, probs: Tensor) -> Tensor:
    """Gradient of the logits of a softmax over the last dimension: ``P ⊙ (G − Σ_k G ⊙ P)``."""
    return torch._softmax_backward_data(grad, probs, -1, probs.dtype)


class _AttentionProbs(torch.autograd.Function):
    """``softmax(Q Kᵀ · scaling + mask)`` for ``(B, h, L, d)`` queries and keys.

    The (B, h, L, L) maps dominate the cost. They are computed block by block over the batch
    into one output buffer, and the backward pass works block by block too, so no map-sized
    temporary is ever allocated. Saves the query, key and probabilities (which the loss holds anyway).
    """

    @staticmethod
    def forward(ctx: Any, query: Tensor, key: Tensor, scaling: float, mask: Tensor | None) -> Tensor:
        batch, heads, length, _ = query.shape
        probs = query.new_empty(batch, heads, length, key.shape[2])
        for block in map_blocks(batch, heads * length * key.shape[2]):
            probs[block] = _block_maps(query[block], key[block], scaling, _rows(mask, block), softmax=True)
        ctx.save_for_backward(query, key, probs)
        ctx.scaling = scaling
        return probs

    @staticmethod
    def backward(ctx: Any, grad_probs: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        query, key, probs = ctx.saved_tensors
        batch, heads, length, dim = query.shape
        grad_query = torch.empty_like(query) if ctx.needs_input_grad[0] else None
        grad_key = torch.empty_like(key) if ctx.needs_input_grad[1] else None
        for block in map_blocks(batch, heads * length * key.shape[2]):
            grad_logits = _softmax_backward(grad_probs[block], probs[block]).view(-1, length, key.shape[2])
            count = grad_logits.shape[0]
            if grad_query is not None:
                torch.bmm(grad_logits, key[block].reshape(count, -1, dim), out=grad_query[block].view(count, length, dim))
            if grad_key is not None:
                torch.bmm(grad_logits.transpose(1, 2), query[block].reshape(count, length, dim), out=grad_key[block].view(count, -1, dim))
        for grad in (grad_query, grad_key):
            if grad is not None:
                grad.mul_(ctx.scaling)
        return grad_query, grad_key, None, None


def attention_probs(
    query: Tensor, key: Tensor, scaling: float, mask: Tensor | None = None, scores: Tensor | None = None
) -> Tensor:
    """Attention probabilities ``softmax(Q Kᵀ · scaling + mask)`` in float32.

    Args:
        query: ``(B, heads, L, d)``.
        key: ``(B, heads, L, d)``.
        scaling: usually ``d ** -0.5``.
        mask: additive mask from :func:`additive_mask`, or None.
        scores: the unmasked scores if already computed (saves a matmul).

    Returns:
        ``(B, heads, L, L)``; each row sums to 1.
    """
    with torch.autocast(query.device.type, enabled=False):
        if scores is not None:
            logits = scores if mask is None else scores + mask
            return logits.softmax(dim=-1)
        return _AttentionProbs.apply(query.float().contiguous(), key.float().contiguous(), scaling, mask)


@dataclass(frozen=True)
class AttentionInputs:
    """What one layer's attention maps are computed from: ``softmax(Q Kᵀ · scaling + mask)``.

    :func:`~kdistill.capture.capture` keeps these for the layers whose maps were asked for; a loss
    can compute from them block by block without ever holding the ``(B, heads, L, L)`` maps.

    Attributes:
        query: ``(B, heads, L, d)``.
        key: ``(B, heads, L, d)``.
        scaling: factor applied to ``Q Kᵀ``.
        mask: additive float32 mask from :func:`additive_mask`, or None.
    """

    query: Tensor
    key: Tensor
    scaling: float
    mask: Tensor | None = None

    def probs(self) -> Tensor:
        """The attention probabilities ``(B, heads, L, L)`` in float32."""
        return attention_probs(self.query, self.key, self.scaling, self.mask)

    def scores(self) -> Tensor:
        """The pre-softmax scores ``Q Kᵀ · scaling`` ``(B, heads, L, L)``, without the mask, in float32."""
        return attention_scores(self.query, self.key, self.scaling)

    @property
    def map_bytes(self) -> int:
        """The size of this layer's float32 maps ``(B, heads, L, L)``, in bytes."""
        batch, heads, length, _ = self.query.shape
        return 4 * batch * heads * length * self.key.shape[2]

    @property
    def worth_recomputing(self) -> bool:
        """Whether the maps are large enough that a loss should recompute them rather than hold them."""
        return self.map_bytes > HOLD_MAPS_UP_TO_BYTES


def _block_maps(query: Tensor, key: Tensor, scaling: float, mask: Tensor | None, softmax: bool) -> Tensor:
    """Scores (or probabilities) of a block ``(n, h, L, d)`` of queries and keys, as ``(n, h, L, L)``."""
    blocks, heads, length, dim = query.shape
    query, key_t = query.reshape(blocks * heads, length, dim), key.reshape(blocks * heads, length, dim).transpose(1, 2)
    if softmax and mask is not None:
        maps = torch.baddbmm(mask.expand(blocks, heads, *mask.shape[2:]).reshape(blocks * heads, *mask.shape[2:]),
                             query, key_t, alpha=scaling)
    else:
        maps = torch.bmm(query, key_t).mul_(scaling)
    maps = maps.view(blocks, heads, length, length)
    return maps.softmax(dim=-1) if softmax else maps


class _Target:
    """The teacher's side of :class:`_ProjectedMapsMSE`: its maps, or its query and key to compute
    them from block by block (then never held), matched to the student's heads."""

    def __init__(
        self, maps: Tensor | None, query: Tensor | None, key: Tensor | None, scaling: float,
        additive: Tensor | None, average: bool,
    ) -> None:
        self.maps, self.query, self.key, self.scaling = maps, query, key, scaling
        self.additive, self.average = additive, average

    def block(self, block: slice, softmax: bool) -> Tensor:
        if self.maps is not None:
            return self.maps[block]
        assert self.query is not None and self.key is not None
        maps = _block_maps(self.query[block], self.key[block], self.scaling, _rows(self.additive, block), softmax)
        return maps.mean(dim=1, keepdim=True) if self.average else maps


class _ProjectedMapsMSE(torch.autograd.Function):
    """``Σ m ⊙ (f(Q Kᵀ) − T)²`` with ``f`` the masked softmax (or the plain scaled scores), block by
    block over the batch, never holding the student's maps (nor the teacher's, when given as its
    query and key): the backward pass recomputes each block. Only the student's query and key get
    gradients."""

    @staticmethod
    def forward(
        ctx: Any, query: Tensor, key: Tensor, additive: Tensor | None, pair: Tensor | None,
        teacher_maps: Tensor | None, teacher_query: Tensor | None, teacher_key: Tensor | None,
        teacher_additive: Tensor | None, options: tuple[float, float, bool, bool, bool],
    ) -> Tensor:
        scaling, teacher_scaling, softmax, average_heads, average_teacher = options
        target = _Target(teacher_maps, teacher_query, teacher_key, teacher_scaling, teacher_additive, average_teacher)
        batch, heads, length, _ = query.shape
        total = query.new_zeros(())
        for block in map_blocks(batch, heads * length * length):
            maps = _block_maps(query[block], key[block], scaling, _rows(additive, block), softmax)
            if average_heads:
                maps = maps.mean(dim=1, keepdim=True)
            maps.sub_(target.block(block, softmax))
            if pair is not None:
                maps.mul_(pair[block])
            flat = maps.reshape(-1)
            total += torch.dot(flat, flat)
        ctx.save_for_backward(query, key, additive, pair, teacher_maps, teacher_query, teacher_key, teacher_additive)
        ctx.options = options
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor) -> tuple[Tensor | None, ...]:
        query, key, additive, pair, teacher_maps, teacher_query, teacher_key, teacher_additive = ctx.saved_tensors
        scaling, teacher_scaling, softmax, average_heads, average_teacher = ctx.options
        target = _Target(teacher_maps, teacher_query, teacher_key, teacher_scaling, teacher_additive, average_teacher)
        batch, heads, length, dim = query.shape
        grad_query, grad_key = torch.empty_like(query), torch.empty_like(key)
        scale = 2.0 * grad_total / (heads if average_heads else 1)
        # the pair weights and the factor of the gradient in one small (B, 1, L, L) tensor
        weights = scale if pair is None else pair * scale
        for block in map_blocks(batch, heads * length * length):
            maps = _block_maps(query[block], key[block], scaling, _rows(additive, block), softmax)
            compared = maps.mean(dim=1, keepdim=True) if average_heads else maps
            grad = torch.sub(compared, target.block(block, softmax)).mul_(weights if pair is None else weights[block])
            if average_heads:
                grad = grad.expand_as(maps).contiguous()
            if softmax:
                grad = _softmax_backward(grad, maps)
            grad = grad.view(-1, length, length)
            count = grad.shape[0]
            torch.bmm(grad, key[block].reshape(count, length, dim), out=grad_query[block].view(count, length, dim))
            torch.bmm(grad.transpose(1, 2), query[block].reshape(count, length, dim), out=grad_key[block].view(count, length, dim))
        grad_query.mul_(scaling)
        grad_key.mul_(scaling)
        return grad_query, grad_key, None, None, None, None, None, None, None


def _rows(tensor: Tensor | None, block: slice) -> Tensor | None:
    """The batch rows ``block`` of a tensor that may broadcast over the batch (first dimension 1)."""
    if tensor is None or tensor.shape[0] == 1:
        return tensor
    return tensor[block]


def projected_maps_mse(
    inputs: AttentionInputs,
    teacher: Tensor | AttentionInputs,
    pair: Tensor | None,
    *,
    softmax: bool,
    average_heads: bool,
    average_teacher: bool = False,
) -> Tensor:
    """``Σ pair ⊙ (f(Q Kᵀ) − T)²`` from a student's attention inputs, without holding its maps.

    Args:
        inputs: the student's query and key ``(B, h, L, d)``, scaling and additive mask.
        teacher: the teacher's maps ``(B, h or 1, L, L)``, already matched to the student's heads;
            or the teacher's attention inputs, from which its maps are computed block by block
            and never held.
        pair: ``(B, 1, L, L)`` 0/1 weights of the counted (query, key) pairs, or None.
        softmax: compare probabilities (True) or pre-softmax scores (False).
        average_heads: compare the student's head average instead of each head.
        average_teacher: with teacher inputs, compare against the teacher's head average.

    Returns:
        The float32 sum (not the mean) of the squared differences.
    """
    with torch.autocast(inputs.query.device.type, enabled=False):
        query = inputs.query.float().contiguous()
        key = inputs.key.float().contiguous()
        mask = None if inputs.mask is None or not softmax else inputs.mask
        weights = None if pair is None else pair.to(device=query.device, dtype=torch.float32)
        if isinstance(teacher, AttentionInputs):
            teacher_maps = None
            teacher_query = teacher.query.detach().float().contiguous()
            teacher_key = teacher.key.detach().float().contiguous()
            teacher_mask = None if teacher.mask is None or not softmax else teacher.mask
            teacher_scaling = teacher.scaling
        else:
            teacher_maps, teacher_query, teacher_key, teacher_mask = teacher.detach().float(), None, None, None
            teacher_scaling, average_teacher = 1.0, False
        options = (inputs.scaling, teacher_scaling, softmax, average_heads, average_teacher)
        return _ProjectedMapsMSE.apply(
            query, key, mask, weights, teacher_maps, teacher_query, teacher_key, teacher_mask, options
        )
