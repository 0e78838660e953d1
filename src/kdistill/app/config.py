"""The config of a ``kdistill distill`` run: its sections, validated in full before any work.

A config names its ``task`` (``text_classification`` unless said otherwise); the task gives the
``data:`` section and any keys it adds to ``teacher:`` (:mod:`kdistill.tasks`), and
:func:`run_config_class` puts the task's sections and the registered loss terms
(:mod:`kdistill.losses.registry`) together with the command's own: the teacher, the student, the
objective, training and output. The resolved config records every value that ran: a preset's
temperature and alpha, each stage's epochs and learning rate, the teacher's fine-tuning batch
and the student's seed are filled in from the settings they default to.

Reading YAML, overrides and turning every problem into one line is :mod:`kdistill.app.config_loading`.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from kdistill.app.teachers_config import TeachersObjectiveConfig, check_teacher_names, check_term_teachers
from kdistill.cache.keys import MAX_SAMPLES
from kdistill.losses.base import Temperature
from kdistill.losses.registry import settings_union, term_class, term_types
from kdistill.schema import (
    MAX_BATCH,
    MAX_EPOCHS,
    CopyMapSpec,
    LayerMapSpec,
    LocalPath,
    ModelSource,
    Section,
    Seed,
)
from kdistill.tasks import get_task

__all__ = [
    "DEFAULT_SAMPLES",
    "PRESET_DEFAULTS",
    "CacheConfig",
    "FinetuneConfig",
    "FromTeacherConfig",
    "MiniLMSettings",
    "NamedTeacherConfig",
    "ObjectiveConfig",
    "OutputConfig",
    "RunConfig",
    "StudentConfig",
    "TeacherConfig",
    "TeachersObjectiveConfig",
    "TinyBERTSettings",
    "TrainingConfig",
    "run_config_class",
]

#: each preset's temperature and alpha, written into the resolved config when the config leaves them out
PRESET_DEFAULTS = {"hinton": (4.0, 0.5), "tinybert": (1.0, 1.0), "minilm": (4.0, 0.5)}
#: draws per token of a sampled cache by default: the most whose row (5 bytes a draw: a uint16 id, a
#: uint8 count, a bf16 log-probability) is no larger than the 132 bytes of the top-32 row it replaces
DEFAULT_SAMPLES = 26


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------


class FinetuneConfig(Section):
    """Train the teacher on the labels before distilling (for a teacher whose head is new)."""

    epochs: int = Field(1, ge=1, le=MAX_EPOCHS)
    lr: float = Field(5e-5, gt=0)
    batch_size: int | None = Field(None, ge=1, le=MAX_BATCH, description="default: training.batch_size")
    max_steps: int | None = Field(None, ge=1, le=10**9, description="stop after this many optimizer steps")


class CacheConfig(Section):
    """Run the teacher once over the training data and train from its stored outputs.

    ``teacher: {cache: true}`` keeps the cache in a folder per fingerprint (teacher weights,
    data, tokenisation, what is stored) under ``$KDISTILL_CACHE`` (default
    ``~/.cache/kdistill``), so later runs with the same teacher and data reuse it;
    ``cache: some/folder`` puts it there. Stages whose terms need attention maps or
    queries/keys (TinyBERT's first stage, MiniLM's relations) run the teacher online.

    For token-level terms a cache keeps, per token, the teacher's ``top_k`` ids (``sparse: top_k``)
    or ``samples`` ids drawn from it (``sparse: sampled``, forward KL only; docs/cache.md).
    """

    dir: LocalPath | None = Field(
        None, description="the cache folder; default: one per fingerprint under $KDISTILL_CACHE"
    )
    dtype: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="storage precision (see docs/cache.md)")
    batch_size: int = Field(128, ge=1, le=MAX_BATCH, description="batch size of the teacher's pass")
    top_k: int = Field(32, ge=1, le=65536, description="token-level terms (causal LMs): ids kept per token")
    topk_dtype: Literal["fp32", "fp16", "bf16"] = Field(
        "bf16", description="token-level terms: storage of the top-k (or sampled) log-probabilities (docs/cache.md)"
    )
    sparse: Literal["top_k", "sampled"] = Field(
        "top_k",
        description="token-level terms: keep each token's top_k ids, or samples ids drawn from the teacher "
        "(unbiased; token_kd with forward_kl only)",
    )
    samples: int | None = Field(
        None, ge=1, le=MAX_SAMPLES, description=f"sparse: sampled: draws per token; default {DEFAULT_SAMPLES}"
    )

    @model_validator(mode="after")
    def _samples_of_a_sampled_cache(self) -> CacheConfig:
        if self.sparse == "top_k" and self.samples is not None:
            raise ValueError(
                "samples applies to sparse: sampled only (a top-k cache keeps top_k ids, draws none): remove it, "
                "or set sparse: sampled"
            )
        if self.sparse == "sampled" and self.samples is None:
            self.samples = DEFAULT_SAMPLES  # the resolved config records the draws that ran
        return self


class TeacherConfig(ModelSource):
    """The teacher: ``path`` (a folder or hub id) or ``package``; a task may add keys of its own."""

    finetune: FinetuneConfig | None = None
    cache: CacheConfig | None = Field(None, description="true, a folder, or {dir:, dtype:, batch_size:}")

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_shorthand(cls, value: Any) -> Any:
        # `cache: true` and `cache: some/folder` are the usual spellings of the block
        if value is True:
            return {}
        if value is False:
            return None
        if isinstance(value, str):
            return {"dir": value}
        return value

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        given = [name for name in ("path", "package") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of path: (a folder or hub id) or package: (an installed model package)")
        return self


class NamedTeacherConfig(TeacherConfig):
    """One of several teachers (``teachers: {name: {...}}``): a teacher section plus its ``weight``."""

    weight: float = Field(1.0, ge=0, allow_inf_nan=False, description="its share of the combined target")


class FromTeacherConfig(Section):
    """A student built from the teacher's own configuration by :func:`kdistill.models.student.make_student`.

    ``layer_map: importance`` copies the teacher layers an ``importance`` rule measures on the
    first ``calibration_tokens`` of the training split; ``prune: activation`` initialises a
    narrower student from the teacher's most active channels and heads instead of randomly
    (docs/causal_lm.md, "Choosing the student's layers and width").
    """

    num_layers: int = Field(ge=1, le=1000)
    hidden_size: int | None = Field(None, ge=1, le=65536, description="default: the teacher's width")
    num_heads: int | None = Field(None, ge=1, le=4096)
    num_key_value_heads: int | None = Field(
        None, ge=1, le=4096, description="grouped-query attention: key/value heads (default: the teacher's ratio)"
    )
    intermediate_size: int | None = Field(None, ge=1, le=1_048_576)
    init: Literal["auto", "teacher", "random"] = "auto"
    layer_map: CopyMapSpec | None = Field(
        None, description="teacher layers to copy: uniform (default), importance, every-K, last-K or explicit"
    )
    importance: Literal["block_influence", "perplexity"] = Field(
        "block_influence", description="with layer_map: importance, how layers are ranked"
    )
    prune: Literal["activation"] | None = Field(
        None, description="a narrower student keeps the teacher's most active channels and heads"
    )
    calibration_tokens: int = Field(
        2048, ge=16, le=10_000_000, description="training tokens the importance is measured on"
    )
    teacher: str | None = Field(
        None, description="with teachers: the one the student is built from (default: the first)"
    )
    seed: Seed | None = None

    @model_validator(mode="after")
    def _heads_divide_width(self) -> FromTeacherConfig:
        if self.hidden_size is not None and self.num_heads is not None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.prune is not None and self.init == "random":
            raise ValueError("prune: activation copies the teacher's weights; remove init: random (or prune)")
        if self.num_key_value_heads is not None and self.num_heads is None and self.prune is None:
            raise ValueError("num_key_value_heads applies to a student with num_heads or prune: activation")
        return self

    @property
    def measured(self) -> bool:
        """Whether the student needs the teacher measured on calibration text before it is built."""
        return self.layer_map == "importance" or self.prune is not None


class StudentConfig(ModelSource):
    """The student: ``path``, ``package`` or ``from_teacher``."""

    from_teacher: FromTeacherConfig | None = None
    prune_vocabulary: bool = Field(
        False,
        description="after training, keep only the vocabulary the training data (and augmented sentences) "
        "use: student/ gets the smaller embeddings and a pruned tokenizer (docs/vocabulary.md)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> StudentConfig:
        given = [name for name in ("path", "package", "from_teacher") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of path: (a folder or hub id), package: or from_teacher: {num_layers: ...}"
                + (f"; got {' and '.join(given)}" if given else "")
            )
        return self


# ---------------------------------------------------------------------------
# objective
# ---------------------------------------------------------------------------


class TinyBERTSettings(Section):
    """Settings of the ``tinybert`` preset (see :class:`kdistill.recipes.TinyBERTConfig`)."""

    layer_map: LayerMapSpec = "uniform"
    attention_on: Literal["scores", "probs"] = "scores"
    heads: Literal["auto", "per_head", "average_teacher", "average_both"] = "auto"
    shared_projection: bool = False
    embedding_weight: float = Field(1.0, ge=0)
    hidden_weight: float = Field(1.0, ge=0)
    attention_weight: float = Field(1.0, ge=0)
    intermediate_epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="default: training.epochs")
    intermediate_lr: float | None = Field(None, gt=0, description="default: training.lr")
    prediction_epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="default: training.epochs")
    prediction_lr: float | None = Field(None, gt=0, description="default: training.lr")

    @model_validator(mode="after")
    def _something_to_learn(self) -> TinyBERTSettings:
        if self.embedding_weight == self.hidden_weight == self.attention_weight == 0:
            raise ValueError("stage 1 needs a weight > 0 on the embedding, hidden or attention loss")
        return self


class MiniLMSettings(Section):
    """Settings of the ``minilm`` preset: stage 1 self-attention relations, stage 2 soft labels."""

    version: Literal[1, 2] = 2
    student_layer: int | None = Field(None, ge=1, description="default: the student's last layer")
    teacher_layer: int | None = Field(None, ge=1, description="default: the teacher's last layer")
    relation_heads: int | None = Field(None, ge=1, description="version 2; default: the teacher's heads")
    relation_epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="default: training.epochs")
    relation_lr: float | None = Field(None, gt=0, description="default: training.lr")

    @model_validator(mode="after")
    def _version_2_keys(self) -> MiniLMSettings:
        if self.version == 1 and self.relation_heads is not None:
            raise ValueError(
                "relation_heads applies to version 2 only (MiniLM v1 compares attention maps and value relations "
                "per attention head): remove it, or set version: 2"
            )
        return self


class ObjectiveConfig(Section):
    """The loss: a ``preset`` or explicit ``terms``."""

    preset: Literal["hinton", "tinybert", "minilm"] | None = None
    temperature: Temperature | None = Field(
        None, description="soft-label temperature; default 4 (hinton), 1 (tinybert); none with alpha: 0"
    )
    alpha: float | None = Field(
        None, ge=0, le=1, description="weight of the soft labels against the hard ones; default 0.5 (tinybert: 1)"
    )
    terms: dict[str, Any] | None = Field(None, description="name: {type: <a registered term>, weight:, ...}")
    tinybert: TinyBERTSettings | None = None
    minilm: MiniLMSettings | None = None
    teachers: TeachersObjectiveConfig | None = Field(None, description="with teachers: how they combine")

    @model_validator(mode="after")
    def _preset_or_terms(self) -> ObjectiveConfig:
        if self.terms is not None:
            if self.preset is not None:
                raise ValueError("give either preset: or terms:, not both")
            if not self.terms:
                raise ValueError("terms: needs at least one term")
            if all(term.weight == 0 for term in self.terms.values()):
                raise ValueError("every term has weight 0: nothing would be trained")
            for name in ("temperature", "alpha"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: belongs to a preset; with terms: set it on each term")
        elif self.preset is None:
            self.preset = "hinton"
        if self.preset is not None:
            temperature, alpha = PRESET_DEFAULTS[self.preset]
            if self.alpha is None:
                self.alpha = alpha
            if self.alpha == 0:
                # the soft labels get weight 0: a temperature would change nothing (the resolved config says none)
                if self.temperature is not None:
                    raise ValueError(
                        "temperature has no effect with alpha: 0 (the soft-label loss it softens gets weight 0); "
                        "remove it, or raise alpha"
                    )
            elif self.temperature is None:
                self.temperature = temperature
            if self.preset in ("tinybert", "minilm") and getattr(self, self.preset) is None:
                setattr(self, self.preset, {})
        for name in ("tinybert", "minilm"):
            if getattr(self, name) is not None and self.preset != name:
                raise ValueError(f"the {name}: block needs preset: {name}")
        return self

    @property
    def positional_terms(self) -> list[str]:
        """Names of the terms that compare the models token by token (they need one tokenizer)."""
        if self.preset in ("tinybert", "minilm"):
            return [f"preset {self.preset}"]
        return [
            name
            for name, term in (self.terms or {}).items()
            if term_class(term.type).compares_positions and term.weight > 0
        ]


class TrainingConfig(Section):
    """How the student is trained."""

    epochs: int = Field(3, ge=1, le=MAX_EPOCHS)
    max_steps: int | None = Field(None, ge=1, le=10**9, description="stop after this many optimizer steps")
    batch_size: int = Field(32, ge=1, le=MAX_BATCH)
    eval_batch_size: int = Field(64, ge=1, le=MAX_BATCH)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    gradient_accumulation_steps: int = Field(1, ge=1, le=MAX_BATCH)
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["no", "bf16", "fp16"] = "no"
    seed: Seed = 42
    eval_every: int | None = Field(None, ge=1, description="evaluate every N steps; default: each epoch")
    log_every: int = Field(10, ge=1)
    group_by_length: bool = Field(True, description="batch texts of similar length together (less padding)")
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a NaN or infinite loss: stop the run (the last good checkpoint stays) or skip the step"
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _bare_no(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `no` as false
        return "no" if value is False else value


class OutputConfig(Section):
    """Where the run folder goes."""

    dir: LocalPath = Field(
        "runs/kdistill",
        min_length=1,
        description="the run folder; one that already holds a run is refused unless the command is given "
        "--overwrite (start again) or --resume DIR (continue it)",
    )
    save_checkpoints: bool = Field(True, description="checkpoint each stage (what --resume continues from)")
    save_best: bool = Field(
        True,
        description="keep the student of the best validation score (the task's primary metric) in "
        "checkpoints/best-student/ (student/ is the last step's)",
    )
    save_every: int | None = Field(
        None, ge=1, description="also checkpoint every N optimizer steps; default: each epoch"
    )
    keep_checkpoints: int = Field(
        2, ge=1, le=1000, description="newest checkpoints kept per stage (and the best student)"
    )


class RunConfig(Section):
    """A whole ``kdistill distill`` run; :func:`run_config_class` gives the class of a task's runs."""

    task: str = Field("text_classification", description="what the models do (see kdistill.tasks)")
    teacher: TeacherConfig | None = Field(None, description="the teacher (or teachers: several by name)")
    teachers: dict[str, NamedTeacherConfig] | None = Field(
        None, description="several teachers by name, each a teacher section with a weight (docs/multi_teacher.md)"
    )
    student: StudentConfig | None = Field(None, description="leave it out for a run that only fine-tunes the teacher")
    data: Any
    objective: ObjectiveConfig | None = None
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        self._one_kind_of_teacher()
        if self.student is None:
            if self.teachers is not None:
                raise ValueError(
                    "teachers: needs a student: to distil into; fine-tune each teacher in a run of its own "
                    "(teacher: {..., finetune: ...} without a student)"
                )
            assert self.teacher is not None
            if self.teacher.finetune is None:
                raise ValueError(
                    "no student: and no teacher.finetune:, so there is nothing to train; add a student "
                    "to distil, or teacher.finetune to fine-tune the teacher alone"
                )
            if self.objective is not None:
                raise ValueError("objective: needs a student: (a run without one only fine-tunes the teacher)")
        elif self.objective is None:
            self.objective = {}  # type: ignore[assignment] - validated into the task's ObjectiveConfig
        positional = self.objective.positional_terms if self.objective is not None else []
        if getattr(self.data, "allow_different_tokenizers", False) and positional:
            raise ValueError(
                "data.allow_different_tokenizers works only with sequence-level terms (kd, ce, reverse_kl, jsd, "
                f"logit_mse); these compare tokens: {', '.join(positional)}"
            )
        if self.student is not None and self.student.from_teacher is not None and self.student.tokenizer is not None:
            raise ValueError("student.tokenizer: a student built from_teacher uses the teacher's tokenizer")
        self._fill_defaults()
        return self

    def _one_kind_of_teacher(self) -> None:
        """``teacher:`` or ``teachers:``, and what only several teachers have, only with them."""
        if self.teacher is not None and self.teachers is not None:
            raise ValueError("give either teacher: (one) or teachers: (several, by name), not both")
        if self.teacher is None and self.teachers is None:
            raise ValueError("a run needs teacher: {path: ...} (or teachers: {name: {path: ...}, ...})")
        combining = self.objective.teachers if self.objective is not None else None
        from_teacher = self.student.from_teacher if self.student is not None else None
        if self.teachers is None:
            if combining is not None:
                raise ValueError("objective.teachers combines several teachers: give teachers: instead of teacher:")
            if from_teacher is not None and from_teacher.teacher is not None:
                raise ValueError("student.from_teacher.teacher names one of several teachers: remove it with teacher:")
            for name, term in ((self.objective.terms or {}) if self.objective is not None else {}).items():
                if term.teacher is not None:
                    raise ValueError(
                        f"objective.terms.{name}.teacher names a teacher, but the run has one (teacher:): remove it, "
                        "or give teachers: {name: {...}}"
                    )
            return
        check_teacher_names(self.teachers)
        check_term_teachers(self.teachers, self.objective, self.data)
        if from_teacher is not None and from_teacher.teacher is not None and from_teacher.teacher not in self.teachers:
            raise ValueError(
                f"student.from_teacher.teacher is {from_teacher.teacher!r}, but the teachers are "
                f"{', '.join(self.teachers)}"
            )

    @property
    def teacher_sections(self) -> dict[str, TeacherConfig]:
        """The teacher sections by name: ``{"teacher": teacher}`` for one teacher."""
        if self.teachers is not None:
            return dict(self.teachers)
        assert self.teacher is not None  # the schema gives a run one or the other
        return {"teacher": self.teacher}

    @property
    def several_teachers(self) -> bool:
        """Whether the run distils from ``teachers:``."""
        return self.teachers is not None

    @property
    def primary_teacher(self) -> str:
        """The teacher a student built ``from_teacher`` copies (``from_teacher.teacher``, default the first)."""
        from_teacher = self.student.from_teacher if self.student is not None else None
        if from_teacher is not None and from_teacher.teacher is not None:
            return from_teacher.teacher
        return next(iter(self.teacher_sections))

    def _fill_defaults(self) -> None:
        """Write into the config what its left-out settings default to, so that it records what ran."""
        training = self.training
        for section in self.teacher_sections.values():
            if section.finetune is not None and section.finetune.batch_size is None:
                section.finetune.batch_size = training.batch_size
        if self.teachers is not None and self.objective is not None and self.objective.teachers is None:
            self.objective.teachers = TeachersObjectiveConfig()
        if (
            self.student is not None
            and self.student.from_teacher is not None
            and self.student.from_teacher.seed is None
        ):
            self.student.from_teacher.seed = training.seed
        objective = self.objective
        stage_settings = {"tinybert": ("intermediate", "prediction"), "minilm": ("relation",)}
        if objective is not None and objective.preset in stage_settings:
            block = getattr(objective, objective.preset)
            for stage in stage_settings[objective.preset]:
                if getattr(block, f"{stage}_epochs") is None:
                    setattr(block, f"{stage}_epochs", training.epochs)
                if getattr(block, f"{stage}_lr") is None:
                    setattr(block, f"{stage}_lr", training.lr)


