"""A ``kdistill distill`` run, from a validated config to a run folder, top to bottom::

    config ─► task ─► models ─► data ─► stages ─► train ─► evaluate ─► report

Everything that can be checked is checked before the run folder is made (config, data files,
columns, labels, models, tokenizers, the objective against the two models, memory), so a bad
input leaves nothing behind and never touches an earlier run. Each step takes the config
section it reads; what depends on the task (reading data, loading models, measuring them) is
the task's (:mod:`kdistill.tasks`).

The run folder (:mod:`kdistill.app.run_folder` says what a run may write and delete there)::

    .kdistill-run.json   the marker: the run's id and every entry it created
    config.yaml          the resolved config (every value that ran)
    run.log              the log
    checkpoints/<stage>/ the training loop's checkpoints of each stage and finished.json once done
    checkpoints/best-student/  the student of the best validation score so far
    student/             the final student and its tokenizer (plain transformers can load it)
    teacher/             the fine-tuned teacher, when teacher.finetune is set
    metrics.json         every number of the report
    report.md            the summary
    training_curves.png  every loss part and the validation score
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import set_seed

from kdistill._version import __version__
from kdistill.app.config import RunConfig
from kdistill.app.config_loading import dump_config, load_config
from kdistill.app.curves import plot_curves
from kdistill.app.report import comparison_table, measure_models, update_metrics_file, write_report
from kdistill.app.run_folder import (
    BEST_DIR,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    CURVES_FILE,
    LOG_FILE,
    METRICS_FILE,
    REPORT_FILE,
    STUDENT_DIR,
    TEACHER_DIR,
    TEACHERS_DIR,
    RunFolder,
    input_paths,
    paths_read,
)
from kdistill.app.run_log import log_to
from kdistill.app.stage_caches import check_sampled_cache
from kdistill.app.stages import Stage, build_stages, check_stage_capture
from kdistill.app.teachers import (
    load_run_models,
    measure_teachers,
    route_indices,
    route_warnings,
    set_stage_teachers,
    teacher_mix,
    teacher_set_record,
)
from kdistill.app.training import Loaders, Trained, make_loaders, routed, save_student, train, uses_cache
from kdistill.cache import check_cache_folder
from kdistill.errors import ConfigError, KdistillError, RunFolderError
from kdistill.files.fingerprints import fingerprints
from kdistill.files.locations import cache_root
from kdistill.models.loading import looks_local
from kdistill.models.preflight import check_memory, model_memory_per_layer
from kdistill.tasks import Task, get_task
from kdistill.tasks.base import Models, TaskData
from kdistill.tasks.calibration import measured_student

__all__ = [
    "PreparedRun",
    "RunResult",
    "check_run_folder",
    "input_paths",
    "paths_read",
    "prepare_run",
    "resume_config",
    "run_distill",
]

logger = logging.getLogger("kdistill.run")


@dataclass
class PreparedRun:
    """Everything a run needs, loaded and checked; nothing written yet (``inputs``: the
    fingerprints of the files and folders it read, taken before it read them)."""

    config: RunConfig
    task: Task
    models: Models
    data: TaskData
    stages: list[Stage]
    inputs: dict[str, Any] = field(default_factory=dict)
    #: how the student was chosen by measurement (``student.from_teacher`` with importance or pruning)
    student_choice: dict[str, Any] = field(default_factory=dict)
    #: ``combine: route``: each distillation example's teacher index
    routes: list[int] | None = None
    #: what preparing found worth a warning: logged once the run's log is open (``--check`` prints them)
    warnings: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    """What a finished run produced.

    Attributes:
        folder: the run folder.
        metrics: the content of its ``metrics.json``.
        task: the run's task (the columns of its table).
    """

    folder: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    task: Task | None = None

    def table(self) -> str:
        """The teacher-versus-student table of the run."""
        return comparison_table(self.metrics, self.task or get_task("text_classification"))

    def notes(self) -> list[str]:
        """The task's lines below the table (a causal LM's student as the teacher's draft model)."""
        return (self.task or get_task("text_classification")).extra_lines(self.metrics)


# ---------------------------------------------------------------------------
# preparing: load and check everything, write nothing
# ---------------------------------------------------------------------------


