"""The seed's loss names, working as the seed describes, on top of kdistill's loss contract."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from kdistill.losses import functional as LF

__all__ = ["DistillationLoss", "LayerDistillationLoss", "attention_distillation_loss"]


class DistillationLoss(nn.Module):
    """``alpha · T² · KL(p_teacher ‖ p_student) + (1 − alpha) · CE(student, labels)``.

    The seed's classic distillation loss, with its pitfalls handled: computed in float32,
    stable for large logits, padding labels (``ignore_index``) skipped, and an optional
    ``mask`` for per-token logits.

    Args:
        temperature: softening temperature ``T > 0``; 4 is a good default.
        alpha: weight of the teacher's soft labels in [0, 1] (0.5-0.9 is typical; higher
            means more weight on the teacher).
        ignore_index: label value that does not count in the hard loss.

    Example:
        >>> import torch
        >>> loss_fn = DistillationLoss(temperature=4.0, alpha=0.5)
        >>> student_logits, teacher_logits = torch.randn(8, 3), torch.randn(8, 3)
        >>> loss = loss_fn(student_logits, teacher_logits, torch.randint(0, 3, (8,)))
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.5, ignore_index: int = -100) -> None:
        super().__init__()
        self.temperature = LF.check_temperature(temperature)
        self.alpha = LF.check_unit_interval(alpha, "alpha")
        self.ignore_index = int(ignore_index)

    def parts(
        self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None, mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The two unweighted parts, ``{"kd": ..., "ce": ...}``; a part whose weight is 0 is left out."""
        parts: dict[str, Tensor] = {}
        if self.alpha > 0:
            parts["kd"] = LF.soft_kd(student_logits, teacher_logits, self.temperature, mask=mask)
        if self.alpha < 1:
            if labels is None:
                raise ValueError("DistillationLoss with alpha < 1 needs labels for its hard-label part")
            parts["ce"] = LF.hard_ce(student_logits, labels, self.ignore_index, mask=mask)
        return parts

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Return the combined loss, a float32 scalar.

        Args:
            student_logits: ``(B, C)`` or ``(B, L, C)``.
            teacher_logits: same shape as ``student_logits``.
            labels: ``(B,)`` or ``(B, L)`` class ids; optional when ``alpha == 1``.
            mask: optional ``(B,)`` or ``(B, L)`` selection of positions that count.
        """
        parts = self.parts(student_logits, teacher_logits, labels, mask)
        total = parts["kd"] * self.alpha if "kd" in parts else 0.0
        if "ce" in parts:
            total = total + (1.0 - self.alpha) * parts["ce"]
        return total  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, alpha={self.alpha:g}"


class LayerDistillationLoss(nn.Module):
    """The seed's layer-wise loss: MSE between a teacher hidden state and the projected student's.

    Fixed from the seed: padded positions are left out when a ``mask`` is given, the loss is
    computed in float32, and the projection is only created where the widths differ (the
    student is compared as is otherwise). The projection is a parameter of this module: give
    ``loss_fn.parameters()`` to the optimizer with the student's.

    Args:
        teacher_dim: the teacher's hidden width.
        student_dim: the student's hidden width.

    Example:
        >>> import torch
        >>> loss_fn = LayerDistillationLoss(teacher_dim=48, student_dim=32)
        >>> loss = loss_fn(torch.randn(2, 5, 48), torch.randn(2, 5, 32))
    """

    def __init__(self, teacher_dim: int, student_dim: int) -> None:
        super().__init__()
        for name, value in (("teacher_dim", teacher_dim), ("student_dim", student_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer (a hidden width), got {value!r}")
        self.teacher_dim, self.student_dim = teacher_dim, student_dim
        self.projector: nn.Module = (
            nn.Linear(student_dim, teacher_dim) if student_dim != teacher_dim else nn.Identity()
        )

    def forward(self, teacher_hidden: Tensor, student_hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        """Return the loss, a float32 scalar.

        Args:
            teacher_hidden: ``(B, L, teacher_dim)`` (or ``(B, teacher_dim)``).
            student_hidden: ``(B, L, student_dim)`` (or ``(B, student_dim)``).
            mask: optional ``(B, L)``, 1 for real tokens and 0 for padding.
        """
        if not isinstance(student_hidden, Tensor) or student_hidden.shape[-1] != self.student_dim:
            shape = (
                tuple(student_hidden.shape) if isinstance(student_hidden, Tensor) else type(student_hidden).__name__
            )
            raise ValueError(
                f"student_hidden must end in the student width {self.student_dim}, got {shape} "
                "(the seed's argument order is (teacher_hidden, student_hidden))"
            )
        with torch.autocast(student_hidden.device.type, enabled=False):
            projected = self.projector(student_hidden.float())
        return LF.hidden_mse(projected, teacher_hidden, mask)

    def extra_repr(self) -> str:
        return f"teacher_dim={self.teacher_dim}, student_dim={self.student_dim}"


def attention_distillation_loss(
    teacher_attentions: Sequence[Tensor] | Mapping[int, Tensor],
    student_attentions: Sequence[Tensor] | Mapping[int, Tensor],
    mapping: Mapping[int, int],
    mask: Tensor | None = None,
    heads: str = "auto",
) -> Tensor:
    """The seed's attention loss: MSE between mapped attention maps, averaged over the pairs.

    ``mapping`` is ``{student_layer: teacher_layer}`` and indexes the two collections directly,
    as in the seed: for Hugging Face ``outputs.attentions`` tuples index 0 is the first layer; for
    :class:`~kdistill.capture.Features` ``attentions`` dicts the keys are layer numbers from 1.

    Fixed from the seed: padded queries and keys are left out when a ``mask`` is given; different
    head counts are handled by averaging the teacher's heads (the seed's way, the default) or by
    comparing head-averaged maps (``heads="average_both"``) — the seed expanded the averaged
    teacher map over the student's heads, which gives the same loss without the copy; the result
    is float32; a bad index or an empty mapping is a clear error.

    Args:
        teacher_attentions: per layer, ``(B, Ht, L, L)``.
        student_attentions: per layer, ``(B, Hs, L, L)``.
        mapping: ``{student_layer: teacher_layer}``, non-empty.
        mask: optional ``(B, L)``, 1 for real tokens and 0 for padding.
        heads: ``"auto"`` (the seed's way: head by head when the counts agree, else against the
            teacher's head average), ``"average_teacher"``, ``"average_both"`` or ``"per_head"``
            (see :func:`~kdistill.losses.functional.align_heads`).

    Returns:
        A float32 scalar.
    """
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError("mapping must be a non-empty dict {student_layer: teacher_layer}")
    total: Tensor | None = None
    for student_layer, teacher_layer in mapping.items():
        maps = []
        for side, collection, index in (
            ("student", student_attentions, student_layer),
            ("teacher", teacher_attentions, teacher_layer),
        ):
            try:
                if isinstance(index, bool) or not isinstance(index, int):
                    raise TypeError
                maps.append(collection[index])
            except (IndexError, KeyError, TypeError):
                valid = sorted(collection) if isinstance(collection, Mapping) else f"0..{len(collection) - 1}"
                raise ValueError(
                    f"{side} attention layer {index!r} is not in the given attentions (valid: {valid})"
                ) from None
        loss = LF.attention_mse(maps[0], maps[1], mask, heads)
        total = loss if total is None else total + loss
    assert total is not None
    return total / len(mapping)
