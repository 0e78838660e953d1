"""Loading classifiers: the teacher (with a new head where the data's labels need one) and the student."""

from __future__ import annotations

import json
from pathlib import Path
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
    saved_head = not kwargs
    if saved_head:
        _check_id2label_keys(location, role)
    try:
        return load_pretrained(
            AutoModelForSequenceClassification,
            location,
            role,
            revision=revision,
            trust_remote_code=trust_remote_code,
            **kwargs,
        )
    except ModelLoadError as error:
        if not saved_head or "ignore_mismatched_sizes" not in str(error):
            raise
        # transformers' own words point at a load report kdistill keeps quiet: say what does not fit
        found = _head_mismatch(location, role, revision=revision, trust_remote_code=trust_remote_code)
        raise ModelLoadError(found or str(error)) from None


def _config_file(location: str) -> dict[str, Any] | None:
    """A local model folder's ``config.json`` as written; None for a hub id or a file that cannot be read."""
    path = Path(location).expanduser() / "config.json"
    try:
        values = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) else None


def _check_id2label_keys(location: str, role: str) -> None:
    """Refuse, in one line, an ``id2label`` whose keys are not logit numbers (transformers fails on it
    with ``invalid literal for int()``).

    Raises:
        ModelLoadError: naming the key.
    """
    written = (_config_file(location) or {}).get("id2label")
    if not isinstance(written, dict):
        return
    for key in written:
        try:
            int(key)
        except (TypeError, ValueError):
            shown = ", ".join(f"{k}: {v}" for k, v in list(written.items())[:6])
            raise ModelLoadError(
                f"cannot load {role} {location!r}: its config.json has id2label {{{shown}}}, whose key {key!r} is "
                f"not a logit number (transformers reads logit j as id2label[j]); number id2label 0 to "
                f"{len(written) - 1} in the order of the logits"
            ) from None


def _head_mismatch(location: str, role: str, *, revision: str | None, trust_remote_code: bool) -> str | None:
    """What in a model's weights does not fit its config (a head of another size than id2label
    says), in one line; None where it cannot be told. Loads the model once more, only to say it."""
    from transformers import AutoModelForSequenceClassification

    try:
        loaded = load_pretrained(
            AutoModelForSequenceClassification,
            location,
            role,
            revision=revision,
            trust_remote_code=trust_remote_code,
            ignore_mismatched_sizes=True,
        )
    except ModelLoadError:
        return None
    shapes = {key: (list(saved), list(built)) for key, saved, built in loaded.resized}
    if not shapes:
        return None
    key, (saved, built) = sorted(shapes.items(), key=lambda item: (not item[0].endswith("weight"), item[0]))[0]
    line = (
        f"cannot load {role} {location!r}: its weights do not fit its config.json ({key} is {saved} in the weights "
        f"but {built} by the config)"
    )
    count = loaded.model.config.num_labels
    heads = [shape for shape, by_config in shapes.values() if shape and by_config and by_config[0] == count]
    written = _config_file(location) or {}
    if heads and heads[0][0] != count:
        outputs = heads[0][0]
        given = written.get("id2label")
        said = (
            f"config.json's id2label names {len(given)}" if isinstance(given, dict) else "config.json names none"
        ) + (f" and its num_labels says {written['num_labels']}" if "num_labels" in written else "")
        line += (
            f": the classification head has {outputs} outputs, but transformers builds one per class it reads "
            f"({count}; {said}); give id2label one name for each of the {outputs} outputs, 0 to {outputs - 1}"
            + (", and leave num_labels out" if "num_labels" in written else "")
        )
    return line


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