def prepare_run(config: RunConfig, *, progress: bool = True) -> PreparedRun:
    """Read the data, load the models and build the objective, checking that they fit; write nothing.

    Raises:
        KdistillError: any problem with the inputs, as one line.
    """
    task = get_task(config.task)
    inputs = fingerprints(input_paths(config))  # before they are read: a later edit shows on --resume
    if _uses_cache_root(config):
        cache_root()  # a $KDISTILL_CACHE that is a file is refused now, not when the first stage starts
    set_seed(config.training.seed)
    raw = task.read(config.data)
    models = load_run_models(task, config, raw, seed=config.training.seed)
    _check_batch_memory(config, models)
    data = task.prepare(config.data, raw, models, progress=progress)
    choice: dict[str, Any] = {}
    options = config.student.from_teacher if config.student is not None else None
    if options is not None and options.measured:
        # the layers and channels a student keeps are measured on the prepared training text
        models, choice = measured_student(
            options, models, data, task.finetune_objective(), perplexity=task.primary_metric == "perplexity"
        )
    if config.student is not None and config.student.prune_vocabulary and not task.prunes_vocabulary:
        raise ConfigError(f"student.prune_vocabulary is not available for the {task.name} task; remove it")
    stages: list[Stage] = []
    routes = None
    warnings: list[str] = []
    if models.student is not None:
        assert config.objective is not None  # the schema gives a run with a student its objective
        stages = build_stages(
            config.objective, config.training, models.student, models.teacher, task, teachers=models.teachers
        )
        set_stage_teachers([stage.objective for stage in stages], config)
        check_stage_capture(stages, models.student, models.teacher, models.teachers)
        for section in config.teacher_sections.values():
            check_sampled_cache(section.cache, {stage.name: stage.objective for stage in stages})
        # the task's own objective settings against the models and data (causal LMs: generated lengths)
        task.check_objective(config.objective, models, data)
        on_policy = task.on_policy(config.objective, models, seed=config.training.seed)
        if on_policy is not None:
            if any(section.cache is not None for section in config.teacher_sections.values()):
                raise ConfigError(
                    "objective.on_policy needs the teacher online (it scores the student's own samples, which no "
                    "cache holds): remove teacher.cache"
                )
            stages = [dataclasses.replace(stage, on_policy=on_policy) for stage in stages]
        mix = teacher_mix(config)
        if mix is not None and mix.combine == "route":
            routes = route_indices(data.routes, mix.names, f"data.train ({config.data.route_field})")
            warnings += route_warnings(routes, mix.names)
    return PreparedRun(config, task, models, data, stages, inputs, choice, routes, warnings)


def _uses_cache_root(config: RunConfig) -> bool:
    """Whether the run keeps something under kdistill's cache folder (:func:`cache_root`): a teacher
    cache without a folder of its own, or the teacher's generations of sequence-level KD."""
    own_folder = all(s.cache is None or s.cache.dir is not None for s in config.teacher_sections.values())
    return not own_folder or getattr(config.objective, "sequence_kd", None) is not None


def _check_batch_memory(config: RunConfig, models: Models) -> None:
    """A batch whose activations alone cannot fit is refused before the first step."""
    length = getattr(config.data, "max_length", None)
    if length is None:
        return
    training = config.training
    student = models.student if models.student is not None else models.teacher
    # the student keeps every layer's activations for backward; the teacher only one layer's at a time
    needed = model_memory_per_layer(student, training.batch_size, length, all_layers=True) + model_memory_per_layer(
        models.teacher, max(training.batch_size, training.eval_batch_size), length
    )
    check_memory(
        f"a batch of {training.batch_size} texts of up to {length} tokens",
        needed,
        "lower training.batch_size (training.gradient_accumulation_steps keeps the effective batch), "
        "training.eval_batch_size or data.max_length",
    )


# ---------------------------------------------------------------------------
# the run folder
# ---------------------------------------------------------------------------


