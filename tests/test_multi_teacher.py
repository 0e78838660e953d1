"""Several teachers, the core: how a TeacherMix combines them (mixture, logit_mean, confidence,
entropy, route), the target each term reads (dense logits, final hidden states blended chunk by
chunk, top-k caches), terms named to one teacher, and the objective's refusals. Weights and
targets are checked against numbers written out by hand or against the dense token loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from kdistill import Features
from kdistill.capture import CaptureRequest
from kdistill.capture.features import TopKLogProbs
from kdistill.losses.combine import COMBINE_RULES, TeacherMix, example_weights, target_logits
from kdistill.losses.functional import log_rest_mass
from kdistill.losses.intermediate import HiddenMSE
from kdistill.losses.objective import Objective, StepShare
from kdistill.losses.teacher_targets import TeacherTargets
from kdistill.losses.terms import HardCE, LogitKD
from kdistill.losses.token_terms import TokenKD, count_targets
from kdistill.losses.tokens import DIVERGENCES, next_token_targets, token_loss


def _randn(*shape: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _two_teachers(batch: int = 4, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A student's logits (a leaf) and two teachers' logits, ``(batch, classes)`` each."""
    student = _randn(batch, classes, seed=0).requires_grad_(True)
    return student, _randn(batch, classes, seed=1), _randn(batch, classes, seed=2)


def _grad(loss: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(loss, leaf)
    return grad


def _one_line_error(call, match: str) -> str:
    """Run ``call``; it must raise one ValueError of one line that matches ``match``."""
    with pytest.raises(ValueError, match=match) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def _combined(mix: TeacherMix, logits: dict, temperature: float, labels=None, route=None) -> torch.Tensor:
    """The combined target logits a logit-level term reads at ``temperature``."""
    targets = TeacherTargets(mix, {n: Features(logits=z) for n, z in logits.items()}, labels, route)
    ((weight, features),) = targets.for_term(temperature, token_level=False)
    assert weight == 1.0
    return features.logits


# -- TeacherMix --------------------------------------------------------------------------------


def test_teacher_mix_normalises_its_weights():
    assert TeacherMix.of({"a": 1.0, "b": 3.0}).weights == (0.25, 0.75)
    assert TeacherMix.of(["a", "b", "c"]).weights == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert TeacherMix.of({"a": 2.0, "b": 0.0}).weights == (1.0, 0.0)  # a zero weight is allowed


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: TeacherMix.of({"a": -1.0, "b": 1.0}), "weight of teacher 'a'"),
        (lambda: TeacherMix.of({"a": float("nan"), "b": 1.0}), "weight of teacher 'a'"),
        (lambda: TeacherMix.of({"a": 1.0, "b": float("inf")}), "weight of teacher 'b'"),
        (lambda: TeacherMix.of({"a": 0.0, "b": 0.0}), "every teacher has weight 0"),
        (lambda: TeacherMix(("a", "a"), (1.0, 1.0)), "distinct teacher names"),
        (lambda: TeacherMix((), ()), "distinct teacher names"),
        (lambda: TeacherMix(("a", "b"), (1.0,)), "2 teachers but 1 weights"),
        (lambda: TeacherMix.of(["a", "b"], combine="vote"), "combine must be one of"),
        (lambda: TeacherMix.of(["a", "b"], combine="entropy", temperature=0.0), "temperature"),
        (lambda: TeacherMix.of(["a", "b"], combine="confidence", temperature=-1.0), "temperature"),
        (lambda: TeacherMix.of(["a", "b"], temperature=float("inf")), "temperature"),
        (lambda: TeacherMix.of(["a", "b"], temperature=float("nan")), "temperature"),
    ],
)
def test_teacher_mix_refuses_bad_settings(build, match):
    _one_line_error(build, match)


# -- mixture and logit_mean --------------------------------------------------------------------


def test_mixture_gradient_is_the_weighted_average_of_the_per_teacher_kd_gradients():
    student, z_a, z_b = _two_teachers()
    teachers = {"a": Features(logits=z_a), "b": Features(logits=z_b)}
    kd = LogitKD(temperature=4.0)
    mixed = Objective({"kd": kd}, teachers=TeacherMix.of({"a": 1.0, "b": 3.0}))
    grad = _grad(mixed(Features(logits=student), teachers).total, student)
    per_teacher = [_grad(kd(Features(logits=student), Features(logits=z)), student) for z in (z_a, z_b)]
    assert_close(grad, 0.25 * per_teacher[0] + 0.75 * per_teacher[1])
    # logit_mean is another target, with another gradient
    averaged = Objective({"kd": kd}, teachers=TeacherMix.of({"a": 1.0, "b": 3.0}, combine="logit_mean"))
    other = _grad(averaged(Features(logits=student), teachers).total, student)
    assert (other - grad).abs().max() > 1e-3


