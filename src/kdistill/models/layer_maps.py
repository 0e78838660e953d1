"""Layer maps: which teacher layer each student layer learns from.

A layer map is a dict ``{student_layer: teacher_layer}``. Layers are numbered as in
:class:`~kdistill.capture.Features`: 0 is the embedding output and ``i`` the output of transformer
layer ``i``; attention maps exist for layers ``1..num_layers``. An entry may also name modules by
path (``{"layer2": "layer3"}``) for models that are not Hugging Face transformers (a CNN).

Build a map with :func:`uniform_map` (TinyBERT's ``m -> m·N/M``), :func:`every_kth_map`,
:func:`last_k_map`, or write one; check it against two models with :func:`validate_layer_map`
(or let :func:`resolve_layer_map` do both), and look at it with :func:`describe_layer_map`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import nn

from kdistill.models.anatomy import base_model, layer_stack, model_dims

__all__ = [
    "LayerKey",
    "LayerMap",
    "check_layer_map",
    "describe_layer_map",
    "every_kth_map",
    "last_k_map",
    "num_layers",
    "print_layer_map",
    "resolve_layer_map",
    "uniform_map",
    "validate_layer_map",
]

#: a layer index (0 = embeddings) or a dotted module path
LayerKey = int | str
#: ``{student_layer: teacher_layer}``
LayerMap = dict[LayerKey, LayerKey]


def _check_depth(value: int, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def uniform_map(student_layers: int, teacher_layers: int, *, embeddings: bool = False) -> dict[int, int]:
    """TinyBERT's uniform map: student layer ``m`` learns from teacher layer ``round(m · N / M)``.

    Works for any depths (not only when ``N`` is a multiple of ``M``); the student's last layer
    always maps to the teacher's last layer.

    Args:
        student_layers: the student's depth ``M``.
        teacher_layers: the teacher's depth ``N >= M``.
        embeddings: also map the embedding outputs (``0 -> 0``).

    Example:
        >>> uniform_map(3, 6)
        {1: 2, 2: 4, 3: 6}
        >>> uniform_map(3, 4, embeddings=True)
        {0: 0, 1: 1, 2: 3, 3: 4}
    """
    _check_depth(student_layers, "student_layers")
    _check_depth(teacher_layers, "teacher_layers")
    if student_layers > teacher_layers:
        raise ValueError(
            f"a uniform map needs a teacher at least as deep as the student, got {student_layers} student and "
            f"{teacher_layers} teacher layers; write an explicit map instead"
        )
    # round half up in integer arithmetic: 2.5 -> 3, so layers spread to the end
    mapped = {
        m: (2 * m * teacher_layers + student_layers) // (2 * student_layers) for m in range(1, student_layers + 1)
    }
    return ({0: 0} if embeddings else {}) | mapped


def every_kth_map(student_layers: int, teacher_layers: int, k: int, *, embeddings: bool = False) -> dict[int, int]:
    """Student layer ``m`` learns from teacher layer ``m · k`` (DistilBERT's every other layer is ``k = 2``).

    Example:
        >>> every_kth_map(3, 12, 4)
        {1: 4, 2: 8, 3: 12}
    """
    _check_depth(student_layers, "student_layers")
    _check_depth(teacher_layers, "teacher_layers")
    _check_depth(k, "k")
    if student_layers * k > teacher_layers:
        raise ValueError(
            f"every {k}th teacher layer for {student_layers} student layers needs {student_layers * k} teacher "
            f"layers, but the teacher has {teacher_layers}; use k <= {teacher_layers // student_layers}"
        )
    return ({0: 0} if embeddings else {}) | {m: m * k for m in range(1, student_layers + 1)}


def last_k_map(student_layers: int, teacher_layers: int, k: int | None = None) -> dict[int, int]:
    """The student's last ``k`` layers learn from the teacher's last ``k`` layers, in order.

    Args:
        student_layers: the student's depth.
        teacher_layers: the teacher's depth.
        k: how many layers; default: all the student's layers.

    Example:
        >>> last_k_map(3, 6)
        {1: 4, 2: 5, 3: 6}
        >>> last_k_map(3, 6, k=1)
        {3: 6}
    """
    _check_depth(student_layers, "student_layers")
    _check_depth(teacher_layers, "teacher_layers")
    k = student_layers if k is None else _check_depth(k, "k")
    if k > min(student_layers, teacher_layers):
        raise ValueError(
            f"k = {k} is more layers than the student ({student_layers}) or the teacher ({teacher_layers}) has; "
            f"use k <= {min(student_layers, teacher_layers)}"
        )
    return {student_layers - k + i: teacher_layers - k + i for i in range(1, k + 1)}


def _check_key(value: object, side: str) -> LayerKey:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f"{side} layer {value!r} ({type(value).__name__}) is not a layer: layer maps hold layer indices "
            "(int, 0 = embeddings) or module paths (str), e.g. {1: 2, 2: 4}"
        )
    if isinstance(value, str) and not value:
        raise ValueError(f"{side} module path is empty; name a module as in model.named_modules()")
    return value


def check_layer_map(layer_map: Mapping[LayerKey, LayerKey], *, attention: bool = False) -> LayerMap:
    """Check a layer map's form (not yet its range) and return it as a dict.

    Args:
        layer_map: ``{student_layer: teacher_layer}``.
        attention: the map selects attention layers, which start at 1.

    Raises:
        TypeError: not a mapping, or an entry is neither an int nor a str.
        ValueError: empty, a negative index, or layer 0 in an attention map.
    """
    if not isinstance(layer_map, Mapping):
        raise TypeError(
            f"a layer map must be a dict {{student_layer: teacher_layer}}, got {type(layer_map).__name__}; "
            "build one with uniform_map(student_layers, teacher_layers)"
        )
    if not layer_map:
        raise ValueError(
            "the layer map is empty: give at least one {student_layer: teacher_layer} pair, "
            "e.g. uniform_map(student_layers, teacher_layers)"
        )
    checked: LayerMap = {}
    for student_key, teacher_key in layer_map.items():
        pair = (_check_key(student_key, "student"), _check_key(teacher_key, "teacher"))
        for side, key in zip(("student", "teacher"), pair):
            if isinstance(key, int) and key < (1 if attention else 0):
                raise ValueError(
                    f"{side} layer {key} is out of range: "
                    + (
                        "attention layers start at 1 (layer 0 is the embedding output, which has no attention)"
                        if attention
                        else "layer indices start at 0 (the embedding output)"
                    )
                )
        checked[pair[0]] = pair[1]
    return checked


def num_layers(model: nn.Module) -> int | None:
    """The transformer depth of a Hugging Face model (None for other modules)."""
    try:
        return model_dims(model).num_layers
    except TypeError:
        return None


def _check_range(key: LayerKey, model: nn.Module | None, depth: int | None, side: str, attention: bool) -> None:
    low = 1 if attention else 0
    if isinstance(key, str):
        if model is not None:
            try:
                model.get_submodule(key)
            except AttributeError:
                raise ValueError(
                    f"the {side} ({type(model).__name__}) has no module {key!r}; module paths are the names in "
                    f"model.named_modules(), e.g. {[n for n, _ in model.named_children()][:5]}"
                ) from None
        return
    if depth is None:
        raise ValueError(
            f"{side} layer {key} is an index, but the {side} ({type(model).__name__}) is not a Hugging Face model "
            "whose depth kdistill can read: name its modules by path instead (e.g. 'layer2')"
        )
    if not low <= key <= depth:
        what = "attention layers" if attention else "layers"
        raise ValueError(
            f"{side} layer {key} is out of range: the {side} ({type(model).__name__}) has {what} {low}..{depth}"
            + ("" if attention else " (0 is the embedding output)")
        )


def validate_layer_map(
    layer_map: Mapping[LayerKey, LayerKey],
    student: nn.Module | int,
    teacher: nn.Module | int,
    *,
    attention: bool = False,
) -> LayerMap:
    """Check a layer map against the real depths of the two models and return it as a dict.

    Args:
        layer_map: ``{student_layer: teacher_layer}``.
        student: the student model, or its depth.
        teacher: the teacher model, or its depth.
        attention: the map selects attention layers (``1..depth``) rather than hidden states
            (``0..depth``).

    Raises:
        TypeError: wrong types (see :func:`check_layer_map`).
        ValueError: empty, or a layer outside the valid range, which the message states.
    """
    checked = check_layer_map(layer_map, attention=attention)
    sides = []
    for side, model in (("student", student), ("teacher", teacher)):
        if isinstance(model, nn.Module):
            sides.append((model, num_layers(model)))
        else:
            sides.append((None, _check_depth(model, f"the {side} depth")))
    for student_key, teacher_key in checked.items():
        _check_range(student_key, sides[0][0], sides[0][1], "student", attention)
        _check_range(teacher_key, sides[1][0], sides[1][1], "teacher", attention)
    return checked


_SPEC = re.compile(r"^(uniform|every-(\d+)|last-(\d+))$")


def resolve_layer_map(
    spec: Mapping[LayerKey, LayerKey] | str | None,
    student: nn.Module,
    teacher: nn.Module,
    *,
    attention: bool = False,
) -> LayerMap:
    """Turn a layer-map specification into a map validated against the two models.

    Args:
        spec: an explicit ``{student_layer: teacher_layer}``, or ``"uniform"`` (also for None),
            ``"every-K"`` or ``"last-K"`` (see :func:`uniform_map`, :func:`every_kth_map`,
            :func:`last_k_map`); named maps cover layers 1..M, not the embeddings.
        student: the student model.
        teacher: the teacher model.
        attention: the map selects attention layers.
    """
    if spec is None or isinstance(spec, str):
        name = spec or "uniform"
        match = _SPEC.match(name)
        if match is None:
            raise ValueError(
                f"unknown layer map {name!r}: use 'uniform', 'every-K', 'last-K' or an explicit dict "
                f"{{student: teacher}}"
            )
        depths = []
        for side, model in (("student", student), ("teacher", teacher)):
            depth = num_layers(model)
            if depth is None:
                raise ValueError(
                    f"a {name!r} layer map needs the depth of the {side}, but {type(model).__name__} is not a Hugging "
                    "Face model: give an explicit map of module paths instead"
                )
            depths.append(depth)
        if match.group(2):
            spec = every_kth_map(depths[0], depths[1], int(match.group(2)))
        elif match.group(3):
            spec = last_k_map(depths[0], depths[1], int(match.group(3)))
        else:
            spec = uniform_map(depths[0], depths[1])
    return validate_layer_map(spec, student, teacher, attention=attention)


def _layer_names(model: nn.Module) -> dict[int, str]:
    names: dict[int, str] = {}
    found = layer_stack(model)
    if found is None:
        return names
    path, stack = found
    embeddings = getattr(base_model(model), "embeddings", None)
    if isinstance(embeddings, nn.Module):
        names[0] = next(name for name, module in model.named_modules() if module is embeddings)
    else:
        names[0] = "embeddings"
    for index in range(len(stack)):
        names[index + 1] = f"{path}.{index}"
    return names


def _summary(model: nn.Module) -> str:
    try:
        dims = model_dims(model)
    except TypeError:
        parameters = sum(p.numel() for p in model.parameters())
        return f"{type(model).__name__}: {parameters:,} parameters"
    heads = f", {dims.num_heads} heads" if dims.num_heads else ""
    return f"{type(model).__name__}: {dims.num_layers} layers, hidden {dims.hidden_size}{heads}"


def describe_layer_map(
    student: nn.Module, teacher: nn.Module, layer_map: Mapping[LayerKey, LayerKey] | str | None = None
) -> str:
    """Both models' layers side by side with the map between them, as text.

    Args:
        student: the student model.
        teacher: the teacher model.
        layer_map: the map to show (validated against the models); default: the uniform map.

    Returns:
        A multi-line description; :func:`print_layer_map` prints it.
    """
    checked = resolve_layer_map(layer_map, student, teacher)
    student_names, teacher_names = _layer_names(student), _layer_names(teacher)

    def label(key: LayerKey, names: Mapping[int, str]) -> str:
        if isinstance(key, str):
            return key
        return f"{key:>2}  {names.get(key, 'embeddings' if key == 0 else f'layer {key}')}"

    lines = [f"student  {_summary(student)}", f"teacher  {_summary(teacher)}", ""]
    rows = [(label(s, student_names), label(t, teacher_names)) for s, t in checked.items()]
    width = max([len("student layer")] + [len(left) for left, _ in rows])
    lines.append(f"{'student layer':<{width}}      teacher layer")
    lines += [f"{left:<{width}}  <-  {right}" for left, right in rows]
    unmapped_student = [k for k in student_names if k not in checked and k > 0]
    unmapped_teacher = [k for k in teacher_names if k not in set(checked.values()) and k > 0]
    if unmapped_student:
        lines.append(f"student layers without a teacher layer: {', '.join(map(str, unmapped_student))}")
    if unmapped_teacher:
        lines.append(f"teacher layers no student layer learns from: {', '.join(map(str, unmapped_teacher))}")
    return "\n".join(lines)


def print_layer_map(
    student: nn.Module, teacher: nn.Module, layer_map: Mapping[LayerKey, LayerKey] | str | None = None
) -> None:
    """Print :func:`describe_layer_map`: both models' layers and the proposed map."""
    print(describe_layer_map(student, teacher, layer_map))