def check_run_folder(
    config: RunConfig, *, overwrite: bool = False, resume: bool = False, allow_changed_data: bool = False
) -> Path:
    """Check that ``config.output.dir`` can take the run, and return it; write nothing.

    A new or empty folder takes a new run. A folder that already holds a run is refused unless
    ``overwrite`` (start again; the earlier run's entries are deleted once the new run is
    prepared, and only if kdistill can prove it wrote every file in them) or ``resume``
    (continue it from its checkpoints, if its inputs are those it started with, or
    ``allow_changed_data``). A folder holding files that are not a run is refused either way,
    and so is a folder another kdistill process holds, or a link where the run would write.

    Raises:
        RunFolderError: the folder cannot take the run, in one line that says what to do.
    """
    folder = RunFolder(config.output.dir)
    path = folder.path
    if overwrite and resume:
        raise RunFolderError("give either --overwrite (start again) or --resume (continue), not both")
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"output.dir {str(path)!r} is a file, not a folder")
    cache_dirs: dict[Path, str] = {}
    for name, section in config.teacher_sections.items():
        if section.cache is None or section.cache.dir is None:
            continue
        key = f"teachers.{name}.cache" if config.several_teachers else "teacher.cache"
        cache = Path(section.cache.dir).resolve()
        if cache == path.resolve() or path.resolve().is_relative_to(cache):
            raise RunFolderError(
                f"{key} {section.cache.dir!r} holds output.dir {str(path)!r}: the "
                "cache needs a folder of its own (a subfolder of the run folder will do)"
            )
        if cache in cache_dirs:
            raise RunFolderError(
                f"{cache_dirs[cache]} and {key} are the same folder {section.cache.dir!r}: each teacher's cache needs "
                "a folder of its own (or leave out dir: for one per fingerprint)"
            )
        cache_dirs[cache] = key
        check_cache_folder(section.cache.dir)
    if not path.exists():
        return path
    folder.check_free()
    folder.check_links()
    if resume:
        if not folder.holds_run():
            raise RunFolderError(
                f"{str(path)!r} holds no run to resume (no {CONFIG_FILE} written by kdistill); "
                "give the folder of a run that was stopped"
            )
        folder.check_inputs(fingerprints(input_paths(config)), allow_changed_data)
        if (path / REPORT_FILE).is_file():
            raise RunFolderError(
                f"the run in {str(path)!r} has finished (it wrote {REPORT_FILE}): there is nothing "
                "to resume; use --overwrite to run it again"
            )
        return path
    if not folder.foreign_entries() and not folder.holds_run():
        return path  # empty, or only an earlier run's lock file
    if folder.holds_run():
        if overwrite:
            folder.deletable(paths_read(config))
            return path
        raise RunFolderError(
            f"output.dir {str(path)!r} already holds a run: add --overwrite to start again (its files are "
            f"deleted) or --resume {path} to continue it (in Python: overwrite=True or resume=True)"
        )
    raise RunFolderError(folder.not_a_run_message())


def _config_differences(run: Any, given: Any, where: str = "") -> list[str]:
    """Dotted keys where two dumped configs differ, with both values."""
    if isinstance(run, Mapping) and isinstance(given, Mapping):
        found: list[str] = []
        for key in list(run) + [k for k in given if k not in run]:
            found += _config_differences(run.get(key), given.get(key), f"{where}.{key}" if where else str(key))
        return found
    # a whole section on one side only (a teacher added or removed): named, not printed
    if isinstance(run, Mapping) and given is None:
        return [f"{where} (in the run, not given here)"]
    if isinstance(given, Mapping) and run is None:
        return [f"{where} (not in the run, given here)"]
    return [] if run == given else [f"{where} ({run!r} in the run, {given!r} here)"]


def resume_config(
    run_dir: str | Path, config_file: str | Path | None = None, overrides: Sequence[str] = ()
) -> RunConfig:
    """The config to continue the run in ``run_dir`` with: its resolved ``config.yaml``.

    A config file and ``key.sub=value`` overrides may be given too, but they must come to the
    same config (``output.dir`` aside): a run continues with the settings it started with, or
    it would not end with the student an uninterrupted run gives. ``output.dir`` becomes
    ``run_dir``, so a moved run folder resumes where it is.

    Raises:
        RunFolderError: ``run_dir`` holds no run, a link where the run writes, or the given
            config differs from the run's.
        ConfigError: the config file or an override is invalid.
    """
    folder = Path(run_dir)
    stored_file = folder / CONFIG_FILE
    RunFolder(folder).check_links()  # config.yaml -> elsewhere would be read as the run's own
    if not stored_file.is_file() or not RunFolder(folder).holds_run():
        raise RunFolderError(
            f"{str(folder)!r} holds no run to resume (no {CONFIG_FILE} written by kdistill); "
            "give the folder of a run that was stopped"
        )
    stored = load_config(stored_file)
    if config_file is not None or overrides:
        given = load_config(config_file if config_file is not None else stored_file, overrides)
        run_side, given_side = stored.model_dump(mode="json"), given.model_dump(mode="json")
        run_side["output"].pop("dir"), given_side["output"].pop("dir")
        # the settings nearest the top first: a value filled in from one (a stage's lr) follows it
        differences = sorted(
            _config_differences(run_side, given_side), key=lambda found: found.split(" ")[0].count(".")
        )
        if differences:
            more = f" and {len(differences) - 2} more" if len(differences) > 2 else ""
            raise RunFolderError(
                f"the config given differs from the run's {stored_file} at {'; '.join(differences[:2])}{more}: a "
                "resumed run keeps the config it started with; leave out CONFIG and the overrides"
            )
    stored.output.dir = str(folder)
    return stored


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------


