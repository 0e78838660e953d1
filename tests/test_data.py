"""Data: files of every format, encodings, labels, splits, tokenising once, batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from text_fixtures import sentences, write_csv, write_tokenizer

from kdistill.data.datasets import LengthGroupedSampler, PaddingCollator, TokenizedDataset, make_loader
from kdistill.errors import DataError
from kdistill.tasks.text_classification.config import DataConfig
from kdistill.tasks.text_classification.data import prepare_data
from kdistill.tasks.text_classification.labels import build_label_names
from kdistill.tasks.text_classification.reading import load_splits, load_table, split_table

ROWS = [
    ("the film was good", "pos"),
    ("a dull, boring plot", "neg"),
    ('she said "fine"', "pos"),
    ("NA", "neg"),
    ("café au lait", "pos"),
]


def write_all_formats(folder: Path) -> dict[str, Path]:
    import pandas as pd

    frame = pd.DataFrame(ROWS, columns=["text", "label"])
    paths = {kind: folder / f"data.{kind}" for kind in ("csv", "tsv", "json", "jsonl", "parquet")}
    write_csv(paths["csv"], ROWS)
    write_csv(paths["tsv"], ROWS, delimiter="\t")
    paths["json"].write_text(json.dumps([{"text": t, "label": y} for t, y in ROWS]), encoding="utf-8")
    paths["jsonl"].write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in ROWS) + "\n", encoding="utf-8")
    frame.to_parquet(paths["parquet"])
    return paths


def test_every_format_reads_the_same_table(tmp_path: Path) -> None:
    for kind, path in write_all_formats(tmp_path).items():
        table = load_table(path, DataConfig(train=str(path)))
        assert table.texts == [t for t, _ in ROWS], kind
        assert table.labels == [y for _, y in ROWS], kind
        assert table.pairs is None


def test_the_format_can_be_named_when_the_suffix_says_nothing(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data.txt.data", ROWS)
    with pytest.raises(DataError, match="set data.format"):
        load_table(path, DataConfig(train=str(path)))
    assert len(load_table(path, DataConfig(train=str(path), format="csv"))) == len(ROWS)


def test_a_file_in_another_encoding_needs_the_encoding(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "latin.csv", [("café crème très bon", 1), ("mauvais goût", 0)], encoding="latin-1")
    with pytest.raises(DataError, match="not valid utf-8 text .*data.encoding"):
        load_table(path, DataConfig(train=str(path)))
    table = load_table(path, DataConfig(train=str(path), encoding="latin-1"))
    assert table.texts[0] == "café crème très bon"


def test_columns_are_chosen_by_name_and_a_missing_one_is_named(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "pairs.csv", [("a b", "c d", "yes"), ("e", "f", "no")], header=("premise", "hypothesis", "gold")
    )
    config = DataConfig(train=str(path), text_column="premise", text_pair_column="hypothesis", label_column="gold")
    table = load_table(path, config)
    assert table.texts == ["a b", "e"] and table.pairs == ["c d", "f"] and table.labels == ["yes", "no"]
    with pytest.raises(
        DataError, match=r"has no column 'label' \(data.label_column\); its columns are premise, hypothesis, gold"
    ):
        load_table(path, DataConfig(train=str(path), text_column="premise"))


def test_empty_labels_and_missing_files_are_errors(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "holes.csv", [("fine", "1"), ("grim", "")])
    with pytest.raises(DataError, match=r"1 example\(s\) without a label \(data row 2\)"):
        load_table(path, DataConfig(train=str(path)))
    with pytest.raises(DataError, match="not found"):
        load_table(tmp_path / "absent.csv", DataConfig(train="absent.csv"))


def test_integer_labels_sort_numerically_and_strings_alphabetically() -> None:
    assert build_label_names([10, 2, 1, 2]) == ["1", "2", "10"]
    assert build_label_names(["spam", "ham", "spam"]) == ["ham", "spam"]


def test_the_teachers_class_order_is_kept_when_it_names_the_labels() -> None:
    assert build_label_names(["pos", "neg"], {0: "pos", 1: "neg"}, 2) == ["pos", "neg"]
    assert build_label_names(["Pos", "neg"], {0: "POS", 1: "NEG"}, 2) == ["Pos", "neg"]
    # default names say nothing: sorted order
    assert build_label_names(["pos", "neg"], {0: "LABEL_0", 1: "LABEL_1"}, 2) == ["neg", "pos"]


def test_a_teacher_with_another_number_of_classes_is_refused() -> None:
    with pytest.raises(DataError, match="the teacher predicts 3 classes but the training data has 2 labels"):
        build_label_names([0, 1, 1], None, 3)
    with pytest.raises(DataError, match="at least 2"):
        build_label_names([1, 1])


def test_seeded_split_is_stratified_disjoint_and_repeatable(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "train.csv", sentences(200, seed=3))
    table = load_table(path, DataConfig(train=str(path)))
    rest, held = split_table(table, 0.25, seed=7, name="validation")
    again_rest, again_held = split_table(table, 0.25, seed=7, name="validation")
    assert held.texts == again_held.texts and rest.texts == again_rest.texts
    assert len(held) == 50 and len(rest) == 150
    share = sum(1 for y in held.labels if y == 1) / len(held)
    overall = sum(1 for y in table.labels if y == 1) / len(table)
    assert abs(share - overall) < 0.03
    other_rest, other_held = split_table(table, 0.25, seed=8, name="validation")
    assert other_held.texts != held.texts


def test_splits_come_from_files_or_are_held_out(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", sentences(100, seed=1))
    test = write_csv(tmp_path / "test.csv", sentences(30, seed=2))
    from_files = load_splits(DataConfig(train=str(train), test=str(test), validation_fraction=0.2))
    assert {k: len(v) for k, v in from_files.items()} == {"train": 80, "validation": 20, "test": 30}
    held = load_splits(DataConfig(train=str(train), test_fraction=0.1, validation_fraction=0.1, max_train_examples=50))
    assert len(held["test"]) == 10 and len(held["validation"]) == 9 and len(held["train"]) == 50


def test_prepare_data_tokenises_once_and_maps_labels(tmp_path: Path) -> None:
    tokenizer = write_tokenizer(tmp_path / "tok")
    train = write_csv(tmp_path / "train.csv", sentences(60, seed=1, labels=("neg", "pos")))
    validation = write_csv(tmp_path / "dev.csv", sentences(10, seed=2, labels=("neg", "pos")))
    data = prepare_data(
        DataConfig(train=str(train), validation=str(validation), max_length=6), tokenizer, tokenizer, progress=False
    )
    assert data.label_names == ["neg", "pos"]
    assert not data.separate_teacher_tokens
    item = data.train[0]
    assert set(item) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert max(data.train.lengths) <= 6
    expected = tokenizer(data.tables["train"].texts[0], truncation=True, max_length=6)["input_ids"]
    assert item["input_ids"] == expected
    assert item["labels"] == data.label_names.index(data.tables["train"].labels[0])


def test_an_unseen_label_in_validation_is_named(tmp_path: Path) -> None:
    tokenizer = write_tokenizer(tmp_path / "tok")
    train = write_csv(tmp_path / "train.csv", sentences(20, seed=1, labels=("neg", "pos")))
    dev = write_csv(tmp_path / "dev.csv", [("good film", "pos"), ("odd film", "meh")])
    with pytest.raises(DataError, match=r"label 'meh' \(data row 2\) is not among the known labels neg, pos"):
        prepare_data(DataConfig(train=str(train), validation=str(dev)), tokenizer, progress=False)


def test_different_tokenizers_are_refused_unless_allowed(tmp_path: Path) -> None:
    student = write_tokenizer(tmp_path / "student_tok")
    teacher = write_tokenizer(tmp_path / "teacher_tok", extra=("extra", "words"))
    train = write_csv(tmp_path / "train.csv", sentences(30, seed=1))
    with pytest.raises(
        DataError, match="the teacher's and the student's tokenizers differ .*allow_different_tokenizers"
    ):
        prepare_data(DataConfig(train=str(train)), student, teacher, progress=False)
    data = prepare_data(
        DataConfig(train=str(train), allow_different_tokenizers=True), student, teacher, progress=False
    )
    assert data.separate_teacher_tokens
    assert {"teacher_input_ids", "teacher_attention_mask", "input_ids"} <= set(data.train[0])


def test_collator_pads_to_the_longest_example() -> None:
    collate = PaddingCollator(pad_token_id=0, teacher_pad_token_id=9)
    batch = collate(
        [
            {"input_ids": [2, 5, 3], "attention_mask": [1, 1, 1], "teacher_input_ids": [2, 3], "labels": 1},
            {"input_ids": [2, 3], "attention_mask": [1, 1], "teacher_input_ids": [2, 7, 7, 3], "labels": 0},
        ]
    )
    assert batch["input_ids"].tolist() == [[2, 5, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["teacher_input_ids"].tolist() == [[2, 3, 9, 9], [2, 7, 7, 3]]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]


def test_length_grouped_batches_cover_every_example_once_with_less_padding() -> None:
    lengths = [(i * 37) % 50 + 1 for i in range(500)]
    sampler = LengthGroupedSampler(lengths, batch_size=16, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 32
    assert sorted(i for b in batches for i in b) == list(range(500))
    grouped_padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    plain = [list(range(500))[i : i + 16] for i in range(0, 500, 16)]
    plain_padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in plain)
    assert grouped_padding < plain_padding / 3
    assert [b for b in sampler] != batches  # a new order each epoch


def test_make_loader_gives_padded_dict_batches(tmp_path: Path) -> None:
    dataset = TokenizedDataset(
        {"input_ids": [[2, 3], [2, 5, 6, 3], [2, 4, 3]], "attention_mask": [[1, 1], [1] * 4, [1] * 3]}, [0, 1, 0]
    )
    loader = make_loader(dataset, 2, PaddingCollator(), shuffle=True, group_by_length=True, seed=1)
    seen = [batch["labels"].numel() for batch in loader]
    assert sorted(seen) == [1, 2]
    first = next(iter(make_loader(dataset, 3, PaddingCollator())))
    assert first["input_ids"].shape == (3, 4)


def test_a_hub_data_set_is_read_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load_dataset(path: str, name: str | None = None, revision: str | None = None) -> datasets.DatasetDict:
        calls.append((path, name, revision))
        rows = sentences(30, seed=4)
        split = datasets.Dataset.from_dict({"sentence": [t for t, _ in rows], "label": [y for _, y in rows]})
        return datasets.DatasetDict({"train": split, "validation": split.select(range(6))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    config = DataConfig(hub={"id": "glue", "name": "sst2"}, text_column="sentence")
    splits = load_splits(config)
    assert calls == [("glue", "sst2", None)]
    assert {k: len(v) for k, v in splits.items()} == {"train": 30, "validation": 6}
    assert splits["train"].source == "glue[train]" and splits["train"].labels[:3] == [
        y for _, y in sentences(3, seed=4)
    ]


def test_an_unreachable_hub_data_set_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    from kdistill.tasks.text_classification import reading

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'nobody/nothing' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(reading, "hub_offline_reason", lambda: None)  # a network, but not this data set
    with pytest.raises(DataError, match=r"^cannot load hub data set 'nobody/nothing': Couldn't reach .*\)$"):
        load_splits(DataConfig(hub={"id": "nobody/nothing"}))
    monkeypatch.setattr(reading, "hub_offline_reason", lambda: "HF_HUB_OFFLINE is set")
    with pytest.raises(
        DataError, match=r"cannot be used \(HF_HUB_OFFLINE is set\).*offline, read files instead: data.hub=null"
    ):
        load_splits(DataConfig(hub={"id": "nobody/nothing"}))


def test_an_evaluation_loader_grouped_by_length_sees_every_example_once_shortest_first():
    from kdistill.data.datasets import PaddingCollator, TokenizedDataset, make_loader

    lengths = [5, 2, 9, 2, 7, 3, 1]
    dataset = TokenizedDataset(
        {"input_ids": [[1] * n for n in lengths], "attention_mask": [[1] * n for n in lengths]},
        list(range(len(lengths))),
    )
    loader = make_loader(dataset, 3, PaddingCollator(), group_by_length=True)
    batches = [batch["labels"].tolist() for batch in loader]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [lengths[i] for b in batches for i in b] == sorted(lengths)
    assert [batch["labels"].tolist() for batch in loader] == batches  # the same order every pass
    # each batch is padded only to its own longest example
    assert [batch["input_ids"].shape[1] for batch in loader] == [2, 7, 9]


def test_the_teachers_order_is_its_logits_order_whatever_the_type_of_its_keys() -> None:
    # id2label read from JSON by hand has string keys: logit 10 comes after logit 9, not after logit 1
    labels = [f"c{i}" for i in range(11)]
    teacher = {str(i): f"c{i}" for i in range(11)}
    assert build_label_names(labels * 2, teacher, 11) == labels


def test_a_teacher_whose_ids_are_not_its_logits_is_refused() -> None:
    with pytest.raises(DataError, match=r"id2label \{1: neg, 2: pos\}, but there are 2 logits, 0 to 1"):
        build_label_names(["neg", "pos"], {1: "neg", 2: "pos"}, 2)
