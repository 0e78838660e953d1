"""MiniLM (Wang et al., 2020 and 2021): self-attention relations first, then the soft labels.

Stage 1 teaches the student the teacher's self-attention relations of one layer (v1: attention
maps and value relations; v2: query, key and value relations over ``relation_heads``), which
needs no projection whatever the widths; stage 2 is Hinton's soft labels (with hard labels by
``alpha``). Both stages are :class:`~kdistill.losses.objective.Objective` objects, so they run
through either training path.
"""

from __future__ import annotations

from torch import nn

from kdistill.losses.attention_terms import MiniLMv1, MiniLMv2
from kdistill.losses.objective import Objective

__all__ = ["minilm_objectives"]


def minilm_objectives(
    student: nn.Module,
    teacher: nn.Module,
    *,
    version: int = 2,
    student_layer: int | None = None,
    teacher_layer: int | None = None,
    relation_heads: int | None = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
) -> tuple[Objective, Objective]:
    """MiniLM's two objectives: relations of one layer, then soft labels.

    Args:
        student: the student (a Hugging Face encoder).
        teacher: the teacher.
        version: 1 (attention and value relations) or 2 (query, key and value relations).
        student_layer: the student layer taught; default its last.
        teacher_layer: the teacher layer that teaches; default its last.
        relation_heads: version 2's relation heads; default the teacher's attention heads.
        temperature: the soft labels' temperature.
        alpha: the soft labels' weight against the hard labels.

    Returns:
        ``(relations, prediction)``.
    """
    if version == 1:
        relation = MiniLMv1.from_models(student, teacher, student_layer, teacher_layer)
    elif version == 2:
        relation = MiniLMv2.from_models(student, teacher, student_layer, teacher_layer, relation_heads)
    else:
        raise ValueError(f"MiniLM has versions 1 and 2, got {version!r}")
    return Objective({f"minilm_v{version}": relation}), Objective.hinton(temperature=temperature, alpha=alpha)