def run_distill(
    config: RunConfig,
    *,
    progress: bool = True,
    console_log: bool = True,
    prepared: PreparedRun | None = None,
    overwrite: bool = False,
    resume: bool = False,
    allow_changed_data: bool = False,
) -> RunResult:
    """Run a whole distillation: prepare, train every stage, save and report.

    Args:
        config: the validated config.
        progress: show progress bars.
        console_log: also print the log's lines on the console.
        prepared: a :func:`prepare_run` result to use instead of preparing again.
        overwrite: ``output.dir`` may hold an earlier run: its files are deleted, once this run
            is prepared, and the run starts again.
        resume: continue the run in ``output.dir`` (see :func:`resume_config` for its config):
            finished stages are skipped, the fine-tuned teacher is read back, and each stage
            continues from its newest intact checkpoint. A data file, teacher or student that
            changed since the run started is refused, unless ``allow_changed_data``.

    Returns:
        The run folder and its metrics.

    Raises:
        RunFolderError: ``output.dir`` already holds a run and neither ``overwrite`` nor
            ``resume`` is set (or it holds other files, or no run to resume).
        KdistillError: a problem with the inputs; found before the run folder is touched.
    """
    started = time.time()
    path = check_run_folder(config, overwrite=overwrite, resume=resume, allow_changed_data=allow_changed_data)
    run = prepared or prepare_run(config, progress=progress)
    inputs = run.inputs or fingerprints(input_paths(config))
    folder = RunFolder(path)
    mode = "resume" if resume else "overwrite" if overwrite else "new"
    with folder.claimed(mode, paths_read(config), inputs) as deleted:
        # what this run read, compared again now that the folder is held (it may have changed since the check)
        changed = folder.check_inputs(inputs, allow_changed_data) if resume else []
        if not resume:
            folder.write_text(CONFIG_FILE, dump_config(config))
        elif changed or not (folder.marker() or {}).get("inputs"):
            folder.record_inputs(inputs)  # the next resume compares with what this part read
        with log_to(folder.record(LOG_FILE), console_log):
            if deleted:
                logger.info("overwrite: deleted the earlier run's %s", ", ".join(deleted))
            logger.info("kdistill %s: %s %s", __version__, "resuming the run in" if resume else "run folder", path)
            if changed:
                logger.warning("going on with changed inputs (--allow-changed-data): %s", "; ".join(changed))
            for warning in run.warnings:
                logger.warning("%s", warning)
            try:
                return _train_and_report(run, folder, started, progress, resume)
            except BaseException as error:
                # the log says why the run stopped (with the traceback where it is a bug); every file stays
                logger.error(
                    "run stopped: %s: %s",
                    type(error).__name__,
                    error,
                    exc_info=not isinstance(error, (KdistillError, KeyboardInterrupt, OSError, MemoryError)),
                )
                raise


