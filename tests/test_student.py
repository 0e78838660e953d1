"""make_student: fewer layers copied from the teacher, or narrower and random; the reduction reported."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert
from tiny_models import build, image_batch, text_batch
from torch.testing import assert_close

from kdistill.models.student import make_student


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_fewer_layers_are_copied_from_the_mapped_teacher_layers():
    teacher = tiny_bert(num_layers=4, hidden=48, seed=1)
    student, report = make_student(teacher, num_layers=2)
    assert type(student) is type(teacher) and student.config.num_hidden_layers == 2
    assert teacher.config.num_hidden_layers == 4  # the teacher's config is untouched
    assert report.initialised_from == {1: 2, 2: 4}
    for student_index, teacher_index in ((0, 1), (1, 3)):
        for (name, value), (_, expected) in zip(
            student.bert.encoder.layer[student_index].state_dict().items(),
            teacher.bert.encoder.layer[teacher_index].state_dict().items(),
        ):
            assert torch.equal(value, expected), name
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert report.student_parameters == _count(student) and report.teacher_parameters == _count(teacher)
    assert report.reduction == pytest.approx(_count(teacher) / _count(student))
    assert "2 layers" in str(report) and f"{report.reduction:.2f}x smaller" in str(report)


def test_a_student_with_all_the_teachers_layers_is_the_teacher():
    teacher = tiny_bert(num_layers=3, seed=1).eval()
    student, report = make_student(teacher, num_layers=3)
    batch = text_batch(batch_size=3)
    batch.pop("labels")
    with torch.no_grad():
        assert_close(student.eval()(**batch).logits, teacher(**batch).logits)
    assert report.reduction == 1.0


def test_explicit_layer_map_and_other_families():
    teacher = build("distilbert", num_layers=4, seed=1)
    student, report = make_student(teacher, num_layers=2, layer_map={1: 1, 2: 3})
    assert student.config.n_layers == 2 and report.initialised_from == {1: 1, 2: 3}
    assert torch.equal(
        student.distilbert.transformer.layer[1].ffn.lin1.weight,
        teacher.distilbert.transformer.layer[2].ffn.lin1.weight,
    )
    vit = build("vit", num_layers=3, seed=1)
    small_vit, _ = make_student(vit, num_layers=1)
    assert small_vit(**{"pixel_values": image_batch(2)["pixel_values"]}).logits.shape == (2, 3)
    with pytest.raises(ValueError, match="missing"):
        make_student(teacher, num_layers=2, layer_map={1: 1})
    with pytest.raises(ValueError, match=r"teacher layer 5 is out of range"):
        make_student(teacher, num_layers=2, layer_map={1: 1, 2: 5})


def test_a_narrower_student_is_random_and_smaller():
    teacher = tiny_bert(num_layers=4, hidden=48, seed=1)
    student, report = make_student(teacher, num_layers=2, hidden_size=32, seed=0)
    assert student.config.hidden_size == 32 and student.config.intermediate_size == 64
    assert student.config.num_attention_heads == 4 and report.initialised_from is None
    assert report.reduction > 3 and "randomly initialised" in str(report)
    batch = text_batch(batch_size=2)
    batch.pop("labels")
    assert student(**batch).logits.shape == (2, 3)
    again, _ = make_student(teacher, num_layers=2, hidden_size=32, seed=0)
    assert torch.equal(again.classifier.weight, student.classifier.weight)  # seeded
    narrow, _ = make_student(teacher, num_layers=2, hidden_size=24, num_heads=3, intermediate_size=40)
    assert (narrow.config.num_attention_heads, narrow.config.intermediate_size) == (3, 40)


def test_make_student_errors_are_clear():
    teacher = tiny_bert(num_layers=4, hidden=48, seed=1)
    with pytest.raises(ValueError, match="hidden_size 30 is not divisible by 4 attention heads"):
        make_student(teacher, num_layers=2, hidden_size=30)
    with pytest.raises(ValueError, match="init='random'"):
        make_student(teacher, num_layers=2, hidden_size=32, init="teacher")
    with pytest.raises(ValueError, match="num_layers <= 4"):
        make_student(teacher, num_layers=6)
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        make_student(teacher, num_layers=0)
    with pytest.raises(TypeError, match="Hugging Face model"):
        make_student(torch.nn.Linear(2, 2), num_layers=1)
    deeper, report = make_student(teacher, num_layers=6, init="random")
    assert report.student_layers == 6 and report.initialised_from is None
