"""Pure loss functions of intermediate layers: hidden states, attention maps, self-attention relations.

They follow the contract of :mod:`kdistill.losses.functional` (float32, clear ``ValueError``s)
with a ``(B, L)`` padding mask: padded positions contribute nothing and do not count in the
mean, so padding a batch further never changes a loss. :mod:`kdistill.losses.functional`
exports them too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.capture.attention_maps import AttentionInputs, map_blocks, projected_maps_mse
from kdistill.losses.reduction import masked_mean, position_weights

__all__ = [
    "HEAD_MODES",
    "align_heads",
    "attention_kl",
    "attention_mse",
    "attention_mse_from_inputs",
    "hidden_cosine",
    "hidden_mse",
    "relation_kl",
    "relation_log_probs",
]


# ---------------------------------------------------------------------------
# intermediate layers: hidden states, attention maps, relations
# ---------------------------------------------------------------------------

#: how attention maps with different head counts are compared
HEAD_MODES = ("auto", "per_head", "average_teacher", "average_both")


def _check_states(student: Tensor, teacher: Tensor, what: str) -> None:
    for name, value in (("student", student), ("teacher", teacher)):
        if not isinstance(value, Tensor):
            raise ValueError(f"{name} {what} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() not in (2, 3):
            raise ValueError(f"{name} {what} must have shape (B, L, H) or (B, H), got {tuple(value.shape)}")
    if student.shape != teacher.shape:
        hint = ""
        if student.shape[:-1] == teacher.shape[:-1]:
            hint = " (the widths differ: project the student to the teacher's width, e.g. HiddenMSE(..., "
            "student_dim=, teacher_dim=))"
        raise ValueError(
            f"student and teacher {what} must have the same shape, got student {tuple(student.shape)} and "
            f"teacher {tuple(teacher.shape)}{hint}"
        )


def hidden_mse(student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error between hidden states, over the positions that count.

    Without a mask this equals ``F.mse_loss(student_hidden, teacher_hidden)``; with one, padded
    positions contribute nothing and do not count in the mean, so padding a batch further does
    not change the loss.

    Args:
        student_hidden: ``(B, L, H)`` or ``(B, H)``, already projected to the teacher's width.
        teacher_hidden: same shape; treated as a constant target.
        mask: optional ``(B, L)`` (or ``(B,)``), 1 for real tokens and 0 for padding.

    Returns:
        A float32 scalar: squared error averaged over the width and the counted positions.
    """
    _check_states(student_hidden, teacher_hidden, "hidden states")
    weights = position_weights(student_hidden, mask, "batch and sequence of the states")
    per_position = (student_hidden.float() - teacher_hidden.detach().float()).pow(2).mean(dim=-1)
    return masked_mean(per_position, weights)


def hidden_cosine(student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None) -> Tensor:
    """``1 − cos(student, teacher)`` per position, averaged over the positions that count.

    Compares directions only, so it is blind to the scale of the hidden states (DistilBERT's
    cosine embedding loss). Shapes and ``mask`` as in :func:`hidden_mse`.

    Returns:
        A float32 scalar in [0, 2]; 0 when every counted position points the same way.
    """
    _check_states(student_hidden, teacher_hidden, "hidden states")
    weights = position_weights(student_hidden, mask, "batch and sequence of the states")
    cosine = F.cosine_similarity(student_hidden.float(), teacher_hidden.detach().float(), dim=-1, eps=1e-8)
    return masked_mean(1.0 - cosine, weights)


