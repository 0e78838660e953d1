"""``kdistill eval``: measure a model (or a run's student) on data, beside its teacher.

A run folder brings its task, its teacher, its data section (columns, format, length) and its
test file; a model folder brings nothing but itself (``--task`` names its task). The task reads
the file and measures; size and speed are measured as a run measures them. A run of several
teachers (``teachers:``) brings them all: each is measured, with the student's agreement with it,
and so is their combination, as the run's ``metrics.json`` records them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from kdistill.app.config_loading import load_config
from kdistill.app.model_folder import CAUSAL_LM
from kdistill.app.report import (
    check_metrics_file,
    comparison_table,
    measure_models,
    speed_lines,
    teachers_lines,
    update_metrics_file,
)
from kdistill.app.run_folder import TEACHERS_DIR, RunFolder
from kdistill.app.teachers import check_teachers_agree, measure_teachers, teacher_mix
from kdistill.data.datasets import Routed, make_loader
from kdistill.errors import ConfigError, DataError, KdistillError, OutputFileError
from kdistill.losses.combine import TeacherMix
from kdistill.models.gguf import split_gguf
from kdistill.models.loading import looks_local
from kdistill.models.speed import SPEED_BATCH_SIZE
from kdistill.tasks import get_task

__all__ = ["EvalResult", "EvalTarget", "evaluate", "resolve_target"]

logger = logging.getLogger(__name__)


@dataclass
class EvalTarget:
    """What ``kdistill eval`` measures.

    Attributes:
        task: the task's name.
        model: the model folder (a run's ``student/``, or any model folder or hub id).
        teacher: the teacher to compare with, if known.
        data: the task's data section (columns, format, encoding) to read ``--data`` with.
        default_data: the run's own test (or validation) file, when ``--data`` is not given.
        metrics_file: where the results are written.
        run_folder: the run folder, when the target is a run.
        evaluation: the run's ``evaluation:`` section, where its task has one (None: the task's defaults).
        teachers: a run of several teachers: each one's location by name (its fine-tuned copy in
            the run's ``teachers/<name>/``, else where its config says); empty for one teacher, and
            when ``--teacher`` names the one to compare with.
        mix: how those teachers combine (None for one teacher).
        primary_teacher: the one of them the student was built from.
    """

    task: str
    model: str
    teacher: str | None
    data: Any
    default_data: str | None
    metrics_file: Path
    run_folder: Path | None = None
    evaluation: Any = None
    teachers: dict[str, str] = field(default_factory=dict)
    mix: TeacherMix | None = None
    primary_teacher: str | None = None


@dataclass
class EvalResult:
    """The measurements, where they were written, and the task's columns of the table."""

    metrics: dict[str, Any]
    metrics_file: Path
    task: Any = None

    def table(self) -> str:
        """The comparison table (the model and, with a teacher, the teacher)."""
        return comparison_table(self.metrics, self.task)

    def notes(self) -> list[str]:
        """The task's lines below the table (a causal LM's student as the teacher's draft model)."""
        return self.task.extra_lines(self.metrics) if self.task is not None else []

    def teachers_lines(self) -> list[str]:
        """Several teachers: the report's "The teachers" lines (each one's score, weight and the
        student's agreement with it, and the combination's); none for one teacher."""
        if self.task is None:
            return []
        # the table's teacher is the run's "teacher" in report.md's words
        return teachers_lines(
            {"run": {"teacher": self.metrics.get("teacher_model")}, **self.metrics}, self.task.primary_metric
        )

    def speed_note(self) -> str:
        """How the latency and speed-up columns were measured, in the task's words, and on a second
        line the warning when the machine was too busy for the numbers to be trusted."""
        return "\n".join(speed_lines(self.task, self.metrics.get("speed", {})))


def resolve_target(
    target: str, teacher: str | None = None, output: str | None = None, task: str | None = None
) -> EvalTarget:
    """Tell a run folder from a model folder or hub id.

    Raises:
        KdistillError: the target does not exist, a run's config cannot be read back, or the
            metrics file would replace a file kdistill did not write.
    """
    path = Path(target)
    if path.is_dir() and RunFolder(path).holds_run() and (path / "student").is_dir():
        config = load_config(path / "config.yaml")
        # --teacher names the one teacher to compare with, instead of the run's
        several = _run_teachers(path, config) if teacher is None else {}
        run_teacher = teacher
        if run_teacher is None and several:
            run_teacher = several[config.primary_teacher]
        elif run_teacher is None:
            saved_teacher = path / "teacher"
            run_teacher = (
                str(saved_teacher)
                if (saved_teacher / "config.json").is_file()
                else _teacher_location(config.teacher_sections[config.primary_teacher])
            )
        default = getattr(config.data, "test", None) or getattr(config.data, "validation", None)
        return EvalTarget(
            config.task,
            str(path / "student"),
            run_teacher,
            config.data,
            default,
            _checked_output(Path(output) if output else path / "metrics.json"),
            path,
            getattr(config, "evaluation", None),
            several,
            teacher_mix(config) if several else None,
            config.primary_teacher if several else None,
        )
    if looks_local(target) and not path.exists():
        raise KdistillError(f"{target!r}: no such run or model folder")
    gguf = any(split_gguf(location) for location in (target, teacher) if location is not None)
    if gguf and task not in (None, CAUSAL_LM):
        raise ConfigError(f"--task {task}: a GGUF model is a causal language model; give --task {CAUSAL_LM} or none")
    name = task or (CAUSAL_LM if gguf else "text_classification")
    # never write into a model folder (it may be another project's, or an installed package's)
    metrics_file = Path(output) if output else Path("metrics.json")
    return EvalTarget(
        name,
        target,
        teacher,
        # the data options of the task's defaults; the file is --data, checked when it is read
        get_task(name).data_section.model_construct(train="-"),
        None,
        _checked_output(metrics_file),
    )