@functools.cache
def _run_config_class(task_name: str, terms: tuple[str, ...]) -> type[RunConfig]:
    task = get_task(task_name)
    teacher = TeacherConfig
    named = NamedTeacherConfig
    if task.teacher_options is not None:
        teacher = create_model("TeacherConfig", __base__=(TeacherConfig, task.teacher_options))
        named = create_model("NamedTeacherConfig", __base__=(NamedTeacherConfig, task.teacher_options))
    bases = (ObjectiveConfig, task.objective_options) if task.objective_options is not None else ObjectiveConfig
    objective = create_model("ObjectiveConfig", __base__=bases, terms=(dict[str, settings_union()] | None, None))  # type: ignore[valid-type]
    # only a task that reads an evaluation: section has one (any other refuses the key as unknown)
    evaluation = task.evaluation_options
    extra = {"evaluation": (evaluation, Field(default_factory=evaluation))} if evaluation is not None else {}
    return create_model(  # type: ignore[call-overload, no-any-return]
        "RunConfig",
        __base__=RunConfig,
        task=(Literal[task_name], task_name),
        teacher=(teacher | None, None),
        teachers=(dict[str, named] | None, None),  # type: ignore[valid-type]
        data=(task.data_section, ...),
        objective=(objective | None, None),
        **extra,
    )


def run_config_class(task_name: str = "text_classification") -> type[RunConfig]:
    """The config class of a task's runs: the task's sections, the loss terms registered now.

    Raises:
        ConfigError: no task has that name.
    """
    return _run_config_class(task_name, term_types())
