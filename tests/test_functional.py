"""The loss contract: closed forms, masks, float32, stability and clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from kdistill.losses import functional as LF

LOGIT_LOSSES = [
    ("soft_kd", lambda s, t, **kw: LF.soft_kd(s, t, 4.0, **kw)),
    ("reverse_kl", lambda s, t, **kw: LF.reverse_kl(s, t, 2.0, **kw)),
    ("jsd", lambda s, t, **kw: LF.jsd(s, t, 0.3, 2.0, **kw)),
    ("logit_mse", lambda s, t, **kw: LF.logit_mse(s, t, **kw)),
]


def _logits(*shape, seed=0, scale=3.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("name,loss_fn", LOGIT_LOSSES)
def test_identical_logits_give_zero(name, loss_fn):
    logits = _logits(6, 5)
    assert_close(loss_fn(logits, logits.clone()), torch.tensor(0.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
def test_soft_kd_equals_kl_div_times_t_squared(temperature):
    student, teacher = _logits(8, 7, seed=1), _logits(8, 7, seed=2)
    expected = (
        F.kl_div(
            F.log_softmax(student / temperature, dim=-1),
            F.softmax(teacher / temperature, dim=-1),
            reduction="batchmean",
        )
        * temperature**2
    )
    assert_close(LF.soft_kd(student, teacher, temperature), expected)


def test_t_squared_scaling():
    student, teacher = _logits(8, 7, seed=1), _logits(8, 7, seed=2)
    kl = F.kl_div(
        F.log_softmax(student / 4, -1), F.log_softmax(teacher / 4, -1), reduction="batchmean", log_target=True
    )
    assert_close(LF.soft_kd(student, teacher, 4.0) / 16.0, kl)


def test_reverse_kl_swaps_the_arguments():
    student, teacher = _logits(8, 7, seed=1), _logits(8, 7, seed=2)
    expected = F.kl_div(F.log_softmax(teacher / 2, -1), F.softmax(student / 2, -1), reduction="batchmean") * 4
    assert_close(LF.reverse_kl(student, teacher, 2.0), expected)


def test_jsd_matches_its_definition_and_is_symmetric_at_half():
    student, teacher = _logits(5, 6, seed=3), _logits(5, 6, seed=4)
    p_t, p_s = F.softmax(teacher, -1), F.softmax(student, -1)
    beta = 0.3
    mixture = beta * p_t + (1 - beta) * p_s
    kl = lambda p, q: (p * (p.log() - q.log())).sum(-1).mean()  # noqa: E731
    expected = beta * kl(p_t, mixture) + (1 - beta) * kl(p_s, mixture)
    assert_close(LF.jsd(student, teacher, beta=beta), expected)
    assert_close(LF.jsd(student, teacher, 0.5), LF.jsd(teacher, student, 0.5))


def test_logit_mse_equals_mse_loss():
    student, teacher = _logits(4, 3, seed=1), _logits(4, 3, seed=2)
    assert_close(LF.logit_mse(student, teacher), F.mse_loss(student, teacher))


def test_hard_ce_matches_cross_entropy_with_ignore_index():
    logits = _logits(6, 4)
    labels = torch.tensor([0, 1, -100, 3, 2, -100])
    assert_close(LF.hard_ce(logits, labels), F.cross_entropy(logits, labels, ignore_index=-100))
    everything_ignored = torch.full((6,), -100)
    assert LF.hard_ce(logits, everything_ignored).item() == 0.0


@pytest.mark.parametrize("name,loss_fn", LOGIT_LOSSES)
def test_token_mask_averages_over_unmasked_tokens_only(name, loss_fn):
    student, teacher = _logits(3, 5, 11, seed=1), _logits(3, 5, 11, seed=2)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    selected = mask.bool()
    expected = loss_fn(student[selected], teacher[selected])  # (N, V): plain average over kept tokens
    assert_close(loss_fn(student, teacher, mask=mask), expected)
    # what sits under the mask never matters, and more padding changes nothing
    noisy = student.clone()
    noisy[~selected] = 1e3
    assert_close(loss_fn(noisy, teacher, mask=mask), expected)
    pad = torch.zeros(3, 4, 11)
    padded = loss_fn(
        torch.cat([student, pad], 1),
        torch.cat([teacher, pad + 5], 1),
        mask=torch.cat([mask, torch.zeros(3, 4, dtype=mask.dtype)], 1),
    )
    assert_close(padded, expected)


def test_hard_ce_mask_and_ignore_index_combine():
    logits = _logits(2, 4, 5)
    labels = torch.tensor([[1, 2, -100, 0], [4, 3, 2, 1]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    keep = (labels != -100) & mask.bool()
    assert_close(LF.hard_ce(logits, labels, mask=mask), F.cross_entropy(logits[keep], labels[keep]))


def test_all_masked_gives_zero_not_nan():
    student, teacher = _logits(2, 3, 4, seed=1), _logits(2, 3, 4, seed=2)
    value = LF.soft_kd(student, teacher, 4.0, mask=torch.zeros(2, 3))
    assert value.item() == 0.0


@pytest.mark.parametrize("name,loss_fn", LOGIT_LOSSES)
def test_computed_in_float32_from_half_precision(name, loss_fn):
    student, teacher = _logits(4, 6, seed=1), _logits(4, 6, seed=2)
    reference = loss_fn(student, teacher)
    for dtype in (torch.bfloat16, torch.float16):
        value = loss_fn(student.to(dtype), teacher.to(dtype))
        assert value.dtype == torch.float32
        assert_close(value, reference, atol=0.05, rtol=0.05)
    assert LF.hard_ce(student.bfloat16(), torch.tensor([0, 1, 2, 3])).dtype == torch.float32


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
def test_stable_for_huge_logits(temperature):
    generator = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (6, 10), generator=generator) * 2 - 1
    teacher = signs * 1e4
    student = (-signs * 1e4).float().requires_grad_(True)
    for value in (
        LF.soft_kd(student, teacher, temperature),
        LF.reverse_kl(student, teacher, temperature),
        LF.jsd(student, teacher, 0.5, temperature),
        LF.hard_ce(student, torch.arange(6) % 10),
        LF.logit_mse(student, teacher),
    ):
        assert torch.isfinite(value), value
        (grad,) = torch.autograd.grad(value, student)
        assert torch.isfinite(grad).all()
    same = LF.soft_kd(teacher.float(), teacher, temperature)
    assert_close(same, torch.tensor(0.0), atol=1e-3, rtol=0)


def test_masked_vocabulary_entries_do_not_make_nan():
    teacher = torch.tensor([[2.0, 1.0, float("-inf")]])
    student = torch.tensor([[1.0, 2.0, float("-inf")]], requires_grad=True)
    value = LF.soft_kd(student, teacher, 1.0)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all()


def test_gradient_flows_to_the_student_only():
    student = _logits(4, 5, seed=1).requires_grad_(True)
    teacher = _logits(4, 5, seed=2).requires_grad_(True)
    LF.soft_kd(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: LF.soft_kd(torch.randn(4, 3), torch.randn(4, 5)), "same shape"),
        (lambda: LF.soft_kd(torch.randn(4), torch.randn(4)), "shape"),
        (lambda: LF.soft_kd(torch.randn(4, 3), torch.randn(4, 3), temperature=0), "temperature must be > 0"),
        (lambda: LF.soft_kd(torch.randn(4, 3), torch.randn(4, 3), temperature=-1.0), "temperature must be > 0"),
        (lambda: LF.soft_kd(torch.randn(4, 3), torch.randn(4, 3), temperature="4"), "temperature"),
        (lambda: LF.soft_kd(torch.randn(4, 3), torch.randn(4, 3), mask=torch.ones(3)), "mask must have shape"),
        (lambda: LF.jsd(torch.randn(4, 3), torch.randn(4, 3), beta=1.0), "beta"),
        (lambda: LF.hard_ce(torch.randn(4, 3), torch.tensor([0, 1])), "labels must have shape"),
        (lambda: LF.hard_ce(torch.randn(4, 3), torch.tensor([0, 1, 2, 3])), "outside the model's 3 classes"),
        (lambda: LF.hard_ce(torch.randn(4, 3), torch.rand(4)), "integer class ids"),
        (lambda: LF.check_unit_interval(1.5, "alpha"), "alpha must lie in [0, 1]"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(call, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        call()


# ---------------------------------------------------------------------------
# a temperature too small to take effect (issue 23)
# ---------------------------------------------------------------------------


def test_a_temperature_below_float32_softmax_resolution_is_refused() -> None:
    from kdistill.losses.reduction import MIN_TEMPERATURE

    torch.manual_seed(0)
    student, teacher = torch.randn(8, 5, 50) * 3, torch.randn(8, 5, 50) * 3
    # the bound is where float32 softmax turns one-hot: logits one float32 step apart near 1
    near_one = torch.tensor([1.0, float(torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)))])
    assert torch.softmax(near_one / (MIN_TEMPERATURE / 2), -1).tolist() == [0.0, 1.0]
    assert 1e-9 < MIN_TEMPERATURE < 2e-9
    for loss in (
        lambda t: LF.soft_kd(student, teacher, t),
        lambda t: LF.reverse_kl(student, teacher, t),
        lambda t: LF.jsd(student, teacher, 0.5, t),
    ):
        with pytest.raises(ValueError, match=r"temperature must be at least 1\.4e-09, got 1e-30"):
            loss(1e-30)  # was exactly 0.0, with a zero gradient
        assert loss(MIN_TEMPERATURE * 10) > 0 and loss(MIN_TEMPERATURE) >= 0
    assert LF.check_temperature(MIN_TEMPERATURE) == MIN_TEMPERATURE
