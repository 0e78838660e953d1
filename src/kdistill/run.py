"""A ``kdistill distill`` run, from a validated config to a run folder.

Everything that can be checked is checked before the run folder is made (config, data files,
columns, labels, models, tokenizers, the objective against the two models), so a bad input
leaves nothing behind and never touches an earlier run. A folder that already holds a run is
refused unless the run is told to start again (``overwrite``: the old run's files are deleted
only once the new run is prepared) or to continue it (``resume``). Once the run starts, its
folder only grows: the resolved config and the log first, checkpoints during training, then the
student, ``metrics.json``, ``report.md`` and the curves. A failure part-way is written to the
log and leaves every file that was already there; a run killed part-way continues from its
last checkpoints with ``resume`` and ends with the student an uninterrupted run would have.

The run folder::

    config.yaml          the resolved config (every default filled in)
    run.log              the log
    checkpoints/<stage>/ the training loop's checkpoints of each stage (checkpoint-<step>: student,
                         projections, optimizer, scheduler, RNG states, data position) and
                         finished.json once the stage is done
    checkpoints/best-student/  the student with the best validation accuracy so far
    student/             the final student and its tokenizer (plain transformers can load it)
    teacher/             the fine-tuned teacher, when teacher.finetune is set
    metrics.json         every number of the report
    report.md            the summary
    training_curves.png  every loss part and the validation accuracy
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill._version import __version__
from kdistill.batch import with_example_index
from kdistill.config import RunConfig, dump_config
from kdistill.data import PaddingCollator, PreparedData, load_splits, make_loader, prepare_data
from kdistill.errors import ConfigError, DataError, KdistillError, ModelLoadError, RunFolderError
from kdistill.fileio import cache_root
from kdistill.loading import (
    LoadedModel,
    count_parameters,
    load_classifier,
    load_tokenizer,
    looks_local,
    saved_head_size,
)
from kdistill.losses import HardCE, Objective
from kdistill.preflight import check_max_length, check_memory, check_token_ids, estimate_parameters
from kdistill.report import (
    COMPARISON_COLUMNS,
    agreement,
    classification_metrics,
    comparison_rows,
    format_table,
    measure_speed,
    plot_curves,
    predict,
    update_metrics_file,
    weights_size,
    write_report,
)
from kdistill.runfolder import (
    BEST_DIR,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    CURVES_FILE,
    FINISHED_FILE,
    LOG_FILE,
    METRICS_FILE,
    REPORT_FILE,
    STUDENT_DIR,
    TEACHER_DIR,
    RunFolder,
)
from kdistill.train.checkpoint import CheckpointError, load_checkpoint
from kdistill.train.loop import History, distill

__all__ = ["PreparedRun", "RunResult", "Stage", "build_stages", "check_run_folder", "prepare_run", "resume_config",
           "run_distill"]

logger = logging.getLogger("kdistill.run")



@dataclass
class Stage:
    """One training stage: an objective trained for some epochs at a learning rate.

    Attributes:
        name: ``distill``, or the recipe's stage name (``intermediate``, ``prediction``, ``relations``).
        objective: the loss of the stage.
        epochs: passes over the training data.
        lr: peak learning rate.
    """

    name: str
    objective: Objective
    epochs: int
    lr: float


@dataclass
class PreparedRun:
    """Everything a run needs, loaded and checked; nothing written yet."""

    config: RunConfig
    teacher: LoadedModel
    student: nn.Module
    tokenizer: Any
    data: PreparedData
    stages: list[Stage]
    student_note: str = ""


@dataclass
class RunResult:
    """What a finished run produced.

    Attributes:
        folder: the run folder.
        metrics: the content of its ``metrics.json``.
    """

    folder: Path
    metrics: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """The teacher-versus-student table of the run."""
        models = {name: self.metrics[name] for name in ("teacher", "student") if name in self.metrics}
        return format_table(comparison_rows(models), COMPARISON_COLUMNS)


class _Routed(nn.Module):
    """Feeds a model its own token ids when the teacher and the student were tokenised apart.

    The batch holds the student's ``input_ids`` and the teacher's ``teacher_input_ids``; the
    wrapper picks one side's and drops the other's. Only sequence-level terms are allowed
    with separate tokens (the config checks it), so nothing looks inside the wrapped model.
    """

    def __init__(self, model: nn.Module, teacher_side: bool) -> None:
        super().__init__()
        self.model = model
        self.teacher_side = teacher_side

    def forward(self, **inputs: Any) -> Any:
        from kdistill.report import model_inputs

        return self.model(**model_inputs(inputs, self.teacher_side))


# ---------------------------------------------------------------------------
# building the objective
# ---------------------------------------------------------------------------


def _term(spec: Any, student: nn.Module, teacher: nn.Module) -> Any:
    from kdistill import losses

    kind = spec.type
    if kind == "kd":
        return losses.LogitKD(spec.temperature)
    if kind == "ce":
        return losses.HardCE()
    if kind == "reverse_kl":
        return losses.ReverseKL(spec.temperature)
    if kind == "jsd":
        return losses.JSD(spec.beta, spec.temperature)
    if kind == "logit_mse":
        return losses.LogitMSE()
    if kind in ("hidden_mse", "hidden_cosine"):
        cls = losses.HiddenMSE if kind == "hidden_mse" else losses.HiddenCosine
        return cls.from_models(student, teacher, spec.layer_map, shared_projection=spec.shared_projection)
    if kind == "embedding_mse":
        return losses.EmbeddingMSE.from_models(student, teacher)
    if kind == "attention_mse":
        return losses.AttentionMSE.from_models(student, teacher, spec.layer_map, on=spec.on, heads=spec.heads)
    if kind == "attention_kl":
        return losses.AttentionKL.from_models(student, teacher, spec.layer_map, heads=spec.heads)
    if kind == "minilm_v1":
        return losses.MiniLMv1.from_models(student, teacher, spec.student_layer, spec.teacher_layer)
    if kind == "minilm_v2":
        return losses.MiniLMv2.from_models(student, teacher, spec.student_layer, spec.teacher_layer, spec.relation_heads)
    raise ConfigError(f"unknown term type {kind!r}")  # the config's tagged union makes this unreachable


def build_stages(config: RunConfig, student: nn.Module, teacher: nn.Module) -> list[Stage]:
    """The training stages of the config's objective, built against the two models.

    ``hinton`` and explicit ``terms`` are one stage; ``tinybert`` is TinyBERT's two stages
    (intermediate layers, then the prediction layer); ``minilm`` is self-attention relations,
    then the soft labels.

    Raises:
        ConfigError: the objective does not fit the models (a layer out of range, widths that
            a relation head count does not divide ...).
    """
    objective = config.objective
    training = config.training
    try:
        if objective.terms is not None:
            terms = {name: _term(spec, student, teacher) for name, spec in objective.terms.items()}
            weights = {name: spec.weight for name, spec in objective.terms.items()}
            return [Stage("distill", Objective(terms, weights), training.epochs, training.lr)]
        if objective.preset == "hinton":
            hinton = Objective.hinton(
                temperature=objective.temperature if objective.temperature is not None else 4.0,
                alpha=objective.alpha if objective.alpha is not None else 0.5,
            )
            return [Stage("distill", hinton, training.epochs, training.lr)]
        if objective.preset == "tinybert":
            from kdistill.config import TinyBERTSettings
            from kdistill.recipes import TinyBERTConfig, TinyBERTDistillation

            settings = objective.tinybert or TinyBERTSettings()
            recipe = TinyBERTDistillation(teacher, student, TinyBERTConfig(
                layer_map=settings.layer_map,
                attention_on=settings.attention_on,
                heads=settings.heads,
                shared_projection=settings.shared_projection,
                embedding_weight=settings.embedding_weight,
                hidden_weight=settings.hidden_weight,
                attention_weight=settings.attention_weight,
                temperature=objective.temperature if objective.temperature is not None else 1.0,
                hard_label_weight=1.0 - (objective.alpha if objective.alpha is not None else 1.0),
            ))
            return [
                Stage("intermediate", recipe.stage_objective(1), settings.intermediate_epochs or training.epochs,
                      settings.intermediate_lr or training.lr),
                Stage("prediction", recipe.stage_objective(2), settings.prediction_epochs or training.epochs,
                      settings.prediction_lr or training.lr),
            ]
        if objective.preset == "minilm":
            from kdistill.config import MiniLMSettings
            from kdistill.losses import MiniLMv1, MiniLMv2

            settings = objective.minilm or MiniLMSettings()
            if settings.version == 1:
                relation = MiniLMv1.from_models(student, teacher, settings.student_layer, settings.teacher_layer)
            else:
                relation = MiniLMv2.from_models(
                    student, teacher, settings.student_layer, settings.teacher_layer, settings.relation_heads
                )
            hinton = Objective.hinton(
                temperature=objective.temperature if objective.temperature is not None else 4.0,
                alpha=objective.alpha if objective.alpha is not None else 0.5,
            )
            return [
                Stage("relations", Objective({f"minilm_v{settings.version}": relation}),
                      settings.relation_epochs or training.epochs, settings.relation_lr or training.lr),
                Stage("prediction", hinton, training.epochs, training.lr),
            ]
    except KdistillError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"objective: {error}") from None
    raise ConfigError(f"objective: unknown preset {objective.preset!r}")


# ---------------------------------------------------------------------------
# preparing: load and check everything, write nothing
# ---------------------------------------------------------------------------


def _copy_map(spec: str | Mapping[int, int] | None, student_layers: int, teacher: nn.Module) -> dict[int, int] | None:
    """The teacher layers a student copies: an explicit map, or a named one sized to the two depths."""
    if spec is None or isinstance(spec, Mapping):
        return dict(spec) if spec is not None else None
    from kdistill.attention import model_dims
    from kdistill.mapping import every_kth_map, last_k_map, uniform_map

    teacher_layers = model_dims(teacher).num_layers
    kind, _, number = spec.partition("-")
    if kind == "every":
        return every_kth_map(student_layers, teacher_layers, int(number))
    if kind == "last":
        return last_k_map(student_layers, teacher_layers, int(number))
    return uniform_map(student_layers, teacher_layers)


def _build_student(config: RunConfig, teacher: nn.Module, num_labels: int, id2label: dict[int, str]) -> tuple[nn.Module, str]:
    spec = config.student
    if spec.from_teacher is not None:
        from kdistill.student import make_student

        options = spec.from_teacher
        try:
            layer_map = _copy_map(options.layer_map, options.num_layers, teacher)
            student, report = make_student(
                teacher,
                num_layers=options.num_layers,
                hidden_size=options.hidden_size,
                num_heads=options.num_heads,
                intermediate_size=options.intermediate_size,
                layer_map=layer_map,
                init=options.init,
                seed=options.seed if options.seed is not None else config.training.seed,
            )
        except (ValueError, TypeError) as error:
            raise ConfigError(f"student.from_teacher: {error}") from None
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
        location, "student", num_labels=num_labels, id2label=id2label, revision=spec.revision,
        trust_remote_code=spec.trust_remote_code,
    )
    note = f"student loaded from {loaded.location}"
    if loaded.has_new_head:
        note += f" (new weights: {', '.join(loaded.new_weights[:4])})"
    return loaded.model, note


def _augmenter(config: RunConfig, teacher: nn.Module, teacher_tokenizer: Any, student_tokenizer: Any,
               texts: list[str]) -> Any:
    """The :class:`~kdistill.augment.Augmenter` of ``data.augment``, with word neighbours from the teacher's embeddings."""
    settings = config.data.augment
    if settings is None:
        return None
    from kdistill.augment import Augmenter, embedding_neighbours

    embeddings = teacher.get_input_embeddings() if hasattr(teacher, "get_input_embeddings") else None
    neighbours: dict[str, list[str]] = {}
    if settings.replace_prob > 0:
        if embeddings is None:
            raise ConfigError("data.augment.replace_prob needs a teacher with input embeddings; set it to 0")
        words = {word for text in texts for word in text.split()}
        neighbours = embedding_neighbours(embeddings.weight, teacher_tokenizer, sorted(words), k=settings.neighbours)
    mask_token = getattr(student_tokenizer, "mask_token", None)
    return Augmenter(copies=settings.copies, mask_prob=settings.mask_prob, replace_prob=settings.replace_prob,
                     ngram_prob=settings.ngram_prob, max_ngram=settings.max_ngram, mask_token=mask_token,
                     neighbours=neighbours, seed=settings.seed)