@pytest.mark.parametrize("temperature", [4.0, 1.0])
def test_mixture_target_is_the_weighted_mixture_of_the_tempered_teachers(temperature):
    _, z_a, z_b = _two_teachers()
    mix = TeacherMix.of({"a": 1.0, "b": 3.0})
    target = _combined(mix, {"a": z_a, "b": z_b}, temperature)
    expected = 0.25 * torch.softmax(z_a / temperature, -1) + 0.75 * torch.softmax(z_b / temperature, -1)
    assert_close(torch.softmax(target / temperature, -1), expected)


def test_one_batch_serves_terms_at_different_temperatures():
    student, z_a, z_b = _two_teachers()
    objective = Objective({"hot": LogitKD(4.0), "cold": LogitKD(1.0)}, teachers=TeacherMix.of({"a": 1.0, "b": 3.0}))
    parts = objective(Features(logits=student), {"a": Features(logits=z_a), "b": Features(logits=z_b)}).parts
    for name, temperature in (("hot", 4.0), ("cold", 1.0)):
        p = 0.25 * torch.softmax(z_a / temperature, -1) + 0.75 * torch.softmax(z_b / temperature, -1)
        log_q = torch.log_softmax(student.detach() / temperature, -1)
        expected = (p * (p.log() - log_q)).sum(-1).mean() * temperature**2
        assert_close(parts[name], expected)


def test_logit_mean_target_is_the_weighted_sum_of_the_logits():
    _, z_a, z_b = _two_teachers()
    mix = TeacherMix.of({"a": 1.0, "b": 3.0}, combine="logit_mean")
    for temperature in (4.0, 1.0):  # the logits themselves, whatever the temperature
        assert_close(_combined(mix, {"a": z_a, "b": z_b}, temperature), 0.25 * z_a + 0.75 * z_b)


# -- confidence and entropy, by hand -----------------------------------------------------------

# two examples, three classes: each teacher's probabilities, written out
P_A = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]
P_B = [[0.2, 0.5, 0.3], [0.5, 0.25, 0.25]]
TAU = 0.5


def _by_hand(score_a: float, score_b: float, sign: float) -> tuple[float, float]:
    """softmax over (log 0.25 + sign·score_a/τ, log 0.75 + sign·score_b/τ), written out."""
    a = 0.25 * math.exp(sign * score_a / TAU)
    b = 0.75 * math.exp(sign * score_b / TAU)
    return a / (a + b), b / (a + b)


def _check_mixture_target(target: torch.Tensor, weights: list[tuple[float, float]]) -> None:
    """softmax(target) at T = 1 is, per example, w_a·P_A + w_b·P_B."""
    expected = torch.tensor(
        [[w_a * pa + w_b * pb for pa, pb in zip(P_A[i], P_B[i], strict=True)] for i, (w_a, w_b) in enumerate(weights)]
    )
    assert_close(torch.softmax(target, -1), expected)


def test_confidence_weights_by_hand():
    mix = TeacherMix.of({"a": 1.0, "b": 3.0}, combine="confidence", temperature=TAU)
    labels = torch.tensor([0, 2])
    # p(gold): teacher a gives 0.7 (example 0, class 0) and 0.6 (example 1, class 2); teacher b 0.2 and 0.25
    weights = [_by_hand(0.7, 0.2, +1.0), _by_hand(0.6, 0.25, +1.0)]
    assert weights[0][0] == pytest.approx(0.4754, abs=1e-4)  # the formula above, evaluated on paper
    found = example_weights(
        mix, (2,), gold_log_probs=torch.tensor([[0.7, 0.6], [0.2, 0.25]]).log(), gold_counted=labels != -100
    )
    assert_close(found, torch.tensor(weights).t())
    target = _combined(mix, {"a": torch.tensor(P_A).log(), "b": torch.tensor(P_B).log()}, 1.0, labels=labels)
    _check_mixture_target(target, weights)


