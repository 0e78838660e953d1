"""Student factory: a smaller model of the teacher's family.

:func:`make_student` builds a student from the teacher's own configuration with fewer layers
(initialised from mapped teacher layers, as DistilBERT was) and/or a narrower width (randomly
initialised), and reports how many parameters it saves.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from kdistill.models.anatomy import ModelDims, layer_stack, model_dims
from kdistill.models.layer_maps import uniform_map, validate_layer_map
from kdistill.models.loading import count_parameters

__all__ = ["StudentReport", "make_student"]

logger = logging.getLogger(__name__)

_INTERMEDIATE_NAMES = ("intermediate_size", "hidden_dim", "ffn_dim", "n_inner")


@dataclass(frozen=True)
class StudentReport:
    """What :func:`make_student` built.

    Attributes:
        teacher_parameters: parameters of the teacher.
        student_parameters: parameters of the student.
        teacher_layers: the teacher's depth.
        student_layers: the student's depth.
        teacher_hidden_size: the teacher's width.
        student_hidden_size: the student's width.
        initialised_from: ``{student_layer: teacher_layer}`` the student's layers were copied
            from, or None when the student is randomly initialised.
    """

    teacher_parameters: int
    student_parameters: int
    teacher_layers: int
    student_layers: int
    teacher_hidden_size: int
    student_hidden_size: int
    initialised_from: dict[int, int] | None

    @property
    def reduction(self) -> float:
        """How many times fewer parameters the student has (``teacher / student``)."""
        return self.teacher_parameters / self.student_parameters

    @property
    def fraction(self) -> float:
        """The student's size as a fraction of the teacher's."""
        return self.student_parameters / self.teacher_parameters

    def __str__(self) -> str:
        source = (
            "layers copied from teacher layers "
            + ", ".join(f"{s}<-{t}" for s, t in sorted(self.initialised_from.items()))
            if self.initialised_from
            else "randomly initialised"
        )
        return (
            f"student: {self.student_layers} layers, hidden {self.student_hidden_size} "
            f"(teacher: {self.teacher_layers} layers, hidden {self.teacher_hidden_size}); "
            f"{self.student_parameters:,} of {self.teacher_parameters:,} parameters "
            f"({self.reduction:.2f}x smaller, {100 * (1 - self.fraction):.0f}% fewer); {source}"
        )


def _positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _student_config(
    config: Any, dims: Any, num_layers: int, width: int, num_heads: int | None, intermediate_size: int | None
) -> Any:
    """The teacher's config with the student's depth, and for a narrower student its width, heads
    and feed-forward width (scaled with the width unless given)."""
    student_config = copy.deepcopy(config)
    student_config.num_hidden_layers = num_layers  # attribute_map renames it (DistilBERT: n_layers)
    if width == dims.hidden_size:
        if num_heads is not None or intermediate_size is not None:
            raise ValueError("num_heads and intermediate_size apply to a narrower student; give hidden_size too")
        return student_config
    heads = num_heads if num_heads is not None else dims.num_heads
    if heads is None or width % _positive(heads, "num_heads"):
        raise ValueError(
            f"hidden_size {width} is not divisible by {heads} attention heads; pass num_heads= that divides it"
        )
    student_config.num_attention_heads = heads
    student_config.hidden_size = width
    if isinstance(getattr(config, "head_dim", None), int):
        student_config.head_dim = width // heads  # decoders (Llama, Qwen2, Mistral) keep it explicitly
    teacher_kv = getattr(config, "num_key_value_heads", None)
    if isinstance(teacher_kv, int) and dims.num_heads:
        # grouped-query attention: keep the teacher's queries per key/value head where it divides
        group = max(1, dims.num_heads // teacher_kv)
        student_config.num_key_value_heads = heads // group if heads % group == 0 else heads
    for name in _INTERMEDIATE_NAMES:
        teacher_ffn = getattr(config, name, None)
        if isinstance(teacher_ffn, int) and not isinstance(teacher_ffn, bool):
            ffn = (
                intermediate_size
                if intermediate_size is not None
                else max(1, round(teacher_ffn * width / dims.hidden_size))
            )
            setattr(student_config, name, _positive(ffn, "intermediate_size"))
            break
    return student_config


def make_student(
    teacher: nn.Module,
    num_layers: int,
    hidden_size: int | None = None,
    *,
    num_heads: int | None = None,
    intermediate_size: int | None = None,
    layer_map: Mapping[int, int] | None = None,
    init: Literal["auto", "teacher", "random"] = "auto",
    seed: int | None = None,
) -> tuple[nn.Module, StudentReport]:
    """Build a smaller student of the teacher's family (same class, same head, same vocabulary).

    With the teacher's width, the student's layers are copied from mapped teacher layers (and the
    embeddings and task head from the teacher's), as DistilBERT was initialised; a narrower
    student is randomly initialised.

    Args:
        teacher: a Hugging Face model (``BertForSequenceClassification``, ``ViTForImageClassification`` ...).
        num_layers: the student's depth.
        hidden_size: the student's width; default the teacher's.
        num_heads: attention heads of a narrower student; default the teacher's (must divide ``hidden_size``).
        intermediate_size: feed-forward width of a narrower student; default scaled with the width.
        layer_map: ``{student_layer: teacher_layer}`` (1-based) to copy layers from; default the
            uniform map (``m -> round(m·N/M)``, the teacher's last layer last).
        init: ``"teacher"`` (copy; needs the teacher's width), ``"random"``, or ``"auto"``
            (copy when the widths agree).
        seed: seed of the random initialisation, for reproducible students.

    Returns:
        ``(student, report)``; ``str(report)`` says how much smaller the student is.

    Example:
        >>> student, report = make_student(teacher, num_layers=3)  # doctest: +SKIP
        >>> print(report)  # doctest: +SKIP
    """
    config, dims, num_layers, width, copy_layers = _check_shape(teacher, num_layers, hidden_size, init)
    student_config = _student_config(config, dims, num_layers, width, num_heads, intermediate_size)
    if seed is not None:
        torch.manual_seed(seed)
    student = type(teacher)(student_config)
    teacher_dtype = next(teacher.parameters()).dtype
    student.to(dtype=teacher_dtype)

    mapping: dict[int, int] | None = None
    if copy_layers:
        mapping = _copy_from_teacher(teacher, student, num_layers, dims.num_layers, layer_map)
    elif layer_map is not None:
        raise ValueError("layer_map chooses teacher layers to copy; a randomly initialised student does not use it")

    report = StudentReport(
        teacher_parameters=count_parameters(teacher),
        student_parameters=count_parameters(student),
        teacher_layers=dims.num_layers,
        student_layers=num_layers,
        teacher_hidden_size=dims.hidden_size,
        student_hidden_size=width,
        initialised_from=mapping,
    )
    logger.info("%s", report)
    return student, report


def _check_shape(
    teacher: nn.Module, num_layers: int, hidden_size: int | None, init: str
) -> tuple[Any, ModelDims, int, int, bool]:
    """Check :func:`make_student`'s shape and ``init``: the teacher's config and dimensions, the
    student's depth and width, and whether its layers are copied from the teacher."""
    config = getattr(teacher, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(
            f"make_student needs a Hugging Face model with a config, got {type(teacher).__name__}; "
            "build other students yourself"
        )
    dims = model_dims(teacher)
    num_layers = _positive(num_layers, "num_layers")
    width = dims.hidden_size if hidden_size is None else _positive(hidden_size, "hidden_size")
    if init not in ("auto", "teacher", "random"):
        raise ValueError(f"init must be 'auto', 'teacher' or 'random', got {init!r}")
    narrower = width != dims.hidden_size
    if init == "teacher" and narrower:
        raise ValueError(
            f"init='teacher' copies teacher layers, which needs the teacher's width {dims.hidden_size}; "
            f"a student of width {width} must use init='random'"
        )
    copy_layers = init == "teacher" or (init == "auto" and not narrower)
    if copy_layers and num_layers > dims.num_layers:
        raise ValueError(
            f"cannot copy {num_layers} student layers from a teacher with {dims.num_layers}; "
            f"use num_layers <= {dims.num_layers} or init='random'"
        )
    return config, dims, num_layers, width, copy_layers


def _copy_from_teacher(
    teacher: nn.Module,
    student: nn.Module,
    student_layers: int,
    teacher_layers: int,
    layer_map: Mapping[int, int] | None,
) -> dict[int, int]:
    mapping = uniform_map(student_layers, teacher_layers) if layer_map is None else layer_map
    mapping = validate_layer_map(mapping, student_layers, teacher_layers, attention=True)  # type: ignore[assignment]
    missing = sorted(set(range(1, student_layers + 1)) - set(mapping))
    if missing:
        raise ValueError(
            f"layer_map must name a teacher layer for every student layer 1..{student_layers}; missing {missing}"
        )
    found = layer_stack(teacher)
    if found is None:
        raise ValueError(
            f"cannot find the layer list of {type(teacher).__name__} to copy layers from; use init='random'"
        )
    prefix = found[0] + "."
    teacher_state = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        source = key
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            source = f"{prefix}{mapping[int(index) + 1] - 1}.{rest}"  # type: ignore[index]
        state[key] = teacher_state[source]
    student.load_state_dict(state)
    return dict(mapping)  # type: ignore[arg-type]