def prepare_run(config: RunConfig, *, progress: bool = True) -> PreparedRun:
    """Load the data and the models and build the objective, checking that they fit; write nothing.

    Raises:
        KdistillError: any problem with the inputs, as one line.
    """
    from transformers import set_seed

    set_seed(config.training.seed)
    splits = load_splits(config.data)
    distinct_labels = len({str(label) for label in splits["train"].labels})

    teacher_spec = config.teacher
    teacher_location = teacher_spec.location()
    num_labels = teacher_spec.num_labels
    if num_labels is not None and num_labels != distinct_labels:
        # a new head of the wrong size would be trained, then fail to fit the student's
        names = sorted({str(label) for label in splits["train"].labels})
        raise DataError(f"teacher.num_labels is {num_labels} but the training data has {distinct_labels} labels "
                        f"({', '.join(names[:10])}); set teacher.num_labels: {distinct_labels}, or leave it out to "
                        "count the data's labels")
    if num_labels is None and teacher_spec.finetune is not None:
        num_labels = distinct_labels
    teacher = load_classifier(teacher_location, "teacher", num_labels=num_labels,
                              revision=teacher_spec.revision, trust_remote_code=teacher_spec.trust_remote_code)
    if teacher_spec.finetune is None:
        teacher.trained("teacher", "add teacher.finetune: {epochs: 1} to train it on the data first, or give a "
                                   "teacher fine-tuned for this task")
    teacher_config = teacher.model.config
    teacher_tokenizer = load_tokenizer(teacher_spec.tokenizer or teacher_location, "teacher",
                                       revision=teacher_spec.revision, trust_remote_code=teacher_spec.trust_remote_code)

    from kdistill.data import build_label_names

    label_names = build_label_names(
        splits["train"].labels,
        None if teacher.has_new_head else teacher_config.id2label,
        None if teacher.has_new_head else teacher_config.num_labels,
    )
    id2label = dict(enumerate(label_names))
    if teacher.has_new_head:
        teacher_config.id2label, teacher_config.label2id = id2label, {n: i for i, n in id2label.items()}

    _check_student_memory(config, teacher.model)
    student, note = _build_student(config, teacher.model, len(label_names), id2label)
    check_max_length(config.data.max_length, [("teacher", teacher.model), ("student", student)])
    _check_batch_memory(config, teacher.model, student)
    if config.student.from_teacher is not None:
        student_tokenizer = teacher_tokenizer
    else:
        spec = config.student
        student_tokenizer = load_tokenizer(spec.tokenizer or spec.location(), "student", revision=spec.revision,
                                           trust_remote_code=spec.trust_remote_code)
    augmenter = _augmenter(config, teacher.model, teacher_tokenizer, student_tokenizer, splits["train"].texts)
    data = prepare_data(config.data, student_tokenizer, teacher_tokenizer, splits=splits, augmenter=augmenter,
                        teacher_id2label=id2label, teacher_num_labels=len(label_names), progress=progress)
    _check_token_ids(config, data, teacher.model, student)
    stages = build_stages(config, student, teacher.model)
    _check_stage_capture(stages, student, teacher.model)
    return PreparedRun(config, teacher, student, student_tokenizer, data, stages, note)