def _check_maps(student: Tensor, teacher: Tensor, what: str) -> None:
    for name, value in (("student", student), ("teacher", teacher)):
        if not isinstance(value, Tensor):
            raise ValueError(f"{name} {what} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() != 4 or value.shape[-1] != value.shape[-2]:
            raise ValueError(f"{name} {what} must have shape (B, heads, L, L), got {tuple(value.shape)}")
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(
            f"student and teacher {what} must share batch and sequence sizes, got student {tuple(student.shape)} "
            f"and teacher {tuple(teacher.shape)}"
        )


def align_heads(student_maps: Tensor, teacher_maps: Tensor, heads: str = "auto") -> tuple[Tensor, Tensor]:
    """Make two stacks of per-head maps comparable.

    Args:
        student_maps: ``(B, Hs, L, L)``.
        teacher_maps: ``(B, Ht, L, L)``.
        heads: ``"per_head"`` compares head ``h`` with head ``h`` (needs ``Hs == Ht``);
            ``"average_teacher"`` compares every student head with the teacher's head average
            (the seed's way); ``"average_both"`` compares the two head averages; ``"auto"`` is
            ``"per_head"`` when the counts agree and ``"average_teacher"`` otherwise.

    Returns:
        ``(student, teacher)`` that broadcast against each other: ``(B, Hs, L, L)`` and
        ``(B, Ht or 1, L, L)``, or both ``(B, 1, L, L)``.
    """
    if heads not in HEAD_MODES:
        raise ValueError(f"heads must be one of {', '.join(HEAD_MODES)}, got {heads!r}")
    same = student_maps.shape[1] == teacher_maps.shape[1]
    if heads == "auto":
        heads = "per_head" if same else "average_teacher"
    if heads == "per_head":
        if not same:
            raise ValueError(
                f"heads='per_head' needs equal head counts, got {student_maps.shape[1]} student and "
                f"{teacher_maps.shape[1]} teacher heads; use heads='average_teacher' or 'average_both'"
            )
        return student_maps, teacher_maps
    teacher_maps = teacher_maps.mean(dim=1, keepdim=True)
    if heads == "average_both":
        student_maps = student_maps.mean(dim=1, keepdim=True)
    return student_maps, teacher_maps


def _pair_weights(maps: Tensor, mask: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """``(pair, rows)``: ``(B, 1, L, L)`` real-query × real-key weights and ``(B, 1, L)`` real-query weights."""
    return _pair_weights_for(maps.shape[0], maps.shape[-1], mask, maps.device)


def _pair_weights_for(
    batch: int, length: int, mask: Tensor | None, device: torch.device
) -> tuple[Tensor | None, Tensor | None]:
    if mask is None:
        return None, None
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.shape != (batch, length):
        raise ValueError(
            f"mask must have shape ({batch}, {length}) to match attention maps of {batch} sequences of "
            f"length {length}, got {tuple(mask.shape)}"
        )
    real = mask.to(device=device, dtype=torch.float32)
    return real[:, None, :, None] * real[:, None, None, :], real[:, None, :]


def _map_blocks(maps: Tensor) -> list[slice]:
    return map_blocks(maps.shape[0], maps[0].numel(), maps.element_size()) if maps.dim() > 0 else [slice(None)]


class _MaskedSquaredSum(torch.autograd.Function):
    """``Σ (m ⊙ (s − t))²`` for a 0/1 mask ``m`` broadcast against ``s``; ``t`` broadcasts too.

    Attention maps are large: autograd would keep ``m ⊙ (s − t)`` for the backward pass. This
    keeps only ``s`` and ``t`` (alive anyway), works block by block along the batch so that no
    map-sized temporary is allocated, and writes the gradient straight into its buffer. The
    target ``t`` gets no gradient.
    """

    @staticmethod
    def forward(ctx: object, student: Tensor, teacher: Tensor, mask: Tensor | None) -> Tensor:
        teacher = teacher.expand_as(student)
        weights = None if mask is None else mask.expand(student.shape[0], *mask.shape[1:])
        total = student.new_zeros(())
        for block in _map_blocks(student):
            diff = torch.sub(student[block], teacher[block])
            if weights is not None:
                diff.mul_(weights[block])
            flat = diff.reshape(-1)
            total += torch.dot(flat, flat)
        ctx.save_for_backward(student, teacher, weights)  # type: ignore[attr-defined]
        return total

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> tuple[Tensor, None, None]:
        student, teacher, weights = ctx.saved_tensors  # type: ignore[attr-defined]
        grad_student = torch.empty_like(student)
        # m² = m for a 0/1 mask: the mask and the factor of the gradient in one small tensor
        factor = 2.0 * grad if weights is None else weights * (2.0 * grad)
        for block in _map_blocks(student):
            out = grad_student[block]
            torch.sub(student[block], teacher[block], out=out)
            out.mul_(factor if weights is None else factor[block])
        return grad_student, None, None


def attention_mse(
    student_maps: Tensor, teacher_maps: Tensor, mask: Tensor | None = None, heads: str = "auto"
) -> Tensor:
    """Mean squared error between attention maps (probabilities or pre-softmax scores).

    Only pairs of a real query and a real key count: padded rows and columns contribute nothing
    and do not count in the mean (TinyBERT's attention loss, without the padding the seed
    averaged over).

    Args:
        student_maps: ``(B, Hs, L, L)``.
        teacher_maps: ``(B, Ht, L, L)``; a constant target.
        mask: optional ``(B, L)``, 1 for real tokens and 0 for padding.
        heads: how head counts are matched, see :func:`align_heads`.

    Returns:
        A float32 scalar: squared error averaged over heads and counted (query, key) pairs.
    """
    _check_maps(student_maps, teacher_maps, "attention maps")
    pair, _ = _pair_weights(student_maps, mask)
    student, teacher = align_heads(student_maps.float(), teacher_maps.detach().float(), heads)
    squared = _MaskedSquaredSum.apply(student, teacher, pair)
    if pair is None:
        return squared / student.numel()
    # the count is B·L² pairs at most, exact in float32 far beyond realistic sizes
    return squared / (student.shape[1] * pair.sum()).clamp_min(1.0)


def _safe_log(probs: Tensor) -> Tensor:
    # clamped so that zero probabilities (padded keys) give finite logs and 0 · log = 0
    return probs.clamp_min(torch.finfo(torch.float32).tiny).log()


def attention_mse_from_inputs(
    student: AttentionInputs,
    teacher: Tensor | AttentionInputs,
    mask: Tensor | None = None,
    heads: str = "auto",
    on: str = "probs",
) -> Tensor:
    """:func:`attention_mse` of the student's maps, computed from its attention inputs block by
    block, so that the student's ``(B, heads, L, L)`` maps are never held (the backward pass
    recomputes each block from the query and key). Given as attention inputs, the teacher's
    maps are never held either.

    Args:
        student: the student layer's :class:`~kdistill.models.anatomy.AttentionInputs` (query and key
            ``(B, Hs, L, d)``, scaling, additive mask), as :func:`~kdistill.capture.capture` keeps them.
        teacher: the teacher's maps ``(B, Ht, L, L)``, probabilities (``on="probs"``) or scores
            (``on="scores"``), or its attention inputs.
        mask: optional ``(B, L)``, 1 for real tokens and 0 for padding.
        heads: how head counts are matched, see :func:`align_heads`.
        on: ``"probs"`` or ``"scores"``.

    Returns:
        A float32 scalar, equal to ``attention_mse(student.probs(), teacher_maps, mask, heads)``
        (or ``student.scores()`` for ``on="scores"``).
    """
    if on not in ("probs", "scores"):
        raise ValueError(f"on must be 'probs' or 'scores', got {on!r}")
    if heads not in HEAD_MODES:
        raise ValueError(f"heads must be one of {', '.join(HEAD_MODES)}, got {heads!r}")
    query = student.query
    if query.dim() != 4 or student.key.shape != query.shape:
        raise ValueError(
            f"the student's query and key must both have shape (B, heads, L, d), got {tuple(query.shape)} and "
            f"{tuple(student.key.shape)}"
        )
    batch, student_heads, length, _ = query.shape
    if isinstance(teacher, AttentionInputs):
        teacher_batch, teacher_heads, teacher_length, _ = teacher.query.shape
    else:
        _check_maps(teacher, teacher, "attention maps")
        teacher_batch, teacher_heads, teacher_length = teacher.shape[0], teacher.shape[1], teacher.shape[-1]
    if teacher_batch != batch or teacher_length != length:
        raise ValueError(
            f"the teacher's batch {teacher_batch} and length {teacher_length} do not match the student's "
            f"batch {batch} and length {length}"
        )
    same = student_heads == teacher_heads
    mode = ("per_head" if same else "average_teacher") if heads == "auto" else heads
    if mode == "per_head" and not same:
        raise ValueError(
            f"heads='per_head' needs equal head counts, got {student_heads} student and {teacher_heads} "
            "teacher heads; use heads='average_teacher' or 'average_both'"
        )
    if not isinstance(teacher, AttentionInputs) and mode != "per_head":
        teacher = teacher.detach().float().mean(dim=1, keepdim=True)
    pair, _ = _pair_weights_for(batch, length, mask, query.device)
    squared = projected_maps_mse(
        student,
        teacher,
        pair,
        softmax=on == "probs",
        average_heads=mode == "average_both",
        average_teacher=mode != "per_head",
    )
    compared_heads = 1 if mode == "average_both" else student_heads
    pairs = pair.sum() if pair is not None else torch.tensor(float(batch * length * length), device=query.device)
    return squared / (compared_heads * pairs).clamp_min(1.0)


def _kl_rows(student_log_probs: Tensor, teacher_log_probs: Tensor, rows: Tensor | None, pair: Tensor | None) -> Tensor:
    """Σ_keys p_t (log p_t − log p_s) per row, averaged over heads and counted rows."""
    terms = teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)
    if pair is not None:
        terms = terms * pair
    per_row = terms.sum(dim=-1)  # (B, H, L)
    if rows is None:
        return per_row.mean()
    return (per_row * rows).sum() / (per_row.shape[1] * rows.sum()).clamp_min(1.0)


def attention_kl(
    student_probs: Tensor, teacher_probs: Tensor, mask: Tensor | None = None, heads: str = "auto"
) -> Tensor:
    """``KL(teacher ‖ student)`` between attention distributions, per query row.

    Rows are the attention distributions of each query over the keys; the KL is summed over
    keys and averaged over heads and real queries (MiniLM's attention transfer).

    Args:
        student_probs: ``(B, Hs, L, L)`` attention probabilities (rows sum to 1).
        teacher_probs: ``(B, Ht, L, L)``; a constant target.
        mask: optional ``(B, L)``; padded queries and keys do not count.
        heads: how head counts are matched, see :func:`align_heads` (head averages of
            distributions are distributions).

    Returns:
        A float32 scalar; 0 when the distributions agree on every counted row.
    """
    _check_maps(student_probs, teacher_probs, "attention probabilities")
    pair, rows = _pair_weights(student_probs, mask)
    student, teacher = align_heads(student_probs.float(), teacher_probs.detach().float(), heads)
    return _kl_rows(_safe_log(student), _safe_log(teacher), rows, pair)


def _as_relation_heads(states: Tensor, relation_heads: int | None, name: str) -> Tensor:
    """``(B, H, L, d)`` states regrouped into ``relation_heads`` heads (None keeps the model's heads)."""
    if not isinstance(states, Tensor) or states.dim() not in (3, 4):
        shape = tuple(states.shape) if isinstance(states, Tensor) else type(states).__name__
        raise ValueError(f"{name} must have shape (B, heads, L, d) or (B, L, width), got {shape}")
    if states.dim() == 4:
        if relation_heads is None:
            return states
        batch, heads, length, dim = states.shape
        states = states.transpose(1, 2).reshape(batch, length, heads * dim)
    elif relation_heads is None:
        return states[:, None]
    batch, length, width = states.shape
    if isinstance(relation_heads, bool) or not isinstance(relation_heads, int) or relation_heads < 1:
        raise ValueError(f"relation_heads must be a positive integer, got {relation_heads!r}")
    if width % relation_heads:
        raise ValueError(
            f"{name} has width {width}, which does not split into {relation_heads} relation heads; "
            "choose a relation head count that divides both models' widths"
        )
    return states.view(batch, length, relation_heads, width // relation_heads).transpose(1, 2)


def relation_log_probs(states: Tensor, mask: Tensor | None = None) -> Tensor:
    """Self-attention relations of a set of vectors: ``log_softmax(X Xᵀ / √d)`` over keys.

    Args:
        states: ``(B, H, L, d)`` queries, keys or values split into heads.
        mask: optional ``(B, L)``; padded keys get no probability.

    Returns:
        ``(B, H, L, L)`` float32 log-probabilities.
    """
    states = states.float()
    logits = torch.matmul(states, states.transpose(-1, -2)) * states.shape[-1] ** -0.5
    if mask is not None:
        keep = mask.to(device=states.device, dtype=torch.bool)[:, None, None, :]
        logits = logits.masked_fill(~keep, torch.finfo(torch.float32).min)
    return logits.log_softmax(dim=-1)


def relation_kl(
    student_states: Tensor,
    teacher_states: Tensor,
    mask: Tensor | None = None,
    relation_heads: int | None = None,
    heads: str = "auto",
) -> Tensor:
    """MiniLM's self-attention relation loss: ``KL(R_teacher ‖ R_student)`` with
    ``R = softmax(X Xᵀ / √d)`` per head, summed over keys, averaged over heads and real queries.

    Args:
        student_states: ``(B, Hs, L, d_s)`` (split into the model's heads) or ``(B, L, width_s)``.
        teacher_states: ``(B, Ht, L, d_t)`` or ``(B, L, width_t)``; a constant target.
        mask: optional ``(B, L)``; padded queries and keys do not count.
        relation_heads: regroup both sides into this many heads first (MiniLM v2: independent of
            the models' head counts, so any widths that it divides work); None keeps the models'
            heads (MiniLM v1's value relation).
        heads: with ``relation_heads=None`` and different head counts, how heads are matched
            (see :func:`align_heads`).

    Returns:
        A float32 scalar; 0 for identical states.
    """
    student = _as_relation_heads(student_states, relation_heads, "student_states")
    teacher = _as_relation_heads(teacher_states.detach(), relation_heads, "teacher_states")
    if student.shape[0] != teacher.shape[0] or student.shape[2] != teacher.shape[2]:
        raise ValueError(
            f"student and teacher states must share batch and sequence sizes, got {tuple(student_states.shape)} "
            f"and {tuple(teacher_states.shape)}"
        )
    student_log = relation_log_probs(student, mask)
    teacher_log = relation_log_probs(teacher, mask)
    pair, rows = _pair_weights(student_log, mask)
    if student.shape[1] != teacher.shape[1] or heads not in ("auto", "per_head"):
        # head averages are taken over distributions, not over log-probabilities
        student_probs, teacher_probs = align_heads(student_log.exp(), teacher_log.exp(), heads)
        student_log, teacher_log = _safe_log(student_probs), _safe_log(teacher_probs)
    return _kl_rows(student_log, teacher_log, rows, pair)