def test_confidence_keeps_the_fixed_weights_where_the_label_is_ignored():
    mix = TeacherMix.of({"a": 1.0, "b": 3.0}, combine="confidence", temperature=TAU)
    labels = torch.tensor([-100, 2])
    target = _combined(mix, {"a": torch.tensor(P_A).log(), "b": torch.tensor(P_B).log()}, 1.0, labels=labels)
    _check_mixture_target(target, [(0.25, 0.75), _by_hand(0.6, 0.25, +1.0)])


def test_confidence_without_labels_is_one_clear_error():
    mix = TeacherMix.of(["a", "b"], combine="confidence")
    _one_line_error(
        lambda: _combined(mix, {"a": torch.tensor(P_A).log(), "b": torch.tensor(P_B).log()}, 1.0), "gold label"
    )


def test_entropy_weights_by_hand():
    mix = TeacherMix.of({"a": 1.0, "b": 3.0}, combine="entropy", temperature=TAU)
    h_a = [
        -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)),
        -(0.1 * math.log(0.1) + 0.3 * math.log(0.3) + 0.6 * math.log(0.6)),
    ]
    h_b = [
        -(0.2 * math.log(0.2) + 0.5 * math.log(0.5) + 0.3 * math.log(0.3)),
        -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 0.25 * math.log(0.25)),
    ]
    weights = [_by_hand(h_a[i], h_b[i], -1.0) for i in range(2)]
    found = example_weights(mix, (2,), entropies=torch.tensor([h_a, h_b]))
    assert_close(found, torch.tensor(weights).t())
    # labels change nothing here: entropy does not read them
    for labels in (None, torch.tensor([-100, 0])):
        target = _combined(mix, {"a": torch.tensor(P_A).log(), "b": torch.tensor(P_B).log()}, 1.0, labels=labels)
        _check_mixture_target(target, weights)


# -- route -------------------------------------------------------------------------------------


def test_route_target_is_each_examples_own_teacher():
    _, z_a, z_b = _two_teachers()
    mix = TeacherMix.of(["a", "b"], combine="route")
    route = torch.tensor([1, 0, 0, 1])
    target = _combined(mix, {"a": z_a, "b": z_b}, 2.0, route=route)
    own = torch.where(route.unsqueeze(-1) == 0, z_a, z_b)
    assert_close(torch.softmax(target / 2.0, -1), torch.softmax(own / 2.0, -1))
    # the other teacher's logits on a row are never read
    moved_a, moved_b = z_a.clone(), z_b.clone()
    moved_a[route == 1] = _randn(2, 5, seed=9, scale=10.0)
    moved_b[route == 0] = _randn(2, 5, seed=8, scale=10.0)
    assert_close(_combined(mix, {"a": moved_a, "b": moved_b}, 2.0, route=route), target)


def test_route_reads_only_each_examples_teacher_in_the_loss():
    student, z_a, z_b = _two_teachers()
    route = torch.tensor([1, 0, 0, 1])
    objective = Objective({"kd": LogitKD(2.0)}, teachers=TeacherMix.of(["a", "b"], combine="route"))
    own = torch.where(route.unsqueeze(-1) == 0, z_a, z_b)
    loss = objective(Features(logits=student), {"a": Features(logits=z_a), "b": Features(logits=z_b)}, route=route)
    alone = LogitKD(2.0)(Features(logits=student), Features(logits=own))
    assert_close(loss.total, alone)
    assert_close(_grad(loss.total, student), _grad(alone, student))


def test_route_to_teachers_some_absent_from_the_batch():
    student, z_a, _ = _two_teachers()
    objective = Objective({"kd": LogitKD(2.0)}, teachers=TeacherMix.of(["a", "b"], combine="route"))
    route = torch.zeros(4, dtype=torch.long)  # no example chose b: its features are None
    loss = objective(Features(logits=student), {"a": Features(logits=z_a), "b": None}, route=route)
    assert_close(loss.total, LogitKD(2.0)(Features(logits=student), Features(logits=z_a)))
    # an example routed to a teacher that gave nothing is refused, not trained towards nothing
    _one_line_error(
        lambda: objective(
            Features(logits=student), {"a": Features(logits=z_a), "b": None}, route=torch.tensor([0, 1, 0, 0])
        ),
        "route",
    )


