"""Token-level (causal LM) distillation losses: pure functions on logits or log-probabilities.

Conventions, shared with :mod:`kdistill.losses.chunked`:

* **Shifting** happens once, in :func:`next_token_targets`: the logits at position ``i`` are
  compared with the label of token ``i + 1``, so ``targets[..., i] = labels[..., i + 1]`` and the
  last position gets ``ignore_index``. Logits are never sliced or copied to shift them.
* **Counting**: a position counts where its target is not ``ignore_index`` (prompt, padding and
  user-masked tokens are -100). Divergences need no target value, only that it counts.
* **Distributions**: ``p`` is the teacher, ``q`` the student, both ``softmax(logits / T)``. Every
  divergence is computed from log-probabilities over the last dimension, so the same code serves
  full vocabularies and top-k teachers coarsened to ``k + 1`` buckets. A teacher kept as ids drawn
  from it gives the forward KL only, as an unbiased estimate (:mod:`kdistill.losses.sampled`).
* **T²**: every divergence is multiplied by ``T²`` (kdistill's convention, which keeps gradient
  magnitudes comparable across temperatures). TRL's ``generalized_jsd_loss`` has no ``T²``; the
  two agree at ``T = 1``. The cross-entropy ``"ce"`` is the plain hard-label loss of the student
  at ``T = 1`` on its full head, without ``T²``.
* **Precision**: at least float32 (bf16/fp16/fp32 inputs are computed in float32, float64 stays
  float64). Results are finite for logits of ±1e4 and probabilities that underflow to 0: an entry
  with ``p = 0`` contributes 0 to ``KL(p ‖ ·)`` whatever the other side holds. A NaN input is not
  a zero probability: it propagates as NaN.
* **Reduction**: ``"sum"`` over counted positions is what training uses; it divides by the number
  of target tokens of the whole optimizer step (all micro-batches and processes), so that the
  gradient does not depend on how a step is split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.functional import check_temperature, check_unit_interval, log_rest_mass

__all__ = [
    "DIVERGENCES",
    "KINDS",
    "REDUCTIONS",
    "divergence",
    "next_token_targets",
    "token_loss",
    "token_loss_topk",
]

#: the divergences between teacher ``p`` and student ``q``, see :func:`divergence`
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tv")
#: what a token loss can compute: a divergence, or the student's cross-entropy on the targets
KINDS = (*DIVERGENCES, "ce")
REDUCTIONS = ("sum", "mean", "none")


def next_token_targets(labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Labels shifted one to the left: the target of the logits at each position.

    Args:
        labels: ``(B, L)`` integer token ids (``ignore_index`` where nothing is predicted).
        ignore_index: the value of positions that do not count.

    Returns:
        ``(B, L)``, same dtype: ``targets[:, i] = labels[:, i + 1]`` and ``targets[:, -1] = ignore_index``.
    """
    if not isinstance(labels, Tensor) or labels.dim() < 1:
        raise ValueError(f"labels must be a tensor of shape (B, L), got {_describe(labels)}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must hold integer token ids, got dtype {labels.dtype}")
    targets = torch.full_like(labels, ignore_index)
    targets[..., :-1] = labels[..., 1:]
    return targets


