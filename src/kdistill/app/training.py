"""Training a run's models: the teacher's fine-tuning, then each stage of the student, with the
best student kept, the teacher's outputs read from its cache where the stage allows, and every
stage checkpointed so that ``--resume`` continues where a run stopped.

Every stage starts from its own seed (the run's seed plus its index) and reseeds the shuffling,
so that a resumed run that skips finished stages trains the rest exactly as an uninterrupted
run would have.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdistill.app.curves import TEACHER_STAGE
from kdistill.app.report import weights_size
from kdistill.app.run_folder import (
    BEST_DIR,
    CHECKPOINTS_DIR,
    FINISHED_FILE,
    STUDENT_DIR,
    TEACHER_DIR,
    TEACHERS_DIR,
    RunFolder,
)
from kdistill.app.stage_caches import StageCaches, TeacherCaches, shared_vocab
from kdistill.app.stages import Stage, optimizer_and_scheduler
from kdistill.data.batch import with_example_index, with_routes
from kdistill.data.datasets import Routed, make_loader
from kdistill.files.writing import write_atomic
from kdistill.losses import Objective
from kdistill.models.speed import SPEED_BATCH_SIZE
from kdistill.tasks.base import Models, Task, TaskData
from kdistill.train.checkpoint import CheckpointError, find_resumable, load_checkpoint
from kdistill.train.loop import History, distill

__all__ = ["Loaders", "Trained", "save_student", "teacher_side", "train", "uses_cache"]

logger = logging.getLogger("kdistill.run")


@dataclass
class Loaders:
    """The batches of a run: shuffled training batches, and evaluation batches in length order
    (less padding; teacher and student see the same order)."""

    train: DataLoader | None
    validation: DataLoader
    evaluation: DataLoader
    evaluated_on: str
    #: the first examples of the evaluated split as they come (not the shortest), timed for the
    #: report: :data:`~kdistill.models.speed.SPEED_BATCH_SIZE` of them, the batch ``kdistill eval`` times
    probe: dict[str, torch.Tensor]
    steps_per_epoch: int = 0


@dataclass
class Trained:
    """What training left: every stage's history, the validation record and the best student."""

    histories: list[tuple[str, History]] = field(default_factory=list)
    validations: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    teacher_validation: dict[str, float] = field(default_factory=dict)
    teacher_finetune: dict[str, Any] | None = None
    #: several teachers: each one's validation metrics and fine-tuning, by name
    teachers_validation: dict[str, dict[str, float]] = field(default_factory=dict)
    teachers_finetune: dict[str, dict[str, Any]] = field(default_factory=dict)
    best: dict[str, Any] | None = None


def make_loaders(data: TaskData, training: Any, *, cached: bool, routes: list[int] | None = None) -> Loaders:
    """The run's loaders; with a teacher cache each training example carries its index, and under
    ``combine: route`` the index of its teacher."""
    train_set = with_example_index(data.distill) if cached else data.distill
    if routes is not None:
        train_set = with_routes(train_set, routes)
    evaluated_on, evaluated = ("test", data.test) if data.test is not None else ("validation", data.validation)
    train = make_loader(
        train_set,
        training.batch_size,
        data.collate,
        shuffle=True,
        group_by_length=training.group_by_length,
        seed=training.seed,
    )
    return Loaders(
        train=train,
        validation=make_loader(
            data.validation, training.eval_batch_size, data.collate, group_by_length=training.group_by_length
        ),
        evaluation=make_loader(
            evaluated, training.eval_batch_size, data.collate, group_by_length=training.group_by_length
        ),
        evaluated_on=evaluated_on,
        probe=next(iter(make_loader(evaluated, SPEED_BATCH_SIZE, data.collate))),
        steps_per_epoch=math.ceil(len(train) / training.gradient_accumulation_steps),
    )