def _check_token_ids(config: RunConfig, data: PreparedData, teacher: nn.Module, student: nn.Module) -> None:
    """Every token id of every split has a row in the embeddings of the model that reads it."""
    from kdistill.data import TEACHER_PREFIX

    splits = [data.train, data.validation, *([data.test] if data.test is not None else [])]
    student_setting = "student.tokenizer" if config.student.tokenizer else "the student's folder"
    teacher_setting = "teacher.tokenizer" if config.teacher.tokenizer else "the teacher's folder"
    for split in splits:
        check_token_ids(split.columns["input_ids"], student, "student", student_setting)
        teacher_ids = split.columns.get(f"{TEACHER_PREFIX}input_ids", split.columns["input_ids"])
        check_token_ids(teacher_ids, teacher, "teacher", teacher_setting)


def _check_student_memory(config: RunConfig, teacher: nn.Module) -> None:
    """A student built from the teacher's config at absurd sizes is refused before it is allocated."""
    options = config.student.from_teacher
    if options is None:
        return
    from kdistill.attention import model_dims

    try:
        dims = model_dims(teacher)
    except TypeError:
        return
    hidden = options.hidden_size or dims.hidden_size
    teacher_ffn = next((getattr(teacher.config, n) for n in ("intermediate_size", "hidden_dim", "ffn_dim")
                        if isinstance(getattr(teacher.config, n, None), int)), 4 * dims.hidden_size)
    ffn = options.intermediate_size or round(teacher_ffn * hidden / dims.hidden_size)
    vocab = int(getattr(teacher.config, "vocab_size", 0) or 0)
    parameters = estimate_parameters(options.num_layers, hidden, ffn, vocab)
    # float32 weights, gradients and AdamW's two moments: 16 bytes a parameter
    check_memory(f"a student of {options.num_layers} layers and width {hidden} ({parameters:,} parameters) with its "
                 "gradients and optimizer state", 16 * parameters,
                 "lower student.from_teacher.num_layers, hidden_size or intermediate_size")


