"""The ``data:`` section of a causal-language-model run: text or JSONL files, the keys their
records use, tokens per block or example, the held-out splits and token budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from kdistill.errors import DataError
from kdistill.losses.base import Temperature
from kdistill.schema import LocalPath, Section, Seed, TextEncoding

__all__ = [
    "LM_FORMATS",
    "LMDataConfig",
    "LMEvaluationOptions",
    "LMObjectiveOptions",
    "OnPolicyConfig",
    "SequenceKDConfig",
    "format_from_suffix",
]

#: the file formats and the suffixes that name them
LM_FORMATS = {
    "text": (".txt", ".text", ".md"),
    "jsonl": (".jsonl", ".json", ".ndjson"),
}


def format_from_suffix(path: str | Path) -> str | None:
    """``"text"`` or ``"jsonl"`` as the file's suffix says (any case), None when it says neither."""
    suffix = Path(path).suffix.lower()
    for name, suffixes in LM_FORMATS.items():
        if suffix in suffixes:
            return name
    return None


def _unknown_format(path: str) -> str:
    known = "; ".join(f"{' '.join(suffixes)} for {name}" for name, suffixes in LM_FORMATS.items())
    return f"cannot tell the format of {path!r} from its name ({known}): set data.format to text or jsonl"


class LMDataConfig(Section):
    """Where the text comes from and how it becomes blocks or examples of tokens."""

    train: LocalPath = Field(
        min_length=1, description="a text file (one document) or a JSONL file (one record a line)"
    )
    validation: LocalPath | None = Field(
        None, min_length=1, description="default: held out of train (data.validation_fraction)"
    )
    test: LocalPath | None = Field(
        None, min_length=1, description="default: none, or held out of train (data.test_fraction)"
    )
    format: Literal["text", "jsonl"] | None = Field(
        None, description="default: from the suffix (.txt .text .md: text; .jsonl .json .ndjson: jsonl)"
    )
    encoding: TextEncoding = Field("utf-8", description="the text encoding of every file")
    text_field: str = Field("text", min_length=1, description="the key of a JSONL record's text")
    prompt_field: str = Field("prompt", min_length=1, description="the key of a JSONL record's prompt")
    completion_field: str = Field(
        "completion", min_length=1, description="the key of a JSONL record's completion (the tokens learned)"
    )
    messages_field: str = Field(
        "messages", min_length=1, description="the key of a JSONL record's conversation ([{role, content} ...])"
    )
    teacher_field: str | None = Field(
        None,
        min_length=1,
        description="with teachers: and objective.teachers.combine: route, the key of a training record naming "
        "its teacher (prompt/completion and chat records; packed text cannot route)",
    )
    max_length: int = Field(512, ge=8, le=1_048_576, description="tokens per block (text) or per example")
    validation_fraction: float = Field(
        0.05, gt=0, lt=1, description="share of the training blocks or examples held out when there is no validation"
    )
    test_fraction: float | None = Field(
        None, gt=0, lt=1, description="share held out for a test split when there is no test file (before validation)"
    )
    split_seed: Seed = Field(42, description="the seed of the held-out splits and of the token budgets")
    max_train_tokens: int | None = Field(
        None, ge=1, description="keep training blocks or examples (in a seeded order) up to this many tokens"
    )
    max_eval_tokens: int | None = Field(
        None, ge=1, description="likewise for the validation and test splits, to keep evaluation short"
    )

    @model_validator(mode="after")
    def _consistent(self) -> LMDataConfig:
        names = {
            "text_field": self.text_field,
            "prompt_field": self.prompt_field,
            "completion_field": self.completion_field,
            "messages_field": self.messages_field,
            "teacher_field": self.teacher_field,
        }
        seen: dict[str, str] = {}
        for option, key in names.items():
            if key is None:
                continue
            if key in seen:
                raise ValueError(f"{seen[key]} and {option} name the same key {key!r}; give each its own key")
            seen[key] = option
        if self.format is None:
            for role in ("train", "validation", "test"):
                path = getattr(self, role)
                if path is not None and format_from_suffix(path) is None:
                    raise ValueError(f"{role}: {_unknown_format(path)}")
        return self

    @property
    def route_field(self) -> str | None:
        """The key that names each training record's teacher (``combine: route``), or None."""
        return self.teacher_field

    def format_of(self, path: str | Path) -> str:
        """The format a file is read in: ``data.format``, else its suffix's.

        Raises:
            DataError: no ``data.format`` and a suffix that names no format.
        """
        if self.format is not None:
            return self.format
        found = format_from_suffix(path)
        if found is None:
            raise DataError(_unknown_format(str(path)))
        return found


class OnPolicyConfig(Section):
    """``objective.on_policy``: some batches' completions sampled by the student, scored by the teacher (GKD)."""

    lmbda: float = Field(0.5, ge=0, le=1, description="the share of batches the student generates (GKD's lambda)")
    new_tokens: int = Field(32, ge=1, le=4096, description="tokens the student samples after each prompt")
    prompt_tokens: int = Field(
        32, ge=1, le=65536, description="the prompt of a text block (prompt/completion data: the prompt itself)"
    )
    temperature: Temperature = Field(1.0, description="the student's sampling temperature")
    seed: Seed | None = Field(None, description="default: training.seed")

    @field_validator("lmbda")
    @classmethod
    def _some_batches(cls, value: float) -> float:
        if value == 0:
            raise ValueError(
                "0 means the student samples no batch, so on_policy would change nothing: remove "
                "objective.on_policy, or give a share above 0 (GKD uses 0.5)"
            )
        return value


class SequenceKDConfig(Section):
    """``objective.sequence_kd``: the student learns from the teacher's own continuations (Kim & Rush 2016)."""

    prompt_tokens: int = Field(
        64,
        ge=1,
        le=65536,
        description="a text block's first tokens prompt the teacher (prompt/completion: the prompt)",
    )
    new_tokens: int = Field(64, ge=1, le=4096, description="tokens the teacher writes after each prompt")
    do_sample: bool = Field(False, description="sample at temperature instead of greedy decoding")
    temperature: Temperature | None = Field(None, description="do_sample only; default 1.0")
    seed: Seed | None = Field(None, description="do_sample only; default: training.seed")
    batch_size: int = Field(16, ge=1, le=4096, description="prompts generated at once")
    keep_data: bool = Field(False, description="train on the data's own text too, not only on the teacher's")

    @model_validator(mode="after")
    def _sampling_keys(self) -> SequenceKDConfig:
        if not self.do_sample:
            given = [key for key in ("temperature", "seed") if getattr(self, key) is not None]
            if given:
                raise ValueError(
                    f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to sampling only, and "
                    "do_sample is false (greedy decoding, the same continuation every time): remove "
                    f"{' and '.join(given)}, or set do_sample: true"
                )
        elif self.temperature is None:
            self.temperature = 1.0  # the resolved config records the temperature that samples
        return self


class LMEvaluationOptions(Section):
    """A causal-LM run's ``evaluation:`` section: what the report measures beyond perplexity and speed."""

    draft_model: bool = Field(
        True,
        description="measure the student as the teacher's draft model (assisted generation): the share of its "
        "drafted tokens the teacher accepts and the teacher's speed-up; about as long as the speed measurement",
    )


class LMObjectiveOptions(Section):
    """Keys a causal-LM run adds to ``objective:``."""

    on_policy: OnPolicyConfig | None = None
    sequence_kd: SequenceKDConfig | None = None