def _topk(logits: torch.Tensor, k: int, temperature: float) -> Features:
    """A top-k cache record of ``logits`` at ``temperature``."""
    log_probs = torch.log_softmax(logits / temperature, -1)
    top, indices = log_probs.topk(k, -1)
    return Features(topk=TopKLogProbs(top, indices, log_rest_mass(log_probs, indices), temperature))


@pytest.mark.parametrize("kind", ["logits", "topk"])
@pytest.mark.parametrize(
    "route,match",
    [
        (torch.tensor([0, 2, 0, 1]), "teacher index 2"),
        (torch.tensor([0, -1, 0, 1]), "teacher index -1"),
        (torch.tensor([0, 1]), "one teacher index per example"),
        (torch.tensor([0.0, 1.0, 0.0, 1.0]), "integer teacher indices"),
        (None, "route needs each example's teacher"),
    ],
)
def test_a_bad_or_missing_route_is_one_clear_error(kind, route, match):
    student, z_a, z_b = _two_teachers()
    objective = Objective({"kd": LogitKD(2.0)}, teachers=TeacherMix.of(["a", "b"], combine="route"))
    if kind == "logits":
        teachers = {"a": Features(logits=z_a), "b": Features(logits=z_b)}
    else:
        teachers = {"a": _topk(z_a, 3, 2.0), "b": _topk(z_b, 3, 2.0)}
    _one_line_error(lambda: objective(Features(logits=student), teachers, route=route), match)


# -- token level: teachers as final hidden states and output layers -----------------------------

B, L, HS, VS = 2, 6, 4, 12
TEACHER_SHAPES = {"a": (5, 11), "b": (3, 13)}  # (hidden width, head size): padded to different sizes
SHARED = 11
T_TOKENS = 2.0


def _token_batch():
    """A student (hidden states and head, leaves), two teachers' features, the labels and a route."""
    torch.manual_seed(0)
    student_hidden = _randn(B, L, HS, seed=3, scale=1.0).requires_grad_(True)
    student_head = nn.Linear(HS, VS)
    teachers = {}
    for seed, (name, (width, size)) in enumerate(TEACHER_SHAPES.items(), start=4):
        head = nn.Linear(width, size).requires_grad_(False)
        teachers[name] = Features(final_hidden=_randn(B, L, width, seed=seed, scale=1.5), output_layer=head)
    labels = torch.randint(0, SHARED, (B, L), generator=torch.Generator().manual_seed(7))
    labels[0, :2] = -100  # a prompt
    labels[1, 4] = -100
    return student_hidden, student_head, teachers, labels, torch.tensor([1, 0])


def _dense_target(mix: TeacherMix, logits: list[torch.Tensor], labels, route, temperature: float) -> torch.Tensor:
    """The combined target over the shared ids, written from the rules' definitions (float64)."""
    n, lead = len(logits), logits[0].shape[:-1]
    omega = torch.tensor(mix.weights, dtype=torch.float64).view(n, 1, 1).expand(n, *lead)
    log_p = [torch.log_softmax(z.double(), -1) for z in logits]  # each teacher's own head, at T = 1
    gold = next_token_targets(labels)
    if mix.combine in ("mixture", "logit_mean"):
        weights = omega
    elif mix.combine == "route":
        weights = torch.stack([(route == i).double().view(-1, 1).expand(*lead) for i in range(n)])
    elif mix.combine == "confidence":
        p_gold = torch.stack([lp.gather(-1, gold.clamp_min(0).unsqueeze(-1)).squeeze(-1).exp() for lp in log_p])
        weights = torch.softmax(omega.log() + p_gold / mix.temperature, 0)
        weights = torch.where(gold != -100, weights, omega)
    else:
        entropy = torch.stack([-(lp.exp() * lp).sum(-1) for lp in log_p])
        weights = torch.softmax(omega.log() - entropy / mix.temperature, 0)
    shared = [z[..., :SHARED].double() for z in logits]
    if mix.combine == "logit_mean":
        return sum(w.unsqueeze(-1) * z for w, z in zip(weights, shared, strict=True))
    mixed = sum(w.unsqueeze(-1) * torch.softmax(z / temperature, -1) for w, z in zip(weights, shared, strict=True))
    return temperature * mixed.log()


