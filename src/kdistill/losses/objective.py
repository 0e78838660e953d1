"""The objective: named, weighted loss terms combined into one loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from kdistill.capture import CaptureRequest, Features
from kdistill.losses.combine import TeacherMix
from kdistill.losses.functional import check_temperature, check_unit_interval
from kdistill.losses.teacher_targets import TeacherTargets
from kdistill.losses.terms import HardCE, LogitKD, Term

__all__ = ["LossOutput", "Objective", "StepShare"]


@dataclass
class LossOutput:
    """The result of an :class:`Objective`.

    Attributes:
        total: the weighted sum, a float32 scalar that carries gradients.
        parts: each term's *unweighted* value, detached, by name (for logging).
    """

    total: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class StepShare:
    """How one micro-batch's loss enters its optimizer step.

    A term that is a mean over the micro-batch is divided by the number of micro-batches of the
    step (so the step's gradient is their mean); a token-level term, a sum over target tokens, is
    divided by the target tokens of the whole step, all micro-batches and all processes, and
    multiplied by the number of processes (DDP averages the processes' gradients). Either way,
    the micro-batches' totals add up to the step's loss, whatever the split.

    Attributes:
        micro_batches: micro-batches in the step (gradient accumulation).
        target_tokens: target tokens of the whole step, or None (token-level terms then divide
            by their own micro-batch's count).
        processes: processes training together.
    """

    micro_batches: int = 1
    target_tokens: Tensor | int | None = None
    processes: int = 1


class Objective(nn.Module):
    """A weighted sum of named loss terms: ``loss = Σ weight_i · term_i(student, teacher)``.

    Terms with weight 0 are not computed. Trainable parts of terms (projections) are parameters
    of the objective: give ``objective.parameters()`` to the optimizer (both training paths do).

    With several teachers, ``teachers`` says how their outputs combine into the target that the
    logit-level and token-level terms read (:class:`~kdistill.losses.combine.TeacherMix`), and
    ``teacher_of`` names the one teacher a term reads instead (intermediate terms always name one:
    their projections belong to that teacher). :meth:`forward` then takes the teachers' features
    by name.

    Example:
        >>> from kdistill.losses import Objective, LogitKD, HardCE
        >>> objective = Objective({"kd": LogitKD(temperature=4.0), "ce": HardCE()},
        ...                       weights={"kd": 0.7, "ce": 0.3})
        >>> objective
        Objective(loss = 0.7·kd + 0.3·ce
          kd: LogitKD(temperature=4)
          ce: HardCE(ignore_index=-100))
    """

    def __init__(
        self,
        terms: Mapping[str, Term],
        weights: Mapping[str, float] | None = None,
        *,
        teachers: TeacherMix | None = None,
        teacher_of: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(terms, Mapping) or not terms:
            raise ValueError("an Objective needs at least one term, as a mapping {name: Term}")
        weights = dict(weights or {})
        unknown = set(weights) - set(terms)
        if unknown:
            raise ValueError(f"weights given for unknown terms {sorted(unknown)}; the terms are {sorted(terms)}")
        for name, term in terms.items():
            if not isinstance(term, Term):
                raise TypeError(f"term {name!r} must be a kdistill Term, got {type(term).__name__}")
        self.terms = nn.ModuleDict(dict(terms))
        self.weights: dict[str, float] = {}
        for name in terms:
            weight = weights.get(name, 1.0)
            if (
                isinstance(weight, bool)
                or not isinstance(weight, (int, float))
                or not math.isfinite(weight)
                or weight < 0
            ):
                raise ValueError(f"the weight of term {name!r} must be a finite number >= 0, got {weight!r}")
            self.weights[name] = float(weight)
        if all(w == 0 for w in self.weights.values()):
            raise ValueError("every term of the objective has weight 0: nothing would be trained")
        self.teachers: TeacherMix | None = None
        self.teacher_of: dict[str, str] = {}
        if teachers is not None or teacher_of:
            self.set_teachers(teachers, teacher_of or {})

    def set_teachers(self, teachers: TeacherMix | None, teacher_of: Mapping[str, str]) -> None:
        """Train from several teachers: ``teachers`` combine into the terms' target, and the terms of
        ``teacher_of`` read their named teacher instead.

        Raises:
            ValueError: a term or teacher that does not exist, a teacher no active term reads, or
                (without ``teachers``) a term that reads a teacher but names none.
        """
        if teachers is not None and not isinstance(teachers, TeacherMix):
            raise TypeError(f"teachers must be a kdistill TeacherMix, got {type(teachers).__name__}")
        names = set(teachers.names) if teachers is not None else set(teacher_of.values())
        unknown_terms = sorted(set(teacher_of) - set(self.terms))
        if unknown_terms:
            raise ValueError(
                f"teacher_of names terms {unknown_terms} that the objective lacks; its terms are {sorted(self.terms)}"
            )
        unknown = sorted({t for t in teacher_of.values() if t not in names})
        if unknown:
            raise ValueError(f"a term names teacher {unknown[0]!r}, but the teachers are {', '.join(sorted(names))}")
        if teachers is None:
            # without a combined target such a term would get an empty teacher at its first batch
            unnamed = [n for n in self.active if n not in teacher_of and not self.terms[n].request("teacher").empty]
            if unnamed:
                raise ValueError(
                    f"term {unnamed[0]!r} reads a teacher but names none, and the objective combines no teachers: "
                    f"give it teacher_of {{{unnamed[0]!r}: <teacher>}}, or give teachers=TeacherMix.of([...])"
                )
        self.teachers, self.teacher_of = teachers, dict(teacher_of)
        if teachers is not None:
            unread = [name for name in teachers.names if not self.reads(name)]
            if unread:
                raise ValueError(
                    f"no term of the objective reads teacher {unread[0]!r}: give a term teacher: {unread[0]}, let a "
                    "logit-level term read the combined teachers, or remove the teacher"
                )

    def reads(self, teacher: str) -> bool:
        """Whether an active term reads teacher ``teacher`` (by name, or through the combined target)."""
        for name in self.active:
            term = self.terms[name]
            named = self.teacher_of.get(name)
            if named == teacher:
                return True
            if (
                named is None
                and self.teachers is not None
                and teacher in self.teachers.names
                and not term.request("teacher").empty
            ):
                return True
        return False

    @classmethod
    def hinton(cls, temperature: float = 4.0, alpha: float = 0.5, ignore_index: int = -100) -> Objective:
        """Hinton et al.'s mix: ``alpha · soft_kd + (1 - alpha) · hard CE`` (the seed's loss).

        Args:
            temperature: softening temperature, > 0 (4 is the usual default).
            alpha: weight of the teacher's soft labels, in [0, 1]; 0.5-0.9 is typical.
            ignore_index: label value that does not count in the hard loss.
        """
        temperature = check_temperature(temperature)
        alpha = check_unit_interval(alpha, "alpha")
        return cls(
            {"kd": LogitKD(temperature), "ce": HardCE(ignore_index)},
            weights={"kd": alpha, "ce": 1.0 - alpha},
        )

    @property
    def active(self) -> list[str]:
        """Names of the terms that are computed (weight > 0)."""
        return [name for name, weight in self.weights.items() if weight > 0]

    @property
    def needs(self) -> frozenset[str]:
        """The :class:`~kdistill.capture.Features` fields some active term reads."""
        return frozenset().union(*(self.terms[name].needs for name in self.active))

    def request(self, side: Literal["student", "teacher"], teacher: str | None = None) -> CaptureRequest:
        """The union of what the active terms need from the ``side`` model's forward pass; with
        several teachers and ``teacher`` given, what they need from that teacher."""
        request = CaptureRequest(logits=False)
        for name in self.active:
            if side == "teacher" and teacher is not None:
                named = self.teacher_of.get(name)
                if named is not None and named != teacher:
                    continue
                if named is None and (self.teachers is None or teacher not in self.teachers.names):
                    continue
            request = request | self.terms[name].request(side)
        return request

    @property
    def several_teachers(self) -> bool:
        """Whether the objective reads several teachers by name (:meth:`set_teachers`)."""
        return self.teachers is not None or bool(self.teacher_of)

    @property
    def teacher_names(self) -> tuple[str, ...]:
        """The teachers the objective reads, in order (none for one unnamed teacher)."""
        if self.teachers is not None:
            return self.teachers.names
        return tuple(dict.fromkeys(self.teacher_of.values()))

    @property
    def needs_labels(self) -> bool:
        """Whether an active term needs hard labels."""
        return any(self.terms[name].needs_labels for name in self.active)

    @property
    def token_level(self) -> bool:
        """Whether an active term is a sum over target tokens (its step needs the step's target tokens)."""
        return any(self.terms[name].token_level for name in self.active)

    def forward(
        self,
        student: Features,
        teacher: Features | Mapping[str, Features | None],
        labels: Tensor | None = None,
        share: StepShare | None = None,
        route: Tensor | None = None,
    ) -> LossOutput:
        """Compute every active term and their weighted sum.

        Args:
            student: the student's features (gradients flow through them).
            teacher: the teacher's features (treated as constants); with several teachers, each
                one's by name (None for a routed teacher no example of the batch chose).
            labels: hard labels, ``(B,)`` or ``(B, L)``, for terms that need them.
            share: how this micro-batch enters its optimizer step; then ``total`` and ``parts``
                are this micro-batch's share of the step's loss, and they add up over the step.
                Without it each term is a mean over this batch.
            route: ``(B,)`` each example's teacher index, for ``combine: route``.
        """
        targets = self._targets(teacher, labels, route)
        mean_total: Tensor | None = None
        token_total: Tensor | None = None
        parts: dict[str, Tensor] = {}
        for name in self.active:
            term, weight = self.terms[name], self.weights[name]
            pairs = targets(name, term)
            if share is not None and term.token_level and share.target_tokens is not None:
                value = _weighted(lambda t, term=term: term.token_sum(student, t, labels), pairs)
                value = value / share.target_tokens * share.processes
                parts[name] = value.detach()
                token_total = weight * value if token_total is None else token_total + weight * value
                continue
            value = _weighted(lambda t, term=term: term(student, t, labels), pairs)
            parts[name] = value.detach() if share is None else value.detach() / share.micro_batches
            mean_total = weight * value if mean_total is None else mean_total + weight * value
        if mean_total is not None and share is not None:
            mean_total = mean_total / share.micro_batches
        total = mean_total if token_total is None else token_total if mean_total is None else mean_total + token_total
        assert total is not None  # __init__ guarantees an active term
        return LossOutput(total=total, parts=parts)

    def _targets(self, teacher: Any, labels: Tensor | None, route: Tensor | None) -> Any:
        """``(term name, term) -> [(weight, Features)]``: what each term reads from the teacher side."""
        if isinstance(teacher, Features):
            if self.several_teachers:
                raise ValueError(
                    f"this objective reads teachers {', '.join(self.teacher_names)} by name: give the teachers' "
                    "features as a mapping {name: Features}"
                )
            return lambda name, term: [(1.0, teacher)]
        if not isinstance(teacher, Mapping):
            raise TypeError(f"teacher features must be Features or a mapping of them, got {type(teacher).__name__}")
        if not self.several_teachers:
            raise ValueError(
                "the teacher side holds several teachers, but the objective has no TeacherMix: build it with "
                "Objective(..., teachers=TeacherMix.of([...]))"
            )
        combined = TeacherTargets(self.teachers, teacher, labels, route) if self.teachers is not None else None

        def target(name: str, term: Term) -> list[tuple[float, Features]]:
            named = self.teacher_of.get(name)
            if named is not None:
                found = teacher.get(named)
                if found is None:
                    raise ValueError(
                        f"term {name!r} reads teacher {named!r}, whose features are missing from the batch"
                    )
                return [(1.0, found)]
            if combined is None or term.request("teacher").empty:
                return [
                    (
                        1.0,
                        Features(
                            attention_mask=next(iter(f for f in teacher.values() if f is not None)).attention_mask
                        ),
                    )
                ]
            return combined.for_term(float(getattr(term, "temperature", 1.0)), term.token_level)

        return target

    def formula(self) -> str:
        """The objective as a formula, e.g. ``0.7·kd + 0.3·ce``."""
        return " + ".join(f"{self.weights[name]:g}·{name}" for name in self.active)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}(loss = {self.formula()}"]
        lines += [f"  {name}: {self.terms[name]!r}" for name in self.active]
        lines[-1] += ")"
        return "\n".join(lines)


def _weighted(value: Callable[[Features], Tensor], pairs: list[tuple[float, Features]]) -> Tensor:
    """``Σ wᵢ · value(targetᵢ)`` in float32 (one pair: the value itself)."""
    if len(pairs) == 1 and pairs[0][0] == 1.0:
        return value(pairs[0][1]).float()
    total: Tensor | None = None
    for weight, target in pairs:
        part = weight * value(target).float()
        total = part if total is None else total + part
    assert total is not None
    return total
