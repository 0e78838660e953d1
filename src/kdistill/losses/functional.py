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

# the intermediate-layer functions live in layerwise; the pure-function API names them here too
from kdistill.losses.layerwise import (
    HEAD_MODES,
    align_heads,
    attention_kl,
    attention_mse,
    attention_mse_from_inputs,
    hidden_cosine,
    hidden_mse,
    relation_kl,
    relation_log_probs,
)
from kdistill.losses.reduction import check_temperature, check_unit_interval, masked_mean, position_weights

__all__ = [
    "HEAD_MODES",
    "align_heads",
    "attention_kl",
    "attention_mse",
    "attention_mse_from_inputs",
    "check_temperature",
    "check_unit_interval",
    "hard_ce",
    "hidden_cosine",
    "hidden_mse",
    "jsd",
    "log_rest_mass",
    "logit_mse",
    "relation_kl",
    "relation_log_probs",
    "reverse_kl",
    "soft_kd",
    "soft_kd_topk",
]


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


def _check_logits(student_logits: Tensor, teacher_logits: Tensor) -> None:
    for name, logits in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(logits, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
        if logits.dim() < 2:
            raise ValueError(f"{name} must have shape (B, C) or (B, L, C), got shape {tuple(logits.shape)}")
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
    weights = position_weights(student_logits, mask)
    log_teacher = _log_probs(teacher_logits.detach(), temperature)
    log_student = _log_probs(student_logits, temperature)
    per_position = _kl_per_position(log_teacher, log_student)
    return masked_mean(per_position, weights) * temperature**2


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
            f"top-k teacher entries of shape {tuple(teacher_log_probs.shape)} (indices "
            f"{tuple(teacher_indices.shape)}) "
            f"do not fit student logits of shape {tuple(student_logits.shape)}"
        )
    if teacher_rest.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"teacher_rest must have shape {tuple(student_logits.shape[:-1])}, got {tuple(teacher_rest.shape)}"
        )
    temperature = check_temperature(temperature)
    weights = position_weights(student_logits, mask)
    log_student = _log_probs(student_logits, temperature)
    indices = teacher_indices.long().to(student_logits.device)
    log_student_top = log_student.gather(-1, indices)
    log_teacher_top = teacher_log_probs.float().to(student_logits.device)
    top_terms = _kl_per_position(log_teacher_top, log_student_top)
    if indices.shape[-1] >= student_logits.shape[-1]:
        # k covers every class: there is no rest bucket (a stored rest is rounding noise)
        return masked_mean(top_terms, weights) * temperature**2
    log_student_rest = log_rest_mass(log_student, indices)
    rest = teacher_rest.float().to(student_logits.device)
    has_rest = torch.isfinite(rest)
    safe_rest = torch.where(has_rest, rest, torch.zeros_like(rest))
    rest_terms = torch.where(has_rest, safe_rest.exp() * (safe_rest - log_student_rest), torch.zeros_like(rest))
    return masked_mean(top_terms + rest_terms, weights) * temperature**2


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
    weights = position_weights(student_logits, mask)
    log_teacher = _log_probs(teacher_logits.detach(), temperature)
    log_student = _log_probs(student_logits, temperature)
    per_position = _kl_per_position(log_student, log_teacher)
    return masked_mean(per_position, weights) * temperature**2


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
    weights = position_weights(student_logits, mask)
    log_teacher = _log_probs(teacher_logits.detach(), temperature)
    log_student = _log_probs(student_logits, temperature)
    # log m computed in log space: stable where either distribution underflows
    log_mixture = torch.logsumexp(torch.stack([log_teacher + math.log(beta), log_student + math.log(1 - beta)]), dim=0)
    per_position = beta * _kl_per_position(log_teacher, log_mixture) + (1 - beta) * _kl_per_position(
        log_student, log_mixture
    )
    return masked_mean(per_position, weights) * temperature**2


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
    weights = position_weights(student_logits, mask)
    per_position = (student_logits.float() - teacher_logits.detach().float()).pow(2).mean(dim=-1)
    return masked_mean(per_position, weights)


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
        raise ValueError(f"labels must hold integer class ids, got dtype {labels.dtype}; for soft targets use soft_kd")
    weights = position_weights(student_logits, mask)
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
