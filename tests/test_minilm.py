"""MiniLM v1 and v2 relation distillation."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_bert
from tiny_models import build, pad_more, text_batch
from torch.testing import assert_close

from kdistill import Objective, distill
from kdistill.capture import capture
from kdistill.losses import MiniLMv1, MiniLMv2
from kdistill.losses import functional as LF


def _inputs(**kwargs):
    batch = text_batch(**kwargs)
    batch.pop("labels")
    return batch


def _loss(term, student, teacher, batch):
    with torch.no_grad():
        return term(capture(student, batch, term.request("student")), capture(teacher, batch, term.request("teacher")))


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_minilm_losses_are_zero_for_a_model_against_itself(family):
    model = build(family, num_layers=3, seed=4)
    twin = copy.deepcopy(model)
    batch = _inputs(batch_size=4, length=9)
    assert _loss(MiniLMv1.from_models(model, twin), model, twin, batch) == 0
    assert _loss(MiniLMv2.from_models(model, twin), model, twin, batch) == 0
    assert (
        _loss(
            MiniLMv2.from_models(model, twin, teacher_layer=2, student_layer=2, relation_heads=2), model, twin, batch
        )
        == 0
    )


def test_minilm_v1_is_attention_kl_plus_value_relation_kl():
    teacher, student = (
        tiny_bert(num_layers=4, hidden=48, heads=4, seed=1).eval(),
        tiny_bert(num_layers=2, seed=2).eval(),
    )
    term = MiniLMv1.from_models(student, teacher)
    assert (term.student_layer, term.teacher_layer) == (2, 4)
    batch = _inputs()
    s = capture(student, batch, term.request("student"))
    t = capture(teacher, batch, term.request("teacher"))
    mask = batch["attention_mask"]
    expected = LF.attention_kl(s.attentions[2], t.attentions[4], mask) + LF.relation_kl(s.values[2], t.values[4], mask)
    assert_close(term(s, t), expected)
    assert term(s, t) > 0


def test_minilm_v2_relation_heads_are_independent_of_the_models_heads():
    # teacher 6 heads of 8 dims, student 4 heads of 8 dims: 8 relation heads split 48 and 32 alike
    teacher = tiny_bert(num_layers=4, hidden=48, heads=6, seed=1).eval()
    student = tiny_bert(num_layers=2, hidden=32, heads=4, seed=2).eval()
    batch = _inputs()
    for relation_heads in (1, 2, 8, 16):
        term = MiniLMv2.from_models(student, teacher, teacher_layer=3, relation_heads=relation_heads)
        assert (term.student_layer, term.teacher_layer) == (2, 3)
        loss = _loss(term, student, teacher, batch)
        assert torch.isfinite(loss) and loss > 0
    # the value relation alone, by hand
    term = MiniLMv2(2, 3, relation_heads=8, relations=("value",))
    s = capture(student, batch, term.request("student"))
    t = capture(teacher, batch, term.request("teacher"))
    assert_close(term(s, t), LF.relation_kl(s.values[2], t.values[3], batch["attention_mask"], relation_heads=8))
    with pytest.raises(ValueError, match="relation_heads=5 must divide both widths"):
        MiniLMv2.from_models(student, teacher, relation_heads=5)
    with pytest.raises(ValueError, match="relations must be a non-empty subset"):
        MiniLMv2(2, 3, relation_heads=8, relations=("attention",))


def test_minilm_terms_ignore_padding():
    teacher = tiny_bert(num_layers=4, hidden=48, heads=6, seed=1).eval()
    student = tiny_bert(num_layers=2, hidden=32, heads=4, seed=2).eval()
    batch = _inputs(batch_size=4, length=8, seed=2)
    for term in (MiniLMv1.from_models(student, teacher), MiniLMv2.from_models(student, teacher, relation_heads=4)):
        assert_close(
            _loss(term, student, teacher, pad_more(batch, 6)),
            _loss(term, student, teacher, batch),
            rtol=1e-4,
            atol=1e-7,
        )


def test_minilm_v2_training_lowers_the_loss():
    teacher = tiny_bert(num_layers=4, hidden=48, heads=6, seed=1)
    student = tiny_bert(num_layers=2, hidden=32, heads=4, seed=2)
    objective = Objective({"minilm": MiniLMv2.from_models(student, teacher, relation_heads=8)})
    history = distill(
        teacher,
        student,
        text_batch(num_batches=3),
        objective=objective,
        epochs=5,
        lr=3e-3,
        progress=False,
        log_every=1,
    )
    losses = history.series("minilm")
    assert sum(losses[-3:]) < sum(losses[:3])


def test_minilm_layer_checks():
    student, teacher = tiny_bert(num_layers=2), tiny_bert(num_layers=4)
    with pytest.raises(ValueError, match=r"teacher layer 5 is out of range"):
        MiniLMv1.from_models(student, teacher, teacher_layer=5)
    with pytest.raises(ValueError, match="student_layer must be an attention layer index >= 1"):
        MiniLMv2(0, 4, relation_heads=4)
