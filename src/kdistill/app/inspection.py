"""``kdistill inspect``: the shape of a teacher (and a student) and the layer map kdistill proposes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from kdistill.app.model_folder import CAUSAL_LM
from kdistill.app.report import format_table
from kdistill.errors import ConfigError
from kdistill.models.anatomy import base_model, config_int, layer_stack
from kdistill.models.gguf import split_gguf
from kdistill.models.layer_maps import describe_layer_map
from kdistill.models.loading import count_parameters, load_any_model
from kdistill.models.student import make_student
from kdistill.tasks import get_task

__all__ = ["ModelSummary", "describe_models", "summarize_model"]


@dataclass
class ModelSummary:
    """The sizes of one model.

    Attributes:
        name: the folder, hub id or role.
        architecture: the model class.
        layers: transformer layers.
        hidden_size: width of the hidden states.
        heads: attention heads per layer.
        intermediate_size: feed-forward width.
        vocab_size: tokens in the vocabulary.
        parameters: all parameters.
        embedding_parameters: parameters of the embeddings.
        layer_parameters: parameters of the transformer layers together.
    """

    name: str
    architecture: str
    layers: int | None
    hidden_size: int | None
    heads: int | None
    intermediate_size: int | None
    vocab_size: int | None
    parameters: int
    embedding_parameters: int
    layer_parameters: int

    def row(self) -> dict[str, Any]:
        """A row of the summary table."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "layers": self.layers,
            "hidden": self.hidden_size,
            "heads": self.heads,
            "ffn": self.intermediate_size,
            "vocab": self.vocab_size,
            "parameters": self.parameters,
            "embeddings": self.embedding_parameters,
            "in layers": self.layer_parameters,
        }


COLUMNS = (
    ("name", "model"),
    ("architecture", "class"),
    ("layers", "layers"),
    ("hidden", "hidden"),
    ("heads", "heads"),
    ("ffn", "ffn"),
    ("vocab", "vocab"),
    ("parameters", "parameters"),
    ("embeddings", "embeddings"),
    ("in layers", "in layers"),
)


def summarize_model(model: nn.Module, name: str) -> ModelSummary:
    """Depth, widths, heads and parameter counts of a Hugging Face model."""
    config = getattr(model, "config", None)
    embeddings = getattr(base_model(model), "embeddings", None)
    embedding_parameters = count_parameters(embeddings) if isinstance(embeddings, nn.Module) else 0
    stack = layer_stack(model)
    layer_parameters = count_parameters(stack[1]) if stack is not None else 0
    return ModelSummary(
        name=name,
        architecture=type(model).__name__,
        layers=config_int(config, "num_hidden_layers", "n_layers", "num_layers"),
        hidden_size=config_int(config, "hidden_size", "dim", "d_model"),
        heads=config_int(config, "num_attention_heads", "n_heads", "num_heads"),
        intermediate_size=config_int(config, "intermediate_size", "hidden_dim", "ffn_dim"),
        vocab_size=config_int(config, "vocab_size"),
        parameters=count_parameters(model),
        embedding_parameters=embedding_parameters,
        layer_parameters=layer_parameters,
    )


def _load(location: str, role: str, trust_remote_code: bool) -> nn.Module:
    """The model at ``location``; a GGUF file is a causal LM, loaded dequantised as a run loads it."""
    if split_gguf(location) is not None:
        return get_task(CAUSAL_LM).load_trained(location, role)[0]
    return load_any_model(location, role, trust_remote_code=trust_remote_code)


def describe_models(
    teacher: str | nn.Module,
    student: str | nn.Module | None = None,
    *,
    num_layers: int | None = None,
    hidden_size: int | None = None,
    layer_map: str | None = None,
    trust_remote_code: bool = False,
) -> str:
    """The text ``kdistill inspect`` prints: a table of both models and the proposed layer map.

    ``teacher`` and ``student`` are folders, hub ids, GGUF files (dequantised) or models. Without a
    student, kdistill proposes one with :func:`~kdistill.models.student.make_student`
    (``num_layers``, default half the teacher's depth; ``hidden_size``, default the teacher's)
    and shows how much smaller it would be.

    Raises:
        KdistillError: a model cannot be loaded, or the map does not fit the two models.
    """
    teacher_name = teacher if isinstance(teacher, str) else "teacher"
    teacher_model = _load(teacher, "teacher", trust_remote_code) if isinstance(teacher, str) else teacher
    notes = []
    if student is None:
        summary = summarize_model(teacher_model, teacher_name)
        depth = num_layers or max(1, (summary.layers or 2) // 2)
        try:
            student_model, report = make_student(teacher_model, num_layers=depth, hidden_size=hidden_size, seed=0)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"cannot propose a student: {error}") from None
        student_name = f"proposed student (make_student num_layers={depth}" + (
            f", hidden_size={hidden_size})" if hidden_size else ")"
        )
        notes.append(str(report))
    else:
        if num_layers is not None or hidden_size is not None:
            raise ConfigError(
                "--num-layers/--hidden-size propose a student; they do not apply when a STUDENT is given"
            )
        student_name = student if isinstance(student, str) else "student"
        student_model = _load(student, "student", trust_remote_code) if isinstance(student, str) else student
    rows = [summarize_model(teacher_model, teacher_name).row(), summarize_model(student_model, student_name).row()]
    try:
        mapping = describe_layer_map(student_model, teacher_model, layer_map)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"layer map: {error}") from None
    parts = [
        format_table(rows, COLUMNS),
        "",
        f"layer map ({layer_map or 'uniform'}), as kdistill proposes it for hidden-state and attention terms:",
        mapping,
    ]
    if notes:
        parts += [""] + notes
    return "\n".join(parts)
