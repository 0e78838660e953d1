"""``kdistill inspect``: the shape of a teacher (and a student) and the layer map kdistill proposes."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from kdistill.app.model_folder import CAUSAL_LM
from kdistill.app.report import format_table
from kdistill.errors import ConfigError
from kdistill.models.anatomy import base_model, config_int, layer_stack
from kdistill.models.gguf import split_gguf
from kdistill.models.importance import IMPORTANCE_RULES, block_influence, choose_layers, kept_layers
from kdistill.models.layer_maps import describe_layer_map, uniform_map
from kdistill.models.loading import count_parameters, load_any_model
from kdistill.models.student import make_student
from kdistill.tasks import get_task
from kdistill.tasks.calibration import calibration_batches, calibration_loss

__all__ = ["ModelSummary", "describe_importance", "describe_models", "summarize_model"]


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


def _task_of(location: str, task: str | None) -> str:
    """The task a teacher's importance is measured for: ``--task``, else a causal LM for a GGUF file
    or a ``...ForCausalLM`` / ``...LMHeadModel`` folder, else text classification."""
    if task is not None:
        return task
    if split_gguf(location) is not None:
        return CAUSAL_LM
    config_file = Path(location) / "config.json"
    architectures: list[str] = []
    if config_file.is_file():
        try:
            architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
        except (OSError, ValueError):
            architectures = []
    causal = any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures)
    return CAUSAL_LM if causal else "text_classification"


def describe_importance(
    teacher: str,
    data: str,
    *,
    num_layers: int | None = None,
    calibration_tokens: int = 2048,
    max_length: int | None = None,
    rules: tuple[str, ...] = IMPORTANCE_RULES,
    task: str | None = None,
) -> str:
    """The text ``kdistill inspect TEACHER --importance --data FILE`` prints: each layer's scores, and
    the layers each rule keeps for a student of ``num_layers`` with the loss it starts from.

    Args:
        teacher: a model folder, hub id or GGUF file.
        data: the calibration text (a file the task reads, as ``kdistill eval --data`` does).
        num_layers: the student's depth; default half the teacher's.
        calibration_tokens: tokens of ``data`` measured (from its start).
        max_length: tokens per example; default the task's.
        rules: the rules to compare (``perplexity`` is about ``N^2 / 2`` passes over the text).
        task: the teacher's task; default read from the model.

    Raises:
        KdistillError: a model or file that cannot be read, a depth the teacher does not have.
    """
    name = _task_of(teacher, task)
    runner = get_task(name)
    model, tokenizer = runner.load_trained(teacher, "teacher")
    settings = runner.data_section.model_construct(train="-")
    prepared = runner.eval_data(
        settings, data, {"student": (model, tokenizer)}, max_length=max_length, max_examples=None, progress=False
    )
    batches = calibration_batches(prepared.test, prepared.collate, calibration_tokens)
    tokens = sum(int(batch["attention_mask"].sum()) for batch in batches if "attention_mask" in batch)
    loss_of = calibration_loss(runner.finetune_objective(), batches)
    perplexity = runner.primary_metric == "perplexity"

    def shown(loss: float) -> str:
        return f"{math.exp(min(loss, 700)):,.1f}" if perplexity else f"{loss:.4f}"

    depth = summarize_model(model, teacher).layers or 0
    keep = num_layers or max(1, depth // 2)
    if not 1 <= keep <= depth:
        raise ConfigError(f"--num-layers {keep}: the teacher has {depth} layers; give 1 to {depth}")
    measure = "perplexity" if perplexity else "loss"
    scores = block_influence(model, batches)
    choices = {}
    try:
        for rule in rules:
            choices[rule] = choose_layers(model, keep, rule, batches, loss_of)
    except ValueError as error:
        raise ConfigError(f"--importance: {error}") from None
    rows = [{"layer": number, "bi": f"{score:.4f}"} for number, score in enumerate(scores, 1)]
    columns = [("layer", "layer"), ("bi", "block influence (1 - cos)")]
    if "perplexity" in choices:
        for row, single in zip(rows, choices["perplexity"].scores):
            row["without"] = shown(single)
        columns.append(("without", f"{measure} without it"))
    with kept_layers(model, list(range(1, depth + 1))):
        whole = loss_of(model)
    with kept_layers(model, list(uniform_map(keep, depth).values())):
        uniform = loss_of(model)
    lines = [
        f"{teacher}: {depth} layers, measured on the first {tokens:,} tokens of {data} ({name}; teacher {measure} "
        f"{shown(whole)})",
        "",
        format_table(rows, tuple(columns)),
        "",
        f"a student of {keep} layers copied from the teacher, before training ({measure} on the same tokens):",
        f"  uniform: layers {', '.join(map(str, uniform_map(keep, depth).values()))}: {shown(uniform)}",
    ]
    for rule, choice in choices.items():
        assert choice.loss is not None  # choose_layers measures it when given the loss
        lines.append(f"  {rule}: layers {', '.join(map(str, choice.kept))}: {shown(choice.loss)}")
    lines += [
        "",
        f"use one: student.from_teacher: {{num_layers: {keep}, layer_map: importance, importance: <rule>}}",
    ]
    return "\n".join(lines)