def _check_batch_memory(config: RunConfig, teacher: nn.Module, student: nn.Module) -> None:
    """A batch whose activations alone cannot fit is refused before the first step."""
    from kdistill.attention import model_dims

    try:
        student_dims, teacher_dims = model_dims(student), model_dims(teacher)
    except TypeError:
        return
    length = config.data.max_length

    def per_layer(batch: int, dims: Any) -> float:
        # activations a transformer layer keeps for backward, in float32 (Korthikanti et al. 2022: 34·s·b·h + 5·a·s²·b
        # bytes at 16 bits)
        return 2.0 * batch * length * (34 * dims.hidden_size + 5 * (dims.num_heads or 1) * length)

    training = config.training
    needed = (student_dims.num_layers * per_layer(training.batch_size, student_dims)
              + per_layer(max(training.batch_size, training.eval_batch_size), teacher_dims))
    check_memory(f"a batch of {training.batch_size} texts of up to {length} tokens", needed,
                 "lower training.batch_size (training.gradient_accumulation_steps keeps the effective batch), "
                 "training.eval_batch_size or data.max_length")


def _check_stage_capture(stages: list[Stage], student: nn.Module, teacher: nn.Module) -> None:
    """Refuse, before the run starts, a term that asks a model for what it cannot give (attention
    maps of an architecture kdistill cannot read them from) instead of failing at the first step."""
    from kdistill.capture import check_capture

    for stage in stages:
        for role, model in (("teacher", teacher), ("student", student)):
            try:
                check_capture(model, stage.objective.request(role))
            except (ValueError, TypeError) as error:
                raise ConfigError(f"objective ({stage.name} stage), the {role}: {error}") from None


# ---------------------------------------------------------------------------
# the run folder
# ---------------------------------------------------------------------------


def paths_read(config: RunConfig) -> dict[str, str]:
    """The local paths a run reads, by the config key that names them (hub ids left out):
    ``--overwrite`` never deletes one of them."""
    found: dict[str, str] = {}
    for role in ("teacher", "student"):
        source = getattr(config, role)
        for key in ("path", "tokenizer"):
            value = getattr(source, key)
            if value is not None and looks_local(value):
                found[f"{role}.{key}"] = value
    for key in ("train", "validation", "test"):
        value = getattr(config.data, key)
        if value is not None:
            found[f"data.{key}"] = value
    if config.teacher.cache is not None and config.teacher.cache.dir is not None:
        found["teacher.cache"] = config.teacher.cache.dir
    return found


