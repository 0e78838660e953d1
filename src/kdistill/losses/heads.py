"""A model's output layer given as tensors, ``(hidden, weight, bias)``, and several teachers' heads
blended into one target chunk by chunk: the pieces :mod:`kdistill.losses.chunked` computes
logits from, never holding a batch's logits whole."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from kdistill.losses.combine import target_logits

__all__ = ["BlendedHeads", "check_blend", "check_head", "flat_blend", "logits_into"]

#: several teachers' heads and their weights: ``(heads, weights (n, ...), combine rule)``
Blend = tuple[Sequence[tuple[Tensor, Tensor, Tensor | None] | None], Tensor, str]


def logits_into(out: Tensor, hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``hidden @ weight.T + bias`` written into ``out``: ``(N, H)``, ``(V, H)`` -> ``(N, V)``."""
    if bias is None:
        return torch.mm(hidden, weight.t(), out=out)
    return torch.addmm(bias, hidden, weight.t(), out=out)


def check_head(hidden: Tensor, weight: Tensor, bias: Tensor | None, who: str) -> None:
    """Refuse, naming ``who``, an output layer whose hidden states ``(N, H)`` / ``(B, L, H)``, weight
    ``(V, H)`` and bias ``(V,)`` do not fit together or do not share a dtype."""
    if not isinstance(hidden, Tensor) or hidden.dim() < 2:
        shape = tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__
        raise ValueError(f"{who}_hidden must have shape (N, H) or (B, L, H), got {shape}")
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(
            f"{who}_weight must have shape (V, {hidden.shape[-1]}) (the output embedding, as lm_head.weight), "
            f"got {shape}"
        )
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (weight.shape[0],)):
        raise ValueError(f"{who}_bias must have shape ({weight.shape[0]},) or be None")
    if weight.dtype != hidden.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise ValueError(
            f"the {who}'s hidden states ({hidden.dtype}), weight ({weight.dtype}) and bias must share a dtype"
        )


@dataclass(frozen=True)
class BlendedHeads:
    """Several teachers' heads and their weights at each counted position (``(n, N)``)."""

    heads: tuple[tuple[Tensor, Tensor, Tensor | None] | None, ...]
    weights: Tensor
    combine: str

    def rows(self, rows: Tensor | None) -> BlendedHeads:
        """Only the positions ``rows`` (None: all of them)."""
        if rows is None:
            return self
        heads = tuple(None if h is None else (h[0].index_select(0, rows), h[1], h[2]) for h in self.heads)
        return BlendedHeads(heads, self.weights.index_select(1, rows), self.combine)

    def logits(self, chunk: slice, size: int, temperature: float) -> Tensor:
        """The chunk's combined target as logits at ``temperature`` (float32), over the first ``size`` ids."""
        found = []
        for head in self.heads:
            if head is None:
                found.append(None)
                continue
            hidden, weight, bias = head
            found.append(
                logits_into(
                    hidden.new_empty((hidden[chunk].shape[0], size)),
                    hidden[chunk],
                    weight[:size],
                    None if bias is None else bias[:size],
                )
            )
        return target_logits(found, self.weights[:, chunk], self.combine, temperature)


def check_blend(
    student_hidden: Tensor,
    student_weight: Tensor,
    blend: Blend,
    vocab_size: int | None,
) -> int:
    """Check several teachers' heads against the student; return the number of ids compared."""
    heads, weights, _ = blend
    present = [head for head in heads if head is not None]
    if not present:
        raise ValueError("teacher_blend holds no teacher")
    lead = tuple(student_hidden.shape[:-1])
    if tuple(weights.shape) != (len(heads), *lead):
        raise ValueError(f"teacher_blend weights must have shape {(len(heads), *lead)}, got {tuple(weights.shape)}")
    for hidden, weight, bias in present:
        check_head(hidden, weight, bias, "teacher")
        if tuple(hidden.shape[:-1]) != lead:
            raise ValueError(
                f"a blended teacher's hidden states {tuple(hidden.shape)} do not fit the student's {lead}"
            )
    shared = min(student_weight.shape[0], *(weight.shape[0] for _, weight, _ in present))
    return shared if vocab_size is None else min(shared, vocab_size)


def flat_blend(blend: Blend, device: torch.device) -> BlendedHeads:
    """``blend`` with its positions flattened to one dimension on ``device`` (the teachers detached:
    they get no gradient)."""
    heads, weights, combine = blend
    flat = tuple(
        None
        if head is None
        else (
            head[0].detach().to(device).reshape(-1, head[0].shape[-1]),
            head[1].detach(),
            None if head[2] is None else head[2].detach(),
        )
        for head in heads
    )
    return BlendedHeads(flat, weights.detach().to(device).reshape(len(heads), -1).float(), combine)
