"""chunked_token_loss against the dense token_loss on the same hidden states and heads: values and
gradients (student hidden states, weight, bias) for every kind, chunk sizes that do and do not
divide the counted tokens, padded heads, top-k teachers, bf16, and the edge cases."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from kdistill.losses.chunked import chunked_token_loss, default_chunk_size
from kdistill.losses.tokens import KINDS, next_token_targets, token_loss, token_loss_topk

N, HS, HT, V = 21, 8, 6, 17
IGNORED = (0, 7, 20)  # 18 tokens count: a chunk of 6 divides them, 5 and 4 do not
KWARGS = {"temperature": 1.5, "beta": 0.3, "alpha": 0.2}


def _make(dtype=torch.float64, bias=True, seed=0, student_vocab=V, teacher_vocab=V):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(dtype)

    student = {
        "hidden": randn(N, HS).requires_grad_(),
        "weight": randn(student_vocab, HS, scale=0.8).requires_grad_(),
        "bias": randn(student_vocab).requires_grad_() if bias else None,
    }
    teacher = {"hidden": randn(N, HT), "weight": randn(teacher_vocab, HT, scale=0.8), "bias": randn(teacher_vocab)}
    targets = torch.randint(0, min(student_vocab, teacher_vocab), (N,), generator=generator)
    targets[list(IGNORED)] = -100
    return student, teacher, targets


def _logits(side):
    logits = side["hidden"] @ side["weight"].t()
    return logits if side["bias"] is None else logits + side["bias"]


def _grads(value, student, scale=0.5):
    # a grad_output other than 1: backward must scale the gradients it computed in forward
    inputs = [student[name] for name in ("hidden", "weight", "bias") if student[name] is not None]
    return torch.autograd.grad(value * scale, inputs)


def _chunked(student, teacher, targets, kind, **kwargs):
    return chunked_token_loss(
        student["hidden"],
        student["weight"],
        student["bias"],
        targets,
        kind,
        teacher_hidden=teacher["hidden"],
        teacher_weight=teacher["weight"],
        teacher_bias=teacher["bias"],
        **kwargs,
    )


def _assert_same(chunked, dense, student, rtol, atol):
    assert chunked.dtype == dense.dtype
    assert_close(chunked, dense.detach(), rtol=rtol, atol=atol)
    grads = _grads(chunked, student)
    for got, want in zip(grads, _grads(dense, student)):
        assert got.dtype == want.dtype
        assert_close(got, want, rtol=rtol, atol=atol)
    return grads


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_size", [None, 6, 5, 4])
def test_value_and_gradients_equal_the_dense_path_in_float64(kind, chunk_size):
    student, teacher, targets = _make(bias=chunk_size != 4)
    dense = token_loss(_logits(student), _logits(teacher).detach(), targets, kind, **KWARGS)
    chunked = _chunked(student, teacher, targets, kind, chunk_size=chunk_size, **KWARGS)
    _assert_same(chunked, dense, student, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_value_and_gradients_equal_the_dense_path_in_float32(kind):
    student, teacher, targets = _make(torch.float32, seed=1)
    dense = token_loss(_logits(student), _logits(teacher).detach(), targets, kind, **KWARGS)
    chunked = _chunked(student, teacher, targets, kind, chunk_size=5, **KWARGS)
    _assert_same(chunked, dense, student, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["forward_kl", "jsd", "ce"])
def test_sequences_of_hidden_states_with_shifted_labels(kind):
    student, teacher, _ = _make(seed=2)
    labels = torch.randint(0, V, (3, 7), generator=torch.Generator().manual_seed(3))
    labels[0, :3] = labels[2, 5:] = -100  # a prompt and padding
    targets = next_token_targets(labels)
    for side in (student, teacher):
        side["hidden"] = side["hidden"].detach().reshape(3, 7, -1).requires_grad_(side is student)
    dense = token_loss(_logits(student), _logits(teacher).detach(), targets, kind)
    _assert_same(_chunked(student, teacher, targets, kind, chunk_size=4), dense, student, 1e-10, 1e-12)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "ce"])
def test_padded_student_head_is_compared_on_the_shared_ids(kind):
    student, teacher, targets = _make(seed=4, student_vocab=V + 3)
    dense = token_loss(_logits(student), _logits(teacher).detach(), targets, kind, vocab_size=V)
    chunked = _chunked(student, teacher, targets, kind, vocab_size=V, chunk_size=4)
    grad_weight = _assert_same(chunked, dense, student, 1e-10, 1e-12)[1]
    if kind != "ce":
        assert (grad_weight[V:] == 0).all()  # padded rows never receive a gradient from a divergence
    with pytest.raises(ValueError, match="vocab_size"):
        _chunked(student, teacher, targets, "forward_kl")


def _topk(teacher_logits, k, temperature):
    log_probs = torch.log_softmax(teacher_logits / temperature, -1)
    top, indices = log_probs.topk(k, dim=-1)
    kept = top.logsumexp(-1)
    rest = torch.log(-torch.expm1(kept)) if k < teacher_logits.shape[-1] else torch.full_like(kept, float("-inf"))
    return top.detach(), indices, rest.detach()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [4, V])
def test_topk_teacher_equals_the_dense_topk_loss(kind, k):
    student, teacher, targets = _make(seed=5)
    topk = _topk(_logits(teacher), k, KWARGS["temperature"])
    dense = token_loss_topk(_logits(student), *topk, targets, kind, **KWARGS)
    chunked = chunked_token_loss(
        student["hidden"],
        student["weight"],
        student["bias"],
        targets,
        kind,
        teacher_topk=topk,
        chunk_size=5,
        **KWARGS,
    )
    _assert_same(chunked, dense, student, 1e-10, 1e-12)
    if k == V and kind != "ce":
        full = token_loss(_logits(student), _logits(teacher).detach(), targets, kind, **KWARGS)
        assert_close(chunked, full.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_all_ignored_tokens_give_zero_and_zero_gradients(kind):
    student, teacher, targets = _make(seed=6)
    value = _chunked(student, teacher, torch.full_like(targets, -100), kind)
    assert value == 0
    assert all((grad == 0).all() for grad in _grads(value, student))


@pytest.mark.parametrize("kind", KINDS)
def test_nan_propagates_and_extreme_logits_stay_finite(kind):
    student, teacher, targets = _make(torch.float32, seed=7)
    with torch.no_grad():
        student["weight"].mul_(2e4)  # logits of about ±1e4: most probabilities underflow to 0
        teacher["weight"].mul_(2e4)
    value = _chunked(student, teacher, targets, kind)
    assert torch.isfinite(value) and all(torch.isfinite(grad).all() for grad in _grads(value, student))
    with torch.no_grad():
        student["hidden"][3, 0] = float("nan")
    assert torch.isnan(_chunked(student, teacher, targets, kind))


@pytest.mark.parametrize("kind", ["forward_kl", "skew_kl", "ce"])
def test_bfloat16_inputs_compute_in_float32_and_return_bfloat16_gradients(kind):
    student, teacher, targets = _make(torch.bfloat16, seed=8)
    value = _chunked(student, teacher, targets, kind, chunk_size=4, **KWARGS)
    grads = _grads(value, student)
    assert value.dtype == torch.float32 and all(grad.dtype == torch.bfloat16 for grad in grads)
    upcast = {name: None if t is None else t.detach().float().requires_grad_() for name, t in student.items()}
    dense = token_loss(_logits(upcast), _logits({k: t.float() for k, t in teacher.items()}), targets, kind, **KWARGS)
    assert_close(value, dense.detach(), rtol=2e-2, atol=1e-2)
    for got, want in zip(grads, _grads(dense, upcast)):
        assert_close(got.float(), want, rtol=5e-2, atol=5e-2)


def test_no_grad_evaluation_and_a_second_backward():
    student, teacher, targets = _make(seed=9)
    with torch.no_grad():
        evaluated = _chunked(student, teacher, targets, "jsd")
    value = _chunked(student, teacher, targets, "jsd")
    assert_close(evaluated, value.detach(), rtol=1e-12, atol=0)
    value.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        value.backward()


def test_default_chunk_size_bounds_the_logits_of_a_chunk():
    assert default_chunk_size(49152) == 85  # 16 MiB of float32 logits
    assert default_chunk_size(49152, "jsd") == 42
    assert default_chunk_size(49152, "forward_kl", topk=True) == 42
    assert default_chunk_size(10**9) == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"teacher_topk": (torch.zeros(N, 2), torch.zeros(N, 2, dtype=torch.long), torch.zeros(N))}, "not both"),
        ({"teacher_hidden": None}, "needs teacher_hidden"),
        ({"teacher_weight": torch.zeros(V + 1, HT, dtype=torch.float64)}, "vocab_size"),
        ({"teacher_hidden": torch.zeros(N - 1, HT, dtype=torch.float64)}, "same positions"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"kind": "kl"}, "kind must be one of"),
        ({"student_weight": torch.zeros(V, HS)}, "share a dtype"),
        ({"student_weight": torch.zeros(V, HS + 1, dtype=torch.float64)}, "student_weight must have shape"),
    ],
)
def test_bad_arguments_raise_clear_errors(change, message):
    student, teacher, targets = _make(seed=10)
    args = {
        "student_hidden": student["hidden"],
        "student_weight": student["weight"],
        "student_bias": None,
        "targets": targets,
        "kind": "forward_kl",
        "teacher_hidden": teacher["hidden"],
        "teacher_weight": teacher["weight"],
    }
    args.update(change)
    with pytest.raises(ValueError, match=message):
        chunked_token_loss(**args)
