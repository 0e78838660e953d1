"""The sections a text-classification run adds to the config: ``data:`` (files or a hub data set,
columns, splits, tokenisation, augmentation) and ``teacher.num_labels``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kdistill.schema import Section, Seed, TextEncoding

__all__ = ["DATA_FORMATS", "AugmentConfig", "ClassifierOptions", "DataConfig", "HubDataConfig"]

DATA_FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")


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

    train: str | None = Field(None, description="a CSV, TSV, JSON, JSONL or Parquet file")
    validation: str | None = None
    test: str | None = None
    hub: HubDataConfig | None = None
    format: Literal["csv", "tsv", "json", "jsonl", "parquet"] | None = Field(
        None, description="default: from the suffix"
    )
    encoding: TextEncoding = "utf-8"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    validation_fraction: float = Field(
        0.1, gt=0, lt=1, description="held out of train when there is no validation file"
    )
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

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.train is None) == (self.hub is None):
            raise ValueError("give exactly one of train: (a file) or hub: {id: ...}")
        if self.hub is not None and (self.validation is not None or self.test is not None):
            raise ValueError("validation:/test: files go with train:; a hub data set names its splits in hub:")
        if self.augment is not None and self.text_pair_column is not None:
            raise ValueError("augment: works on single texts; remove text_pair_column or augment")
        if self.label_column in (self.text_column, self.text_pair_column):
            raise ValueError(
                f"label_column and text_column name the same column {self.label_column!r}: the labels "
                "would be read as the texts"
            )
        if self.text_pair_column is not None and self.text_pair_column == self.text_column:
            raise ValueError(f"text_pair_column and text_column name the same column {self.text_column!r}")
        return self
