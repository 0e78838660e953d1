"""Where the teacher's features come from during training: the teacher itself, or its cache;
several teachers by name (:class:`TeacherSet`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from kdistill.capture import CaptureRequest, Features, attention_mask_of, capture
from kdistill.capture.features import nonfinite_teacher_fields
from kdistill.losses.combine import TeacherMix
from kdistill.losses.objective import Objective

if TYPE_CHECKING:
    from kdistill.cache import TeacherCache

__all__ = ["TeacherSet", "check_teacher_source", "teacher_features", "teacher_fields", "teacher_set"]


def check_teacher_source(teacher: nn.Module | None, cache: TeacherCache | None, request: CaptureRequest) -> None:
    """Raise a clear error when neither the teacher nor its cache can give what ``request`` asks."""
    if cache is not None:
        missing = cache.provides(request)
        if missing is not None:
            raise ValueError(f"the objective needs {missing}, which the teacher cache does not hold")
        return
    if teacher is None and not request.empty:
        raise ValueError("no teacher: pass a teacher model, or teacher_cache= with its stored outputs")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"the teacher must be a torch.nn.Module, got {type(teacher).__name__}")


def teacher_features(
    teacher: nn.Module | None,
    inputs: Any,
    request: CaptureRequest,
    *,
    cache: TeacherCache | None = None,
    indices: Tensor | None = None,
    device: torch.device | None = None,
) -> Features:
    """The teacher's features for one batch.

    With a ``cache`` and the batch's example ``indices`` they are read from the cache;
    otherwise the teacher runs under ``no_grad``. The forward pass is skipped when the
    objective needs nothing from the teacher (for example a hard-label-only objective).
    """
    mask = attention_mask_of(inputs)
    if request.empty:
        return Features(attention_mask=mask)
    if cache is not None and indices is not None:
        return cache.features(indices, mask, device=device)
    if teacher is None:
        raise ValueError(
            "this batch carries no example indices, so the teacher cache cannot serve it: wrap the dataset "
            "with kdistill.with_example_index(dataset) (or pass the teacher model too)"
        )
    with torch.no_grad():
        return capture(teacher, inputs, request)


class TeacherSet:
    """Several teachers of one objective, each a model, a cache or both, by name.

    For a batch each teacher is run (or read) in turn with only what the objective needs from it
    (:meth:`~kdistill.losses.objective.Objective.request` per teacher). Under ``combine: route`` a
    teacher that no term names runs on its own examples only, and is skipped for a batch none of
    them is in. With ``offload`` a teacher lives on the CPU and is moved to the training device
    for its forward only, so that the device holds the student and one teacher at a time.

    Args:
        teachers: models by name (None for a teacher read from its cache only).
        caches: caches by name (None or missing: run the model).
        objective: the objective; without a :class:`~kdistill.losses.combine.TeacherMix` of its
            own it gets an equal-weight ``mixture`` of these teachers.
        offload: keep teachers off the device between their forwards.

    Raises:
        ValueError: the objective reads teachers that are not given, or a given teacher no term reads.
    """

    def __init__(
        self,
        teachers: Mapping[str, nn.Module | None],
        caches: Mapping[str, TeacherCache | None] | None,
        objective: Objective,
        *,
        offload: bool = False,
    ) -> None:
        caches = dict(caches or {})
        names = list(dict.fromkeys([*teachers, *caches]))
        if not names:
            raise ValueError("no teachers: give at least one teacher model or cache by name")
        if not objective.several_teachers:
            objective.set_teachers(TeacherMix.of(names), {})
        read = objective.teacher_names
        missing = [name for name in read if name not in names]
        if missing:
            raise ValueError(
                f"the objective reads teacher {missing[0]!r}, but the teachers given are {', '.join(names)}"
            )
        unread = [name for name in names if name not in read or not objective.reads(name)]
        if unread:
            raise ValueError(
                f"no term of the objective reads teacher {unread[0]!r}: remove it, or add a term that reads it"
            )
        self.names = tuple(read)
        self.models = {name: teachers.get(name) for name in self.names}
        self.caches = {name: caches.get(name) for name in self.names}
        self.requests = {name: objective.request("teacher", name) for name in self.names}
        for name in self.names:
            model = self.models[name]
            if model is not None and not isinstance(model, nn.Module):
                raise TypeError(f"teacher {name!r} must be a torch.nn.Module, got {type(model).__name__}")
            try:
                check_teacher_source(model, self.caches[name], self.requests[name])
            except ValueError as error:
                raise ValueError(f"teacher {name!r}: {error}") from None
        mix = objective.teachers
        named = set(objective.teacher_of.values())
        self.route_index = {name: i for i, name in enumerate(self.names)}
        # a routed teacher that no term reads by name needs only its own examples
        self.routed_only = {n for n in self.names if mix is not None and mix.combine == "route" and n not in named}
        self.offload = bool(offload)

    def place(self, device: torch.device) -> None:
        """Eval mode, and on ``device`` unless offloaded (then on the CPU until their forward)."""
        for model in self.models.values():
            if model is not None:
                model.eval()
                model.to("cpu" if self.offload else device)

    def parameters(self) -> list[nn.Parameter]:
        """Every teacher's parameters (none of them may be trained)."""
        return [p for model in self.models.values() if model is not None for p in model.parameters()]

    def features(
        self, inputs: Any, *, indices: Tensor | None, route: Tensor | None, device: torch.device | None
    ) -> dict[str, Features | None]:
        """Each teacher's features for one batch, by name (None: a routed teacher none of its examples is in)."""
        found: dict[str, Features | None] = {}
        for name in self.names:
            model, cache, request = self.models[name], self.caches[name], self.requests[name]
            if cache is not None and indices is not None:
                found[name] = teacher_features(None, inputs, request, cache=cache, indices=indices, device=device)
                continue
            rows = None
            if name in self.routed_only and route is not None and model is not None:
                rows = (route.to(torch.long) == self.route_index[name]).nonzero().squeeze(1)
                if rows.numel() == 0:
                    found[name] = None
                    continue
            with _resident(model, device, self.offload):
                if rows is None or rows.numel() == _batch_rows(inputs):
                    found[name] = teacher_features(model, inputs, request, device=device)
                else:
                    part = teacher_features(model, _select_rows(inputs, rows), request, device=device)
                    found[name] = _scatter_rows(part, rows, _batch_rows(inputs), attention_mask_of(inputs))
        return found


