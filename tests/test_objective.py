"""Objective (named weighted terms) and the seed's DistillationLoss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from kdistill import DistillationLoss, Features, HardCE, LogitKD, LogitMSE, Objective
from kdistill.losses import functional as LF


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(8, 5, generator=g) * 2,
        torch.randn(8, 5, generator=g) * 2,
        torch.randint(0, 5, (8,), generator=g),
    )


def test_alpha_zero_is_pure_ce_and_alpha_one_is_pure_kd():
    student, teacher, labels = _pair()
    ce = F.cross_entropy(student, labels)
    kd = F.kl_div(F.log_softmax(student / 4, -1), F.softmax(teacher / 4, -1), reduction="batchmean") * 16
    assert_close(DistillationLoss(4.0, alpha=0.0)(student, teacher, labels), ce)
    assert_close(DistillationLoss(4.0, alpha=1.0)(student, teacher, labels), kd)
    assert_close(DistillationLoss(4.0, alpha=1.0)(student, teacher), kd)  # no labels needed at alpha = 1
    assert_close(DistillationLoss(4.0, alpha=0.7)(student, teacher, labels), 0.7 * kd + 0.3 * ce)


def test_seed_defaults():
    loss = DistillationLoss()
    assert (loss.temperature, loss.alpha) == (4.0, 0.5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -2.0}, "temperature"),
        ({"alpha": 1.2}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
    ],
)
def test_distillation_loss_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationLoss(**kwargs)
    with pytest.raises(ValueError, match=message):
        Objective.hinton(**kwargs)


def test_objective_returns_total_and_every_part():
    student, teacher, labels = _pair(1)
    objective = Objective(
        {"kd": LogitKD(2.0), "ce": HardCE(), "mse": LogitMSE()}, weights={"kd": 0.5, "ce": 0.25, "mse": 2.0}
    )
    out = objective(Features(logits=student), Features(logits=teacher), labels)
    expected_parts = {
        "kd": LF.soft_kd(student, teacher, 2.0),
        "ce": LF.hard_ce(student, labels),
        "mse": LF.logit_mse(student, teacher),
    }
    assert set(out.parts) == set(expected_parts)
    for name, value in expected_parts.items():
        assert_close(out.parts[name], value)
    assert_close(out.total, 0.5 * expected_parts["kd"] + 0.25 * expected_parts["ce"] + 2.0 * expected_parts["mse"])


def test_hinton_objective_equals_the_seed_loss():
    student, teacher, labels = _pair(2)
    out = Objective.hinton(temperature=3.0, alpha=0.8)(Features(logits=student), Features(logits=teacher), labels)
    assert_close(out.total, DistillationLoss(3.0, 0.8)(student, teacher, labels))


def test_zero_weight_terms_are_skipped():
    student, teacher, _ = _pair(3)
    objective = Objective.hinton(alpha=1.0)
    out = objective(Features(logits=student), Features(logits=teacher), None)  # CE not computed: no labels needed
    assert list(out.parts) == ["kd"]
    assert not objective.needs_labels


def test_repr_shows_the_formula():
    text = repr(Objective.hinton(temperature=4.0, alpha=0.7))
    assert "loss = 0.7·kd + 0.3·ce" in text
    assert "LogitKD(temperature=4)" in text and "HardCE(ignore_index=-100)" in text


def test_missing_labels_is_a_clear_error():
    student, teacher, _ = _pair()
    with pytest.raises(ValueError, match="needs labels"):
        Objective.hinton(alpha=0.5)(Features(logits=student), Features(logits=teacher), None)


@pytest.mark.parametrize(
    "terms,weights,error,message",
    [
        ({}, None, ValueError, "at least one term"),
        ({"kd": LogitKD()}, {"ce": 1.0}, ValueError, "unknown terms"),
        ({"kd": torch.nn.Linear(2, 2)}, None, TypeError, "must be a kdistill Term"),
        ({"kd": LogitKD()}, {"kd": -1.0}, ValueError, ">= 0"),
        ({"kd": LogitKD()}, {"kd": 0.0}, ValueError, "weight 0"),
    ],
)
def test_objective_rejects_bad_definitions(terms, weights, error, message):
    with pytest.raises(error, match=message):
        Objective(terms, weights)


def test_token_level_terms_use_the_attention_mask():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 6, 9, generator=g), torch.randn(2, 6, 9, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    out = Objective({"kd": LogitKD(2.0)})(
        Features(logits=student, attention_mask=mask), Features(logits=teacher), None
    )
    keep = mask.bool()
    assert_close(out.total, LF.soft_kd(student[keep], teacher[keep], 2.0))