@pytest.mark.parametrize("combine", COMBINE_RULES)
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_token_kd_blended_chunk_by_chunk_equals_the_dense_loss(divergence, combine):
    hidden, head, teachers, labels, route = _token_batch()
    mix = TeacherMix.of({"a": 1.0, "b": 3.0}, combine=combine, temperature=0.5)
    objective = Objective({"kd": TokenKD(divergence, temperature=T_TOKENS, chunk_size=3)}, teachers=mix)
    student = Features(final_hidden=hidden, output_layer=head)
    loss = objective(student, teachers, labels, route=route).total
    found = torch.autograd.grad(loss, [hidden, head.weight, head.bias])

    with torch.no_grad():
        logits = [f.output_layer(f.final_hidden) for f in teachers.values()]
    target = _dense_target(mix, logits, labels, route, T_TOKENS).float()
    targets = next_token_targets(labels)
    dense = token_loss(
        head(hidden), target, targets, divergence, temperature=T_TOKENS, vocab_size=SHARED
    ) / count_targets(labels)
    expected = torch.autograd.grad(dense, [hidden, head.weight, head.bias])
    assert_close(loss, dense, rtol=1e-5, atol=1e-6)
    for got, want in zip(found, expected, strict=True):
        assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert found[1][SHARED:].abs().max() == 0  # the student's padded ids are not compared


def test_token_kd_blend_ignores_the_other_teacher_on_routed_rows():
    hidden, head, teachers, labels, route = _token_batch()
    objective = Objective(
        {"kd": TokenKD(temperature=T_TOKENS, chunk_size=3)}, teachers=TeacherMix.of(["a", "b"], combine="route")
    )
    student = Features(final_hidden=hidden, output_layer=head)
    before = objective(student, teachers, labels, route=route).total
    moved = teachers["a"].final_hidden.clone()
    moved[route == 1] = 100.0  # teacher a on the example routed to b
    teachers["a"] = Features(final_hidden=moved, output_layer=teachers["a"].output_layer)
    assert_close(objective(student, teachers, labels, route=route).total, before)


# -- top-k caches ------------------------------------------------------------------------------


def _token_topk(features: Features, k: int) -> Features:
    with torch.no_grad():
        return _topk(features.output_layer(features.final_hidden)[..., :SHARED], k, T_TOKENS)


def test_topk_mixture_is_the_weighted_sum_of_the_term_per_teacher():
    student, z_a, z_b = _two_teachers()
    cached = {"a": _topk(z_a, 3, 4.0), "b": _topk(z_b, 2, 4.0)}  # k may differ under mixture
    objective = Objective({"kd": LogitKD(4.0)}, teachers=TeacherMix.of({"a": 1.0, "b": 3.0}))
    loss = objective(Features(logits=student), cached).total
    kd = LogitKD(4.0)
    expected = 0.25 * kd(Features(logits=student), cached["a"]) + 0.75 * kd(Features(logits=student), cached["b"])
    assert_close(loss, expected)
    assert_close(_grad(loss, student), _grad(expected, student))


def test_topk_mixture_of_token_terms_within_a_step_share():
    hidden, head, teachers, labels, _ = _token_batch()
    cached = {name: _token_topk(f, 4) for name, f in teachers.items()}
    term = TokenKD("reverse_kl", temperature=T_TOKENS, chunk_size=3)
    objective = Objective({"kd": term}, teachers=TeacherMix.of({"a": 1.0, "b": 3.0}))
    student = Features(final_hidden=hidden, output_layer=head)
    # the share's target tokens (here twice the batch's, as for two micro-batches) divide the sum
    tokens = 2 * count_targets(labels)
    loss = objective(student, cached, labels, share=StepShare(micro_batches=2, target_tokens=tokens)).total
    sums = [term.token_sum(student, cached[name], labels) for name in ("a", "b")]
    assert_close(loss, (0.25 * sums[0] + 0.75 * sums[1]) / tokens)


def test_topk_route_takes_each_examples_rows_from_its_teacher():
    student, z_a, z_b = _two_teachers()
    cached = {"a": _topk(z_a, 3, 2.0), "b": _topk(z_b, 3, 2.0)}
    route = torch.tensor([1, 1, 0, 1])
    objective = Objective({"kd": LogitKD(2.0)}, teachers=TeacherMix.of(["a", "b"], combine="route"))
    loss = objective(Features(logits=student), cached, route=route).total
    picked = _topk(torch.where(route.unsqueeze(-1) == 0, z_a, z_b), 3, 2.0)
    expected = LogitKD(2.0)(Features(logits=student), picked)
    assert_close(loss, expected)
    assert_close(_grad(loss, student), _grad(expected, student))


