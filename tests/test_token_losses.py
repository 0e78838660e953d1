"""Token-level (causal LM) losses against references written from their definitions in float64:
every divergence, the jsd and skew endpoints, T², NaN and extreme logits, counting and reduction,
padded vocabularies and top-k teachers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from kdistill.losses.tokens import (
    DIVERGENCES,
    KINDS,
    divergence,
    next_token_targets,
    token_loss,
    token_loss_topk,
)

B, L, V = 2, 5, 11


def _randn(*shape, seed=0, scale=2.0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


def _targets(seed=0, ignored=((0, 1), (1, 4))):
    targets = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))
    for position in ignored:
        targets[position] = -100
    return targets


def _kl(a, b):
    """KL(a ‖ b) over the last dimension of probabilities, 0·log 0 = 0."""
    safe = torch.where(a > 0, a, torch.ones_like(a))
    return torch.where(a > 0, a * (safe.log() - b.log()), torch.zeros_like(a)).sum(-1)


def reference(student_logits, teacher_logits, kind, temperature=1.0, beta=0.5, alpha=0.1):
    """Per-position divergence times T², straight from the definitions, in float64."""
    p = torch.softmax(teacher_logits.double() / temperature, -1)
    q = torch.softmax(student_logits.double() / temperature, -1)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0):
        value = _kl(p, q)
    elif kind == "reverse_kl" or (kind == "jsd" and beta == 1):
        value = _kl(q, p)
    elif kind == "jsd":
        m = beta * p + (1 - beta) * q
        value = beta * _kl(p, m) + (1 - beta) * _kl(q, m)
    elif kind == "skew_kl":
        value = _kl(p, alpha * p + (1 - alpha) * q)
    elif kind == "skew_reverse_kl":
        value = _kl(q, (1 - alpha) * p + alpha * q)
    else:
        value = 0.5 * (p - q).abs().sum(-1)
    return value * temperature**2


def test_next_token_targets_shift_left_and_ignore_the_last_position():
    labels = torch.tensor([[5, 6, 7, 8], [-100, 1, 2, -100]])
    assert next_token_targets(labels).tolist() == [[6, 7, 8, -100], [1, 2, -100, -100]]
    assert next_token_targets(labels, ignore_index=-1)[:, -1].tolist() == [-1, -1]
    with pytest.raises(ValueError, match="integer"):
        next_token_targets(labels.float())


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_each_divergence_matches_its_definition(kind, temperature):
    student = _randn(B, L, V, seed=1).requires_grad_()
    teacher = _randn(B, L, V, seed=2)
    targets = _targets()
    counted = targets != -100
    kwargs = {"temperature": temperature, "beta": 0.3, "alpha": 0.2}
    expected = torch.where(counted, reference(student, teacher, kind, **kwargs), torch.zeros(()))
    values = token_loss(student, teacher, targets, kind, reduction="none", **kwargs)
    assert values.dtype == torch.float64
    assert_close(values, expected.detach(), rtol=1e-10, atol=1e-12)
    # gradients too: the masking of p = 0 must not change them
    (grad,) = torch.autograd.grad(token_loss(student, teacher, targets, kind, **kwargs), student)
    (expected_grad,) = torch.autograd.grad(expected.sum(), student)
    assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_inputs_compute_in_float32(kind):
    student, teacher = _randn(B, L, V, seed=3, dtype=torch.float32), _randn(B, L, V, seed=4, dtype=torch.float32)
    value = token_loss(student.bfloat16(), teacher.bfloat16(), _targets(), kind)
    assert value.dtype == torch.float32 and torch.isfinite(value)


def test_jsd_endpoints_are_forward_and_reverse_kl_and_the_interior_vanishes_there():
    student, teacher, targets = _randn(B, L, V, seed=5), _randn(B, L, V, seed=6), _targets()
    forward = token_loss(student, teacher, targets, "forward_kl", temperature=2.0)
    reverse = token_loss(student, teacher, targets, "reverse_kl", temperature=2.0)
    assert torch.equal(token_loss(student, teacher, targets, "jsd", beta=0.0, temperature=2.0), forward)
    assert torch.equal(token_loss(student, teacher, targets, "jsd", beta=1.0, temperature=2.0), reverse)
    # the discontinuity TRL has too: just inside the interval the mixture is one side
    near = token_loss(student, teacher, targets, "jsd", beta=1e-9, temperature=2.0)
    assert near < 1e-6 * forward


def test_skew_kl_at_alpha_zero_is_the_kl_and_at_one_is_zero():
    student, teacher, targets = _randn(B, L, V, seed=7), _randn(B, L, V, seed=8), _targets()
    for skew, plain in (("skew_kl", "forward_kl"), ("skew_reverse_kl", "reverse_kl")):
        assert torch.equal(
            token_loss(student, teacher, targets, skew, alpha=0.0), token_loss(student, teacher, targets, plain)
        )
        assert token_loss(student, teacher, targets, skew, alpha=1.0) == 0


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_temperature_squared_scales_every_divergence(kind):
    student, teacher, targets = _randn(B, L, V, seed=9), _randn(B, L, V, seed=10), _targets()
    value = token_loss(student, teacher, targets, kind, temperature=3.0)
    plain = divergence(torch.log_softmax(teacher / 3.0, -1), torch.log_softmax(student / 3.0, -1), kind)
    assert_close(value, 9.0 * plain[targets != -100].sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", ["student", "teacher"])
def test_a_nan_input_propagates(kind, side):
    student, teacher, targets = _randn(B, L, V, seed=11), _randn(B, L, V, seed=12), _targets()
    (student if side == "student" else teacher)[0, 2, 3] = float("nan")
    values = token_loss(student, teacher, targets, kind, reduction="none")
    if kind == "ce" and side == "teacher":
        assert torch.isfinite(values).all()
    else:
        assert torch.isnan(values[0, 2]) and torch.isfinite(values[1]).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_and_masked_logits_stay_finite(kind, dtype):
    student = torch.full((B, L, V), -1e4, dtype=dtype)
    teacher = torch.full((B, L, V), -1e4, dtype=dtype)
    student[..., 0], teacher[..., 1], teacher[..., 2] = 1e4, 1e4, 0.0  # probabilities underflow to 0
    student[..., -1] = teacher[..., -1] = float("-inf")  # an id both models mask out
    student.requires_grad_()
    targets = _targets()
    targets[targets == V - 1] = 0  # a target the student masks out has an infinite cross-entropy, rightly
    value = token_loss(student, teacher, targets, kind, temperature=0.5)
    (grad,) = torch.autograd.grad(value, student)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_reductions_count_only_positions_with_a_target(kind):
    student, teacher = _randn(B, L, V, seed=13).requires_grad_(), _randn(B, L, V, seed=14)
    targets = _targets(ignored=((0, 0), (0, 1), (1, 4)))
    values = token_loss(student, teacher, targets, kind, reduction="none")
    assert (values[targets == -100] == 0).all() and (values[targets != -100] != 0).all()
    total = token_loss(student, teacher, targets, kind, reduction="sum")
    assert_close(total, values.sum())
    assert_close(token_loss(student, teacher, targets, kind, reduction="mean"), total / 7)
    if kind == "ce":
        assert_close(total, F.cross_entropy(student.reshape(-1, V), targets.reshape(-1), reduction="sum"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_an_all_ignored_batch_gives_zero_with_a_zero_gradient(kind, reduction):
    student, teacher = _randn(B, L, V, seed=15).requires_grad_(), _randn(B, L, V, seed=16)
    value = token_loss(student, teacher, torch.full((B, L), -100), kind, reduction=reduction)
    (grad,) = torch.autograd.grad(value, student)
    assert value == 0 and (grad == 0).all()


def test_padded_vocabularies_are_compared_on_the_shared_ids():
    student, teacher, targets = _randn(B, L, V + 3, seed=17), _randn(B, L, V, seed=18), _targets()
    value = token_loss(student, teacher, targets, "forward_kl", vocab_size=V)
    assert_close(value, token_loss(student[..., :V], teacher, targets, "forward_kl"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="vocab_size"):
        token_loss(student, teacher, targets, "forward_kl")
    with pytest.raises(ValueError, match="exceeds"):
        token_loss(student, teacher, targets, "forward_kl", vocab_size=V + 1)
    # the cross-entropy uses the student's whole head, padded ids included
    ids = torch.full((B, L), V + 1)
    ce = token_loss(student, None, ids, "ce", vocab_size=V)
    assert_close(ce, F.cross_entropy(student.reshape(-1, V + 3), ids.reshape(-1), reduction="sum"))


def _topk(teacher_logits, k, temperature):
    log_probs = torch.log_softmax(teacher_logits / temperature, -1)
    top, indices = log_probs.topk(k, dim=-1)
    kept = top.logsumexp(-1)
    rest = torch.log(-torch.expm1(kept)) if k < teacher_logits.shape[-1] else torch.full_like(kept, -math.inf)
    return top, indices, rest


@pytest.mark.parametrize("kind", KINDS)
def test_topk_with_every_id_equals_the_full_loss(kind):
    student, teacher, targets = _randn(B, L, V, seed=19).requires_grad_(), _randn(B, L, V, seed=20), _targets()
    kwargs = {"temperature": 2.0, "beta": 0.3, "alpha": 0.2}
    full = token_loss(student, teacher, targets, kind, **kwargs)
    top = token_loss_topk(student, *_topk(teacher, V, 2.0), targets, kind, **kwargs)
    assert_close(top, full, rtol=1e-12, atol=1e-12)
    grads = [torch.autograd.grad(value, student)[0] for value in (top, full)]
    assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_topk_compares_k_plus_one_buckets(kind):
    k, temperature = 3, 1.5
    student, teacher, targets = _randn(B, L, V, seed=21), _randn(B, L, V, seed=22), _targets()
    top, indices, rest = _topk(teacher, k, temperature)
    q = torch.softmax(student / temperature, -1)
    q_top = q.gather(-1, indices)
    q_buckets = torch.cat([q_top, (1 - q_top.sum(-1, keepdim=True))], -1)
    p_buckets = torch.cat([top.exp(), rest.exp().unsqueeze(-1)], -1)
    expected = reference(q_buckets.log(), p_buckets.log(), kind, beta=0.3, alpha=0.2) * temperature**2
    values = token_loss_topk(
        student, top, indices, rest, targets, kind, temperature=temperature, beta=0.3, alpha=0.2, reduction="none"
    )
    assert_close(values, torch.where(targets != -100, expected, torch.zeros(())), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "kl"}, "kind must be one of"),
        ({"kind": "jsd", "beta": 1.5}, "beta"),
        ({"kind": "jsd", "beta": -0.1}, "beta"),
        ({"kind": "skew_kl", "alpha": 2.0}, "alpha"),
        ({"kind": "forward_kl", "temperature": 0.0}, "temperature"),
        ({"kind": "forward_kl", "reduction": "batchmean"}, "reduction"),
        ({"kind": "forward_kl", "targets": torch.zeros(B, L + 1, dtype=torch.long)}, "targets must have shape"),
        ({"kind": "forward_kl", "targets": torch.zeros(B, L)}, "integer"),
        ({"kind": "forward_kl", "teacher": None}, "needs teacher_logits"),
        ({"kind": "ce", "targets": torch.full((B, L), V)}, "outside the student's"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    args = {"student": _randn(B, L, V), "teacher": _randn(B, L, V, seed=1), "targets": _targets()}
    args.update(kwargs)
    kind = args.pop("kind")
    student, teacher, targets = args.pop("student"), args.pop("teacher"), args.pop("targets")
    with pytest.raises(ValueError, match=message):
        token_loss(student, teacher, targets, kind, **args)


def test_token_kd_refuses_a_weight_its_divergence_does_not_use() -> None:
    from kdistill.losses.token_terms import TokenKD

    with pytest.raises(
        ValueError, match="beta applies to divergence jsd only, and this term's divergence is forward_kl"
    ):
        TokenKD("forward_kl", beta=0.3)
    with pytest.raises(ValueError, match="skew applies to divergence skew_kl or skew_reverse_kl only"):
        TokenKD("tv", skew=0.2)
    with pytest.raises(ValueError, match="temperature must be at least"):
        TokenKD("forward_kl", temperature=1e-30)
    assert (TokenKD("jsd").beta, TokenKD("skew_kl").skew, TokenKD("jsd", beta=0.0).beta) == (0.5, 0.1, 0.0)
    assert TokenKD("skew_reverse_kl", skew=0.3).skew == 0.3
