"""Student factory: a smaller model of the teacher's family.

:func:`make_student` builds a student from the teacher's own configuration with fewer layers
(initialised from mapped teacher layers, as DistilBERT was) and/or a narrower width, randomly
initialised or pruned from the teacher by measured activation importance (:mod:`.width`), and
reports how many parameters it saves.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from kdistill.models.anatomy import ModelDims, config_int, layer_stack, model_dims
from kdistill.models.layer_maps import uniform_map, validate_layer_map
from kdistill.models.loading import count_parameters
from kdistill.models.width import (
    WidthFamily,
    WidthImportance,
    WidthPlan,
    head_dim_of,
    plan_width_pruning,
    width_family,
)

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
        width_pruned: ``{"hidden" | "heads" | "kv" | "intermediate": (teacher, student)}`` when the
            student was pruned in width from the teacher by activation importance, else None.
    """

    teacher_parameters: int
    student_parameters: int
    teacher_layers: int
    student_layers: int
    teacher_hidden_size: int
    student_hidden_size: int
    initialised_from: dict[int, int] | None
    width_pruned: dict[str, tuple[int, int]] | None = None

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
        if self.width_pruned:
            widths = {name: f"{name} {teacher}->{student}" for name, (teacher, student) in self.width_pruned.items()}
            kv = f" ({widths['kv']})" if "kv" in widths else ""
            source += (
                f"; width pruned by activation: {widths['hidden']}, {widths['heads']}{kv}, {widths['intermediate']}"
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
    config: Any,
    dims: ModelDims,
    num_layers: int,
    width: int,
    num_heads: int | None,
    num_key_value_heads: int | None,
    intermediate_size: int | None,
    family: WidthFamily | None = None,
    mapping: Mapping[int, int] | None = None,
) -> Any:
    """The teacher's config with the student's depth, and for a narrower student its width, heads,
    key/value heads and feed-forward width (scaled with the width unless given).

    ``family`` is given for a student pruned from the teacher: it may be narrower in any width, not
    only the hidden one, and keeps the teacher's head_dim (the kept heads are the teacher's heads).
    ``mapping`` (student layer -> teacher layer) gives each student layer its teacher layer's type.
    """
    student_config = copy.deepcopy(config)
    student_config.num_hidden_layers = num_layers  # attribute_map renames it (DistilBERT: n_layers)
    _set_layer_types(config, student_config, num_layers, mapping)
    if width == dims.hidden_size and family is None:
        if num_heads is not None or num_key_value_heads is not None or intermediate_size is not None:
            raise ValueError(
                "num_heads, num_key_value_heads and intermediate_size apply to a narrower student; "
                "give hidden_size too, or width_importance to prune them"
            )
        _validate(student_config)
        return student_config
    heads = num_heads if num_heads is not None else dims.num_heads
    if heads is None:
        raise ValueError(f"cannot read the attention heads of {type(config).__name__}; pass num_heads=")
    heads = _positive(heads, "num_heads")
    if width % heads:  # transformers checks it even where head_dim is explicit (LlamaConfig)
        raise ValueError(
            f"hidden_size {width} is not divisible by {heads} attention heads; pass num_heads= that divides it"
        )
    head_dim = width // heads
    if family is not None:
        head_dim = head_dim_of(config)
        if not family.head_dim_in_config and heads * head_dim != width:
            fits = f"num_heads={width // head_dim}" if width % head_dim == 0 else f"a multiple of {head_dim}"
            raise ValueError(
                f"{family.name} derives head_dim from hidden_size / num_heads and pruning keeps the teacher's "
                f"head_dim {head_dim}, but hidden_size {width} with {heads} heads gives {width / heads:g}; use {fits}"
            )
    student_config.num_attention_heads = heads
    student_config.hidden_size = width
    if (family is not None and family.head_dim_in_config) or isinstance(getattr(config, "head_dim", None), int):
        student_config.head_dim = head_dim  # decoders (Llama, Qwen2, Mistral) read it from the config
    _set_key_value_heads(config, student_config, dims, heads, num_key_value_heads, family is not None)
    found = _feed_forward_width(config, dims)
    if found is not None:
        name, teacher_ffn = found
        scaled = max(1, round(teacher_ffn * width / dims.hidden_size))
        ffn = scaled if intermediate_size is None else intermediate_size
        setattr(student_config, name, _positive(ffn, "intermediate_size"))
    elif intermediate_size is not None:
        raise ValueError(f"cannot find the feed-forward width of {type(config).__name__} to set intermediate_size")
    _validate(student_config)
    return student_config


def _validate(config: Any) -> None:
    """Run the config's own checks (transformers runs them again on ``save_pretrained``), as one line."""
    validate = getattr(config, "validate", None)
    if not callable(validate):
        return
    try:
        validate()
    except Exception as error:  # transformers wraps the ValueError of the check that failed
        cause = error.__cause__ or error
        raise ValueError(f"the student's config is invalid: {' '.join(str(cause).split())}") from None