def _train_and_report(run: PreparedRun, folder: RunFolder, started: float, progress: bool, resume: bool) -> RunResult:
    data, models = run.data, run.models
    logger.info("data: %s; %s", ", ".join(f"{k} {v:,}" for k, v in data.sizes.items()), data.description)
    logger.info("teacher: %s", models.teacher_location)
    if models.student is not None:
        logger.info("%s", models.student_note)
    loaders = make_loaders(data, run.config.training, cached=uses_cache(run.config), routes=run.routes)
    if run.student_choice and models.student is not None and "untrained" not in run.student_choice:
        # where a measured student starts: what the choice of its layers and channels bought before training
        student = {"student": routed(models, data)["student"]}
        desc = f"untrained student, {loaders.evaluated_on}"
        run.student_choice["untrained"] = run.task.evaluate(student, loaders.evaluation, progress=progress, desc=desc)[
            "student"
        ]
    trained = train(run, folder, loaders, resume=resume, progress=progress)
    folders: dict[str, Path | None] = {"teacher": _teacher_folder(run, folder)}
    pruning = None
    if models.student is not None:
        pruning = save_student(run, folder, progress)
        # with a pruned student/, the table measures the student as trained, weighed in memory
        folders["student"] = None if pruning is not None else folder.path / STUDENT_DIR
    models_as_fed = routed(models, data)
    measured, speed = measure_models(
        run.task,
        models_as_fed,
        folders,
        loaders.evaluation,
        loaders.probe,
        progress=progress,
        desc=loaders.evaluated_on,
        options=getattr(run.config, "evaluation", None),
    )
    metrics = _metrics(run, folder, measured, speed, trained, loaders, time.time() - started)
    if models.teachers:
        metrics.update(_teachers_metrics(run, trained, loaders, models_as_fed.get("student"), progress))
    if pruning is not None:
        metrics["vocabulary_pruning"] = pruning
    if loaders.evaluated_on != "validation":
        metrics["final_validation"] = run.task.evaluate(
            models_as_fed, loaders.validation, progress=progress, desc="validation"
        )
    metrics["samples"] = run.task.samples(models_as_fed, data, models.tokenizer)
    update_metrics_file(folder.record(METRICS_FILE), metrics)
    plot_curves(
        trained.histories,
        folder.record(CURVES_FILE),
        title=f"kdistill: {folder.path.name}",
        metric=run.task.primary_metric,
        teacher=trained.teacher_validation.get(run.task.primary_metric),
    )
    folder.record(REPORT_FILE)
    write_report(
        folder.path / REPORT_FILE,
        metrics,
        task=run.task,
        files=sorted(name for name in folder.entries() if name != REPORT_FILE),
    )
    logger.info("run finished in %.0f s: %s", metrics["run"]["seconds"], folder.path)
    return RunResult(folder=folder.path, metrics=metrics, task=run.task)


def _teachers_metrics(
    run: PreparedRun, trained: Trained, loaders: Loaders, student: Any, progress: bool
) -> dict[str, Any]:
    """Several teachers: each one's metrics on the evaluated split with the student's agreement with
    it, its validation and fine-tuning, and the combination's (what the student learnt from)."""
    config, models = run.config, run.models
    mix = teacher_mix(config)
    assert mix is not None
    found = measure_teachers(
        run.task, models.teachers, models.teacher_locations, mix, student, loaders.evaluation, progress=progress
    )
    for name, record in found["teachers"].items():
        record["validation"] = trained.teachers_validation.get(name, {})
        if name in trained.teachers_finetune:
            record["finetune"] = trained.teachers_finetune[name]
    return {**found, "teacher_set": teacher_set_record(models, config, run.inputs)}


def _teacher_folder(run: PreparedRun, folder: RunFolder) -> Path | None:
    """Where the teacher's weights are on disk: the run's teacher/ after fine-tuning, else its own folder."""
    if run.config.several_teachers:
        primary = run.config.primary_teacher
        if run.config.teacher_sections[primary].finetune is not None:
            return folder.path / TEACHERS_DIR / primary
        location = run.models.teacher_location
        return Path(location) if looks_local(location) else None
    if run.config.teacher.finetune is not None:
        return folder.path / TEACHER_DIR
    location = run.models.teacher_location
    return Path(location) if looks_local(location) else None


def _metrics(
    run: PreparedRun,
    folder: RunFolder,
    measured: dict[str, dict[str, Any]],
    speed: dict[str, Any],
    trained: Trained,
    loaders: Loaders,
    seconds: float,
) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    summary: dict[str, Any] = {
        "name": folder.path.name,
        "kdistill_version": __version__,
        "seconds": seconds,
        "task": run.task.name,
        "teacher": run.models.teacher_location,
    }
    if "student" in measured:
        summary.update(
            student=run.models.student_note,
            objective=" then ".join(f"{s.name}: {s.objective.formula()}" for s in run.stages),
            compression=measured["teacher"]["parameters"] / measured["student"]["parameters"],
        )
    metrics: dict[str, Any] = {
        "run": summary,
        "data": {**run.data.sizes, **run.data.details, "evaluated_on": loaders.evaluated_on},
        **measured,
        "speed": speed,
        "teacher_validation": trained.teacher_validation,
        "validation": trained.validations,
        "training": {"stages": trained.stages},
    }
    if run.student_choice:
        metrics["student_choice"] = run.student_choice
    if trained.teacher_finetune is not None:
        metrics["training"]["teacher_finetune"] = trained.teacher_finetune
    if trained.best is not None:
        primary = run.task.primary_metric
        metrics["training"]["best_student"] = {
            "folder": f"{CHECKPOINTS_DIR}/{BEST_DIR}",
            "stage": trained.best["stage"],
            "step": trained.best["step"],
            primary: trained.best.get(primary),
        }
    return metrics