# ---------------------------------------------------------------------------
# divergences from log-probabilities
# ---------------------------------------------------------------------------


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p ‖ q)`` over the last dimension; entries with ``p == 0`` count 0."""
    p = log_p.exp()
    # masking the difference (not the product) keeps -inf - -inf out of the backward pass too;
    # a NaN p is not == 0, so it stays NaN
    return (p * torch.where(p == 0, 0.0, log_p - log_q)).sum(dim=-1)


def _log_mixture(log_p: Tensor, log_q: Tensor, weight_p: float) -> Tensor:
    """``log(w·p + (1 − w)·q)`` for ``0 < w < 1``, in log space (stable where either underflows)."""
    scaled_p = log_p + math.log(weight_p)
    # clamped so that an entry where both are -inf gets a finite log and no NaN gradient
    # (logaddexp's backward at (-inf, -inf) is NaN even for a zero incoming gradient)
    scaled_q = (log_q + math.log1p(-weight_p)).clamp_min(torch.finfo(log_q.dtype).min)
    return torch.logaddexp(scaled_p, scaled_q)


def _check_weights(beta: float, alpha: float) -> tuple[float, float]:
    return check_unit_interval(beta, "beta"), check_unit_interval(alpha, "alpha")


def divergence(
    teacher_log_probs: Tensor, student_log_probs: Tensor, kind: str, *, beta: float = 0.5, alpha: float = 0.1
) -> Tensor:
    """A divergence between teacher ``p`` and student ``q``, per position, without ``T²``.

    * ``forward_kl``: ``KL(p ‖ q)``; ``reverse_kl``: ``KL(q ‖ p)``.
    * ``jsd`` (generalized JSD, Agarwal et al., GKD, 2024): for ``0 < β < 1``,
      ``β·KL(p ‖ m) + (1 − β)·KL(q ‖ m)`` with ``m = β·p + (1 − β)·q``. ``β = 0`` is exactly the
      forward KL and ``β = 1`` exactly the reverse KL, as in TRL's ``generalized_jsd_loss``. This
      is discontinuous: the interior formula tends to 0 at both ends.
    * ``skew_kl`` (DistiLLM, Ko et al., 2024): ``KL(p ‖ α·p + (1 − α)·q)``; ``skew_reverse_kl``:
      ``KL(q ‖ (1 − α)·p + α·q)``. ``α = 0`` gives the forward / reverse KL exactly, ``α = 1`` gives 0.
    * ``tv``: total variation ``0.5·Σ|p − q|``.

    Args:
        teacher_log_probs: ``(..., V)`` log-probabilities of the teacher (full vocabulary or
            ``k + 1`` buckets).
        student_log_probs: same shape, the student's.
        kind: one of :data:`DIVERGENCES`.
        beta: the JSD weight, in ``[0, 1]`` (never clamped).
        alpha: the skew weight, in ``[0, 1]``.

    Returns:
        ``(...)``: the divergence summed over the last dimension, in the inputs' dtype.
    """
    if kind not in DIVERGENCES:
        raise ValueError(f"kind must be one of {', '.join(DIVERGENCES)}, got {kind!r}")
    if teacher_log_probs.shape != student_log_probs.shape:
        raise ValueError(
            f"teacher and student log-probabilities must have the same shape, got {tuple(teacher_log_probs.shape)} "
            f"and {tuple(student_log_probs.shape)}"
        )
    beta, alpha = _check_weights(beta, alpha)
    return _divergence(teacher_log_probs, student_log_probs, kind, beta, alpha)


def _divergence(log_p: Tensor, log_q: Tensor, kind: str, beta: float, alpha: float) -> Tensor:
    if kind == "tv":
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0) or (kind == "skew_kl" and alpha == 0):
        return _kl(log_p, log_q)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1) or (kind == "skew_reverse_kl" and alpha == 0):
        return _kl(log_q, log_p)
    if kind == "jsd":
        log_m = _log_mixture(log_p, log_q, beta)
        return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)
    if kind == "skew_kl":
        # α = 1 mixes nothing of q in: KL(p ‖ p), written so that a NaN still propagates
        return _kl(log_p, log_p if alpha == 1 else _log_mixture(log_p, log_q, alpha))
    return _kl(log_q, log_q if alpha == 1 else _log_mixture(log_p, log_q, 1 - alpha))


# ---------------------------------------------------------------------------
# per-position values, shared by the dense functions and the chunked loss
# ---------------------------------------------------------------------------


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a loss is computed in for inputs of ``dtype``: float32, or float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def log_softmax(logits: Tensor, temperature: float) -> Tensor:
    """``log_softmax(logits / T)`` over the last dimension, in :func:`compute_dtype`."""
    logits = logits.to(compute_dtype(logits.dtype))
    if temperature != 1.0:
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1)


def _topk_buckets(log_probs: Tensor, indices: Tensor) -> Tensor:
    """``(..., k + 1)``: the log-probabilities at ``indices`` and, when k < V, the rest's."""
    top = log_probs.gather(-1, indices)
    if indices.shape[-1] >= log_probs.shape[-1]:
        return top
    return torch.cat([top, log_rest_mass(log_probs, indices).unsqueeze(-1)], dim=-1)


