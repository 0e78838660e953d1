"""The config of several teachers (docs/multi_teacher.md): the ``objective.teachers`` section, and
the checks that read more than one section (teacher names and where each teacher is, which terms
read which teacher, a route's data column), which :mod:`kdistill.app.config` runs when a run
config is validated."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from kdistill.losses.registry import term_class
from kdistill.schema import Section

__all__ = ["RESERVED_TEACHER_NAMES", "TeachersObjectiveConfig", "check_teacher_names", "check_term_teachers"]

#: names a run gives its own models and records; no teacher may be called so
RESERVED_TEACHER_NAMES = ("teacher", "student", "combined", "teachers")


class TeachersObjectiveConfig(Section):
    """How several teachers combine into the target of the logit-level and token-level terms
    (docs/multi_teacher.md)."""

    combine: Literal["mixture", "logit_mean", "confidence", "entropy", "route"] = Field(
        "mixture",
        description="mixture: probabilities averaged; logit_mean: logits averaged; confidence / entropy: "
        "per example, by the probability of the gold label / by certainty; route: the data names each example's",
    )
    temperature: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="confidence and entropy only (default 1.0): lower trusts the best more",
    )
    offload: bool = Field(
        False, description="on an accelerator: each teacher moves to the device for its forward only"
    )

    @model_validator(mode="after")
    def _temperature_that_applies(self) -> TeachersObjectiveConfig:
        if self.combine in ("confidence", "entropy"):
            if self.temperature is None:
                self.temperature = 1.0  # the resolved config records what ran
        elif self.temperature is not None:
            raise ValueError(
                f"objective.teachers.temperature applies to combine: confidence or entropy, not {self.combine}: "
                "remove it"
            )
        return self


def check_teacher_names(teachers: Mapping[str, Any]) -> None:
    """Names that can be folder names and metric keys, no two teachers in one place.

    Raises:
        ValueError: a reserved or unusable name, the same folder or package twice, or all weights zero.
    """
    for name in teachers:
        if name in RESERVED_TEACHER_NAMES or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise ValueError(
                f"teachers: {name!r} cannot name a teacher (letters, digits, _ . -, at most 64, not "
                f"{', '.join(RESERVED_TEACHER_NAMES)})"
            )
    places: dict[str, str] = {}
    for name, section in teachers.items():
        place = f"package {section.package}" if section.package is not None else f"folder {_resolved(section.path)}"
        place += f" ({section.gguf_file})" if getattr(section, "gguf_file", None) else ""
        if place in places:
            raise ValueError(
                f"teachers {places[place]} and {name} are the same model ({place}): give each teacher once, or a "
                "higher weight instead"
            )
        places[place] = name
    if len(teachers) < 1 or all(section.weight == 0 for section in teachers.values()):
        raise ValueError("teachers: give at least one teacher a weight > 0")


def _resolved(path: str | None) -> str:
    return str(Path(path).resolve()) if path is not None and Path(path).exists() else str(path)


def check_term_teachers(teachers: Mapping[str, Any], objective: Any, data: Any) -> None:
    """Every term names a teacher that exists, intermediate terms name theirs, every teacher is read,
    and ``combine: route`` goes with a data column that names each example's teacher.

    Args:
        teachers: the ``teachers:`` sections by name.
        objective: the ``objective:`` section (None: nothing to check).
        data: the ``data:`` section (its ``route_field``).

    Raises:
        ValueError: one line naming the setting.
    """
    if objective is None:
        return
    if objective.preset in ("tinybert", "minilm"):
        raise ValueError(
            f"preset {objective.preset} distils one teacher's layers: with teachers: use preset hinton, or terms "
            "whose intermediate terms name their teacher (teacher: <name>)"
        )
    read: set[str] = set()
    combined = objective.preset is not None  # hinton's soft labels read the combined teachers
    for name, term in (objective.terms or {}).items():
        kind = term_class(term.type)
        if term.teacher is not None:
            if term.teacher not in teachers:
                raise ValueError(
                    f"objective.terms.{name}.teacher is {term.teacher!r}, but the teachers are {', '.join(teachers)}"
                )
            read.add(term.teacher)
        elif kind.reads_teacher and not kind.token_level and kind.needs - {"logits"}:
            raise ValueError(
                f"objective.terms.{name} ({term.type}) compares intermediate features, whose projections belong "
                f"to one teacher: name it with teacher: <one of {', '.join(teachers)}>"
            )
        elif kind.reads_teacher and term.weight > 0:
            combined = True
    unread = [name for name in teachers if name not in read and not combined]
    if unread:
        raise ValueError(
            f"no term reads teacher {unread[0]!r}: give a term teacher: {unread[0]}, add a logit-level term that "
            "reads the combined teachers, or remove the teacher"
        )
    combine = objective.teachers.combine if objective.teachers is not None else "mixture"
    field = getattr(data, "route_field", None)
    if combine == "route" and field is None:
        raise ValueError(
            "objective.teachers.combine: route reads each example's teacher from the data: name the column "
            "(data.teacher_column, or data.teacher_field for JSONL records of a causal LM)"
        )
    if combine != "route" and field is not None:
        raise ValueError(
            f"the data names each example's teacher ({field!r}), which only combine: route reads: set "
            "objective.teachers.combine: route, or remove the column setting"
        )
