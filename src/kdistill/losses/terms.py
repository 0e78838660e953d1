"""Loss terms: small ``nn.Module``s that compare a student's and a teacher's :class:`Features`.

A term declares what it needs from the forward passes (``needs``) so that capture collects
only that, and whether it needs hard labels (``needs_labels``). Terms own their trainable
parts (projections, in later terms), so those are optimised and checkpointed with the
objective and never become part of the exported student.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from torch import Tensor

from kdistill.capture import CaptureRequest, Features
from kdistill.losses import functional as LF
from kdistill.losses.base import Temperature, Term, TermSettings
from kdistill.losses.registry import register_term

__all__ = ["JSD", "HardCE", "LogitKD", "LogitMSE", "ReverseKL", "Term"]


def _logits_pair(student: Features, teacher: Features, term: str) -> tuple[Tensor, Tensor]:
    if teacher.logits is None and teacher.topk is not None:
        raise ValueError(
            f"the {term} term needs the teacher's full logits, but the teacher cache stores top-k only; "
            "use LogitKD or build the cache with full logits"
        )
    if student.logits is None or teacher.logits is None:
        missing = "student" if student.logits is None else "teacher"
        raise ValueError(f"the {term} term needs logits, but the {missing} produced none")
    return student.logits, teacher.logits


@register_term("kd")
class LogitKD(Term):
    """Soft-label distillation ``T² · KL(p_teacher ‖ p_student)`` (see :func:`~kdistill.losses.functional.soft_kd`)."""

    class Settings(TermSettings):
        temperature: Temperature = 4.0

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = LF.check_temperature(temperature)

    def forward(self, student: Features, teacher: Features, labels: Tensor | None = None) -> Tensor:
        if teacher.logits is None and teacher.topk is not None and student.logits is not None:
            topk = teacher.topk
            if abs(topk.temperature - self.temperature) > 1e-9:
                raise ValueError(
                    f"the teacher cache holds top-k probabilities at temperature {topk.temperature:g}, but LogitKD "
                    f"uses {self.temperature:g}; rebuild the cache with temperature={self.temperature:g}"
                )
            return LF.soft_kd_topk(
                student.logits, topk.log_probs, topk.indices, topk.rest, self.temperature, mask=student.position_mask()
            )
        s, t = _logits_pair(student, teacher, "LogitKD")
        return LF.soft_kd(s, t, self.temperature, mask=student.position_mask())

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}"


@register_term("ce")
class HardCE(Term):
    """Cross-entropy of the student against the hard labels (see :func:`~kdistill.losses.functional.hard_ce`)."""

    reads_teacher: ClassVar[bool] = False

    needs_labels: ClassVar[bool] = True

    def request(self, side: Literal["student", "teacher"]) -> CaptureRequest:
        # the teacher is not needed for the hard-label loss
        return CaptureRequest(logits=side == "student")

    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)

    def forward(self, student: Features, teacher: Features, labels: Tensor | None = None) -> Tensor:
        if student.logits is None:
            raise ValueError("the HardCE term needs the student's logits, but the student produced none")
        if labels is None:
            raise ValueError(
                "the HardCE term needs labels, but the batch has none; give the batch a 'labels' entry "
                "or set the hard-label weight to 0 (alpha=1.0)"
            )
        return LF.hard_ce(student.logits, labels, self.ignore_index, mask=student.position_mask())

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"


@register_term("reverse_kl")
class ReverseKL(Term):
    """Reverse KL ``T² · KL(p_student ‖ p_teacher)`` (see :func:`~kdistill.losses.functional.reverse_kl`)."""

    class Settings(TermSettings):
        temperature: Temperature = 1.0

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = LF.check_temperature(temperature)

    def forward(self, student: Features, teacher: Features, labels: Tensor | None = None) -> Tensor:
        s, t = _logits_pair(student, teacher, "ReverseKL")
        return LF.reverse_kl(s, t, self.temperature, mask=student.position_mask())

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}"


@register_term("jsd")
class JSD(Term):
    """Generalized Jensen–Shannon divergence (see :func:`~kdistill.losses.functional.jsd`)."""

    class Settings(TermSettings):
        beta: float = Field(0.5, gt=0, lt=1)
        temperature: Temperature = 1.0

    def __init__(self, beta: float = 0.5, temperature: float = 1.0) -> None:
        super().__init__()
        self.beta = LF.check_unit_interval(beta, "beta", open_interval=True)
        self.temperature = LF.check_temperature(temperature)

    def forward(self, student: Features, teacher: Features, labels: Tensor | None = None) -> Tensor:
        s, t = _logits_pair(student, teacher, "JSD")
        return LF.jsd(s, t, self.beta, self.temperature, mask=student.position_mask())

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, temperature={self.temperature:g}"


@register_term("logit_mse")
class LogitMSE(Term):
    """Mean squared error between raw logits (see :func:`~kdistill.losses.functional.logit_mse`)."""

    def forward(self, student: Features, teacher: Features, labels: Tensor | None = None) -> Tensor:
        s, t = _logits_pair(student, teacher, "LogitMSE")
        return LF.logit_mse(s, t, mask=student.position_mask())
