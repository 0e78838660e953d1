"""Intermediate-layer terms of hidden states and embeddings (attention maps and MiniLM relations:
:mod:`kdistill.losses.attention_terms`).

Each term compares layers chosen by a layer map ``{student_layer: teacher_layer}`` (see
:mod:`kdistill.models.layer_maps`) and asks :func:`~kdistill.capture.capture` for exactly those layers.
Where the student is narrower than the teacher, a term owns learned projections (student width
-> teacher width); they are parameters of the :class:`~kdistill.losses.objective.Objective`, so
they are optimised and checkpointed with it and never become part of the exported student.

Every term averages over its layer pairs and never counts padded positions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from kdistill.capture import CaptureRequest, Features
from kdistill.losses import functional as LF
from kdistill.losses.base import Side, Term, pair_mask
from kdistill.losses.registry import TermSettings, register_term
from kdistill.models.anatomy import model_dims
from kdistill.models.layer_maps import LayerKey, LayerMap, check_layer_map, num_layers, resolve_layer_map
from kdistill.schema import LayerMapSpec

__all__ = ["EmbeddingMSE", "HiddenCosine", "HiddenMSE"]

Dims = int | Mapping[LayerKey, int] | None


def _as_tokens(states: Tensor) -> Tensor:
    """Hidden states as ``(B, L, H)``: a conv feature map ``(B, C, H, W)`` becomes ``(B, H·W, C)``."""
    if states.dim() == 4:
        return states.flatten(2).transpose(1, 2)
    return states


def _request(keys: list[LayerKey]) -> CaptureRequest:
    return CaptureRequest(
        logits=False,
        hidden_states=frozenset(k for k in keys if isinstance(k, int)),
        modules=frozenset(k for k in keys if isinstance(k, str)),
    )


def _lookup(features: Features, key: LayerKey, side: str) -> Tensor:
    source = features.modules if isinstance(key, str) else features.hidden_states
    if key not in source:
        what = f"module {key!r}" if isinstance(key, str) else f"hidden state {key}"
        raise ValueError(f"the {side}'s features lack {what}; capture it with the term's request()")
    return _as_tokens(source[key])


def _dim_for(dims: Dims, key: LayerKey, side: str) -> int | None:
    if dims is None:
        return None
    if isinstance(dims, Mapping):
        value = dims.get(key)
    else:
        value = dims
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"the {side} width for layer {key!r} must be a positive integer, got {value!r}")
    return value


def _projection_name(student_key: LayerKey, teacher_key: LayerKey) -> str:
    # ModuleDict keys may not contain dots, which module paths do
    return f"{student_key}_to_{teacher_key}".replace(".", "_")


@register_term("hidden_mse")
class HiddenMSE(Term):
    """Mean squared error between mapped hidden states (TinyBERT's hidden-state loss).

    Args:
        layer_map: ``{student_layer: teacher_layer}``; layer indices (0 = embeddings) for Hugging
            Face models, or module paths (``{"layer2": "layer3"}``) for any model. Conv feature
            maps ``(B, C, H, W)`` are compared per spatial position over channels.
        student_dim: the student's width (an int, or ``{student_layer: width}``).
        teacher_dim: the teacher's width (an int, or ``{teacher_layer: width}``). Where the two
            widths are given and differ, a learned ``nn.Linear(student_dim, teacher_dim)``
            projects the student first.
        shared_projection: one projection for every pair (TinyBERT's single ``W_h``) instead of
            one per pair; refused where no pair needs one (equal widths: it would change nothing).

    :meth:`from_models` reads the depths and widths from the two models.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"hidden_states"})

    compares_positions = True

    class Settings(TermSettings):
        layer_map: LayerMapSpec = "uniform"
        shared_projection: bool = False

    @classmethod
    def from_settings(cls, settings: TermSettings, student: nn.Module | None, teacher: nn.Module | None) -> Term:
        assert student is not None and teacher is not None, "a hidden-state term is built against both models"
        return cls.from_models(
            student,
            teacher,
            settings.layer_map,  # type: ignore[attr-defined]
            shared_projection=settings.shared_projection,
        )  # type: ignore[attr-defined]

    def __init__(
        self,
        layer_map: Mapping[LayerKey, LayerKey],
        student_dim: Dims = None,
        teacher_dim: Dims = None,
        *,
        shared_projection: bool = False,
    ) -> None:
        super().__init__()
        self.layer_map: LayerMap = check_layer_map(layer_map)
        self.shared_projection = bool(shared_projection)
        self.projections = nn.ModuleDict()
        self.projection: nn.Linear | None = None
        shapes = set()
        for student_key, teacher_key in self.layer_map.items():
            width_in = _dim_for(student_dim, student_key, "student")
            width_out = _dim_for(teacher_dim, teacher_key, "teacher")
            if width_in is None or width_out is None or width_in == width_out:
                continue
            shapes.add((width_in, width_out))
            if not self.shared_projection:
                self.projections[_projection_name(student_key, teacher_key)] = nn.Linear(width_in, width_out)
        if self.shared_projection and not shapes:
            widths = (
                "the widths are not given"
                if student_dim is None or teacher_dim is None
                else "every pair has one width"
            )
            raise ValueError(
                f"shared_projection=True has no effect: {widths}, so no projection is learned to share; "
                "remove shared_projection"
            )
        if self.shared_projection and shapes:
            if len(shapes) > 1:
                raise ValueError(
                    f"shared_projection=True needs the same widths for every pair, got {sorted(shapes)}; "
                    "use one projection per pair (shared_projection=False)"
                )
            self.projection = nn.Linear(*shapes.pop())

    @classmethod
    def from_models(
        cls,
        student: nn.Module,
        teacher: nn.Module,
        layer_map: Mapping[LayerKey, LayerKey] | str | None = None,
        **kwargs: object,
    ) -> HiddenMSE:
        """Build the term for two Hugging Face models, with the map validated against their depths
        and projections sized from their widths.

        Args:
            student: the student model.
            teacher: the teacher model.
            layer_map: an explicit map, or ``"uniform"`` (default), ``"every-K"``, ``"last-K"``.
            **kwargs: further constructor arguments (``shared_projection``; widths override the models').
        """
        checked = resolve_layer_map(layer_map, student, teacher)
        for _side, model, key in (("student", student, "student_dim"), ("teacher", teacher, "teacher_dim")):
            if key not in kwargs and num_layers(model) is not None:
                kwargs[key] = model_dims(model).hidden_size
        return cls(checked, **kwargs)  # type: ignore[arg-type]

    def request(self, side: Side) -> CaptureRequest:
        return _request(list(self.layer_map) if side == "student" else list(self.layer_map.values()))

    def _project(self, student_key: LayerKey, teacher_key: LayerKey, hidden: Tensor) -> Tensor:
        name = _projection_name(student_key, teacher_key)
        layer = (
            self.projection
            if self.shared_projection
            else (self.projections[name] if name in self.projections else None)
        )
        if layer is None:
            return hidden
        if hidden.shape[-1] != layer.in_features:
            raise ValueError(
                f"student layer {student_key!r} has width {hidden.shape[-1]}, but its projection expects "
                f"{layer.in_features}; check student_dim"
            )
        # projections run in float32, like the losses, even under autocast
        with torch.autocast(hidden.device.type, enabled=False):
            return layer(hidden.float())

    @staticmethod
    def _token_mask(mask: Tensor | None, hidden: Tensor, key: LayerKey) -> Tensor | None:
        """The padding mask where it describes ``hidden``'s positions.

        A hooked module's output may not be per token (a conv feature map, a pooled vector); then
        there is no padding to exclude. A hidden state by index always is.
        """
        if mask is None or (hidden.dim() == 3 and mask.shape == hidden.shape[:2]):
            return mask
        if isinstance(key, int):
            raise ValueError(
                f"the attention mask {tuple(mask.shape)} does not match the hidden states of layer {key}, "
                f"{tuple(hidden.shape)}"
            )
        return None

    def compare(self, student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None) -> Tensor:
        """The loss of one layer pair; subclasses change the distance."""
        return LF.hidden_mse(student_hidden, teacher_hidden, mask)

    def forward(self, student: Features, teacher: Features, labels: Tensor | None = None) -> Tensor:
        mask = pair_mask(student, teacher)
        total: Tensor | None = None
        for student_key, teacher_key in self.layer_map.items():
            student_hidden = self._project(student_key, teacher_key, _lookup(student, student_key, "student"))
            teacher_hidden = _lookup(teacher, teacher_key, "teacher")
            loss = self.compare(student_hidden, teacher_hidden, self._token_mask(mask, student_hidden, student_key))
            total = loss if total is None else total + loss
        assert total is not None
        return total / len(self.layer_map)

    def _projection_summary(self) -> str:
        layers = [self.projection] if self.projection is not None else list(self.projections.values())
        shapes = sorted({(layer.in_features, layer.out_features) for layer in layers})  # type: ignore[union-attr]
        if not shapes:
            return ""
        shared = "shared " if self.shared_projection else ""
        return f", {shared}projection{'s' if len(layers) > 1 else ''} " + ", ".join(f"{a}->{b}" for a, b in shapes)

    def extra_repr(self) -> str:
        return f"layer_map={self.layer_map}{self._projection_summary()}"

    def __repr__(self) -> str:
        # one line: the projections are summarised rather than listed as submodules
        return f"{type(self).__name__}({self.extra_repr()})"


