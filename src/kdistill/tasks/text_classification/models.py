"""Loading classifiers: the teacher (with a new head where the data's labels need one) and the student."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdistill.errors import ModelLoadError
from kdistill.models.loading import LoadedModel, load_pretrained, read_model_config
from kdistill.tasks.common import student_from_teacher

__all__ = ["build_student", "load_classifier", "saved_head_size"]


def load_classifier(
    location: str,
    role: str,
    *,
    num_labels: int | None = None,
    id2label: dict[int, str] | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a sequence-classification model (``AutoModelForSequenceClassification``).

    Args:
        location: a folder written by ``save_pretrained`` or a hub id.
        role: ``"teacher"`` or ``"student"``, for messages.
        num_labels: the number of classes; a head of another size is replaced by a new one.
        id2label: class names written into the model's config.
        revision: a hub revision.
        trust_remote_code: let a hub model run its own code.

    Raises:
        ModelLoadError: the folder is missing or holds no model, or the hub is unreachable.
    """
    from transformers import AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {}
    if num_labels is not None:
        kwargs.update(num_labels=num_labels, ignore_mismatched_sizes=True)
    if id2label is not None:
        kwargs.update(id2label=dict(id2label), label2id={name: i for i, name in id2label.items()})
    return load_pretrained(
        AutoModelForSequenceClassification,
        location,
        role,
        revision=revision,
        trust_remote_code=trust_remote_code,
        **kwargs,
    )


def saved_head_size(
    location: str, role: str, *, revision: str | None = None, trust_remote_code: bool = False
) -> int | None:
    """The classes of the sequence-classification head saved at ``location``; None if it saved none.

    Reads the model's ``config.json`` only (its ``architectures`` and ``num_labels``), so a
    classifier trained for another label set is found before its weights are loaded.
    """
    config = read_model_config(location, role, revision=revision, trust_remote_code=trust_remote_code)
    architectures = getattr(config, "architectures", None) or []
    if any(str(name).endswith("ForSequenceClassification") for name in architectures):
        return int(config.num_labels)
    return None


def build_student(spec: Any, teacher: nn.Module, id2label: dict[int, str]) -> tuple[nn.Module, str]:
    """The student of a ``student:`` section, with the data's classes: built from the teacher, or loaded.

    Returns:
        ``(student, one line on how it was made)``.

    Raises:
        ModelLoadError: a loaded student's head was trained for another number of classes.
        ConfigError: ``from_teacher`` options that do not fit the teacher.
    """
    num_labels = len(id2label)
    if spec.from_teacher is not None:
        student, report = student_from_teacher(teacher, spec.from_teacher)
        student.config.id2label = dict(id2label)
        student.config.label2id = {name: i for i, name in id2label.items()}
        return student, str(report)
    location = spec.location()
    head = saved_head_size(location, "student", revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    if head is not None and head != num_labels:
        # a head trained for another label set would be thrown away without a word
        names = ", ".join(list(id2label.values())[:10])
        raise ModelLoadError(
            f"the student {location!r} predicts {head} classes but the training data has {num_labels} labels "
            f"({names}); give a student for these labels, or one without a classification head (it gets a new one)"
        )
    loaded = load_classifier(
        location,
        "student",
        num_labels=num_labels,
        id2label=id2label,
        revision=spec.revision,
        trust_remote_code=spec.trust_remote_code,
    )
    note = f"student loaded from {loaded.location}"
    if loaded.has_new_head:
        note += f" (new weights: {', '.join(loaded.new_weights[:4])})"
    return loaded.model, note