def _run_teachers(path: Path, config: Any) -> dict[str, str]:
    """A run of several teachers: where eval loads each (its fine-tuned copy in ``teachers/<name>/``,
    else its configured location); empty for one teacher."""
    if not config.several_teachers:
        return {}
    found = {}
    for name, section in config.teacher_sections.items():
        tuned = path / TEACHERS_DIR / name
        found[name] = str(tuned) if (tuned / "config.json").is_file() else _teacher_location(section)
    return found


def _teacher_location(teacher: Any) -> str:
    """A run's teacher as eval loads it: its folder, or the path of its ``gguf_file`` in that folder."""
    location = teacher.location()
    gguf_file = getattr(teacher, "gguf_file", None)
    return str(Path(location) / gguf_file) if gguf_file else location


def _checked_output(path: Path) -> Path:
    """The metrics file to write, refused before any work when it would replace what kdistill did not write."""
    if path.suffix.lower() != ".json":
        raise OutputFileError(f"--output {str(path)!r}: the metrics are JSON; give a file name ending in .json")
    check_metrics_file(path)
    return path


def evaluate(
    target: EvalTarget,
    data_path: str | None = None,
    *,
    batch_size: int = SPEED_BATCH_SIZE,
    max_length: int | None = None,
    max_examples: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Measure the target's model (and its teacher) on a file and write ``metrics.json``.

    Measures the task's metrics, agreement with the teacher, parameters, weights on disk, and
    as ``kdistill distill`` does (:mod:`kdistill.models.speed`: the models in alternating rounds on the
    first batch) the CPU latency of one batch, throughput and the speed-up against the teacher,
    with their spreads and the conditions (batch shape, threads, load). A run of several teachers
    adds ``teachers`` and ``combined`` (:func:`kdistill.app.teachers.measure_teachers`).

    Args:
        target: from :func:`resolve_target`.
        data_path: the file; default the run's test (or validation) file.
        batch_size: examples per batch, and the batch that is timed; the default is the batch a
            run times, so that the two speed-ups compare.
        max_length: tokens per example; default the run's (else the task's default), shortened
            to what the models read.
        max_examples: measure on the first examples only.
        progress: show progress bars.

    Raises:
        KdistillError: a missing file, column or label; a model that cannot be loaded.
    """
    task = get_task(target.task)
    data_path = data_path or target.default_data
    if data_path is None:
        raise DataError("give the data to evaluate on: --data FILE")
    loaded = {"student": task.load_trained(target.model, "model")}
    several = _load_teachers(task, target, loaded["student"][1])
    if several:
        loaded["teacher"] = several[target.primary_teacher or next(iter(several))]
    elif target.teacher is not None:
        loaded["teacher"] = task.load_trained(target.teacher, "teacher")
    # the other teachers read the file too: its length is one that every model reads
    readers = {
        **loaded,
        **{f"teachers.{name}": pair for name, pair in several.items() if pair is not loaded["teacher"]},
    }
    data = task.eval_data(
        target.data, data_path, readers, max_length=max_length, max_examples=max_examples, progress=progress
    )
    separate = data.separate_teacher_tokens
    models: dict[str, nn.Module] = {
        name: Routed(model, name == "teacher") if separate else model for name, (model, _) in loaded.items()
    }
    loader = make_loader(data.test, batch_size, data.collate)
    folders = {"student": _folder(target.model), "teacher": _folder(target.teacher)}
    measured, speed = measure_models(
        task,
        models,
        folders,
        loader,
        next(iter(loader)),
        progress=progress,
        desc=Path(data_path).name,
        log_warning=False,  # EvalResult.speed_note() prints it
        options=target.evaluation,
    )
    results: dict[str, Any] = {
        "data": {"file": str(data_path), "examples": len(data.test), "batch_size": batch_size},
        **measured,
        "speed": speed,
        "model": target.model,
        "teacher_model": target.teacher,
    }
    if several and target.mix is not None:
        teachers = {name: model for name, (model, _) in several.items()}
        results.update(
            measure_teachers(task, teachers, target.teachers, target.mix, models["student"], loader, progress=progress)
        )
    update_metrics_file(target.metrics_file, {"eval": results})
    return EvalResult(results, target.metrics_file, task)


def _load_teachers(task: Any, target: EvalTarget, student_tokenizer: Any) -> dict[str, tuple[nn.Module, Any]]:
    """A run of several teachers: each one loaded by name, checked to name its classes as the
    primary one does and to read the student's tokens (as the run checked them); empty for one.

    Raises:
        KdistillError: a teacher that does not load, or that disagrees, naming it.
    """
    loaded: dict[str, tuple[nn.Module, Any]] = {}
    for name, location in target.teachers.items():
        try:
            loaded[name] = task.load_trained(location, "teacher")
        except KdistillError as error:
            raise type(error)(f"teachers.{name}: {error}") from None
    if loaded:
        primary = target.primary_teacher or next(iter(loaded))
        found = {name: (model, tokenizer, target.teachers[name]) for name, (model, tokenizer) in loaded.items()}
        check_teachers_agree(primary, loaded[primary][0], student_tokenizer, found)
    return loaded


def _folder(location: str | None) -> Path | None:
    if location is None:
        return None
    path = Path(location)
    return path if path.is_dir() else None