def log_prob_pair(
    student_log_probs: Tensor,
    *,
    teacher_logits: Tensor | None = None,
    teacher_topk: Sequence[Tensor] | None = None,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """The teacher's and the student's log-probabilities over the same support, ``(log_p, log_q)``.

    Args:
        student_log_probs: ``(..., V)`` the student's log-probabilities over the compared ids.
        teacher_logits: ``(..., V_t)`` with ``V_t >= V``; its first V ids are compared.
        teacher_topk: instead, ``(log_probs (..., k), indices (..., k) int64, rest (...))``; then both
            sides are coarsened to ``k + 1`` buckets (k when the top k cover all V ids).
    """
    if teacher_topk is None:
        size = student_log_probs.shape[-1]
        log_p = log_softmax(teacher_logits[..., :size], temperature).to(student_log_probs.dtype)
        return log_p, student_log_probs
    top, indices, rest = teacher_topk
    log_q = _topk_buckets(student_log_probs, indices)
    log_p = top.to(log_q.dtype)
    if log_q.shape[-1] > top.shape[-1]:
        log_p = torch.cat([log_p, rest.to(log_q.dtype).unsqueeze(-1)], dim=-1)
    return log_p, log_q


def per_position(
    student_logits: Tensor,
    targets: Tensor,
    kind: str,
    *,
    teacher_logits: Tensor | None = None,
    teacher_topk: Sequence[Tensor] | None = None,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    ignore_index: int = -100,
    vocab_size: int | None = None,
) -> Tensor:
    """The loss of every position, counted or not, with arguments already checked.

    Args:
        student_logits: ``(..., V_s)``.
        targets: ``(...)``; only read for ``kind="ce"``.
        kind: one of :data:`KINDS`.
        teacher_logits: ``(..., V_t)``, or None with ``teacher_topk`` or for ``"ce"``.
        teacher_topk: ``(log_probs (..., k), indices (..., k) int64, rest (...))`` at ``temperature``.
        vocab_size: the number of leading ids the divergence compares (None: all of the student's).

    Returns:
        ``(...)`` in :func:`compute_dtype` of the student's logits; ``T²`` applied to divergences.
    """
    if kind == "ce":
        flat = student_logits.reshape(-1, student_logits.shape[-1]).to(compute_dtype(student_logits.dtype))
        values = F.cross_entropy(flat, targets.reshape(-1), ignore_index=ignore_index, reduction="none")
        return values.reshape(targets.shape)
    size = student_logits.shape[-1] if vocab_size is None else vocab_size
    log_p, log_q = log_prob_pair(
        log_softmax(student_logits[..., :size], temperature),
        teacher_logits=teacher_logits,
        teacher_topk=teacher_topk,
        temperature=temperature,
    )
    return _divergence(log_p, log_q, kind, beta, alpha) * temperature**2


def check_loss_args(
    kind: str, temperature: float, beta: float, alpha: float, reduction: str = "sum"
) -> tuple[float, float, float]:
    """Check the scalar arguments of a token loss; return ``(temperature, beta, alpha)`` as floats."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    beta, alpha = _check_weights(beta, alpha)
    return check_temperature(temperature), beta, alpha


def resolve_vocab_size(student_size: int, teacher_size: int | None, vocab_size: int | None) -> int | None:
    """The number of leading ids both models are compared on; None when there is no teacher."""
    if teacher_size is None:
        return None if vocab_size is None else _check_vocab_size(vocab_size, student_size, student_size)
    if vocab_size is None:
        if student_size != teacher_size:
            raise ValueError(
                f"the student's head has {student_size} ids and the teacher's {teacher_size}: if they share a "
                f"tokenizer and one head is padded, pass vocab_size=<the tokenizer's size, at most "
                f"{min(student_size, teacher_size)}> to compare both on their first vocab_size ids; models with "
                "different tokenizers cannot be compared token by token"
            )
        return student_size
    return _check_vocab_size(vocab_size, student_size, teacher_size)


def _check_vocab_size(vocab_size: int, student_size: int, teacher_size: int) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer or None, got {vocab_size!r}")
    if vocab_size > min(student_size, teacher_size):
        raise ValueError(
            f"vocab_size={vocab_size} exceeds a head: the student has {student_size} ids and the teacher "
            f"{teacher_size}"
        )
    return vocab_size


def check_targets(targets: Tensor, leading: Sequence[int], ignore_index: int) -> None:
    """Raise ``ValueError`` unless ``targets`` are integer ids of shape ``leading``."""
    if not isinstance(targets, Tensor):
        # ValueError, not TypeError: the loss contract raises ValueError for every bad argument
        raise ValueError(f"targets must be a tensor of token ids, got {_describe(targets)}")
    if tuple(targets.shape) != tuple(leading):
        raise ValueError(
            f"targets must have shape {tuple(leading)} (the logits' shape without the vocabulary), got "
            f"{tuple(targets.shape)}; shift labels with next_token_targets"
        )
    if targets.is_floating_point() or targets.is_complex():
        raise ValueError(f"targets must hold integer token ids, got dtype {targets.dtype}")


def check_ce_targets(targets: Tensor, num_ids: int, ignore_index: int) -> None:
    """Raise ``ValueError`` if a counted target is not an id of the student's head."""
    counted = targets[targets != ignore_index]
    bad = counted[(counted < 0) | (counted >= num_ids)]
    if bad.numel():
        raise ValueError(
            f"target {bad[0].item()} is outside the student's {num_ids} ids (0..{num_ids - 1}); "
            f"uncounted positions must be {ignore_index}"
        )


def check_topk(teacher_topk: Sequence[Tensor], leading: Sequence[int], num_ids: int) -> tuple[Tensor, Tensor, Tensor]:
    """Check a top-k teacher ``(log_probs, indices, rest)``; return it with int64 indices."""
    if not isinstance(teacher_topk, (tuple, list)) or len(teacher_topk) != 3:
        raise ValueError("a top-k teacher must be a tuple (log_probs, indices, rest)")
    top, indices, rest = teacher_topk
    leading = tuple(leading)
    if tuple(top.shape[:-1]) != leading or top.shape != indices.shape or top.dim() != len(leading) + 1:
        raise ValueError(
            f"top-k log-probabilities {tuple(top.shape)} and indices {tuple(indices.shape)} must both have shape "
            f"{leading + ('k',)} to match the student"
        )
    if tuple(rest.shape) != leading:
        raise ValueError(f"the top-k rest must have shape {leading}, got {tuple(rest.shape)}")
    if indices.is_floating_point():
        raise ValueError(f"top-k indices must be integer ids, got dtype {indices.dtype}")
    if top.shape[-1] > num_ids:
        raise ValueError(f"a top-k teacher keeps {top.shape[-1]} ids but the student compares only {num_ids}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_ids):
        raise ValueError(f"top-k indices must lie in 0..{num_ids - 1} (the ids the student compares)")
    return top, indices.long(), rest


def _describe(value: object) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


# ---------------------------------------------------------------------------
# dense token losses
# ---------------------------------------------------------------------------


def reduce_positions(values: Tensor, counted: Tensor, reduction: str) -> Tensor:
    """Per-position values ``(...)`` reduced over the ``counted`` ones (a bool mask of the same shape):
    their ``"sum"``, ``"mean"`` (0 when none counts), or ``"none"`` (0 at uncounted positions)."""
    # where (not a product) so that an uncounted position holding inf gives 0, not NaN
    values = torch.where(counted, values, torch.zeros((), dtype=values.dtype, device=values.device))
    if reduction == "none":
        return values
    total = values.sum()
    if reduction == "sum":
        return total
    return total / counted.sum().clamp_min(1).to(total.dtype)


def check_logits(student_logits: Tensor, teacher_logits: Tensor | None) -> None:
    """Raise ``ValueError`` unless the student's logits are ``(B, L, V)`` or ``(N, V)`` and the
    teacher's (if given) have the same positions."""
    if not isinstance(student_logits, Tensor) or student_logits.dim() < 2:
        raise ValueError(f"student_logits must have shape (B, L, V) or (N, V), got {_describe(student_logits)}")
    if teacher_logits is None:
        return
    if not isinstance(teacher_logits, Tensor) or teacher_logits.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"teacher_logits must have shape {tuple(student_logits.shape[:-1]) + ('V',)} to match the student's "
            f"{tuple(student_logits.shape)}, got {_describe(teacher_logits)}"
        )


def token_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    targets: Tensor,
    kind: str,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    ignore_index: int = -100,
    reduction: str = "sum",
    vocab_size: int | None = None,
) -> Tensor:
    """A token-level loss of the student against the teacher's logits (or the targets for ``"ce"``).

    Args:
        student_logits: ``(B, L, V_s)`` or ``(N, V_s)``; gradients flow through it.
        teacher_logits: ``(B, L, V_t)`` / ``(N, V_t)``, a constant target; None for ``kind="ce"``.
        targets: ``(B, L)`` / ``(N,)`` next-token ids (see :func:`next_token_targets`); a position
            counts where its target is not ``ignore_index``.
        kind: one of :data:`DIVERGENCES` (times ``T²``) or ``"ce"`` (the student's cross-entropy
            on the targets at T = 1, on its full head).
        temperature: ``T > 0``; log-probabilities are ``log_softmax(logits / T)``.
        beta: the ``jsd`` weight in ``[0, 1]`` (0: forward KL, 1: reverse KL, see :func:`divergence`).
        alpha: the skew weight of ``skew_kl`` / ``skew_reverse_kl`` in ``[0, 1]``.
        ignore_index: the target value of positions that do not count.
        reduction: ``"sum"`` over counted positions, ``"mean"`` over them (0 when none counts), or
            ``"none"``: ``(B, L)`` / ``(N,)`` values, 0 at uncounted positions.
        vocab_size: compare both models on their first ``vocab_size`` ids (heads padded to different
            sizes, e.g. 49152 and 49216); required when the last dimensions differ.

    Returns:
        A float32 (float64 for float64 logits) scalar, or per-position values for ``"none"``.
    """
    temperature, beta, alpha = check_loss_args(kind, temperature, beta, alpha, reduction)
    if kind != "ce" and teacher_logits is None:
        raise ValueError(f"kind={kind!r} needs teacher_logits; only kind='ce' works without a teacher")
    teacher_logits = None if kind == "ce" else teacher_logits
    check_logits(student_logits, teacher_logits)
    check_targets(targets, student_logits.shape[:-1], ignore_index)
    if kind == "ce":
        check_ce_targets(targets, student_logits.shape[-1], ignore_index)
    else:
        vocab_size = resolve_vocab_size(student_logits.shape[-1], teacher_logits.shape[-1], vocab_size)
        teacher_logits = teacher_logits.detach()
    values = per_position(
        student_logits,
        targets,
        kind,
        teacher_logits=teacher_logits,
        temperature=temperature,
        beta=beta,
        alpha=alpha,
        ignore_index=ignore_index,
        vocab_size=vocab_size,
    )
    return reduce_positions(values, targets != ignore_index, reduction)


