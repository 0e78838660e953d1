"""Attention maps recomputed from a layer's queries and keys, and compared block by block.

``softmax(Q Kᵀ · scale + mask)`` for the layers a loss needs (:func:`attention_probs`, with a
backward pass of its own), the :class:`AttentionInputs` a map comes from, and
:func:`projected_maps_mse`, which compares two models' maps block by block without holding them.
:mod:`kdistill.models.anatomy` finds the projections; this module does the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "BLOCK_BYTES",
    "HOLD_MAPS_UP_TO_BYTES",
    "AttentionInputs",
    "additive_mask",
    "attention_probs",
    "attention_scores",
    "map_blocks",
    "projected_maps_mse",
    "split_heads",
]


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
                f"attention_mask must have shape (B, {length}) to match the sequence, got "
                f"{tuple(attention_mask.shape)}"
            )
        keep = attention_mask.to(dtype=torch.bool)[:, None, None, :]
        mask = torch.zeros(keep.shape, dtype=torch.float32, device=attention_mask.device).masked_fill(~keep, minimum)
        device = attention_mask.device
    if causal:
        future = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
        causal_mask = torch.zeros(1, 1, length, length, dtype=torch.float32, device=device).masked_fill(
            future, minimum
        )
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
                torch.bmm(
                    grad_logits, key[block].reshape(count, -1, dim), out=grad_query[block].view(count, length, dim)
                )
            if grad_key is not None:
                torch.bmm(
                    grad_logits.transpose(1, 2),
                    query[block].reshape(count, length, dim),
                    out=grad_key[block].view(count, -1, dim),
                )
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
        maps = torch.baddbmm(
            mask.expand(blocks, heads, *mask.shape[2:]).reshape(blocks * heads, *mask.shape[2:]),
            query,
            key_t,
            alpha=scaling,
        )
    else:
        maps = torch.bmm(query, key_t).mul_(scaling)
    maps = maps.view(blocks, heads, length, length)
    return maps.softmax(dim=-1) if softmax else maps


class _Target:
    """The teacher's side of :class:`_ProjectedMapsMSE`: its maps, or its query and key to compute
    them from block by block (then never held), matched to the student's heads."""

    def __init__(
        self,
        maps: Tensor | None,
        query: Tensor | None,
        key: Tensor | None,
        scaling: float,
        additive: Tensor | None,
        average: bool,
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
        ctx: Any,
        query: Tensor,
        key: Tensor,
        additive: Tensor | None,
        pair: Tensor | None,
        teacher_maps: Tensor | None,
        teacher_query: Tensor | None,
        teacher_key: Tensor | None,
        teacher_additive: Tensor | None,
        options: tuple[float, float, bool, bool, bool],
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
            torch.bmm(
                grad.transpose(1, 2),
                query[block].reshape(count, length, dim),
                out=grad_key[block].view(count, length, dim),
            )
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
