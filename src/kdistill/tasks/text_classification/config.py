"""The sections a text-classification run adds to the config: ``data:`` (files or a hub data set,
columns, splits, tokenisation, augmentation) and ``teacher.num_labels``."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from kdistill.schema import Section, Seed, TextEncoding, local_path

__all__ = ["DATA_FORMATS", "AugmentConfig", "ClassifierOptions", "DataConfig", "HubDataConfig", "SplitSize"]

DATA_FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "fasttext", "lines")


def _split_size(value: Any) -> Any:
    # a bool is an int to Python: YAML's true would count as one example
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"give a fraction (e.g. 0.1) or a number of examples (e.g. 500), got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"a number of examples must be at least 1, got {value}")
        return value
    if value >= 1 and value.is_integer():
        raise ValueError(f"a number of examples is written without a decimal point ({int(value)}), got {value!r}")
    if not 0 < value < 1:
        raise ValueError(
            f"give a fraction between 0 and 1 (e.g. 0.1) or a whole number of examples (e.g. 500), got {value!r}"
        )
    return value


#: a split's size: a fraction of the examples (a float in (0, 1)) or a number of them (an int >= 1)
SplitSize = Annotated[int | float, BeforeValidator(_split_size)]


def _unique_names(names: str | list[str]) -> str | list[str]:
    if isinstance(names, str):
        return names
    if not names:
        raise ValueError("give at least one column name")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"names {', '.join(repr(name) for name in twice)} more than once")
    return names


def _label_names(names: list[str]) -> list[str]:
    if len(names) < 2:
        raise ValueError(f"give one name per label value 0, 1, ... (at least 2), got {len(names)}")
    blank = [i for i, name in enumerate(names) if not name.strip()]
    if blank:
        raise ValueError(f"the name of label {blank[0]} is empty; give every label value a name")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        # two label values of one name would be one class to the student and its users
        raise ValueError(
            f"names {', '.join(repr(name) for name in twice)} more than once; give each label value its own name"
        )
    return names


ColumnNames = Annotated[list[str], AfterValidator(_unique_names)]
#: the names of integer labels 0, 1, ... n-1, in that order
LabelNames = Annotated[list[str], AfterValidator(_label_names)]
#: one column, or several (their texts joined)
TextColumns = Annotated[str | list[str], AfterValidator(_unique_names)]


def _line_pattern(value: str) -> str:
    try:
        pattern = re.compile(value)
    except re.error as error:
        raise ValueError(f"not a valid regular expression ({error}): {value!r}") from None
    if not pattern.groupindex:
        raise ValueError(
            f"needs named groups, one per column, e.g. '(?P<label>\\S+) (?P<text>.*)'; {value!r} has none"
        )
    return value


def _data_file(value: str) -> str:
    try:
        return local_path(value)
    except ValueError as error:
        if "is a URL" in str(error):
            raise ValueError(f"{error}, or name a data set on the hub with data.hub: {{id: ...}}") from None
        raise


#: a data file: ``~`` expanded; a URL refused with the ways to read it (download it, or data.hub)
DataFile = Annotated[str, AfterValidator(_data_file)]


class ClassifierOptions(Section):
    """Keys a classification run adds to ``teacher:``."""

    num_labels: int | None = Field(
        None, ge=2, le=1_000_000, description="classes, for a model that has no classification head yet"
    )


class HubDataConfig(Section):
    """A data set on the Hugging Face hub, loaded with ``datasets.load_dataset``."""

    id: str = Field(min_length=1)
    name: str | None = Field(None, description="the data set's configuration (e.g. sst2 for glue)")
    revision: str | None = None
    train_split: str = "train"
    validation_split: str | None = "validation"
    test_split: str | None = None


class AugmentConfig(Section):
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


class DataConfig(Section):
    """Where the examples come from and how they are read."""

    train: DataFile | None = Field(
        None, description="a CSV, TSV, JSON, JSONL, Parquet or line file, optionally .gz, .bz2, .xz or .zip"
    )
    validation: DataFile | None = None
    test: DataFile | None = None
    hub: HubDataConfig | None = None
    format: Literal["csv", "tsv", "json", "jsonl", "parquet", "fasttext", "lines"] | None = Field(
        None, description="default: from the suffix (lines when line_pattern is given)"
    )
    encoding: TextEncoding = "utf-8"
    columns: ColumnNames | None = Field(
        None, description="the column names of a CSV/TSV file without a header row (its first row is data)"
    )
    line_pattern: Annotated[str, AfterValidator(_line_pattern)] | None = Field(
        None, description="a regular expression matching a whole line; its named groups are the columns"
    )
    text_column: TextColumns = Field("text", description="a column, or several joined by text_separator")
    text_separator: str = Field(" ", description="between the columns of a text_column list")
    text_pair_column: str | None = None
    label_column: str = "label"
    label_names: LabelNames | None = Field(
        None,
        description="names of integer labels: the first names label 0, the second 1, ... (one per label value)",
    )
    validation_fraction: SplitSize = Field(
        0.1,
        description="held out of train (after the test split) when there is no validation file: a fraction or a count",
    )
    test_fraction: SplitSize | None = Field(
        None, description="held out of train when there is no test file: a fraction or a count"
    )
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
    teacher_column: str | None = Field(
        None,
        min_length=1,
        description="with teachers: and objective.teachers.combine: route, the training column naming each "
        "example's teacher",
    )

    @property
    def route_field(self) -> str | None:
        """The column that names each training example's teacher (``combine: route``), or None."""
        return self.teacher_column

    @property
    def text_columns(self) -> list[str]:
        """The column(s) the text is read from, as a list."""
        return [self.text_column] if isinstance(self.text_column, str) else list(self.text_column)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.train is None) == (self.hub is None):
            raise ValueError("give exactly one of train: (a file) or hub: {id: ...}")
        if self.hub is not None and (self.validation is not None or self.test is not None):
            raise ValueError("validation:/test: files go with train:; a hub data set names its splits in hub:")
        if self.augment is not None and self.text_pair_column is not None:
            raise ValueError("augment: works on single texts; remove text_pair_column or augment")
        if self.label_column in (*self.text_columns, self.text_pair_column):
            raise ValueError(
                f"label_column and text_column name the same column {self.label_column!r}: the labels "
                "would be read as the texts"
            )
        if self.text_pair_column is not None and self.text_pair_column in self.text_columns:
            raise ValueError(f"text_pair_column and text_column name the same column {self.text_pair_column!r}")
        if self.teacher_column is not None and self.augment is not None:
            raise ValueError(
                "augment: makes sentences no teacher_column routes; remove data.augment or data.teacher_column"
            )
        if self.teacher_column is not None and self.teacher_column in (
            *self.text_columns,
            self.text_pair_column,
            self.label_column,
        ):
            raise ValueError(f"teacher_column {self.teacher_column!r} is also read as a text or label column")
        return self

    @model_validator(mode="after")
    def _layout(self) -> DataConfig:
        """``columns`` goes with CSV/TSV files, ``line_pattern`` with line files, and the columns
        the run reads must be among the names they give."""
        if self.hub is not None and (self.columns is not None or self.line_pattern is not None):
            raise ValueError("columns: and line_pattern: describe files; a hub data set names its own columns")
        if self.columns is not None and self.format not in (None, "csv", "tsv"):
            raise ValueError(f"columns: names the columns of a CSV or TSV file without a header, not of {self.format}")
        if self.line_pattern is not None and self.format not in (None, "lines"):
            raise ValueError(
                f"line_pattern: reads line files: set format: lines or leave format out, not {self.format}"
            )
        if self.format == "lines" and self.line_pattern is None:
            raise ValueError("format: lines needs line_pattern:, e.g. '(?P<label>\\S+) (?P<text>.*)'")
        if self.columns is not None and self.line_pattern is not None:
            raise ValueError(
                "give columns: (a CSV/TSV file without a header) or line_pattern: (a line file), not both"
            )
        names, given = None, ""
        if self.columns is not None:
            names, given = self.columns, "columns"
        elif self.line_pattern is not None:
            names, given = list(re.compile(self.line_pattern).groupindex), "line_pattern's groups"
        elif self.format == "fasttext":
            names, given = ["label", "text"], "format: fasttext's columns"
        if names is not None:
            wanted = [("text_column", n) for n in self.text_columns] + [("label_column", self.label_column)]
            wanted += [("text_pair_column", self.text_pair_column)] if self.text_pair_column is not None else []
            for key, name in wanted:
                if name not in names:
                    raise ValueError(f"{key} {name!r} is not one of {given} ({', '.join(names)})")
        return self
