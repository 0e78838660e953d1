"""Attention and self-attention-relation loss terms: :class:`AttentionMSE`, :class:`AttentionKL`,
:class:`MiniLMv1` and :class:`MiniLMv2`. Like the hidden-state terms of
:mod:`kdistill.losses.intermediate`, they resolve their layer maps against the two models and
own whatever they learn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

from pydantic import Field
from torch import Tensor, nn

from kdistill.capture import CaptureRequest, Features, LazyMaps
from kdistill.capture.attention_maps import AttentionInputs
from kdistill.losses import functional as LF
from kdistill.losses.base import Side, Term, pair_mask
from kdistill.losses.registry import TermSettings, register_term
from kdistill.models.anatomy import model_dims
from kdistill.models.layer_maps import check_layer_map, resolve_layer_map, validate_layer_map
from kdistill.schema import LayerMapSpec

__all__ = ["AttentionKL", "AttentionMSE", "MiniLMv1", "MiniLMv2"]

ATTENTION_INPUTS = ("probs", "scores")


def _from_models_settings(
    cls: type, settings: TermSettings, student: nn.Module | None, teacher: nn.Module | None
) -> Term:
    """A term that ``from_models`` builds against both models, from its settings' own keys."""
    if student is None or teacher is None:
        raise ValueError(f"the {settings.type} term is built against both models; give the student and the teacher")
    return cls.from_models(student, teacher, **settings.model_dump(exclude={"type", "weight", "teacher"}))


class _RelationSettings(TermSettings):
    """Which layers a relation term compares."""

    student_layer: int | None = Field(None, ge=1, description="default: the student's last layer")
    teacher_layer: int | None = Field(None, ge=1, description="default: the teacher's last layer")


@register_term("attention_mse")
class AttentionMSE(Term):
    """Mean squared error between mapped attention maps (TinyBERT's attention loss).

    Args:
        layer_map: ``{student_layer: teacher_layer}`` of attention layers (1..depth).
        on: ``"probs"`` compares attention probabilities; ``"scores"`` the pre-softmax scores
            ``Q Kᵀ/√d`` (as TinyBERT does; needs an architecture kdistill recomputes).
        heads: how different head counts are matched: ``"auto"``, ``"per_head"``,
            ``"average_teacher"`` (the seed's way) or ``"average_both"``
            (see :func:`~kdistill.losses.functional.align_heads`).
    """

    compares_positions = True

    class Settings(TermSettings):
        layer_map: LayerMapSpec = "uniform"
        on: Literal["probs", "scores"] = "probs"
        heads: Literal["auto", "per_head", "average_teacher", "average_both"] = "auto"

    from_settings = classmethod(_from_models_settings)

    def __init__(self, layer_map: Mapping[int, int], on: str = "probs", heads: str = "auto") -> None:
        super().__init__()
        self.layer_map = self._check_map(layer_map)
        if on not in ATTENTION_INPUTS:
            raise ValueError(f"on must be 'probs' or 'scores', got {on!r}")
        if heads not in LF.HEAD_MODES:
            raise ValueError(f"heads must be one of {', '.join(LF.HEAD_MODES)}, got {heads!r}")
        self.on = on
        self.heads = heads

    @staticmethod
    def _check_map(layer_map: Mapping[int, int]) -> dict[int, int]:
        checked = check_layer_map(layer_map, attention=True)
        paths = [key for pair in checked.items() for key in pair if isinstance(key, str)]
        if paths:
            raise TypeError(f"attention maps are selected by layer index (1..depth), not module path; got {paths}")
        return checked  # type: ignore[return-value]

    @classmethod
    def from_models(
        cls, student: nn.Module, teacher: nn.Module, layer_map: Mapping[int, int] | str | None = None, **kwargs: str
    ) -> AttentionMSE:
        """Build the term with the map (default uniform) validated against the two models' depths."""
        return cls(resolve_layer_map(layer_map, student, teacher, attention=True), **kwargs)  # type: ignore[arg-type]

    @property
    def _field(self) -> str:
        return "attention_scores" if self.on == "scores" else "attentions"

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({self._field})

    def request(self, side: Side) -> CaptureRequest:
        layers = frozenset(self.layer_map) if side == "student" else frozenset(self.layer_map.values())
        return CaptureRequest(logits=False, **{self._field: layers})

    def _maps(self, features: Features, layer: int, side: str) -> Tensor:
        maps = getattr(features, self._field)
        if layer not in maps:
            raise ValueError(f"the {side}'s features lack the attention {self.on} of layer {layer}")
        return maps[layer]

    def compare(self, student_maps: Tensor, teacher_maps: Tensor, mask: Tensor | None) -> Tensor:
        """The loss of one layer pair, from the two maps."""
        return LF.attention_mse(student_maps, teacher_maps, mask, self.heads)

    def pair_loss(
        self, student: Features, teacher: Features, student_layer: int, teacher_layer: int, mask: Tensor | None
    ) -> Tensor:
        """The loss of one layer pair from the two sides' features.

        Where the student's maps were recomputed, are large and nobody has read them yet, the loss
        works from the student's attention inputs block by block and never holds its maps; the
        teacher's likewise.
        """
        student_inputs = self._unread_inputs(student, student_layer)
        if student_inputs is None:
            return self.compare(
                self._maps(student, student_layer, "student"), self._maps(teacher, teacher_layer, "teacher"), mask
            )
        teacher_side = self._unread_inputs(teacher, teacher_layer) or self._maps(teacher, teacher_layer, "teacher")
        return LF.attention_mse_from_inputs(student_inputs, teacher_side, mask, self.heads, self.on)

    def _unread_inputs(self, features: Features, layer: int) -> AttentionInputs | None:
        """The layer's attention inputs where its large maps were recomputed and not read yet."""
        maps = getattr(features, self._field)
        inputs = features.attention_inputs.get(layer)
        lazy = isinstance(maps, LazyMaps) and layer in maps and not maps.is_computed(layer)
        return inputs if inputs is not None and lazy and inputs.worth_recomputing else None

    def forward(self, student: Features, teacher: Features, labels: Tensor | None = None) -> Tensor:
        mask = pair_mask(student, teacher)
        total: Tensor | None = None
        for student_layer, teacher_layer in self.layer_map.items():
            loss = self.pair_loss(student, teacher, student_layer, teacher_layer, mask)
            total = loss if total is None else total + loss
        assert total is not None
        return total / len(self.layer_map)

    def extra_repr(self) -> str:
        return f"layer_map={self.layer_map}, on={self.on!r}, heads={self.heads!r}"