def token_loss_topk(
    student_logits: Tensor,
    teacher_log_probs: Tensor,
    teacher_indices: Tensor,
    teacher_rest: Tensor,
    targets: Tensor,
    kind: str,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    ignore_index: int = -100,
    reduction: str = "sum",
    vocab_size: int | None = None,
) -> Tensor:
    """:func:`token_loss` against a teacher kept as its top-k ids plus the rest of its mass.

    Both distributions are coarsened to ``k + 1`` buckets: the teacher's k most probable ids and
    one bucket with the remaining mass. The student's bucket log-probabilities are its
    log-probabilities at those ids and the logsumexp of all others; the divergence is taken
    between the two coarsened distributions. When k covers every compared id there is no rest
    bucket (a stored rest is rounding), and the result equals :func:`token_loss`.

    Args:
        student_logits: ``(B, L, V_s)`` or ``(N, V_s)``.
        teacher_log_probs: ``(..., k)`` the teacher's log-probabilities at ``temperature``.
        teacher_indices: ``(..., k)`` their ids.
        teacher_rest: ``(...)`` log of the teacher's mass outside its top k (``-inf`` when none).
        targets, kind, temperature, beta, alpha, ignore_index, reduction: as in :func:`token_loss`.
        vocab_size: compare on the student's first ``vocab_size`` ids (default: all of them).

    Returns:
        As :func:`token_loss`.
    """
    temperature, beta, alpha = check_loss_args(kind, temperature, beta, alpha, reduction)
    check_logits(student_logits, None)
    check_targets(targets, student_logits.shape[:-1], ignore_index)
    topk = None
    if kind == "ce":
        check_ce_targets(targets, student_logits.shape[-1], ignore_index)
    else:
        vocab_size = resolve_vocab_size(student_logits.shape[-1], None, vocab_size)
        compared = student_logits.shape[-1] if vocab_size is None else vocab_size
        top, indices, rest = check_topk(
            (teacher_log_probs, teacher_indices, teacher_rest), student_logits.shape[:-1], compared
        )
        topk = (top.detach(), indices.to(student_logits.device), rest.detach())
    values = per_position(
        student_logits,
        targets,
        kind,
        teacher_topk=topk,
        temperature=temperature,
        beta=beta,
        alpha=alpha,
        ignore_index=ignore_index,
        vocab_size=vocab_size,
    )
    return reduce_positions(values, targets != ignore_index, reduction)
