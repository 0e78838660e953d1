"""Token-level losses computed in chunks from hidden states, never from full logits.

A causal LM's logits are ``tokens × vocabulary``: 2048 tokens of a 49,152-id vocabulary are
400 MB in float32 per model, and the dense loss keeps several such tensors (both models' logits,
log-probabilities, probabilities, gradients) alive at once. :func:`chunked_token_loss` takes the
**final hidden states** and the **output embedding** (``lm_head`` weight and bias) of each model
instead, and walks over the counted tokens in chunks: per chunk it computes both models' logits by
a matmul, the loss, and its gradient with respect to the chunk's student logits; then the next
chunk reuses the same buffers.

**Gradients are computed in the forward pass** (and accumulated: the student's hidden rows, head
weight and bias); backward only multiplies them by the incoming gradient. The alternative,
keeping only the inputs and recomputing each chunk's student logits in backward, costs one more
``tokens × hidden × vocabulary`` matmul: 5 such matmuls instead of the dense path's 4 (student and
teacher logits, the gradients of hidden states and weight), about 25% more time, which misses
the time target (chunked within 10% of dense). The price of computing them early: the gradients
(the size of the student's inputs, which the caller needs anyway) are held from forward to
backward, backward cannot run twice on one result (``retain_graph``), and the work is done even if
backward never runs, except under ``torch.no_grad()``, where only the value is computed.

**Per chunk**: forward KL and cross-entropy have closed-form gradients (``T·(q − p)`` and
``softmax − one-hot``) computed in place in three chunk-sized buffers; so has forward KL from a
teacher kept as ids drawn from it (``T·(q − c/N)``, :mod:`kdistill.losses.sampled`). The other
divergences and top-k teachers use the per-token code of :mod:`kdistill.losses.tokens` under autograd, from the
student's log-probabilities (the log-softmax's backward is applied by hand, so autograd never
keeps the logits). The buffers are allocated once per call: allocating and freeing them per chunk
fragments CPU heaps, whose resident memory then grows far past the live set.

**Chunk size**: by default a chunk holds ``DEFAULT_CHUNK_ELEMENTS // vocabulary`` tokens (at least
one), so that one chunk's logits are 16 MiB of float32 whatever the vocabulary: 85 tokens at
49,152 ids, 1/24 of the logits of a 4 × 512 batch; half as many for the autograd kinds, which keep
about four times as many temporaries. The other fixed cost is the student's weight gradient
(``vocabulary × hidden``).

Only the positions whose target is not ``ignore_index`` are computed: they are gathered first.
The loss is computed in float32 (float64 for float64 inputs); the gradients come back in the
dtypes of the inputs (a half-precision head's weight and bias gradients are summed over chunks in
float32). The code is device-agnostic (CPU and CUDA).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from kdistill.losses.heads import BlendedHeads, check_blend, check_head, flat_blend, logits_into
from kdistill.losses.sampled import check_sampled, sampled_forward_kl, sampled_kind_error
from kdistill.losses.tokens import (
    check_ce_targets,
    check_loss_args,
    check_targets,
    check_topk,
    compute_dtype,
    divergence,
    log_prob_pair,
    log_softmax,
    per_position,
    resolve_vocab_size,
)

__all__ = ["CLOSED_FORM", "DEFAULT_CHUNK_ELEMENTS", "chunked_token_loss", "default_chunk_size"]

#: logits values per chunk by default (16 MiB of float32)
DEFAULT_CHUNK_ELEMENTS = 2**22


#: kinds whose gradient is written in closed form; the others go through autograd per chunk
CLOSED_FORM = ("forward_kl", "ce")


def default_chunk_size(vocab_size: int, kind: str = "forward_kl", topk: bool = False) -> int:
    """Tokens per chunk so that one chunk's logits hold about :data:`DEFAULT_CHUNK_ELEMENTS` values;
    half as many where the gradient goes through autograd (kinds outside :data:`CLOSED_FORM`, or
    a divergence from a top-k teacher), which keeps more chunk-sized temporaries."""
    closed = kind == "ce" or (kind in CLOSED_FORM and not topk)
    elements = DEFAULT_CHUNK_ELEMENTS if closed else DEFAULT_CHUNK_ELEMENTS // 2
    return max(1, elements // max(1, vocab_size))


@dataclass(frozen=True)
class _Settings:
    kind: str
    temperature: float
    beta: float
    alpha: float
    ignore_index: int
    compared: int  # ids compared by a divergence (the student's full head for "ce")
    chunk_size: int
    wants: tuple[bool, bool, bool]  # gradients wanted for (hidden, weight, bias)


def _rows(tensor: Tensor | None, rows: Tensor | None) -> Tensor | None:
    if tensor is None or rows is None:
        return tensor
    return tensor.index_select(0, rows)


class _Workspace:
    """Chunk-sized buffers, allocated once per call and reused by every chunk.

    Allocating and freeing a handful of chunk-sized tensors per chunk fragments the heap of CPU
    allocators, whose resident memory then grows well past the live set (by about 80 MB at the
    benchmark's size). Compute slots are numbered; a model's raw logits live in a slot of their
    own dtype, which for float32 models is a compute slot itself (0 for the student, 1 for the
    teacher), so that float32 needs three slots and no copies.
    """

    def __init__(self, rows: int, width: int, device: torch.device, dtype: torch.dtype) -> None:
        self.rows, self.width, self.device, self.dtype = rows, width, device, dtype
        self.buffers: dict[tuple[object, torch.dtype], Tensor] = {}

    def _take(self, name: object, rows: int, dtype: torch.dtype) -> Tensor:
        key = (name, dtype)
        if key not in self.buffers:
            self.buffers[key] = torch.empty((self.rows, self.width), dtype=dtype, device=self.device)
        return self.buffers[key][:rows]

    def matrix(self, name: str, shape: tuple[int, int], dtype: torch.dtype) -> Tensor:
        """A buffer of a fixed ``shape`` (not chunk-sized)."""
        key = (name, dtype)
        if key not in self.buffers:
            self.buffers[key] = torch.empty(shape, dtype=dtype, device=self.device)
        return self.buffers[key]

    def slot(self, index: int, rows: int) -> Tensor:
        """Compute slot ``index``: ``(rows, width)`` in the compute dtype."""
        return self._take(index, rows, self.dtype)

    def raw(self, who: str, rows: int, dtype: torch.dtype) -> Tensor:
        """Where ``who``'s logits (or logit gradients, ``"grad"``) of ``dtype`` are written."""
        if dtype == self.dtype and who in ("student", "teacher"):
            return self.slot(0 if who == "student" else 1, rows)
        return self._take(who, rows, dtype)

    def mask(self, rows: int) -> Tensor:
        return self._take("mask", rows, torch.bool)


def _log_probs_into(ws: _Workspace, raw: Tensor, temperature: float, out: int, scratch: int) -> Tensor:
    """``log_softmax(raw / T)`` into compute slot ``out``; ``raw`` (a workspace buffer) may be overwritten."""
    rows = raw.shape[0]
    if temperature != 1.0:
        # the same operations as the dense path (upcast, divide, log-softmax): the same log-probabilities
        scaled = raw if raw.dtype == ws.dtype else ws.slot(scratch, rows).copy_(raw)
        raw = scaled.div_(temperature)
    return torch.log_softmax(raw, dim=-1, dtype=ws.dtype, out=ws.slot(out, rows))


def _value_and_grad(
    ws: _Workspace, student: Tensor, teacher: dict, targets: Tensor, settings: _Settings, grad: bool
) -> tuple[Tensor, Tensor | None]:
    """The summed loss of one chunk and, if ``grad``, its gradient with respect to the chunk's
    student logits (a compute slot). ``teacher`` holds ``teacher_logits``, ``teacher_topk`` or
    ``teacher_sampled``."""
    if not grad and "teacher_sampled" in teacher:
        values = sampled_forward_kl(log_softmax(student, settings.temperature), *teacher["teacher_sampled"])
        return values.sum() * settings.temperature**2, None
    if not grad:
        values = per_position(
            student,
            targets,
            settings.kind,
            **teacher,
            temperature=settings.temperature,
            beta=settings.beta,
            alpha=settings.alpha,
            ignore_index=settings.ignore_index,
        )
        return values.sum(), None
    if settings.kind == "ce":
        return _cross_entropy(ws, student, targets)
    if settings.kind == "forward_kl" and "teacher_logits" in teacher:
        return _forward_kl(ws, student, teacher["teacher_logits"], settings.temperature)
    if "teacher_sampled" in teacher:
        return _forward_kl_sampled(ws, student, teacher["teacher_sampled"], settings.temperature)
    return _divergence_by_autograd(ws, student, teacher, settings)


def _cross_entropy(ws: _Workspace, student: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    # closed form, softmax − one-hot, written over the log-probabilities
    log_q = _log_probs_into(ws, student, 1.0, out=1, scratch=0)
    picked = log_q.gather(-1, targets.unsqueeze(-1))
    grad = log_q.exp_()
    grad.scatter_add_(-1, targets.unsqueeze(-1), torch.full_like(picked, -1.0))
    return -picked.sum(), grad


def _forward_kl(ws: _Workspace, student: Tensor, teacher: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """``T²·KL(p ‖ q)`` and its gradient ``T·(q − p)`` in closed form, in three compute slots
    (autograd would keep about ten chunk-sized tensors)."""
    log_p = _log_probs_into(ws, teacher, temperature, out=2, scratch=0)
    log_q = _log_probs_into(ws, student, temperature, out=1, scratch=0)
    p = torch.exp(log_p, out=ws.slot(0, log_p.shape[0]))
    terms = log_p.sub_(log_q)
    # p == 0 contributes nothing whatever log q is; a NaN p is not 0 and stays NaN
    terms.masked_fill_(torch.eq(p, 0, out=ws.mask(p.shape[0])), 0.0)
    value = torch.dot(p.reshape(-1), terms.reshape(-1)) * temperature**2
    return value, log_q.exp_().sub_(p).mul_(temperature)


def _forward_kl_sampled(
    ws: _Workspace, student: Tensor, sampled: tuple[Tensor, Tensor, Tensor], temperature: float
) -> tuple[Tensor, Tensor]:
    """``T²·Σ (c/N)(log p − log q)`` over the ids drawn and its gradient ``T·(q − c/N)``, in closed form."""
    top, indices, counts = sampled
    log_q = _log_probs_into(ws, student, temperature, out=1, scratch=0)
    value = sampled_forward_kl(log_q, top, indices, counts).sum() * temperature**2
    weights = counts.to(log_q.dtype)
    drawn = weights.sum(dim=-1, keepdim=True)
    grad = log_q.exp_()
    if bool((drawn == 0).any()):
        grad.mul_(drawn > 0)  # a position without draws has value 0, so its gradient is 0 too, not T·q
    grad.scatter_add_(-1, indices, weights.div_(drawn.clamp_min(1)).neg_())
    return value, grad.mul_(temperature) if temperature != 1.0 else grad


def _divergence_by_autograd(
    ws: _Workspace, student: Tensor, teacher: dict, settings: _Settings
) -> tuple[Tensor, Tensor]:
    """Any divergence: autograd from the student's log-probabilities, then the log-softmax's
    backward by hand, ``(g − q·Σg) / T``, so that autograd never sees the logits."""
    temperature = settings.temperature
    log_p = None
    if "teacher_logits" in teacher:
        log_p = _log_probs_into(ws, teacher["teacher_logits"], temperature, out=2, scratch=0)
    leaf = _log_probs_into(ws, student, temperature, out=1, scratch=0).detach().requires_grad_(True)
    with torch.enable_grad():
        if log_p is None:
            log_p, log_q = log_prob_pair(leaf, teacher_topk=teacher["teacher_topk"], temperature=temperature)
        else:
            log_q = leaf
        value = divergence(log_p, log_q, settings.kind, beta=settings.beta, alpha=settings.alpha).sum()
        value = value * temperature**2
    (grad,) = torch.autograd.grad(value, leaf)
    del log_p, log_q
    q = leaf.detach().exp_()
    grad.sub_(q.mul_(grad.sum(dim=-1, keepdim=True)))
    if temperature != 1.0:
        grad.div_(temperature)
    return value.detach(), grad


class _ChunkedTokenLoss(torch.autograd.Function):
    """Sum of a token loss over counted tokens, gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        student_hidden: Tensor,
        student_weight: Tensor,
        student_bias: Tensor | None,
        teacher_hidden: Tensor | None,
        teacher_weight: Tensor | None,
        teacher_bias: Tensor | None,
        topk_log_probs: Tensor | None,
        topk_indices: Tensor | None,
        topk_rest: Tensor | None,
        sampled_log_probs: Tensor | None,
        sampled_indices: Tensor | None,
        sampled_counts: Tensor | None,
        blend: BlendedHeads | None,
        targets: Tensor,
        settings: _Settings,
    ) -> Tensor:
        counted = targets != settings.ignore_index
        rows = None if bool(counted.all()) else counted.nonzero().squeeze(1)
        hidden, targets = _rows(student_hidden, rows), _rows(targets, rows)
        teacher_hidden, top = _rows(teacher_hidden, rows), _rows(topk_log_probs, rows)
        indices, rest = _rows(topk_indices, rows), _rows(topk_rest, rows)
        drawn = [_rows(tensor, rows) for tensor in (sampled_log_probs, sampled_indices, sampled_counts)]
        blend = None if blend is None else blend.rows(rows)
        size = settings.compared
        weight = student_weight[:size]
        bias = None if student_bias is None else student_bias[:size]
        if teacher_weight is not None:
            teacher_weight = teacher_weight[:size]
            teacher_bias = None if teacher_bias is None else teacher_bias[:size]
        grads = _Gradients(student_hidden, hidden.shape[0], student_weight, student_bias, settings.wants)
        dtype = compute_dtype(student_hidden.dtype)
        ws = _Workspace(min(settings.chunk_size, hidden.shape[0]), size, student_hidden.device, dtype)
        total = torch.zeros((), dtype=dtype, device=student_hidden.device)
        for start in range(0, hidden.shape[0], settings.chunk_size):
            chunk = slice(start, start + settings.chunk_size)
            h = hidden[chunk]
            student = logits_into(ws.raw("student", h.shape[0], weight.dtype), h, weight, bias)
            teacher: dict[str, object] = {}
            if teacher_weight is not None:
                out = ws.raw("teacher", h.shape[0], teacher_weight.dtype)
                teacher["teacher_logits"] = logits_into(out, teacher_hidden[chunk], teacher_weight, teacher_bias)
            elif blend is not None:
                teacher["teacher_logits"] = blend.logits(chunk, size, settings.temperature)
            elif top is not None:
                teacher["teacher_topk"] = (top[chunk], indices[chunk], rest[chunk])
            elif drawn[0] is not None:
                teacher["teacher_sampled"] = tuple(tensor[chunk] for tensor in drawn)
            value, grad_logits = _value_and_grad(ws, student, teacher, targets[chunk], settings, grads.any)
            total += value
            if grad_logits is not None:
                if grad_logits.dtype != weight.dtype:
                    grad_logits = ws.raw("grad", h.shape[0], weight.dtype).copy_(grad_logits)
                grads.add(chunk, grad_logits, h, weight, ws)
        ctx.grads = grads.finish(rows)
        return total

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        if ctx.grads is None:
            raise RuntimeError(
                "chunked_token_loss computes its gradients in the forward pass and hands them over once; "
                "backward through the same result twice (retain_graph=True) is not supported"
            )
        grads, ctx.grads = ctx.grads, None
        # in place: these buffers belong to this call only, and a copy would double the weight gradient
        scaled = [None if g is None else g.mul_(grad_output.to(g.dtype)) for g in grads]
        return (*scaled, *([None] * 12))


class _Gradients:
    """Accumulates the gradients of the student's hidden rows, head weight and head bias."""

    def __init__(
        self, hidden: Tensor, count: int, weight: Tensor, bias: Tensor | None, wants: tuple[bool, bool, bool]
    ) -> None:
        self.hidden_like, self.weight_like, self.bias_like = hidden, weight, bias
        self.any = any(wants)
        # full precision accumulators: summing chunks in bf16 would round every chunk's share
        accumulate = compute_dtype(weight.dtype)
        self.hidden = hidden.new_empty((count, hidden.shape[-1])) if wants[0] else None
        self.weight = torch.zeros_like(weight, dtype=accumulate) if wants[1] else None
        self.bias = torch.zeros_like(bias, dtype=accumulate) if wants[2] and bias is not None else None

    def add(self, chunk: slice, grad_logits: Tensor, hidden: Tensor, weight: Tensor, ws: _Workspace) -> None:
        size = grad_logits.shape[-1]
        if self.hidden is not None:
            torch.mm(grad_logits, weight, out=self.hidden[chunk])
        if self.weight is not None:
            if grad_logits.dtype == self.weight.dtype:
                self.weight[:size].addmm_(grad_logits.t(), hidden)
            else:
                # half-precision product of this chunk, summed in float32 (CPU has no mm with out_dtype)
                product = ws.matrix("weight", (size, hidden.shape[-1]), grad_logits.dtype)
                self.weight[:size].add_(torch.mm(grad_logits.t(), hidden, out=product))
        if self.bias is not None:
            self.bias[:size].add_(grad_logits.sum(dim=0))

    def finish(self, rows: Tensor | None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        hidden = self.hidden
        if hidden is not None and rows is not None:
            hidden = torch.zeros_like(self.hidden_like).index_copy_(0, rows, hidden)
        weight = None if self.weight is None else self.weight.to(self.weight_like.dtype)
        bias = None if self.bias is None else self.bias.to(self.bias_like.dtype)
        return hidden, weight, bias


def chunked_token_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    student_bias: Tensor | None,
    targets: Tensor,
    kind: str,
    *,
    teacher_hidden: Tensor | None = None,
    teacher_weight: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    teacher_topk: Sequence[Tensor] | None = None,
    teacher_sampled: Sequence[Tensor] | None = None,
    teacher_blend: tuple[Sequence[tuple[Tensor, Tensor, Tensor | None] | None], Tensor, str] | None = None,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    ignore_index: int = -100,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """:func:`~kdistill.losses.tokens.token_loss` with ``reduction="sum"``, from hidden states.

    Equal to ``token_loss(student_hidden @ student_weight.T + student_bias, teacher_hidden @
    teacher_weight.T + teacher_bias, targets, kind, ...)`` (or to ``token_loss_topk`` with a top-k
    teacher, ``token_loss_sampled`` with a sampled one), without ever holding either model's full logits.

    Args:
        student_hidden: ``(N, Hs)`` or ``(B, L, Hs)`` final hidden states (after the last norm).
        student_weight: ``(V_s, Hs)`` the student's output embedding (``lm_head.weight``).
        student_bias: ``(V_s,)`` or None.
        targets: ``(N,)`` / ``(B, L)`` next-token ids (see ``next_token_targets``).
        kind: a divergence of ``DIVERGENCES`` or ``"ce"`` (then no teacher is needed).
        teacher_hidden: ``(N, Ht)`` / ``(B, L, Ht)``; no gradient flows to the teacher.
        teacher_weight: ``(V_t, Ht)``; teacher_bias: ``(V_t,)`` or None.
        teacher_topk: instead of the teacher's head, ``(log_probs (…, k), indices (…, k), rest (…))``
            at ``temperature`` (see ``token_loss_topk``).
        teacher_sampled: instead, ``(log_probs (…, W), indices (…, W), counts (…, W))`` of ids drawn
            from the teacher at ``temperature``; ``kind="forward_kl"`` only (see ``token_loss_sampled``).
        teacher_blend: instead, several teachers: ``(heads, weights, combine)`` with each head
            ``(hidden (…, Hᵢ), weight (Vᵢ, Hᵢ), bias)`` or None (weight 0 there), ``weights``
            ``(n, …)`` and a rule of :mod:`kdistill.losses.combine`; each chunk's target is their
            combination (compared on the ids every head has).
        temperature, beta, alpha, ignore_index, vocab_size: as in ``token_loss``.
        chunk_size: tokens per chunk; None for :func:`default_chunk_size` of the compared vocabulary.

    Returns:
        A scalar (float32; float64 for float64 inputs): the loss summed over counted tokens.
    """
    temperature, beta, alpha = check_loss_args(kind, temperature, beta, alpha)
    check_head(student_hidden, student_weight, student_bias, "student")
    check_targets(targets, student_hidden.shape[:-1], ignore_index)
    if kind == "ce":
        check_ce_targets(targets, student_weight.shape[0], ignore_index)
        teacher_hidden = teacher_weight = teacher_bias = teacher_topk = teacher_sampled = teacher_blend = None
        compared = student_weight.shape[0]
    elif teacher_blend is not None:
        compared = check_blend(student_hidden, student_weight, teacher_blend, vocab_size)
    elif teacher_sampled is not None:
        if kind != "forward_kl":
            raise ValueError(sampled_kind_error(kind))
        if teacher_topk is not None or teacher_hidden is not None or teacher_weight is not None:
            raise ValueError(
                "give the teacher as hidden states and weight, as teacher_topk or as teacher_sampled, not several"
            )
        compared = resolve_vocab_size(student_weight.shape[0], None, vocab_size) or student_weight.shape[0]
        teacher_sampled = check_sampled(teacher_sampled, student_hidden.shape[:-1], compared)
    else:
        compared, teacher_topk = _check_teacher(
            student_hidden, student_weight, teacher_hidden, teacher_weight, teacher_bias, teacher_topk, vocab_size
        )
    if chunk_size is None:
        # the sampled forward KL is closed form, as the dense one
        chunk_size = default_chunk_size(compared, kind, topk=teacher_topk is not None)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    grad_on = torch.is_grad_enabled()
    heads = (student_hidden, student_weight, student_bias)
    wants = tuple(grad_on and t is not None and t.requires_grad for t in heads)
    settings = _Settings(kind, temperature, beta, alpha, ignore_index, compared, chunk_size, wants)
    top, indices, rest = (None, None, None) if teacher_topk is None else teacher_topk
    drawn = (None, None, None) if teacher_sampled is None else teacher_sampled
    lead, device = student_hidden.dim() - 1, student_hidden.device

    def flat(tensor: Tensor | None) -> Tensor | None:
        # positions flattened to one dimension; the teacher side detached, as it gets no gradient
        return None if tensor is None else tensor.detach().to(device).reshape(-1, *tensor.shape[lead:])

    return _ChunkedTokenLoss.apply(
        student_hidden.reshape(-1, student_hidden.shape[-1]),
        student_weight,
        student_bias,
        flat(teacher_hidden),
        None if teacher_weight is None else teacher_weight.detach(),
        None if teacher_bias is None else teacher_bias.detach(),
        flat(top),
        flat(indices),
        flat(rest),
        *(flat(tensor) for tensor in drawn),
        None if teacher_blend is None else flat_blend(teacher_blend, device),
        targets.reshape(-1).to(device),
        settings,
    )


def _check_teacher(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor | None,
    teacher_weight: Tensor | None,
    teacher_bias: Tensor | None,
    teacher_topk: Sequence[Tensor] | None,
    vocab_size: int | None,
) -> tuple[int, tuple[Tensor, Tensor, Tensor] | None]:
    """Check the teacher of a divergence; return the number of ids compared and the top-k teacher."""
    student_size = student_weight.shape[0]
    if teacher_topk is not None:
        if teacher_hidden is not None or teacher_weight is not None:
            raise ValueError("give the teacher either as hidden states and weight or as teacher_topk, not both")
        compared = resolve_vocab_size(student_size, None, vocab_size) or student_size
        return compared, check_topk(teacher_topk, student_hidden.shape[:-1], compared)
    if teacher_hidden is None or teacher_weight is None:
        raise ValueError("a divergence needs teacher_hidden and teacher_weight, or teacher_topk")
    check_head(teacher_hidden, teacher_weight, teacher_bias, "teacher")
    if teacher_hidden.shape[:-1] != student_hidden.shape[:-1]:
        raise ValueError(
            f"teacher_hidden {tuple(teacher_hidden.shape)} and student_hidden {tuple(student_hidden.shape)} "
            "must have the same positions"
        )
    return resolve_vocab_size(student_size, teacher_weight.shape[0], vocab_size), None
