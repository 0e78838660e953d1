"""Layer maps: the named maps, validation against real depths, and the printed description."""

from __future__ import annotations

import re

import pytest
from conftest import tiny_bert
from tiny_models import build
from torch import nn

from kdistill.models.layer_maps import (
    check_layer_map,
    describe_layer_map,
    every_kth_map,
    last_k_map,
    print_layer_map,
    resolve_layer_map,
    uniform_map,
    validate_layer_map,
)


@pytest.mark.parametrize(
    ("student", "teacher", "expected"),
    [
        (3, 6, {1: 2, 2: 4, 3: 6}),  # TinyBERT's m -> m·N/M
        (2, 4, {1: 2, 2: 4}),
        (3, 4, {1: 1, 2: 3, 3: 4}),  # not a multiple: rounded, last to last
        (4, 6, {1: 2, 2: 3, 3: 5, 4: 6}),
        (5, 5, {1: 1, 2: 2, 3: 3, 4: 4, 5: 5}),
    ],
)
def test_uniform_map(student, teacher, expected):
    assert uniform_map(student, teacher) == expected
    assert uniform_map(student, teacher, embeddings=True) == {0: 0, **expected}


def test_every_kth_and_last_k_maps():
    assert every_kth_map(3, 6, 2) == {1: 2, 2: 4, 3: 6}
    assert every_kth_map(2, 12, 3, embeddings=True) == {0: 0, 1: 3, 2: 6}
    assert last_k_map(3, 6) == {1: 4, 2: 5, 3: 6}
    assert last_k_map(3, 6, k=2) == {2: 5, 3: 6}
    with pytest.raises(ValueError, match="k <= 2"):
        every_kth_map(3, 6, 3)
    with pytest.raises(ValueError, match="k <= 3"):
        last_k_map(3, 6, k=4)
    with pytest.raises(ValueError, match="at least as deep"):
        uniform_map(4, 2)
    with pytest.raises(ValueError, match="student_layers must be an integer >= 1"):
        uniform_map(0, 2)


def test_validation_states_the_valid_range():
    student, teacher = tiny_bert(num_layers=2), tiny_bert(num_layers=4)
    assert validate_layer_map({0: 0, 1: 2, 2: 4}, student, teacher) == {0: 0, 1: 2, 2: 4}
    with pytest.raises(ValueError, match=r"student layer 3 is out of range.*layers 0\.\.2"):
        validate_layer_map({3: 4}, student, teacher)
    with pytest.raises(ValueError, match=r"teacher layer 5 is out of range.*layers 0\.\.4"):
        validate_layer_map({1: 5}, student, teacher)
    with pytest.raises(ValueError, match=r"attention layers start at 1"):
        validate_layer_map({0: 0}, student, teacher, attention=True)
    with pytest.raises(ValueError, match=r"attention layers 1\.\.4"):
        validate_layer_map({1: 5}, student, teacher, attention=True)
    with pytest.raises(ValueError, match="empty"):
        validate_layer_map({}, student, teacher)
    with pytest.raises(TypeError, match=r"1\.5 \(float\) is not a layer"):
        validate_layer_map({1.5: 2}, student, teacher)
    with pytest.raises(TypeError, match="must be a dict"):
        check_layer_map([(1, 2)])
    with pytest.raises(TypeError, match="bool"):
        check_layer_map({True: 2})
    with pytest.raises(ValueError, match="layer indices start at 0"):
        check_layer_map({-1: 2})
    # depths may be given as numbers
    assert validate_layer_map({2: 6}, 3, 6) == {2: 6}


def test_module_paths_are_checked_against_the_models():
    student = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    teacher = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    assert validate_layer_map({"0": "2"}, student, teacher) == {"0": "2"}
    with pytest.raises(ValueError, match="teacher .* has no module '5'"):
        validate_layer_map({"0": "5"}, student, teacher)
    with pytest.raises(ValueError, match="not a Hugging Face model.*by path"):
        validate_layer_map({1: "2"}, student, teacher)


def test_resolve_named_maps_against_models():
    student, teacher = tiny_bert(num_layers=2), tiny_bert(num_layers=4)
    assert resolve_layer_map(None, student, teacher) == {1: 2, 2: 4}
    assert resolve_layer_map("every-2", student, teacher) == {1: 2, 2: 4}
    assert resolve_layer_map("last-1", student, teacher) == {2: 4}
    assert resolve_layer_map({1: 3}, student, teacher, attention=True) == {1: 3}
    with pytest.raises(ValueError, match="unknown layer map 'sparse'"):
        resolve_layer_map("sparse", student, teacher)


def test_describe_prints_both_models_layers_and_the_map(capsys):
    student, teacher = build("distilbert", num_layers=2), tiny_bert(num_layers=4, hidden=48)
    text = describe_layer_map(student, teacher, {0: 0, 2: 4})
    assert "student  DistilBertForSequenceClassification: 2 layers, hidden 32, 4 heads" in text
    assert "teacher  BertForSequenceClassification: 4 layers, hidden 48, 4 heads" in text
    assert re.search(r"\n 0  distilbert\.embeddings +<-   0  bert\.embeddings\n", text)
    assert re.search(r"\n 2  distilbert\.transformer\.layer\.1  <-   4  bert\.encoder\.layer\.3\n", text)
    assert "student layers without a teacher layer: 1" in text
    assert "teacher layers no student layer learns from: 1, 2, 3" in text
    print_layer_map(student, teacher)
    printed = capsys.readouterr().out
    assert re.search(r"1  distilbert\.transformer\.layer\.0 +<- +2  bert\.encoder\.layer\.1", printed)
    with pytest.raises(ValueError, match="out of range"):
        describe_layer_map(student, teacher, {3: 1})