def check_run_folder(config: RunConfig, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Check that ``config.output.dir`` can take the run, and return it; write nothing.

    A new or empty folder takes a new run. A folder that already holds a run is refused unless
    ``overwrite`` (start again; the earlier run's entries are deleted once the new run is
    prepared, and only if kdistill can prove it wrote every file in them) or ``resume``
    (continue it from its checkpoints). A folder holding files that are not a run is refused
    either way, and so is a folder another kdistill process holds.

    Raises:
        RunFolderError: the folder cannot take the run, in one line that says what to do.
    """
    folder = RunFolder(config.output.dir)
    path = folder.path
    if overwrite and resume:
        raise RunFolderError("give either --overwrite (start again) or --resume (continue), not both")
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"output.dir {str(path)!r} is a file, not a folder")
    if config.teacher.cache is not None and config.teacher.cache.dir is not None:
        from kdistill.cache import check_cache_folder

        cache = Path(config.teacher.cache.dir).resolve()
        if cache == path.resolve() or path.resolve().is_relative_to(cache):
            raise RunFolderError(f"teacher.cache {config.teacher.cache.dir!r} holds output.dir {str(path)!r}: the "
                                 "cache needs a folder of its own (a subfolder of the run folder will do)")
        check_cache_folder(config.teacher.cache.dir)
    if not path.exists():
        return path
    folder.check_free()
    if resume:
        if not folder.holds_run():
            raise RunFolderError(f"{str(path)!r} holds no run to resume (no {CONFIG_FILE} written by kdistill); "
                                 "give the folder of a run that was stopped")
        if (path / REPORT_FILE).is_file():
            raise RunFolderError(f"the run in {str(path)!r} has finished (it wrote {REPORT_FILE}): there is nothing "
                                 "to resume; use --overwrite to run it again")
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
    return [] if run == given else [f"{where} ({run!r} in the run, {given!r} here)"]


def resume_config(run_dir: str | Path, config_file: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """The config to continue the run in ``run_dir`` with: its resolved ``config.yaml``.

    A config file and ``key.sub=value`` overrides may be given too, but they must come to the
    same config (``output.dir`` aside): a run continues with the settings it started with, or
    it would not end with the student an uninterrupted run gives. ``output.dir`` becomes
    ``run_dir``, so a moved run folder resumes where it is.

    Raises:
        RunFolderError: ``run_dir`` holds no run, or the given config differs from the run's.
        ConfigError: the config file or an override is invalid.
    """
    from kdistill.config import load_config

    folder = Path(run_dir)
    stored_file = folder / CONFIG_FILE
    if not stored_file.is_file() or not RunFolder(folder).holds_run():
        raise RunFolderError(f"{str(folder)!r} holds no run to resume (no {CONFIG_FILE} written by kdistill); "
                             "give the folder of a run that was stopped")
    stored = load_config(stored_file)
    if config_file is not None or overrides:
        given = load_config(config_file if config_file is not None else stored_file, overrides)
        run_side, given_side = stored.model_dump(mode="json"), given.model_dump(mode="json")
        run_side["output"].pop("dir"), given_side["output"].pop("dir")
        differences = _config_differences(run_side, given_side)
        if differences:
            more = f" and {len(differences) - 2} more" if len(differences) > 2 else ""
            raise RunFolderError(
                f"the config given differs from the run's {stored_file} at {'; '.join(differences[:2])}{more}: a "
                "resumed run keeps the config it started with; leave out CONFIG and the overrides"
            )
    stored.output.dir = str(folder)
    return stored


class _MessageOnly(logging.Formatter):
    """The console shows a record's message alone: a traceback goes to run.log, never the console."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


@contextmanager
def _log_to(path: Path, console: bool) -> Iterator[None]:
    """Send kdistill's and transformers' log records to ``path`` (and the console) for the run."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger("kdistill"), logging.getLogger("transformers")]
    previous = [(lg, lg.level) for lg in loggers]
    console_handler = logging.StreamHandler() if console else None
    if console_handler is not None:
        console_handler.setFormatter(_MessageOnly())
        console_handler.setLevel(logging.INFO)
    for lg in loggers:
        lg.addHandler(handler)
    logging.getLogger("kdistill").setLevel(logging.INFO)
    if console_handler is not None:
        logging.getLogger("kdistill").addHandler(console_handler)
    try:
        yield
    finally:
        for lg, level in previous:
            lg.removeHandler(handler)
            lg.setLevel(level)
        if console_handler is not None:
            logging.getLogger("kdistill").removeHandler(console_handler)
        handler.close()


class _BestStudent:
    """Keeps the student of the best validation accuracy in ``checkpoints/best-student/``.

    It is a plain model folder (``from_pretrained`` loads it) with ``trainer_state.json``
    (stage, step, metrics); a resumed run reads the score to beat back from it.
    """

    def __init__(self, folder: RunFolder, name: str, enabled: bool) -> None:
        self.folder = folder
        self.name = name
        self.enabled = enabled
        self.best: dict[str, Any] | None = None
        state = folder.path / name / "trainer_state.json"
        if enabled and state.is_file():
            try:
                self.best = json.loads(state.read_text(encoding="utf-8"))
            except ValueError:
                self.best = None

    def watch(self, eval_fn: Callable[[nn.Module], dict[str, float]], student: nn.Module, tokenizer: Any,
              stage: str, step: Callable[[], int]) -> Callable[[nn.Module], dict[str, float]]:
        """``eval_fn`` that also saves ``student`` when its accuracy beats the best so far."""

        def evaluate_and_keep(model: nn.Module) -> dict[str, float]:
            metrics = eval_fn(model)
            score = metrics.get("accuracy")
            if self.enabled and isinstance(score, float) and (self.best is None or score > self.best["accuracy"]):
                state = {"stage": stage, "step": step(), **metrics}

                def write(target: Path) -> None:
                    _save_model(student, tokenizer, target)
                    (target / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

                self.folder.write_folder(self.name, write)
                self.best = state
            return metrics

        return evaluate_and_keep


def _save_model(model: nn.Module, tokenizer: Any, target: Path) -> None:
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _finished_stage(stage_dir: Path, student: nn.Module, objective: Objective) -> History | None:
    """A stage finished before a resume: load its final checkpoint and return its history; else None."""
    marker = stage_dir / FINISHED_FILE
    if not marker.is_file():
        return None
    try:
        name = json.loads(marker.read_text(encoding="utf-8"))["checkpoint"]
        state = load_checkpoint(stage_dir / name, student, objective)
    except (OSError, ValueError, KeyError, TypeError, CheckpointError) as error:
        logger.warning("%s: its final checkpoint cannot be read (%s); the stage continues from its newest intact "
                       "checkpoint", stage_dir.name, error)
        return None
    return History(**state.history)


def _mark_finished(stage_dir: Path, history: History) -> None:
    """Write ``finished.json`` naming the stage's final checkpoint (the newest one)."""
    from kdistill.train.checkpoint import find_resumable

    final = find_resumable(stage_dir)
    if final is None:
        return
    staging = stage_dir / f".{FINISHED_FILE}.partial"
    staging.write_text(json.dumps({"checkpoint": final.name, "steps": len(history.steps)}) + "\n", encoding="utf-8")
    os.replace(staging, stage_dir / FINISHED_FILE)


def _restart_shuffle(loader: Any, seed: int) -> None:
    """Reseed a loader's own shuffling generator: each stage draws the same orders whether or not
    the stages before it ran in this process (a resumed run skips finished ones)."""
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed)