def routed(models: Models, data: TaskData) -> dict[str, nn.Module]:
    """The models as the batches feed them: each reads its own tokens where the two tokenizers differ."""
    separate = data.separate_teacher_tokens
    found: dict[str, nn.Module] = {"teacher": Routed(models.teacher, True) if separate else models.teacher}
    if models.student is not None:
        found["student"] = Routed(models.student, False) if separate else models.student
    return found


def teacher_side(run: Any) -> nn.Module | dict[str, nn.Module]:
    """The teacher a stage trains from: the run's one, or its several by name (one tokenizer: no routing)."""
    if run.models.teachers:
        return dict(run.models.teachers)
    return routed(run.models, run.data)["teacher"]


class _BestStudent:
    """Keeps the student of the best validation score (the task's primary metric) in
    ``checkpoints/best-student/``: a plain model folder with ``trainer_state.json`` (stage, step,
    metrics), from which a resumed run reads the score to beat."""

    def __init__(self, folder: RunFolder, task: Task, models: Models, enabled: bool) -> None:
        self.folder, self.task, self.models, self.enabled = folder, task, models, enabled
        self.name = f"{CHECKPOINTS_DIR}/{BEST_DIR}"
        self.best: dict[str, Any] | None = None
        state = folder.path / self.name / "trainer_state.json"
        if enabled and state.is_file():
            try:
                self.best = json.loads(state.read_text(encoding="utf-8"))
            except ValueError:
                self.best = None

    def better(self, score: float) -> bool:
        if self.best is None or self.task.primary_metric not in self.best:
            return True
        previous = self.best[self.task.primary_metric]
        return score > previous if self.task.higher_is_better else score < previous

    def keep(self, metrics: dict[str, float], stage: str, step: int) -> None:
        """Save the student if ``metrics`` beat the best so far."""
        score = metrics.get(self.task.primary_metric)
        if not self.enabled or not isinstance(score, float) or not self.better(score):
            return
        state = {"stage": stage, "step": step, **metrics}

        def write(target: Path) -> None:
            assert self.models.student is not None
            self.task.save(self.models.student, self.models.tokenizer, target)
            (target / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

        self.folder.write_folder(self.name, write)
        self.best = state


def _finished_stage(stage_dir: Path, student: nn.Module, objective: Objective) -> History | None:
    """A stage finished before a resume: load its final checkpoint and return its history; else None."""
    marker = stage_dir / FINISHED_FILE
    if not marker.is_file():
        return None
    try:
        name = json.loads(marker.read_text(encoding="utf-8"))["checkpoint"]
        state = load_checkpoint(stage_dir / name, student, objective)
    except (OSError, ValueError, KeyError, TypeError, CheckpointError) as error:
        logger.warning(
            "%s: its final checkpoint cannot be read (%s); the stage continues from its newest intact checkpoint",
            stage_dir.name,
            error,
        )
        return None
    return History(**state.history)


def _mark_finished(stage_dir: Path, history: History) -> None:
    """Write ``finished.json`` naming the stage's final checkpoint (the newest one)."""
    final = find_resumable(stage_dir)
    if final is None:
        return
    write_atomic(stage_dir / FINISHED_FILE, json.dumps({"checkpoint": final.name, "steps": len(history.steps)}) + "\n")


def _restart_shuffle(loader: Any, seed: int) -> None:
    """Reseed a loader's own shuffling generator: each stage draws the same orders whether or not
    the stages before it ran in this process (a resumed run skips finished ones)."""
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed)


def finetune_teachers(run: Any, folder: RunFolder, resume: bool, progress: bool) -> dict[str, History]:
    """Fine-tune every teacher that has ``finetune`` (the one of ``teacher:`` into ``teacher/``, each of
    ``teachers:`` into ``teachers/<name>/``), or read them back on a resume; their histories by name."""
    config, models = run.config, run.models
    found: dict[str, History] = {}
    for name, section in config.teacher_sections.items():
        if section.finetune is None:
            continue
        model = models.teachers.get(name, models.teacher)
        named = name if config.several_teachers else None
        history = finetune_teacher(run, folder, resume, progress, section=section, model=model, name=named)
        if history is not None:
            found[name] = history
    return found