@register_term("hidden_cosine")
class HiddenCosine(HiddenMSE):
    """``1 − cosine`` between mapped hidden states (DistilBERT's cosine loss); arguments as :class:`HiddenMSE`."""

    def compare(self, student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None) -> Tensor:
        return LF.hidden_cosine(student_hidden, teacher_hidden, mask)


@register_term("embedding_mse")
class EmbeddingMSE(HiddenMSE):
    """Mean squared error between the embedding outputs (hidden state 0), with a learned projection
    where the widths differ (TinyBERT's embedding loss).

    Args:
        student_dim: the student's embedding width.
        teacher_dim: the teacher's embedding width.
    """

    class Settings(TermSettings):
        """No keys beyond ``type`` and ``weight``: it always compares the embedding outputs."""

    @classmethod
    def from_settings(cls, settings: TermSettings, student: nn.Module | None, teacher: nn.Module | None) -> Term:
        assert student is not None and teacher is not None, "an embedding term is built against both models"
        return cls.from_models(student, teacher)

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None) -> None:
        super().__init__({0: 0}, student_dim, teacher_dim)

    @classmethod
    def from_models(
        cls, student: nn.Module, teacher: nn.Module, layer_map: object = None, **kwargs: object
    ) -> EmbeddingMSE:
        """Build the term with widths read from the two Hugging Face models."""
        if layer_map is not None:
            raise ValueError(
                "EmbeddingMSE always compares the embedding outputs (layer 0); use HiddenMSE for other layers"
            )
        return cls(
            student_dim=kwargs.get("student_dim", model_dims(student).hidden_size),  # type: ignore[arg-type]
            teacher_dim=kwargs.get("teacher_dim", model_dims(teacher).hidden_size),  # type: ignore[arg-type]
        )

    def extra_repr(self) -> str:
        return self._projection_summary().removeprefix(", ")


# the attention and relation terms live in attention_terms; they are reachable here too