def _read_weights(model: nn.Module, folder: Path) -> None:
    """Load the weights saved with ``save_pretrained`` in ``folder`` into ``model`` (same class)."""
    saved = type(model).from_pretrained(folder)
    model.load_state_dict(saved.state_dict())


class _StageCaches:
    """The teacher's stored outputs over the training data, built once per distinct need.

    A stage whose teacher terms need only logits and hidden states reads them from a cache; a
    stage that needs attention maps or queries/keys runs the teacher online. Stages that need
    the same fields share one cache.
    """

    def __init__(self, config: RunConfig, teacher: nn.Module, dataset: Any, collator: Any, tokenizer: Any,
                 progress: bool) -> None:
        self.settings = config.teacher.cache
        self.teacher = teacher
        self.dataset = dataset
        self.collator = collator
        self.precision = config.training.precision
        self.progress = progress
        self.tokenizer = tokenizer
        self.max_length = config.data.max_length
        self.built: dict[Any, Any] = {}

    @functools.cached_property
    def tokenization(self) -> dict[str, Any]:
        """What shaped the teacher's inputs, for the cache key; hashing the vocabulary takes a
        quarter of a second, so only runs that use a cache pay it, once."""
        from kdistill.cache import fingerprint_tokenizer

        return {"tokenizer": fingerprint_tokenizer(self.tokenizer), "max_length": self.max_length}

    def for_objective(self, objective: Objective, stage: str) -> Any:
        """The cache that serves ``objective``'s teacher terms, or None to run the teacher online."""
        from kdistill.cache import CacheSpec, TeacherCache, cache_key

        if self.settings is None:
            return None
        request = objective.request("teacher")
        if request.empty:
            return None
        online_only = request.attentions or request.attention_scores or request.qkv or request.modules
        if online_only:
            logger.info("stage %s: its terms need attention maps or queries/keys, which a cache does not store; "
                        "the teacher runs online", stage)
            return None
        spec = CacheSpec(logits=request.logits, hidden_states=tuple(sorted(request.hidden_states)),
                         dtype=self.settings.dtype)
        if spec in self.built:
            return self.built[spec]
        fingerprint, parts = cache_key(self.teacher, self.dataset, spec, self.tokenization)
        folder = Path(self.settings.dir) if self.settings.dir else cache_root() / "teacher-outputs" / fingerprint[:24]
        logger.info("stage %s: teacher outputs from the cache at %s", stage, folder)
        cache = TeacherCache.build(self.teacher, self.dataset, folder, spec=spec, batch_size=self.settings.batch_size,
                                   collate_fn=self.collator, tokenization=self.tokenization, precision=self.precision,
                                   progress=self.progress, key=(fingerprint, parts))
        self.built[spec] = cache
        return cache