def finetune_teacher(
    run: Any,
    folder: RunFolder,
    resume: bool,
    progress: bool,
    *,
    section: Any,
    model: nn.Module,
    name: str | None = None,
) -> History | None:
    """Fine-tune one teacher (its ``finetune``) and save it to ``teacher/`` in the run folder (one of
    several, ``name``: ``teachers/<name>/``), or read it back on a resume."""
    from transformers import set_seed

    where = TEACHER_DIR if name is None else f"{TEACHERS_DIR}/{name}"
    stage = TEACHER_STAGE if name is None else f"{TEACHER_STAGE} ({name})"
    who = "the teacher" if name is None else f"teacher {name}"
    models, data = run.models, run.data
    finetune, training, saved = section.finetune, run.config.training, folder.path / where
    if finetune is None:
        return None
    teacher = model
    if resume and (saved / "config.json").is_file():
        # written whole or not at all (renamed into place), so a teacher/ folder is complete
        run.task.read_weights(teacher, saved)
        logger.info("%s was fine-tuned before the interruption: read back from %s", who, saved)
        history_file = saved / "training_history.json"
        return History(**json.loads(history_file.read_text(encoding="utf-8"))) if history_file.is_file() else None
    logger.info("fine-tuning %s for %d epoch(s)", who, finetune.epochs)
    loader = make_loader(
        data.train,
        finetune.batch_size,
        data.collate,
        shuffle=True,
        group_by_length=training.group_by_length,
        seed=training.seed,
    )
    set_seed(training.seed)
    teacher.train()
    history = distill(
        nn.Identity(),
        Routed(teacher, True) if data.separate_teacher_tokens else teacher,
        loader,
        objective=run.task.finetune_objective(),
        lr=finetune.lr,
        epochs=finetune.epochs,
        max_steps=finetune.max_steps,
        precision=training.precision,
        progress=stage if progress else False,
        log_every=training.log_every,
    )
    teacher.eval()

    def write(target: Path) -> None:
        run.task.save(teacher, models.teacher_tokenizer, target)
        (target / "training_history.json").write_text(
            json.dumps({"steps": history.steps, "epochs": history.epochs, "seconds": history.seconds}) + "\n",
            encoding="utf-8",
        )

    folder.write_folder(where, write)
    return history


def save_student(run: Any, folder: RunFolder, progress: bool) -> dict[str, Any] | None:
    """Save the final student and its tokenizer to ``student/``; with ``student.prune_vocabulary``,
    pruned first (it trained with the whole vocabulary, which the teacher shares).

    Args:
        run: the :class:`~kdistill.app.run.PreparedRun`, trained.
        folder: the run folder (claimed).
        progress: show progress bars.

    Returns:
        What pruning changed (``metrics.json``'s ``vocabulary_pruning``), or None when not pruned.
    """
    models, pruning = run.models, None
    assert models.student is not None and run.config.student is not None
    student, tokenizer = models.student, models.tokenizer
    if run.config.student.prune_vocabulary:
        student, tokenizer, pruning = run.task.prune_vocabulary(
            models, run.data, batch_size=run.config.training.eval_batch_size, progress=progress
        )
    saved = folder.write_folder(STUDENT_DIR, lambda target: run.task.save(student, tokenizer, target))
    logger.info("student saved to %s", saved)
    if pruning is not None:
        pruning["weight_files_bytes"] = weights_size(folder=saved)
    return pruning


def _last_epoch(history: History) -> dict[str, float]:
    """The last epoch's mean loss and parts."""
    return {
        k: v for k, v in (history.epochs[-1] if history.epochs else {}).items() if k not in ("step", "epoch", "lr")
    }


def _finetune_summary(finetune: Any, training: Any, history: History) -> dict[str, Any]:
    """What metrics.json and the report say of the teacher's fine-tuning."""
    return {
        "epochs": finetune.epochs,
        "lr": finetune.lr,
        "batch_size": finetune.batch_size or training.batch_size,
        "steps": len(history.steps),
        "seconds": history.seconds,
        "final": _last_epoch(history),
    }


