"""The seed's loss names, working as the seed describes, on top of kdistill's loss contract."""

from __future__ import annotations

from torch import Tensor, nn

from kdistill.losses import functional as LF

__all__ = ["DistillationLoss"]


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