def _batch_rows(inputs: Any) -> int:
    tensors = [v for v in (inputs.values() if isinstance(inputs, Mapping) else [inputs]) if isinstance(v, Tensor)]
    return int(tensors[0].shape[0]) if tensors else 0


def _select_rows(inputs: Any, rows: Tensor) -> Any:
    """The examples ``rows`` of a batch's model inputs."""
    if isinstance(inputs, Mapping):
        return {k: v.index_select(0, rows.to(v.device)) if isinstance(v, Tensor) else v for k, v in inputs.items()}
    if isinstance(inputs, Tensor):
        return inputs.index_select(0, rows.to(inputs.device))
    raise TypeError("combine: route runs a teacher on its own examples, which needs dict or tensor batches")


def _scatter_rows(part: Features, rows: Tensor, size: int, mask: Tensor | None) -> Features:
    """Features of some examples spread back to the whole batch of ``size`` (zeros elsewhere: weight 0 there)."""

    def spread(tensor: Tensor | None) -> Tensor | None:
        if tensor is None:
            return None
        full = tensor.new_zeros((size, *tensor.shape[1:]))
        return full.index_copy_(0, rows.to(tensor.device), tensor)

    return Features(
        logits=spread(part.logits),
        final_hidden=spread(part.final_hidden),
        output_layer=part.output_layer,
        attention_mask=mask,
    )


@contextlib.contextmanager
def _resident(model: nn.Module | None, device: torch.device | None, offload: bool) -> Iterator[None]:
    """``model`` on ``device`` for the block, then back on the CPU (``offload``)."""
    if not offload or model is None or device is None or device.type == "cpu":
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to("cpu")


def teacher_set(teacher: Any, cache: Any, objective: Objective, offload: bool = False) -> TeacherSet | None:
    """The :class:`TeacherSet` of a training call's ``teacher`` and ``teacher_cache`` when either is
    a mapping by name (or the objective reads teachers by name); None for one plain teacher."""
    if not isinstance(teacher, Mapping) and not isinstance(cache, Mapping) and not objective.several_teachers:
        if offload:
            raise ValueError("offload_teachers applies to several teachers ({name: model}); remove it")
        return None
    if teacher is not None and not isinstance(teacher, Mapping):
        raise TypeError(
            "with several teachers, give the teacher models as a mapping {name: model} (distill's teacher=, "
            "DistillationTrainer's teacher_model=)"
        )
    if cache is not None and not isinstance(cache, Mapping):
        raise TypeError("with several teachers, give teacher_cache= as a mapping {name: cache}")
    return TeacherSet(teacher or {}, cache, objective, offload=offload)


def teacher_fields(features: Features | Mapping[str, Features | None]) -> list[str]:
    """The teacher fields holding NaN or infinity (each prefixed by its teacher's name when several)."""
    if isinstance(features, Features):
        return nonfinite_teacher_fields(features)
    return [
        f"{name}: {field}"
        for name, found in features.items()
        if found is not None
        for field in nonfinite_teacher_fields(found)
    ]
