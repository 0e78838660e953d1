"""The base class of every loss term, and of its YAML settings.

A :class:`Term` compares a student's and a teacher's :class:`~kdistill.capture.Features`; it says
what it needs from each forward pass (:meth:`Term.request`) and whether it needs hard labels.
Its nested ``Settings`` (a :class:`TermSettings`) are its YAML keys;
:func:`~kdistill.losses.registry.register_term` makes a subclass reachable by name.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field
from torch import Tensor, nn

from kdistill.capture.features import CaptureRequest, Features
from kdistill.losses.reduction import check_temperature
from kdistill.schema import Section

__all__ = ["Side", "Temperature", "Term", "TermSettings", "pair_mask"]

#: which of the two models a term asks about
Side = Literal["student", "teacher"]


def _temperature(value: float) -> float:
    return check_temperature(value)


#: a temperature key of the config: > 0 and at least :data:`~kdistill.losses.reduction.MIN_TEMPERATURE`
#: (below it float32's softmax is one-hot and the setting cannot take effect)
Temperature = Annotated[float, Field(gt=0), AfterValidator(_temperature)]


class TermSettings(Section):
    """The YAML keys of a term; every term has ``type`` (added at registration) and ``weight``."""

    weight: float = Field(1.0, ge=0)
    teacher: str | None = Field(
        None, description="with several teachers: the one this term reads (default: their combination)"
    )


class Term(nn.Module):
    """Base class of a loss term.

    Subclasses implement :meth:`forward`, set ``needs`` (names of :class:`Features` fields they
    read) and ``needs_labels``, and override :meth:`request` when they need layers.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"logits"})
    needs_labels: ClassVar[bool] = False
    #: compares the two models position by position, so both must read the same tokens
    compares_positions: ClassVar[bool] = False
    #: a sum over target tokens (``token_sum``), normalised by the target tokens of the whole step
    token_level: ClassVar[bool] = False
    #: reads the teacher at all (a hard-label loss does not)
    reads_teacher: ClassVar[bool] = True
    #: the name a config gives the term (set by :func:`~kdistill.losses.registry.register_term`)
    term_type: ClassVar[str | None] = None

    class Settings(TermSettings):
        """A term's YAML keys: none beyond ``type`` and ``weight``."""

    @classmethod
    def from_settings(cls, settings: TermSettings, student: nn.Module | None, teacher: nn.Module | None) -> Term:
        """The term a config's settings describe (the default passes the settings' own keys to ``__init__``)."""
        return cls(**settings.model_dump(exclude={"type", "weight", "teacher"}))

    def request(self, side: Side) -> CaptureRequest:
        """What this term needs from the ``side`` model's forward pass (default: its logits)."""
        return CaptureRequest(logits="logits" in self.needs)

    def forward(self, student: Features, teacher: Features, labels: Tensor | None = None) -> Tensor:
        """Return a float32 scalar loss."""
        raise NotImplementedError


def pair_mask(student: Features, teacher: Features) -> Tensor | None:
    """The ``(B, L)`` padding mask of a pair of records: the student's, else the teacher's (both read
    the same tokens where a term compares positions)."""
    return student.attention_mask if student.attention_mask is not None else teacher.attention_mask