def _stage_summary(stage: Stage, history: History, planned: int) -> dict[str, Any]:
    final = _last_epoch(history)
    summary: dict[str, Any] = {
        "name": stage.name,
        "objective": stage.objective.formula(),
        "epochs": stage.epochs,
        "lr": stage.lr,
        "steps": len(history.steps),
        "planned_steps": planned,
        "seconds": history.seconds,
        "final": final,
    }
    if stage.on_policy is not None:
        policy = stage.on_policy
        summary["on_policy"] = {
            "sampled_batches": policy.generated,
            "batches": policy.seen,
            "generation_seconds": policy.seconds,
            "generation_share": policy.share_of(history.seconds),
        }
    return summary


def _train_stage(
    run: Any,
    stage: Stage,
    index: int,
    loaders: Loaders,
    best: _BestStudent,
    caches: StageCaches | TeacherCaches,
    folder: RunFolder,
    resume: bool,
    progress: bool,
) -> tuple[History, int]:
    """Train one stage (or read it back when it finished before a resume); its history and planned steps."""
    from transformers import set_seed

    training, output, task = run.config.training, run.config.output, run.task
    models = routed(run.models, run.data)
    optimizer, scheduler, planned = optimizer_and_scheduler(
        run.models.student, stage.objective, stage, training, loaders.steps_per_epoch
    )
    stage_dir = folder.record(f"{CHECKPOINTS_DIR}/{stage.name}") if output.save_checkpoints else None
    finished = _finished_stage(stage_dir, models["student"], stage.objective) if resume and stage_dir else None
    if finished is not None:
        logger.info("stage %s finished before the interruption: skipped, its student read back", stage.name)
        return finished, planned
    logger.info(
        "stage %s: loss = %s, %d epoch(s), lr %g", stage.name, stage.objective.formula(), stage.epochs, stage.lr
    )

    def evaluate(model: nn.Module) -> dict[str, float]:
        metrics = task.evaluate({"student": model}, loaders.validation, progress=progress, desc="validation")[
            "student"
        ]
        step = int(scheduler.last_epoch)
        # logged as it happens, so run.log's times are the times of the evaluations
        logger.info(
            "validation after %s step %d: %s %.4f", stage.name, step, task.primary_metric, metrics[task.primary_metric]
        )
        best.keep(metrics, stage.name, step)
        return metrics

    # the cache is built (or opened) before the stage's seed is set: building it draws from the
    # global RNG (each DataLoader iterator does), which must not shift the stage's dropout
    cache = caches.for_objective(stage.objective, stage.name)
    set_seed(training.seed + index)
    _restart_shuffle(loaders.train, training.seed + index)
    combining = getattr(run.config.objective, "teachers", None)
    history = distill(
        teacher_side(run),
        models["student"],
        loaders.train,
        objective=stage.objective,
        optimizer=optimizer,
        teacher_cache=cache,
        scheduler=scheduler,
        epochs=stage.epochs,
        max_steps=training.max_steps,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        max_grad_norm=training.max_grad_norm,
        precision=training.precision,
        eval_fn=evaluate,
        eval_every=training.eval_every,
        log_every=training.log_every,
        progress=stage.name if progress else False,
        checkpoint_dir=stage_dir,
        save_every=output.save_every,
        keep_checkpoints=output.keep_checkpoints,
        resume=resume and stage_dir is not None,
        on_nonfinite=training.on_nonfinite,
        on_policy=stage.on_policy,
        offload_teachers=bool(run.models.teachers) and combining is not None and combining.offload,
    )
    if history.skipped_steps:
        logger.warning("stage %s: %d step(s) skipped for a NaN or infinite loss", stage.name, history.skipped_steps)
    if stage_dir is not None:
        _mark_finished(stage_dir, history)
    return history, planned


