"""``data.augment``: new sentences by masking, word replacement and n-gram sampling, labelled by
the teacher only, added to the distillation set of a run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from text_fixtures import save_classifier, sentences, write_csv, write_tokenizer

from kdistill.app.cli import main
from kdistill.app.config_loading import parse_config
from kdistill.errors import ConfigError
from kdistill.tasks.text_classification.augment import NO_LABEL, Augmenter, embedding_neighbours

TEXTS = ["the movie was very good", "a dull and boring story", "great cast", "bad"]


def test_the_same_seed_gives_the_same_new_sentences_none_an_original() -> None:
    augmenter = Augmenter(copies=4, seed=3)
    texts, sources = augmenter.augment(TEXTS)
    again, _ = Augmenter(copies=4, seed=3).augment(TEXTS)
    other, _ = Augmenter(copies=4, seed=4).augment(TEXTS)
    assert texts == again and texts != other
    assert len(texts) == len(set(texts)) and not set(texts) & set(TEXTS)
    assert sources == sorted(sources) and all(sources.count(i) <= 4 for i in range(len(TEXTS)))
    # a long sentence has room for all its copies
    assert sources.count(0) == 4


def test_masking_replaces_every_word_at_probability_one() -> None:
    augmenter = Augmenter(mask_prob=1.0, replace_prob=0.0, ngram_prob=0.0, mask_token="[MASK]")
    assert augmenter.perturb(["a", "very", "good", "film"], random.Random(0)) == ["[MASK]"] * 4
    deleting = Augmenter(mask_prob=1.0, replace_prob=0.0, ngram_prob=0.0, mask_token=None)
    assert deleting.perturb(["a", "very", "good", "film"], random.Random(0)) == []


def test_replacement_draws_from_the_neighbours_and_keeps_unknown_words() -> None:
    neighbours = {"good": ["great", "fine"], "film": ["movie"]}
    augmenter = Augmenter(mask_prob=0.0, replace_prob=1.0, ngram_prob=0.0, neighbours=neighbours)
    rng = random.Random(0)
    for _ in range(20):
        words = augmenter.perturb(["a", "Good", "film"], rng)
        assert words[0] == "a" and words[1] in ("great", "fine") and words[2] == "movie"


def test_ngram_sampling_keeps_a_contiguous_piece_of_at_most_max_ngram_words() -> None:
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    augmenter = Augmenter(mask_prob=0.0, replace_prob=0.0, ngram_prob=1.0, max_ngram=3)
    rng = random.Random(1)
    lengths = set()
    for _ in range(50):
        piece = augmenter.perturb(words, rng)
        lengths.add(len(piece))
        start = words.index(piece[0])
        assert piece == words[start : start + len(piece)]
    assert lengths == {1, 2, 3}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mask_prob": 1.5}, "mask_prob must be in [0, 1]"),
        ({"mask_prob": 0.6, "replace_prob": 0.6}, "mask_prob + replace_prob must be <= 1"),
        ({"copies": 0}, "copies and max_ngram must be >= 1"),
    ],
)
def test_impossible_settings_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("+", r"\+")):
        Augmenter(**options)


def test_neighbours_come_from_the_closest_whole_word_embeddings(tmp_path: Path) -> None:
    tokenizer = write_tokenizer(tmp_path / "tok")
    vocab = tokenizer.get_vocab()
    torch.manual_seed(0)
    embeddings = torch.randn(len(tokenizer), 16)
    embeddings[vocab["great"]] = embeddings[vocab["good"]] + 0.01 * torch.randn(16)
    embeddings[vocab["superb"]] = embeddings[vocab["good"]] + 0.05 * torch.randn(16)
    found = embedding_neighbours(embeddings, tokenizer, ["Good", "unknownword", "the"], k=2)
    assert found["good"] == ["great", "superb"]
    assert "unknownword" not in found and len(found["the"]) == 2
    # special tokens are never offered as words
    assert not any(word.startswith("[") for words in found.values() for word in words)


def test_augment_settings_are_checked_in_the_config() -> None:
    base = {"teacher": {"path": "t"}, "student": {"from_teacher": {"num_layers": 1}}, "data": {"train": "x.csv"}}
    config = parse_config({**base, "data": {"train": "x.csv", "augment": {"copies": 4}}})
    assert config.data.augment.copies == 4 and config.data.augment.mask_prob == 0.1
    with pytest.raises(ConfigError, match=r"data.augment: mask_prob \+ replace_prob must be <= 1"):
        parse_config({**base, "data": {"train": "x.csv", "augment": {"mask_prob": 0.7, "replace_prob": 0.7}}})
    with pytest.raises(ConfigError, match="data.augment.copy: unknown key; did you mean 'copies'"):
        parse_config({**base, "data": {"train": "x.csv", "augment": {"copy": 4}}})


def test_a_run_distils_on_the_augmented_set_with_the_teacher_labelling_it(tmp_path: Path) -> None:
    save_classifier(tmp_path / "teacher", num_layers=2, hidden=32, heads=4, seed=1, id2label={0: "neg", 1: "pos"})
    write_csv(tmp_path / "train.csv", sentences(48, seed=0, labels=("neg", "pos")))
    write_csv(tmp_path / "test.csv", sentences(16, seed=1, labels=("neg", "pos")))
    config = {
        "teacher": {"path": str(tmp_path / "teacher"), "cache": str(tmp_path / "cache")},
        "student": {"from_teacher": {"num_layers": 1}},
        "data": {
            "train": str(tmp_path / "train.csv"),
            "test": str(tmp_path / "test.csv"),
            "max_length": 16,
            "augment": {"copies": 3, "seed": 1},
        },
        "training": {"epochs": 1, "batch_size": 16, "lr": 1.0e-3},
        "output": {"dir": str(tmp_path / "run"), "save_checkpoints": False},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["distill", str(tmp_path / "run.yaml"), "--no-progress"]) == 0

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    train, augmented = metrics["data"]["train"], metrics["data"]["augmented"]
    assert train == 43 and 2 * train <= augmented <= 3 * train
    # the teacher labelled the whole distillation set: the cache holds a row per sentence
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["num_examples"] == train + augmented
    steps = metrics["training"]["stages"][0]["steps"]
    assert steps == -(-(train + augmented) // 16)


def test_generated_sentences_carry_no_hard_label(tmp_path: Path) -> None:
    from kdistill.tasks.text_classification.config import DataConfig
    from kdistill.tasks.text_classification.data import prepare_data

    write_csv(tmp_path / "train.csv", sentences(30, seed=0))
    tokenizer = write_tokenizer(tmp_path / "tok")
    config = DataConfig(train=str(tmp_path / "train.csv"), max_length=16)
    data = prepare_data(config, tokenizer, augmenter=Augmenter(copies=2, mask_token="[MASK]"), progress=False)
    assert data.augmented is not None and set(data.augmented.labels) == {NO_LABEL}
    joined = data.distillation_set()
    assert len(joined) == len(data.train) + len(data.augmented)
    assert joined[0] == data.train[0] and joined[len(data.train)] == data.augmented[0]
    # validation stays as read: never augmented
    assert NO_LABEL not in data.validation.labels
