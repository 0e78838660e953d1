"""Pure loss functions: the loss contract of kdistill.

Every logit loss here:

* accepts logits of shape ``(B, C)`` (one prediction per example) or ``(B, L, C)``
  (one prediction per token), and an optional ``mask`` of shape ``logits.shape[:-1]``
  (``(B,)`` or ``(B, L)``; bool or 0/1) that selects the positions that count;
* sums over the class dimension and averages over the counted positions, which for
  ``(B, C)`` without a mask is PyTorch's ``reduction="batchmean"``;
* computes in float32, whatever the dtype of the inputs (bf16/fp16 forward passes);
* raises :class:`ValueError` with a message that names the problem for wrong shapes,
  a temperature ``<= 0`` or a weight outside ``[0, 1]``.

A mask that selects no position gives a loss of zero (with a gradient of zero), not NaN,
so that a batch made only of padding cannot poison a run.

The intermediate-layer losses (:func:`hidden_mse`, :func:`hidden_cosine`, :func:`attention_mse`,
:func:`attention_kl`, :func:`relation_kl`) follow the same rules with a ``(B, L)`` padding mask:
padded positions contribute nothing and do not count in the mean, so padding a batch further
never changes a loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.attention import AttentionInputs, map_blocks, projected_maps_mse

__all__ = [
    "soft_kd",
    "soft_kd_topk",
    "log_rest_mass",
    "hard_ce",
    "reverse_kl",
    "jsd",
    "logit_mse",
    "hidden_mse",
    "hidden_cosine",
    "align_heads",
    "attention_mse",
    "attention_kl",
    "attention_mse_from_inputs",
    "relation_log_probs",
    "relation_kl",
    "HEAD_MODES",
    "check_temperature",
    "check_unit_interval",
]


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


def check_temperature(temperature: float) -> float:
    """Return ``temperature`` as a float, or raise ``ValueError`` if it is not a positive number."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(
            f"temperature must be a positive number, got {temperature!r} ({type(temperature).__name__}); "
            "a typical value is 4.0"
        )
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; a typical value is 4.0")
    return float(temperature)