def train(run: Any, folder: RunFolder, loaders: Loaders, *, resume: bool, progress: bool) -> Trained:
    """Fine-tune the teacher if asked, then train every stage of the student.

    Args:
        run: the :class:`~kdistill.app.run.PreparedRun`.
        folder: the run folder (claimed).
        loaders: the run's batches.
        resume: continue from the folder's checkpoints.
        progress: show progress bars.
    """
    trained = Trained()
    task, config = run.task, run.config
    for name, history in finetune_teachers(run, folder, resume, progress).items():
        section = config.teacher_sections[name]
        trained.histories.append((f"{TEACHER_STAGE} ({name})" if config.several_teachers else TEACHER_STAGE, history))
        summary = _finetune_summary(section.finetune, config.training, history)
        if config.several_teachers:
            trained.teachers_finetune[name] = summary
        else:
            trained.teacher_finetune = summary
    models = routed(run.models, run.data)
    if run.models.teachers:
        for name, model in run.models.teachers.items():
            metrics = task.evaluate({"teacher": model}, loaders.validation, progress=progress, desc="validation")
            trained.teachers_validation[name] = metrics["teacher"]
            logger.info("teacher %s on validation: %s", name, _shown(metrics["teacher"]))
        trained.teacher_validation = trained.teachers_validation[config.primary_teacher]
    else:
        trained.teacher_validation = task.evaluate(
            {"teacher": models["teacher"]}, loaders.validation, progress=progress, desc="validation"
        )["teacher"]
        logger.info("teacher on validation: %s", _shown(trained.teacher_validation))
    if run.models.student is None:
        return trained
    data = task.distill_data(config.objective, run.models, run.data, seed=config.training.seed, progress=progress)
    if data is not run.data:
        # the student learns from what the final teacher wrote (sequence-level KD)
        run.data = data
        fresh = make_loaders(data, config.training, cached=uses_cache(config), routes=run.routes)
        loaders.train, loaders.steps_per_epoch = fresh.train, fresh.steps_per_epoch
    caches = _caches(run, models["teacher"], progress)
    best = _BestStudent(folder, task, run.models, config.output.save_best)
    if resume and not config.output.save_checkpoints:
        logger.warning("output.save_checkpoints is false: the run left no checkpoints, so training starts again")
    step_offset = 0
    for index, stage in enumerate(run.stages):
        history, planned = _train_stage(run, stage, index, loaders, best, caches, folder, resume, progress)
        for record in history.evals:
            # metrics.json counts epochs from 1 (the loop's records index them from 0)
            counted = {**record, "epoch": int(record["epoch"]) + 1, "global_step": record["step"] + step_offset}
            trained.validations.append({"stage": stage.name, **counted})
        step_offset += int(history.steps[-1]["step"]) if history.steps else 0
        trained.stages.append(_stage_summary(stage, history, planned))
        trained.histories.append((stage.name, history))
    trained.best = best.best
    return trained


def uses_cache(config: Any) -> bool:
    """Whether some teacher of the run reads from a cache (training examples then carry their index)."""
    return any(section.cache is not None for section in config.teacher_sections.values())


def _caches(run: Any, teacher: nn.Module, progress: bool) -> StageCaches | TeacherCaches:
    config = run.config

    def one(settings: Any, model: nn.Module) -> StageCaches:
        return StageCaches(
            settings,
            model,
            run.data,
            run.models.tokenizer,
            getattr(config.data, "max_length", None),
            config.training.precision,
            progress,
            shared_vocab(model, run.models.student),
        )

    if not run.models.teachers:
        return one(config.teacher.cache, teacher)
    return TeacherCaches(
        {name: one(config.teacher_sections[name].cache, model) for name, model in run.models.teachers.items()}
    )


def _shown(metrics: dict[str, float]) -> str:
    # counts (tokens, examples) come as floats from the metric dicts; shown as the whole numbers they are
    return ", ".join(
        f"{name} {int(value):,}" if name == "tokens" else f"{name} {value:.4f}"
        for name, value in metrics.items()
        if isinstance(value, float)
    )