def test_topk_route_of_token_terms_takes_each_examples_rows():
    hidden, head, teachers, labels, route = _token_batch()
    cached = {name: _token_topk(f, 4) for name, f in teachers.items()}
    term = TokenKD(temperature=T_TOKENS, chunk_size=3)
    objective = Objective({"kd": term}, teachers=TeacherMix.of(["a", "b"], combine="route"))
    student = Features(final_hidden=hidden, output_layer=head)
    loss = objective(student, cached, labels, route=route).total
    with torch.no_grad():
        logits = [f.output_layer(f.final_hidden)[..., :SHARED] for f in teachers.values()]
    own = torch.where(route.view(-1, 1, 1) == 0, logits[0], logits[1])
    assert_close(loss, term(student, _topk(own, 4, T_TOKENS), labels))


@pytest.mark.parametrize("combine", ["confidence", "entropy", "logit_mean"])
def test_topk_refuses_rules_that_need_full_distributions(combine):
    student, z_a, z_b = _two_teachers()
    objective = Objective({"kd": LogitKD(2.0)}, teachers=TeacherMix.of(["a", "b"], combine=combine))
    cached = {"a": _topk(z_a, 3, 2.0), "b": _topk(z_b, 3, 2.0)}
    message = _one_line_error(
        lambda: objective(Features(logits=student), cached, labels=torch.tensor([0, 1, 2, 3])), f"combine: {combine}"
    )
    assert "mixture or route" in message


def test_topk_route_refuses_caches_of_different_k():
    student, z_a, z_b = _two_teachers()
    objective = Objective({"kd": LogitKD(2.0)}, teachers=TeacherMix.of(["a", "b"], combine="route"))
    cached = {"a": _topk(z_a, 3, 2.0), "b": _topk(z_b, 2, 2.0)}
    _one_line_error(
        lambda: objective(Features(logits=student), cached, route=torch.tensor([0, 1, 0, 1])), "same top_k"
    )


def test_teachers_of_different_kinds_are_refused():
    student, z_a, z_b = _two_teachers()
    objective = Objective({"kd": LogitKD(2.0)}, teachers=TeacherMix.of(["a", "b"]))
    _one_line_error(
        lambda: objective(Features(logits=student), {"a": Features(logits=z_a), "b": _topk(z_b, 3, 2.0)}),
        "same cache setting",
    )


# -- terms named to one teacher, and what each teacher is asked for ------------------------------


def test_a_term_named_to_one_teacher_reads_only_that_teacher():
    student, z_a, z_b = _two_teachers()
    objective = Objective(
        {"kd": LogitKD(4.0), "kd_b": LogitKD(1.0)},
        weights={"kd": 0.5, "kd_b": 2.0},
        teachers=TeacherMix.of({"a": 1.0, "b": 3.0}),
        teacher_of={"kd_b": "b"},
    )
    out = objective(Features(logits=student), {"a": Features(logits=z_a), "b": Features(logits=z_b)})
    alone = LogitKD(1.0)(Features(logits=student), Features(logits=z_b))
    assert_close(out.parts["kd_b"], alone.detach())
    target = _combined(objective.teachers, {"a": z_a, "b": z_b}, 4.0)
    mixed = LogitKD(4.0)(Features(logits=student), Features(logits=target))
    assert_close(out.total, 0.5 * mixed + 2.0 * alone)
    moved = objective(Features(logits=student), {"a": Features(logits=z_a * 3 + 1), "b": Features(logits=z_b)})
    assert_close(moved.parts["kd_b"], out.parts["kd_b"])
    assert (moved.parts["kd"] - out.parts["kd"]).abs() > 1e-3  # a still reaches the combined term
    # the named teacher's features must be there
    named_only = Objective({"kd_b": LogitKD(1.0)}, teacher_of={"kd_b": "b"})
    assert_close(named_only(Features(logits=student), {"b": Features(logits=z_b)}).total, alone)
    _one_line_error(
        lambda: named_only(Features(logits=student), {"a": Features(logits=z_a), "b": None}), "reads teacher 'b'"
    )