@register_term("attention_kl")
class AttentionKL(AttentionMSE):
    """``KL(teacher ‖ student)`` between mapped attention distributions, per query.

    Args:
        layer_map: ``{student_layer: teacher_layer}`` of attention layers (1..depth).
        heads: how different head counts are matched (see :class:`AttentionMSE`).
    """

    class Settings(TermSettings):
        layer_map: LayerMapSpec = "uniform"
        heads: Literal["auto", "per_head", "average_teacher", "average_both"] = "auto"

    def __init__(self, layer_map: Mapping[int, int], heads: str = "auto") -> None:
        super().__init__(layer_map, on="probs", heads=heads)

    def compare(self, student_maps: Tensor, teacher_maps: Tensor, mask: Tensor | None) -> Tensor:
        return LF.attention_kl(student_maps, teacher_maps, mask, self.heads)

    def pair_loss(
        self, student: Features, teacher: Features, student_layer: int, teacher_layer: int, mask: Tensor | None
    ) -> Tensor:
        return self.compare(
            self._maps(student, student_layer, "student"), self._maps(teacher, teacher_layer, "teacher"), mask
        )

    def extra_repr(self) -> str:
        return f"layer_map={self.layer_map}, heads={self.heads!r}"


def _check_layer(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an attention layer index >= 1, got {value!r}")
    return value


def _last_layers(
    student: nn.Module, teacher: nn.Module, student_layer: int | None, teacher_layer: int | None
) -> tuple[int, int]:
    student_layer = model_dims(student).num_layers if student_layer is None else student_layer
    teacher_layer = model_dims(teacher).num_layers if teacher_layer is None else teacher_layer
    validate_layer_map({student_layer: teacher_layer}, student, teacher, attention=True)
    return student_layer, teacher_layer


@register_term("minilm_v1")
class MiniLMv1(Term):
    """MiniLM (Wang et al., 2020): attention-distribution KL plus value-relation KL, from one
    teacher layer (the last) to the student's last layer.

    ``loss = KL(A_t ‖ A_s) + KL(VR_t ‖ VR_s)`` with ``VR = softmax(V Vᵀ/√d)`` per head.

    Args:
        student_layer: the student's layer (its last, for MiniLM).
        teacher_layer: the teacher's layer (its last, for MiniLM v1).
        heads: how different head counts are matched (MiniLM v1 assumes equal counts; see
            :class:`AttentionMSE`).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"attentions", "values"})

    compares_positions = True

    Settings = _RelationSettings
    from_settings = classmethod(_from_models_settings)

    def __init__(self, student_layer: int, teacher_layer: int, heads: str = "auto") -> None:
        super().__init__()
        self.student_layer = _check_layer(student_layer, "student_layer")
        self.teacher_layer = _check_layer(teacher_layer, "teacher_layer")
        if heads not in LF.HEAD_MODES:
            raise ValueError(f"heads must be one of {', '.join(LF.HEAD_MODES)}, got {heads!r}")
        self.heads = heads

    @classmethod
    def from_models(
        cls,
        student: nn.Module,
        teacher: nn.Module,
        student_layer: int | None = None,
        teacher_layer: int | None = None,
        heads: str = "auto",
    ) -> MiniLMv1:
        """Build the term for two Hugging Face models: by default the teacher's last layer to the student's last."""
        return cls(*_last_layers(student, teacher, student_layer, teacher_layer), heads=heads)

    def request(self, side: Side) -> CaptureRequest:
        layer = frozenset({self.student_layer if side == "student" else self.teacher_layer})
        return CaptureRequest(logits=False, attentions=layer, qkv=layer)

    def forward(self, student: Features, teacher: Features, labels: Tensor | None = None) -> Tensor:
        mask = pair_mask(student, teacher)
        s, t = self.student_layer, self.teacher_layer
        attention = LF.attention_kl(student.attentions[s], teacher.attentions[t], mask, self.heads)
        value = LF.relation_kl(student.values[s], teacher.values[t], mask, heads=self.heads)
        return attention + value

    def extra_repr(self) -> str:
        return f"student_layer={self.student_layer}, teacher_layer={self.teacher_layer}, heads={self.heads!r}"


RELATIONS = ("query", "key", "value")


@register_term("minilm_v2")
class MiniLMv2(Term):
    """MiniLM v2 (Wang et al., 2021): multi-head self-attention relation distillation.

    For each of Q, K and V, the relations ``softmax(X Xᵀ/√d_r)`` are computed with
    ``relation_heads`` heads, regrouped from the full projection width, so the count is
    independent of either model's head count; the loss is the sum over Q-Q, K-K and V-V of
    ``KL(R_teacher ‖ R_student)``. Any teacher layer can teach the student's last layer.

    Args:
        student_layer: the student's layer (its last, for MiniLM v2).
        teacher_layer: the teacher's layer (for large teachers, an upper-middle layer works best).
        relation_heads: heads of the relations; must divide both models' projection widths.
        relations: which relations to use, from ``("query", "key", "value")``.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"queries", "keys", "values"})

    compares_positions = True

    class Settings(_RelationSettings):
        relation_heads: int | None = Field(None, ge=1, description="default: the teacher's heads")

    from_settings = classmethod(_from_models_settings)

    def __init__(
        self,
        student_layer: int,
        teacher_layer: int,
        relation_heads: int,
        relations: tuple[str, ...] = RELATIONS,
    ) -> None:
        super().__init__()
        self.student_layer = _check_layer(student_layer, "student_layer")
        self.teacher_layer = _check_layer(teacher_layer, "teacher_layer")
        if isinstance(relation_heads, bool) or not isinstance(relation_heads, int) or relation_heads < 1:
            raise ValueError(f"relation_heads must be a positive integer, got {relation_heads!r}")
        self.relation_heads = relation_heads
        relations = tuple(relations)
        if not relations or any(r not in RELATIONS for r in relations):
            raise ValueError(f"relations must be a non-empty subset of {RELATIONS}, got {relations!r}")
        self.relations = relations

    @classmethod
    def from_models(
        cls,
        student: nn.Module,
        teacher: nn.Module,
        student_layer: int | None = None,
        teacher_layer: int | None = None,
        relation_heads: int | None = None,
        relations: tuple[str, ...] = RELATIONS,
    ) -> MiniLMv2:
        """Build the term for two Hugging Face models.

        By default the teacher's last layer teaches the student's last, with as many relation
        heads as the teacher has attention heads.
        """
        student_layer, teacher_layer = _last_layers(student, teacher, student_layer, teacher_layer)
        if relation_heads is None:
            relation_heads = model_dims(teacher).num_heads
        student_width, teacher_width = model_dims(student).hidden_size, model_dims(teacher).hidden_size
        if relation_heads is None or student_width % relation_heads or teacher_width % relation_heads:
            raise ValueError(
                f"relation_heads={relation_heads} must divide both widths (student {student_width}, teacher "
                f"{teacher_width}); pass relation_heads= explicitly"
            )
        return cls(student_layer, teacher_layer, relation_heads, relations)

    def request(self, side: Side) -> CaptureRequest:
        layer = frozenset({self.student_layer if side == "student" else self.teacher_layer})
        return CaptureRequest(logits=False, qkv=layer)

    def forward(self, student: Features, teacher: Features, labels: Tensor | None = None) -> Tensor:
        mask = pair_mask(student, teacher)
        total: Tensor | None = None
        for relation in self.relations:
            field = f"{relation}s" if relation != "query" else "queries"
            loss = LF.relation_kl(
                getattr(student, field)[self.student_layer],
                getattr(teacher, field)[self.teacher_layer],
                mask,
                relation_heads=self.relation_heads,
            )
            total = loss if total is None else total + loss
        assert total is not None
        return total

    def extra_repr(self) -> str:
        return (
            f"student_layer={self.student_layer}, teacher_layer={self.teacher_layer}, "
            f"relation_heads={self.relation_heads}, relations={self.relations}"
        )
