"""Forward KL from a teacher kept as N ids drawn from it per position, with their counts.

Random-sampling KD (Anshumann et al., 2025, "Sparse Logit Sampling: Accelerating Knowledge
Distillation in LLMs"): per position the ids were drawn i.i.d. from the teacher's
``p = softmax(z_t / T)`` and counted, ``c_i`` draws of id i out of ``N``. The loss is the forward
KL of the student ``q`` from the empirical distribution ``c / N``,
``T² · Σ_i (c_i / N) · (log p_i − log q_i)``: linear in ``c / N``, whose expectation is p, so the
value is an unbiased estimate of ``T² · KL(p ‖ q)`` and the gradient with respect to the student's
logits, ``T · (q − c / N)``, one of the full forward KL's ``T · (q − p)``, with covariance
``T² · (diag(p) − p pᵀ) / N`` per position. No other divergence is linear in p, so draws give no
unbiased estimate of them: they are refused.

The conventions (shifting, counting, ``T²``, precision, reduction) are those of
:mod:`kdistill.losses.tokens`; :func:`~kdistill.losses.chunked.chunked_token_loss` computes the same
loss from hidden states (``teacher_sampled=``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kdistill.losses.tokens import (
    check_logits,
    check_loss_args,
    check_targets,
    log_softmax,
    reduce_positions,
    resolve_vocab_size,
)

__all__ = ["check_sampled", "sampled_forward_kl", "sampled_kind_error", "token_loss_sampled"]


def sampled_kind_error(kind: str) -> str:
    """Why a teacher kept as drawn ids cannot give divergence ``kind``, and what to do instead."""
    return (
        f"a teacher kept as sampled ids gives forward_kl only (its draws estimate KL(teacher ‖ student) "
        f"without bias, not {kind}): use a top-k teacher or the teacher itself"
    )


def sampled_forward_kl(student_log_probs: Tensor, log_probs: Tensor, indices: Tensor, counts: Tensor) -> Tensor:
    """The estimate of ``KL(p ‖ q)`` from ids drawn from p, per position, without ``T²``.

    ``Σ_i (c_i / N) · (log p_i − log q_i)`` over the distinct ids drawn, ``N = Σ_i c_i``; ``log p_i``
    is a constant: it gives the value, never the gradient.

    Args:
        student_log_probs: ``(..., V)`` the student's log-probabilities ``q``.
        log_probs: ``(..., W)`` the teacher's log-probabilities of the ids drawn.
        indices: ``(..., W)`` int64 the distinct ids drawn.
        counts: ``(..., W)`` how often each was drawn (0 in unused slots; all 0 at a position
            without draws, which gives 0).

    Returns:
        ``(...)`` in the dtype of ``student_log_probs``.
    """
    dtype = student_log_probs.dtype
    weights = counts.to(dtype)
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1)
    picked = student_log_probs.gather(-1, indices)
    # an unused slot (weight 0) contributes 0 whatever log-probabilities it holds
    terms = torch.where(weights == 0, 0.0, log_probs.to(dtype) - picked)
    return (weights * terms).sum(dim=-1)


def check_sampled(
    teacher_sampled: Sequence[Tensor], leading: Sequence[int], num_ids: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Check a sampled teacher ``(log_probs, indices, counts)``; return it with int64 indices and counts."""
    if not isinstance(teacher_sampled, (tuple, list)) or len(teacher_sampled) != 3:
        raise ValueError("a sampled teacher must be a tuple (log_probs, indices, counts)")
    top, indices, counts = teacher_sampled
    leading = tuple(leading)
    if (
        top.dim() != len(leading) + 1
        or tuple(top.shape[:-1]) != leading
        or top.shape != indices.shape
        or top.shape != counts.shape
    ):
        raise ValueError(
            f"sampled log-probabilities {tuple(top.shape)}, indices {tuple(indices.shape)} and counts "
            f"{tuple(counts.shape)} must all have shape {leading + ('W',)} to match the student"
        )
    if indices.is_floating_point() or counts.is_floating_point():
        raise ValueError(f"sampled indices and counts must be integers, got {indices.dtype} and {counts.dtype}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_ids):
        raise ValueError(f"sampled indices must lie in 0..{num_ids - 1} (the ids the student compares)")
    if counts.numel() and int(counts.min()) < 0:
        raise ValueError("sampled counts must be >= 0")
    return top, indices.long(), counts.long()


def token_loss_sampled(
    student_logits: Tensor,
    teacher_log_probs: Tensor,
    teacher_indices: Tensor,
    teacher_counts: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "sum",
    vocab_size: int | None = None,
) -> Tensor:
    """:func:`~kdistill.losses.tokens.token_loss`'s ``forward_kl`` against a teacher kept as N ids
    drawn from it per position: ``T² · Σ_i (c_i / N) · (log p_i − log q_i)`` at each counted
    position, whose expectation over the draws is the full forward KL, in value and in gradient.

    Args:
        student_logits: ``(B, L, V_s)`` or ``(N, V_s)``; gradients flow through it.
        teacher_log_probs: ``(..., W)`` the teacher's log-probabilities at ``temperature`` of the ids.
        teacher_indices: ``(..., W)`` the distinct ids drawn.
        teacher_counts: ``(..., W)`` how often each was drawn (0 in unused slots).
        targets: ``(B, L)`` / ``(N,)`` next-token ids; a position counts where its target is not
            ``ignore_index``.
        temperature: ``T > 0``, that of the distribution the ids were drawn from.
        ignore_index: the target value of positions that do not count.
        reduction: ``"sum"`` over counted positions, ``"mean"`` over them, or ``"none"``.
        vocab_size: compare on the student's first ``vocab_size`` ids (default: all of them).

    Returns:
        A float32 (float64 for float64 logits) scalar, or per-position values for ``"none"``.
    """
    temperature, _, _ = check_loss_args("forward_kl", temperature, 0.5, 0.1, reduction)
    check_logits(student_logits, None)
    check_targets(targets, student_logits.shape[:-1], ignore_index)
    size = resolve_vocab_size(student_logits.shape[-1], None, vocab_size) or student_logits.shape[-1]
    top, indices, counts = check_sampled(
        (teacher_log_probs, teacher_indices, teacher_counts), student_logits.shape[:-1], size
    )
    device = student_logits.device
    log_q = log_softmax(student_logits[..., :size], temperature)
    values = sampled_forward_kl(log_q, top.detach().to(device), indices.to(device), counts.to(device))
    return reduce_positions(values * temperature**2, targets != ignore_index, reduction)