def check_unit_interval(value: float, name: str, *, open_interval: bool = False) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` if it lies outside ``[0, 1]``.

    Args:
        value: the number to check.
        name: how the error message calls it (``"alpha"``, ``"beta"``).
        open_interval: require ``0 < value < 1`` instead.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if open_interval and not 0 < value < 1:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


def _check_logits(student_logits: Tensor, teacher_logits: Tensor) -> None:
    for name, logits in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(logits, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
        if logits.dim() < 2:
            raise ValueError(
                f"{name} must have shape (B, C) or (B, L, C), got shape {tuple(logits.shape)}"
            )
    if student_logits.shape != teacher_logits.shape:
        hint = ""
        if student_logits.shape[:-1] == teacher_logits.shape[:-1]:
            hint = (
                " (the class/vocabulary sizes differ: teacher and student must share the label set "
                "or vocabulary for logit losses)"
            )
        raise ValueError(
            f"student and teacher logits must have the same shape, got student {tuple(student_logits.shape)} "
            f"and teacher {tuple(teacher_logits.shape)}{hint}"
        )


def _position_weights(
    logits: Tensor, mask: Tensor | None, meaning: str = "the logits' shape without the class dimension"
) -> Tensor | None:
    """Return a float32 weight per position ``logits.shape[:-1]``, or None for 'all positions'.

    ``meaning`` says in the error message what that shape is (logits, or hidden states).
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.shape != logits.shape[:-1]:
        raise ValueError(f"mask must have shape {tuple(logits.shape[:-1])} ({meaning}), got {tuple(mask.shape)}")
    return mask.to(device=logits.device, dtype=torch.float32)


def _reduce(per_position: Tensor, weights: Tensor | None) -> Tensor:
    """Average a per-position loss ``(B,)`` or ``(B, L)`` over the positions that count."""
    if weights is None:
        # an empty batch has nothing to average: 0 (with a zero gradient), not 0/0 = NaN
        return per_position.mean() if per_position.numel() else per_position.sum()
    # clamp keeps an all-masked batch at 0 instead of 0/0 = NaN
    return (per_position * weights).sum() / weights.sum().clamp_min(1.0)


def _kl_per_position(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) summed over the last dimension, from log-probabilities.

    Positions where ``p == 0`` contribute 0 (the limit of p·log p), also where ``log_q`` is
    ``-inf`` (a vocabulary entry masked out in both models), so finite inputs never give NaN. A
    NaN in either input stays NaN: a broken teacher must not look like a perfect student.
    """
    p = log_p.exp()
    terms = p * (log_p - log_q)
    terms = torch.where(p == 0, torch.zeros_like(terms), terms)
    return terms.sum(dim=-1)


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1)


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------


def soft_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Hinton's soft-label distillation loss: ``T² · KL(softmax(t/T) ‖ softmax(s/T))``.

    The T² factor keeps gradient magnitudes comparable across temperatures (Hinton et al., 2015).

    Args:
        student_logits: ``(B, C)`` or ``(B, L, C)``; gradients flow through it.
        teacher_logits: same shape as ``student_logits``; treated as a constant target.
        temperature: softening temperature ``T > 0``.
        mask: optional ``(B,)`` / ``(B, L)`` selection of the positions that count.

    Returns:
        A float32 scalar: the KL summed over classes, averaged over counted positions, times T².
    """
    _check_logits(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    weights = _position_weights(student_logits, mask)
    log_teacher = _log_probs(teacher_logits.detach(), temperature)
    log_student = _log_probs(student_logits, temperature)
    per_position = _kl_per_position(log_teacher, log_student)
    return _reduce(per_position, weights) * temperature**2


def log_rest_mass(log_probs: Tensor, indices: Tensor) -> Tensor:
    """Log of the probability mass outside ``indices``: the rest bucket of a top-k coarsening.

    Computed as a logsumexp over every other entry (not as ``log(1 - kept)``), so it stays exact
    when the kept mass is close to 1. Empty (``-inf``) when ``indices`` cover every entry.

    Args:
        log_probs: ``(..., V)`` log-probabilities.
        indices: ``(..., k)`` int64 ids into the last dimension of ``log_probs``.

    Returns:
        ``(...)``, in the dtype of ``log_probs``.
    """
    return torch.logsumexp(log_probs.scatter(-1, indices, float("-inf")), dim=-1)


def soft_kd_topk(
    student_logits: Tensor,
    teacher_log_probs: Tensor,
    teacher_indices: Tensor,
    teacher_rest: Tensor,
    temperature: float = 4.0,
    mask: Tensor | None = None,
) -> Tensor:
    """:func:`soft_kd` against a teacher kept as its top-k entries plus the rest of its mass.

    The teacher's distribution is coarsened to k + 1 buckets: its k most probable entries and
    one bucket holding all the remaining probability mass. The student's distribution is
    coarsened the same way (its probabilities at the teacher's top-k ids, and the sum of all
    others), and the loss is ``T² · KL`` between the two coarsened distributions. The rest
    bucket keeps the loss a true KL of proper distributions (nothing is renormalised away); it
    is a lower bound of the full KL and equals it exactly when k covers every class.

    Args:
        student_logits: ``(B, C)`` or ``(B, L, C)``.
        teacher_log_probs: ``(B, k)`` / ``(B, L, k)`` teacher log-probabilities at ``temperature``.
        teacher_indices: same shape, the class ids of those entries.
        teacher_rest: ``(B,)`` / ``(B, L)`` log of the teacher's mass outside its top k.
        temperature: the temperature the teacher's log-probabilities were computed at.
        mask: optional selection of the positions that count.
    """
    if not isinstance(student_logits, Tensor) or student_logits.dim() < 2:
        raise ValueError("student_logits must have shape (B, C) or (B, L, C)")
    if teacher_log_probs.shape != teacher_indices.shape or teacher_log_probs.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"top-k teacher entries of shape {tuple(teacher_log_probs.shape)} (indices {tuple(teacher_indices.shape)}) "
            f"do not fit student logits of shape {tuple(student_logits.shape)}"
        )
    if teacher_rest.shape != student_logits.shape[:-1]:
        raise ValueError(f"teacher_rest must have shape {tuple(student_logits.shape[:-1])}, got {tuple(teacher_rest.shape)}")
    temperature = check_temperature(temperature)
    weights = _position_weights(student_logits, mask)
    log_student = _log_probs(student_logits, temperature)
    indices = teacher_indices.long().to(student_logits.device)
    log_student_top = log_student.gather(-1, indices)
    log_teacher_top = teacher_log_probs.float().to(student_logits.device)
    top_terms = _kl_per_position(log_teacher_top, log_student_top)
    if indices.shape[-1] >= student_logits.shape[-1]:
        # k covers every class: there is no rest bucket (a stored rest is rounding noise)
        return _reduce(top_terms, weights) * temperature**2
    log_student_rest = log_rest_mass(log_student, indices)
    rest = teacher_rest.float().to(student_logits.device)
    has_rest = torch.isfinite(rest)
    safe_rest = torch.where(has_rest, rest, torch.zeros_like(rest))
    rest_terms = torch.where(has_rest, safe_rest.exp() * (safe_rest - log_student_rest), torch.zeros_like(rest))
    return _reduce(top_terms + rest_terms, weights) * temperature**2


def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Reverse (mode-seeking) KL: ``T² · KL(softmax(s/T) ‖ softmax(t/T))``.

    Shapes, reduction and ``mask`` as in :func:`soft_kd`. Used for generative students, where
    the forward KL spreads mass over every mode of the teacher (Gu et al., MiniLLM, 2024).
    """
    _check_logits(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    weights = _position_weights(student_logits, mask)
    log_teacher = _log_probs(teacher_logits.detach(), temperature)
    log_student = _log_probs(student_logits, temperature)
    per_position = _kl_per_position(log_student, log_teacher)
    return _reduce(per_position, weights) * temperature**2


def jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Generalized Jensen–Shannon divergence (Agarwal et al., GKD, 2024), times T².

    ``JSD_β = β · KL(p_t ‖ m) + (1 − β) · KL(p_s ‖ m)`` with the mixture
    ``m = β · p_t + (1 − β) · p_s``. ``β = 0.5`` is the symmetric JS divergence; ``β`` must lie
    strictly inside (0, 1) because the loss vanishes at both ends (use :func:`soft_kd` or
    :func:`reverse_kl` for the pure forward or reverse KL).

    Shapes, reduction and ``mask`` as in :func:`soft_kd`.
    """
    _check_logits(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    beta = check_unit_interval(beta, "beta", open_interval=True)
    weights = _position_weights(student_logits, mask)
    log_teacher = _log_probs(teacher_logits.detach(), temperature)
    log_student = _log_probs(student_logits, temperature)
    # log m computed in log space: stable where either distribution underflows
    log_mixture = torch.logsumexp(
        torch.stack([log_teacher + math.log(beta), log_student + math.log(1 - beta)]), dim=0
    )
    per_position = beta * _kl_per_position(log_teacher, log_mixture) + (1 - beta) * _kl_per_position(
        log_student, log_mixture
    )
    return _reduce(per_position, weights) * temperature**2


def logit_mse(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean squared error between raw logits (Ba & Caruana, 2014).

    Averaged over classes and over counted positions, so without a mask it equals
    ``F.mse_loss(student_logits, teacher_logits)``.
    """
    _check_logits(student_logits, teacher_logits)
    weights = _position_weights(student_logits, mask)
    per_position = (student_logits.float() - teacher_logits.detach().float()).pow(2).mean(dim=-1)
    return _reduce(per_position, weights)


def hard_ce(
    student_logits: Tensor,
    labels: Tensor,
    ignore_index: int = -100,
    mask: Tensor | None = None,
) -> Tensor:
    """Cross-entropy against hard labels, averaged over the labels that count.

    Args:
        student_logits: ``(B, C)`` or ``(B, L, C)``.
        labels: integer class ids of shape ``student_logits.shape[:-1]``; entries equal to
            ``ignore_index`` do not count.
        ignore_index: the label value to skip (Hugging Face uses -100 for padding).
        mask: optional extra selection of positions, combined with ``ignore_index``.

    Returns:
        A float32 scalar; 0 when no label counts.
    """
    if not isinstance(student_logits, Tensor) or student_logits.dim() < 2:
        shape = tuple(student_logits.shape) if isinstance(student_logits, Tensor) else type(student_logits).__name__
        raise ValueError(f"student_logits must have shape (B, C) or (B, L, C), got {shape}")
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor of class ids, got {type(labels).__name__}")
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(student_logits.shape[:-1])} to match logits of shape "
            f"{tuple(student_logits.shape)}, got {tuple(labels.shape)}"
        )
    if labels.is_floating_point():
        raise ValueError(
            f"labels must hold integer class ids, got dtype {labels.dtype}; for soft targets use soft_kd"
        )
    weights = _position_weights(student_logits, mask)
    labels = labels.to(student_logits.device)
    valid = labels != ignore_index
    num_classes = student_logits.shape[-1]
    if bool(((labels < 0) | (labels >= num_classes))[valid].any()):
        bad = labels[valid & ((labels < 0) | (labels >= num_classes))][0].item()
        raise ValueError(
            f"label {bad} is outside the model's {num_classes} classes (0..{num_classes - 1}); "
            "check num_labels of the student and the label column of the data"
        )
    per_position = F.cross_entropy(
        student_logits.float().reshape(-1, num_classes),
        labels.reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    ).reshape(labels.shape)
    counted = valid.float() if weights is None else valid.float() * weights
    return (per_position * counted).sum() / counted.sum().clamp_min(1.0)


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
            hint = " (the widths differ: project the student to the teacher's width, e.g. HiddenMSE(..., student_dim=, teacher_dim=))"
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
    weights = _position_weights(student_hidden, mask, "batch and sequence of the states")
    per_position = (student_hidden.float() - teacher_hidden.detach().float()).pow(2).mean(dim=-1)
    return _reduce(per_position, weights)


def hidden_cosine(student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None) -> Tensor:
    """``1 − cos(student, teacher)`` per position, averaged over the positions that count.

    Compares directions only, so it is blind to the scale of the hidden states (DistilBERT's
    cosine embedding loss). Shapes and ``mask`` as in :func:`hidden_mse`.

    Returns:
        A float32 scalar in [0, 2]; 0 when every counted position points the same way.
    """
    _check_states(student_hidden, teacher_hidden, "hidden states")
    weights = _position_weights(student_hidden, mask, "batch and sequence of the states")
    cosine = F.cosine_similarity(student_hidden.float(), teacher_hidden.detach().float(), dim=-1, eps=1e-8)
    return _reduce(1.0 - cosine, weights)


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
        student: the student layer's :class:`~kdistill.attention.AttentionInputs` (query and key
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
        raise ValueError(f"the student's query and key must both have shape (B, heads, L, d), got {tuple(query.shape)} and {tuple(student.key.shape)}")
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
        student, teacher, pair, softmax=on == "probs", average_heads=mode == "average_both",
        average_teacher=mode != "per_head",
    )
    compared_heads = 1 if mode == "average_both" else student_heads
    pairs = pair.sum() if pair is not None else torch.tensor(float(batch * length * length), device=query.device)
    return squared / (compared_heads * pairs).clamp_min(1.0)


def _kl_rows(
    student_log_probs: Tensor, teacher_log_probs: Tensor, rows: Tensor | None, pair: Tensor | None
) -> Tensor:
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