def test_request_per_teacher_unions_exactly_the_terms_that_read_it():
    objective = Objective(
        {
            "kd": LogitKD(4.0),  # the combined teachers: both
            "hid_a": HiddenMSE({1: 3}),
            "hid_b": HiddenMSE({2: 1}),
            "off": HiddenMSE({1: 2}),  # weight 0: not computed, asks for nothing
            "ce": HardCE(),
        },
        weights={"off": 0.0},
        teachers=TeacherMix.of(["a", "b"]),
        teacher_of={"hid_a": "a", "hid_b": "b", "off": "a"},
    )
    assert objective.request("teacher", "a") == CaptureRequest(logits=True, hidden_states={3})
    assert objective.request("teacher", "b") == CaptureRequest(logits=True, hidden_states={1})
    assert objective.request("teacher", "c") == CaptureRequest(logits=False)
    named_only = Objective(
        {"hid_a": HiddenMSE({1: 3}), "hid_b": HiddenMSE({2: 1}), "ce": HardCE()},
        teacher_of={"hid_a": "a", "hid_b": "b"},
    )
    assert named_only.teacher_names == ("a", "b")
    assert named_only.request("teacher", "a") == CaptureRequest(logits=False, hidden_states={3})
    assert named_only.request("teacher", "b") == CaptureRequest(logits=False, hidden_states={1})


@pytest.mark.parametrize(
    "terms,teachers,teacher_of,match",
    [
        ({"kd": LogitKD()}, TeacherMix.of(["a", "b"]), {"kd": "c"}, "names teacher 'c'"),
        ({"kd": LogitKD()}, TeacherMix.of(["a", "b"]), {"kdd": "a"}, r"terms \['kdd'\]"),
        # b is combined, but the one term that reads a teacher names a
        ({"kd": LogitKD(), "ce": HardCE()}, TeacherMix.of(["a", "b"]), {"kd": "a"}, "reads teacher 'b'"),
        ({"ce": HardCE()}, TeacherMix.of(["a", "b"]), {}, "reads teacher 'a'"),
        # no TeacherMix: a term that reads a teacher must name one
        ({"kd": LogitKD(), "hid": HiddenMSE({1: 1})}, None, {"hid": "a"}, "term 'kd'"),
    ],
)
def test_set_teachers_refuses_what_cannot_be_read(terms, teachers, teacher_of, match):
    _one_line_error(lambda: Objective(terms, teachers=teachers, teacher_of=teacher_of), match)


def test_plain_features_for_an_objective_that_reads_teachers_by_name_is_refused():
    student, z_a, _ = _two_teachers()
    objective = Objective({"kd": LogitKD()}, teachers=TeacherMix.of(["a", "b"]))
    _one_line_error(lambda: objective(Features(logits=student), Features(logits=z_a)), "as a mapping")


def test_a_mapping_of_teachers_without_a_teacher_mix_is_refused():
    student, z_a, z_b = _two_teachers()
    objective = Objective({"kd": LogitKD()})
    _one_line_error(
        lambda: objective(Features(logits=student), {"a": Features(logits=z_a), "b": Features(logits=z_b)}),
        "no TeacherMix",
    )


def test_a_teacher_missing_from_the_mapping_is_refused():
    student, z_a, _ = _two_teachers()
    objective = Objective({"kd": LogitKD()}, teachers=TeacherMix.of(["a", "b"]))
    _one_line_error(lambda: objective(Features(logits=student), {"a": Features(logits=z_a)}), "no features of b")


@pytest.mark.parametrize("combine", ["mixture", "logit_mean"])
def test_a_teacher_without_features_is_refused_unless_routed(combine):
    student, z_a, _ = _two_teachers()
    objective = Objective({"kd": LogitKD()}, teachers=TeacherMix.of(["a", "b"], combine=combine))
    _one_line_error(lambda: objective(Features(logits=student), {"a": Features(logits=z_a), "b": None}), "'b'")


def test_target_logits_compares_padded_heads_on_their_shared_ids():
    z_a, z_b = _randn(3, 7, seed=1), _randn(3, 9, seed=2)
    weights = torch.tensor([0.25, 0.75]).view(2, 1).expand(2, 3)
    target = target_logits([z_a, z_b], weights, "mixture", 2.0)
    expected = 0.25 * torch.softmax(z_a / 2, -1) + 0.75 * torch.softmax(z_b[:, :7] / 2, -1)
    assert_close(torch.softmax(target / 2, -1), expected)