def _optimizer_and_scheduler(student: nn.Module, objective: Objective, stage: Stage, config: RunConfig,
                             steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any, int]:
    from transformers import get_linear_schedule_with_warmup

    training = config.training
    decay, no_decay = [], []
    for name, parameter in student.named_parameters():
        if parameter.requires_grad:
            # biases and norms are not decayed (the usual transformer recipe)
            (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": training.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = [p for p in objective.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=stage.lr)
    total = steps_per_epoch * stage.epochs
    if training.max_steps is not None:
        total = min(total, training.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(training.warmup_ratio * total), max(total, 1))
    return optimizer, scheduler, total


def _evaluate(model: nn.Module, loader: Any, num_labels: int, *, teacher_side: bool, desc: str,
              progress: bool) -> tuple[dict[str, float], Any]:
    logits, labels = predict(model, loader, teacher_side=teacher_side, desc=desc, progress=progress)
    assert labels is not None
    return classification_metrics(logits, labels, num_labels), logits


def run_distill(config: RunConfig, *, progress: bool = True, console_log: bool = True,
                prepared: PreparedRun | None = None, overwrite: bool = False, resume: bool = False) -> RunResult:
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
            continues from its newest intact checkpoint.

    Returns:
        The run folder and its metrics.

    Raises:
        RunFolderError: ``output.dir`` already holds a run and neither ``overwrite`` nor
            ``resume`` is set (or it holds other files, or no run to resume).
        KdistillError: a problem with the inputs; found before the run folder is touched.
    """
    started = time.time()
    path = check_run_folder(config, overwrite=overwrite, resume=resume)
    prepared = prepared or prepare_run(config, progress=progress)
    folder = RunFolder(path)
    mode = "resume" if resume else "overwrite" if overwrite else "new"
    with folder.claimed(mode, paths_read(config)) as deleted:
        if not resume:
            folder.write_text(CONFIG_FILE, dump_config(config))
        with _log_to(folder.record(LOG_FILE), console_log):
            if deleted:
                logger.info("overwrite: deleted the earlier run's %s", ", ".join(deleted))
            if resume:
                logger.info("kdistill %s: resuming the run in %s", __version__, path)
            else:
                logger.info("kdistill %s: run folder %s", __version__, path)
            try:
                result = _train_and_report(prepared, folder, started, progress, resume)
            except BaseException as error:
                # the log says why the run stopped (with the traceback where it is a bug); every file stays
                logger.error("run stopped: %s: %s", type(error).__name__, error,
                             exc_info=not isinstance(error, (KdistillError, KeyboardInterrupt, OSError, MemoryError)))
                raise
    return result


def _train_and_report(prepared: PreparedRun, folder: RunFolder, started: float, progress: bool,
                      resume: bool = False) -> RunResult:
    from transformers import set_seed

    config, data = prepared.config, prepared.data
    training = config.training
    teacher, student, tokenizer = prepared.teacher.model, prepared.student, prepared.tokenizer
    num_labels = len(data.label_names)
    logger.info("data: %s; labels: %s", ", ".join(f"{k} {v:,}" for k, v in data.sizes().items()),
                ", ".join(data.label_names))
    logger.info("teacher: %s (%s parameters)", prepared.teacher.location, f"{count_parameters(teacher):,}")
    logger.info("%s", prepared.student_note)

    collator = PaddingCollator(pad_token_id=tokenizer.pad_token_id or 0,
                               teacher_pad_token_id=getattr(teacher.config, "pad_token_id", None) or 0)
    separate = data.separate_teacher_tokens
    # with a teacher cache each example carries its index, so a batch finds its cached rows
    distillation_set = data.distillation_set()
    train_set = with_example_index(distillation_set) if config.teacher.cache is not None else distillation_set
    train_loader = make_loader(train_set, training.batch_size, collator, shuffle=True,
                               group_by_length=training.group_by_length, seed=training.seed)
    # evaluation in length order: less padding; teacher and student see the same order
    validation_loader = make_loader(data.validation, training.eval_batch_size, collator,
                                    group_by_length=training.group_by_length)
    eval_name = "test" if data.test is not None else "validation"
    eval_set = data.test if data.test is not None else data.validation
    eval_loader = make_loader(eval_set, training.eval_batch_size, collator, group_by_length=training.group_by_length)
    steps_per_epoch = math.ceil(len(train_loader) / training.gradient_accumulation_steps)

    teacher_model: nn.Module = _Routed(teacher, True) if separate else teacher
    student_model: nn.Module = _Routed(student, False) if separate else student

    stages_run: list[tuple[str, History]] = []
    saved_teacher = folder.path / TEACHER_DIR
    if config.teacher.finetune is not None and resume and (saved_teacher / "config.json").is_file():
        # written whole or not at all (renamed into place), so a teacher/ folder is complete
        _read_weights(teacher, saved_teacher)
        logger.info("the teacher was fine-tuned before the interruption: read back from %s", saved_teacher)
        finetune_history = saved_teacher / "training_history.json"
        if finetune_history.is_file():
            stages_run.append(("teacher fine-tuning", History(**json.loads(finetune_history.read_text(encoding="utf-8")))))
    elif config.teacher.finetune is not None:
        finetune = config.teacher.finetune
        logger.info("fine-tuning the teacher for %d epoch(s) (its head is new)", finetune.epochs)
        teacher_loader = make_loader(data.train, finetune.batch_size or training.batch_size, collator, shuffle=True,
                                     group_by_length=training.group_by_length, seed=training.seed)
        set_seed(training.seed)
        teacher.train()
        history = distill(nn.Identity(), teacher_model, teacher_loader, objective=Objective({"ce": HardCE()}),
                          lr=finetune.lr, epochs=finetune.epochs, precision=training.precision, progress=progress,
                          log_every=training.log_every)
        teacher.eval()

        def write_teacher(target: Path) -> None:
            _save_model(teacher, tokenizer, target)
            (target / "training_history.json").write_text(
                json.dumps({"steps": history.steps, "epochs": history.epochs}) + "\n", encoding="utf-8")

        folder.write_folder(TEACHER_DIR, write_teacher)
        stages_run.append(("teacher fine-tuning", history))

    teacher_validation, _ = _evaluate(teacher_model, validation_loader, num_labels, teacher_side=separate,
                                      desc="teacher on validation", progress=progress)
    logger.info("teacher on validation: accuracy %.4f, macro-F1 %.4f", teacher_validation["accuracy"],
                teacher_validation["macro_f1"])

    caches = _StageCaches(config, teacher_model, distillation_set, collator, tokenizer, progress)
    output = config.output
    best = _BestStudent(folder, f"{CHECKPOINTS_DIR}/{BEST_DIR}", output.save_best)
    if resume and not output.save_checkpoints:
        logger.warning("output.save_checkpoints is false: the run left no checkpoints, so training starts again")
    validations: list[dict[str, float]] = []
    stage_summaries: list[dict[str, Any]] = []
    step_offset = 0
    for index, stage in enumerate(prepared.stages):
        optimizer, scheduler, total = _optimizer_and_scheduler(student, stage.objective, stage, config, steps_per_epoch)
        stage_dir = folder.record(f"{CHECKPOINTS_DIR}/{stage.name}") if output.save_checkpoints else None
        finished = _finished_stage(stage_dir, student_model, stage.objective) if resume and stage_dir else None
        if finished is not None:
            logger.info("stage %s finished before the interruption: skipped, its student read back", stage.name)
            history = finished
        else:
            logger.info("stage %s: loss = %s, %d epoch(s), lr %g", stage.name, stage.objective.formula(), stage.epochs,
                        stage.lr)

            def eval_fn(model: nn.Module) -> dict[str, float]:
                metrics, _ = _evaluate(model, validation_loader, num_labels, teacher_side=False,
                                       desc="student on validation", progress=progress)
                return metrics

            teacher_cache = caches.for_objective(stage.objective, stage.name)
            # every stage starts from its own seed, so a resumed run that skipped the stages
            # before it trains it as the uninterrupted run did
            set_seed(training.seed + index)
            _restart_shuffle(train_loader, training.seed + index)
            history = distill(
                teacher_model, student_model, train_loader, objective=stage.objective, optimizer=optimizer,
                teacher_cache=teacher_cache,
                scheduler=scheduler, epochs=stage.epochs, max_steps=training.max_steps,
                gradient_accumulation_steps=training.gradient_accumulation_steps, max_grad_norm=training.max_grad_norm,
                precision=training.precision,
                eval_fn=best.watch(eval_fn, student, tokenizer, stage.name, lambda: int(scheduler.last_epoch)),
                eval_every=training.eval_every, log_every=training.log_every, progress=progress,
                checkpoint_dir=stage_dir, save_every=output.save_every, keep_checkpoints=output.keep_checkpoints,
                resume=resume and stage_dir is not None, on_nonfinite=training.on_nonfinite,
            )
            if history.skipped_steps:
                logger.warning("stage %s: %d step(s) skipped for a NaN or infinite loss", stage.name,
                               history.skipped_steps)
            if stage_dir is not None:
                _mark_finished(stage_dir, history)
        for record in history.evals:
            validations.append({"stage": stage.name, **{k: v for k, v in record.items()},
                                "global_step": record["step"] + step_offset})
            logger.info("validation after %s step %d: accuracy %.4f", stage.name, int(record["step"]), record["accuracy"])
        step_offset += int(history.steps[-1]["step"]) if history.steps else 0
        final = {k: v for k, v in (history.epochs[-1] if history.epochs else {}).items() if k not in ("step", "epoch", "lr")}
        stage_summaries.append({"name": stage.name, "objective": stage.objective.formula(), "epochs": stage.epochs,
                                "lr": stage.lr, "steps": len(history.steps), "planned_steps": total, "final": final})
        stages_run.append((stage.name, history))

    student_dir = folder.write_folder(STUDENT_DIR, lambda target: _save_model(student, tokenizer, target))
    logger.info("student saved to %s", student_dir)

    teacher_metrics, teacher_logits = _evaluate(teacher_model, eval_loader, num_labels, teacher_side=separate,
                                                desc=f"teacher on {eval_name}", progress=progress)
    student_metrics, student_logits = _evaluate(student_model, eval_loader, num_labels, teacher_side=False,
                                                desc=f"student on {eval_name}", progress=progress)
    student_metrics["agreement"] = agreement(student_logits, teacher_logits)
    probe = next(iter(make_loader(eval_set, training.eval_batch_size, collator)))  # a batch as it comes, not the shortest
    teacher_speed = measure_speed(teacher, probe, teacher_side=separate)
    student_speed = measure_speed(student, probe, teacher_side=False)
    teacher_folder = saved_teacher if config.teacher.finetune is not None else (
        Path(prepared.teacher.location) if looks_local(prepared.teacher.location) else None)
    teacher_metrics.update(parameters=count_parameters(teacher), size_bytes=weights_size(teacher, teacher_folder),
                           latency_ms=teacher_speed["latency_ms"], throughput=teacher_speed["throughput"], speedup=1.0)
    student_metrics.update(parameters=count_parameters(student), size_bytes=weights_size(student, student_dir),
                           latency_ms=student_speed["latency_ms"], throughput=student_speed["throughput"],
                           speedup=teacher_speed["latency_ms"] / student_speed["latency_ms"])
    seconds = time.time() - started
    metrics = {
        "run": {
            "name": folder.path.name, "kdistill_version": __version__, "seconds": seconds,
            "teacher": prepared.teacher.location, "student": prepared.student_note,
            "objective": " then ".join(f"{s.name}: {s.objective.formula()}" for s in prepared.stages),
            "compression": teacher_metrics["parameters"] / student_metrics["parameters"],
        },
        "data": {**data.sizes(), "labels": data.label_names, "evaluated_on": eval_name},
        "teacher": teacher_metrics,
        "student": student_metrics,
        "speed": {"batch_size": teacher_speed["batch_size"], "threads": torch.get_num_threads(), "device": "cpu"},
        "teacher_validation": teacher_validation,
        "validation": validations,
        "training": {"stages": stage_summaries},
    }
    if best.best is not None:
        metrics["training"]["best_student"] = {"folder": f"{CHECKPOINTS_DIR}/{BEST_DIR}", "stage": best.best["stage"],
                                               "step": best.best["step"], "accuracy": best.best["accuracy"]}
    update_metrics_file(folder.record(METRICS_FILE), metrics)
    plot_curves(stages_run, folder.record(CURVES_FILE), title=f"kdistill: {folder.path.name}")
    write_report(folder.record(REPORT_FILE), metrics, curves=CURVES_FILE, config_file=CONFIG_FILE)
    logger.info("run finished in %.0f s: %s", seconds, folder.path)
    return RunResult(folder=folder.path, metrics=metrics)