def _set_layer_types(config: Any, student_config: Any, num_layers: int, mapping: Mapping[int, int] | None) -> None:
    """Per-layer attention types (Qwen2's ``layer_types``) for the student's depth: a copied layer
    keeps its teacher layer's type, a random student spreads the teacher's over its layers."""
    types = getattr(config, "layer_types", None)
    if not isinstance(types, list) or not types:
        return
    if mapping is not None:
        student_config.layer_types = [types[mapping[m] - 1] for m in range(1, num_layers + 1)]
    else:
        student_config.layer_types = [types[i * len(types) // num_layers] for i in range(num_layers)]


def _set_key_value_heads(
    config: Any, student_config: Any, dims: ModelDims, heads: int, num_key_value_heads: int | None, pruned: bool
) -> None:
    teacher_kv = config_int(config, "num_key_value_heads")
    if num_key_value_heads is not None:
        if teacher_kv is None:
            raise ValueError(
                f"num_key_value_heads applies to grouped-query attention, which {type(config).__name__} does not have"
            )
        kv = _positive(num_key_value_heads, "num_key_value_heads")
        if heads % kv:
            raise ValueError(f"num_key_value_heads {kv} must divide num_heads {heads}")
        if kv > teacher_kv:
            raise ValueError(f"num_key_value_heads {kv} cannot exceed the teacher's {teacher_kv}")
        student_config.num_key_value_heads = kv
    elif teacher_kv is not None and dims.num_heads:
        # keep the teacher's queries per key/value head where it divides
        group = max(1, dims.num_heads // teacher_kv)
        kv = heads // group if heads % group == 0 else heads
        if pruned and heads % group:
            # kept heads must stay in whole teacher groups: the most groups that hold them
            kv = max((d for d in range(1, teacher_kv + 1) if heads % d == 0 and heads // d <= group), default=kv)
        student_config.num_key_value_heads = kv


def _feed_forward_width(config: Any, dims: ModelDims) -> tuple[str, int] | None:
    """The config attribute holding the feed-forward width, and the width."""
    for name in _INTERMEDIATE_NAMES:
        value = config_int(config, name)
        if value is not None:
            return name, value
    if hasattr(config, "n_inner"):
        return "n_inner", 4 * dims.hidden_size  # GPT-2's n_inner=None means 4 × n_embd
    return None


def make_student(
    teacher: nn.Module,
    num_layers: int,
    hidden_size: int | None = None,
    *,
    num_heads: int | None = None,
    num_key_value_heads: int | None = None,
    intermediate_size: int | None = None,
    layer_map: Mapping[int, int] | None = None,
    init: Literal["auto", "teacher", "random"] = "auto",
    seed: int | None = None,
    width_importance: WidthImportance | None = None,
) -> tuple[nn.Module, StudentReport]:
    """Build a smaller student of the teacher's family (same class, same head, same vocabulary).

    With the teacher's width, the student's layers are copied from mapped teacher layers (and the
    embeddings and task head from the teacher's), as DistilBERT was initialised. A narrower
    student is randomly initialised, unless ``width_importance`` is given: then it is pruned from
    the teacher (Minitron), keeping the most important hidden channels, MLP channels and heads of
    the mapped layers, so that depth and width are pruned together.

    Args:
        teacher: a Hugging Face model (``BertForSequenceClassification``, ``ViTForImageClassification`` ...).
        num_layers: the student's depth.
        hidden_size: the student's width; default the teacher's.
        num_heads: attention heads of a narrower student; default the teacher's (must divide
            ``hidden_size``; when pruning, heads keep the teacher's head_dim).
        num_key_value_heads: key/value heads of a grouped-query student (Llama, Qwen2, Mistral);
            must divide ``num_heads`` and not exceed the teacher's; default the teacher's ratio.
        intermediate_size: feed-forward width of a narrower student; default scaled with the width.
        layer_map: ``{student_layer: teacher_layer}`` (1-based) to copy layers from; default the
            uniform map (``m -> round(m·N/M)``, the teacher's last layer last).
        init: ``"teacher"`` (copy; needs the teacher's width or ``width_importance``), ``"random"``,
            or ``"auto"`` (copy when the widths agree or ``width_importance`` is given).
        seed: seed of the random initialisation, for reproducible students.
        width_importance: :func:`kdistill.models.width.measure_width_importance` of ``teacher``;
            prunes a narrower student from the teacher (Llama/SmolLM2, Qwen2, Mistral, GPT-2, BERT).

    Returns:
        ``(student, report)``; ``str(report)`` says how much smaller the student is.

    Example:
        >>> student, report = make_student(teacher, num_layers=3)  # doctest: +SKIP
        >>> importance = measure_width_importance(teacher, calibration_batches)  # doctest: +SKIP
        >>> student, report = make_student(  # doctest: +SKIP
        ...     teacher, 8, hidden_size=384, num_heads=6, num_key_value_heads=2, intermediate_size=1024,
        ...     width_importance=importance)
        >>> print(report)  # doctest: +SKIP
    """
    prune = width_importance is not None
    config, dims, num_layers, width, copy_layers = _check_shape(teacher, num_layers, hidden_size, init, prune)
    family = width_family(teacher) if prune else None
    mapping: dict[int, int] | None = None
    if copy_layers:
        mapping = _copy_map(teacher, num_layers, dims.num_layers, layer_map)
    elif layer_map is not None:
        raise ValueError("layer_map chooses teacher layers to copy; a randomly initialised student does not use it")
    student_config = _student_config(
        config, dims, num_layers, width, num_heads, num_key_value_heads, intermediate_size, family, mapping
    )
    # checked before the student is built: a plan that does not fit fails fast
    plan = plan_width_pruning(teacher, width_importance, student_config) if prune else None
    if seed is not None:
        torch.manual_seed(seed)
    student = type(teacher)(student_config)
    teacher_dtype = next(teacher.parameters()).dtype
    student.to(dtype=teacher_dtype)

    if mapping is not None:
        _copy_from_teacher(teacher, student, mapping, plan)

    report = StudentReport(
        teacher_parameters=count_parameters(teacher),
        student_parameters=count_parameters(student),
        teacher_layers=dims.num_layers,
        student_layers=num_layers,
        teacher_hidden_size=dims.hidden_size,
        student_hidden_size=width,
        initialised_from=mapping,
        width_pruned=None if plan is None else dict(plan.sizes),
    )
    logger.info("%s", report)
    return student, report


def _check_shape(
    teacher: nn.Module, num_layers: int, hidden_size: int | None, init: str, prune: bool
) -> tuple[Any, ModelDims, int, int, bool]:
    """Check :func:`make_student`'s shape and ``init``: the teacher's config and dimensions, the
    student's depth and width, and whether its layers are copied from the teacher (``prune``: in
    width too)."""
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
    if prune and init == "random":
        raise ValueError(
            "width_importance prunes the teacher's weights into the student; it cannot go with init='random'"
        )
    narrower = width != dims.hidden_size
    if init == "teacher" and narrower and not prune:
        raise ValueError(
            f"init='teacher' copies teacher layers, which needs the teacher's width {dims.hidden_size}; "
            f"a student of width {width} must use init='random', or width_importance to be pruned from the teacher"
        )
    copy_layers = prune or init == "teacher" or (init == "auto" and not narrower)
    if copy_layers and num_layers > dims.num_layers:
        raise ValueError(
            f"cannot copy {num_layers} student layers from a teacher with {dims.num_layers}; "
            f"use num_layers <= {dims.num_layers}" + ("" if prune else " or init='random'")
        )
    return config, dims, num_layers, width, copy_layers


def _copy_map(
    teacher: nn.Module, student_layers: int, teacher_layers: int, layer_map: Mapping[int, int] | None
) -> dict[int, int]:
    """``{student_layer: teacher_layer}`` (1-based) to copy from: ``layer_map`` checked, or the uniform map."""
    mapping = uniform_map(student_layers, teacher_layers) if layer_map is None else layer_map
    mapping = validate_layer_map(mapping, student_layers, teacher_layers, attention=True)  # type: ignore[assignment]
    missing = sorted(set(range(1, student_layers + 1)) - set(mapping))
    if missing:
        raise ValueError(
            f"layer_map must name a teacher layer for every student layer 1..{student_layers}; missing {missing}"
        )
    if layer_stack(teacher) is None:
        raise ValueError(
            f"cannot find the layer list of {type(teacher).__name__} to copy layers from; use init='random'"
        )
    return dict(mapping)  # type: ignore[arg-type]


def _copy_from_teacher(
    teacher: nn.Module, student: nn.Module, mapping: Mapping[int, int], plan: WidthPlan | None = None
) -> None:
    """Load every student tensor from its teacher tensor (layers through ``mapping``), cut to the
    kept channels of ``plan`` when the student is pruned in width."""
    found = layer_stack(teacher)
    assert found is not None  # _copy_map checked it
    prefix = found[0] + "."
    teacher_state = teacher.state_dict()
    state = {}
    for key, target in student.state_dict().items():
        source, layer = key, None
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            layer = mapping[int(index) + 1] - 1
            source = f"{prefix}{layer}.{rest}"
        value = teacher_state[source]
        if plan is not None:
            value = plan.take(source, value, layer)
        if value.shape != target.shape:
            raise ValueError(
                f"{key} of the student has shape {tuple(target.shape)}, its teacher tensor {source} "
                f"{tuple(value.shape)}"
            )
        state[key] = value
    student.load_state_dict(state)
