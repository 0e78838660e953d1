"""``kdistill eval``: measure a model (or a run's student) on labelled data, beside its teacher."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdistill.config import DataConfig
from kdistill.data import (
    PaddingCollator,
    TableSplit,
    TokenizedDataset,
    describe_tokenizer_difference,
    encode_labels,
    load_table,
    make_loader,
    tokenize,
)
from kdistill.errors import ConfigError, DataError, KdistillError, OutputFileError
from kdistill.loading import count_parameters, load_classifier, load_tokenizer, looks_local
from kdistill.preflight import check_max_length, check_token_ids, usable_positions
from kdistill.report import (
    COMPARISON_COLUMNS,
    agreement,
    check_metrics_file,
    classification_metrics,
    comparison_rows,
    format_table,
    measure_speed,
    predict,
    update_metrics_file,
    weights_size,
)

__all__ = ["EvalResult", "EvalTarget", "evaluate", "resolve_target"]

logger = logging.getLogger(__name__)


@dataclass
class EvalTarget:
    """What ``kdistill eval`` measures.

    Attributes:
        model: the model folder (a run's ``student/``, or any classifier folder or hub id).
        teacher: the teacher to compare with, if known.
        data: the data config (columns, format, encoding) to read ``--data`` with.
        default_data: the run's own test (or validation) file, when ``--data`` is not given.
        metrics_file: where the results are written.
        run_folder: the run folder, when the target is a run.
    """

    model: str
    teacher: str | None
    data: DataConfig
    default_data: str | None
    metrics_file: Path
    run_folder: Path | None = None


@dataclass
class EvalResult:
    """The measurements and where they were written."""

    metrics: dict[str, Any]
    metrics_file: Path

    def table(self) -> str:
        """The comparison table (student and, with a teacher, the teacher)."""
        models = {name: self.metrics[name] for name in ("teacher", "student") if name in self.metrics}
        return format_table(comparison_rows(models), COMPARISON_COLUMNS)


def resolve_target(target: str, teacher: str | None = None, output: str | None = None) -> EvalTarget:
    """Tell a run folder from a model folder or hub id.

    A run folder (one with ``config.yaml`` and ``student/``) brings its teacher, its data
    columns and its test file; a model folder brings nothing but itself.

    Raises:
        KdistillError: the target does not exist or holds no model.
    """
    path = Path(target)
    run_config = path / "config.yaml"
    if path.is_dir() and run_config.is_file() and (path / "student").is_dir():
        try:
            saved = yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}
            data = DataConfig.model_validate(saved.get("data") or {"train": "-"})
        except Exception as error:  # noqa: BLE001 - any damage to the saved config means the same thing
            raise ConfigError(f"{run_config} cannot be read back: {str(error).splitlines()[0]}") from None
        run_teacher = teacher
        if run_teacher is None:
            if (path / "teacher" / "config.json").is_file():
                run_teacher = str(path / "teacher")
            else:
                source = saved.get("teacher") or {}
                run_teacher = source.get("path")
                if run_teacher is None and source.get("package"):
                    from kdistill.config import TeacherConfig

                    run_teacher = TeacherConfig.model_validate(source).location()
        default = data.test or data.validation
        return EvalTarget(str(path / "student"), run_teacher, data, default,
                          _checked_output(Path(output) if output else path / "metrics.json"), path)
    if looks_local(target) and not path.exists():
        raise KdistillError(f"{target!r}: no such run or model folder")
    # never write into a model folder (it may be another project's, or an installed package's)
    metrics_file = Path(output) if output else Path("metrics.json")
    return EvalTarget(target, teacher, DataConfig(train="-"), None, _checked_output(metrics_file))


def _checked_output(path: Path) -> Path:
    """The metrics file to write, refused before any work when it would replace what kdistill did not write."""
    if path.suffix.lower() != ".json":
        raise OutputFileError(f"--output {str(path)!r}: the metrics are JSON; give a file name ending in .json")
    check_metrics_file(path)
    return path


def _label_ids(table: TableSplit, config: Any) -> list[int]:
    """The data's labels as the model's class ids (by name; by number for unnamed classes)."""
    id2label = {int(i): str(name) for i, name in config.id2label.items()}
    names = [id2label[i] for i in range(len(id2label))]
    unnamed = all(name == f"LABEL_{i}" for i, name in enumerate(names))
    if unnamed and all(isinstance(label, int) and 0 <= label < len(names) for label in table.labels):
        return list(table.labels)
    return encode_labels(table, names)


def evaluate(
    target: EvalTarget,
    data_path: str | None = None,
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    max_examples: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Measure the target's model (and its teacher) on a labelled file and write ``metrics.json``.

    Measures accuracy, macro-F1, agreement with the teacher, parameters, weights on disk, the
    CPU latency of one batch, throughput and the speed-up against the teacher.

    Args:
        target: from :func:`resolve_target`.
        data_path: the labelled file; default the run's test (or validation) file.
        batch_size: examples per batch (also the batch that is timed).
        max_length: truncate texts to this many tokens; default the run's, else 128.
        max_examples: measure on the first examples only.
        progress: show progress bars.

    Raises:
        KdistillError: a missing file, column or label; a model that cannot be loaded.
    """
    data_path = data_path or target.default_data
    if data_path is None:
        raise DataError("give the labelled data to evaluate on: --data FILE")
    table = load_table(data_path, target.data)
    if max_examples is not None and len(table) > max_examples:
        table = table.subset(range(max_examples), f"{table.source} (first {max_examples})")
    length = max_length or target.data.max_length

    student = load_classifier(target.model, "model").trained(
        "model", "evaluate a classifier trained for this task (a run's student/), not a model without a trained head")
    tokenizer = load_tokenizer(target.model, "model")
    if max_length is None:
        # the default (the run's, else 128) shortened to what the model can read
        length = min(length, usable_positions(student) or length)
    check_max_length(length, [("model", student)], "--max-length")
    labels = _label_ids(table, student.config)
    columns = tokenize(tokenizer, table, length, desc="tokenising", progress=progress)
    check_token_ids(columns["input_ids"], student, "model", "the model's folder")
    teacher = None
    separate = False
    if target.teacher is not None:
        teacher = load_classifier(target.teacher, "teacher").trained(
            "teacher", "compare with a teacher trained for this task (--teacher), or leave --teacher out")
        if teacher.config.num_labels != student.config.num_labels:
            raise KdistillError(
                f"the teacher predicts {teacher.config.num_labels} classes and the model {student.config.num_labels}: "
                "they were not trained for the same task"
            )
        if max_length is None:
            length = min(length, usable_positions(teacher) or length)
            columns = tokenize(tokenizer, table, length, desc="tokenising", progress=progress)
        check_max_length(length, [("teacher", teacher)], "--max-length")
        teacher_tokenizer = load_tokenizer(target.teacher, "teacher")
        if describe_tokenizer_difference(teacher_tokenizer, tokenizer, table.texts[:100]) is not None:
            separate = True
            columns.update(tokenize(teacher_tokenizer, table, length, prefix="teacher_", desc="tokenising (teacher)",
                                    progress=progress))
        check_token_ids(columns.get("teacher_input_ids", columns["input_ids"]), teacher, "teacher", "--teacher")
    dataset = TokenizedDataset(columns, labels, table.source)
    collator = PaddingCollator(tokenizer.pad_token_id or 0, (teacher.config.pad_token_id or 0) if teacher else 0)
    loader = make_loader(dataset, batch_size, collator)
    num_labels = student.config.num_labels

    student_logits, gold = predict(student, loader, desc="model", progress=progress)
    assert gold is not None
    results: dict[str, Any] = {"data": {"file": str(data_path), "examples": len(dataset), "batch_size": batch_size}}
    probe = next(iter(loader))
    student_metrics = classification_metrics(student_logits, gold, num_labels)
    speed = measure_speed(student, probe)
    student_metrics.update(parameters=count_parameters(student), size_bytes=weights_size(student, _folder(target.model)),
                           latency_ms=speed["latency_ms"], throughput=speed["throughput"])
    if teacher is not None:
        teacher_logits, _ = predict(teacher, loader, teacher_side=separate, desc="teacher", progress=progress)
        teacher_metrics = classification_metrics(teacher_logits, gold, num_labels)
        teacher_speed = measure_speed(teacher, probe, teacher_side=separate)
        teacher_metrics.update(parameters=count_parameters(teacher),
                               size_bytes=weights_size(teacher, _folder(target.teacher)),
                               latency_ms=teacher_speed["latency_ms"], throughput=teacher_speed["throughput"],
                               speedup=1.0)
        student_metrics["agreement"] = agreement(student_logits, teacher_logits)
        student_metrics["speedup"] = teacher_speed["latency_ms"] / speed["latency_ms"]
        results["teacher"] = teacher_metrics
    results["student"] = student_metrics
    results["model"] = target.model
    results["teacher_model"] = target.teacher
    update_metrics_file(target.metrics_file, {"eval": results})
    return EvalResult(results, target.metrics_file)


def _folder(location: str | None) -> Path | None:
    if location is None:
        return None
    path = Path(location)
    return path if path.is_dir() else None
