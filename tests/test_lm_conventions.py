"""kdistill's token-level losses against the conventions of TRL, torchtune, DistillKit and NVIDIA
ModelOpt, measured on the same tensors (docs/causal_lm.md states each relation).

Each peer's loss is re-written here from its documented definition (never imported: none of them
is a dependency), applied as its recipe applies it: logits at position i against the label of
token i + 1, -100 where nothing counts.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from kdistill.losses.tokens import next_token_targets, token_loss

B, L, V = 3, 7, 40


@pytest.fixture
def tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student and teacher logits ``(B, L, V)`` in float64 and labels ``(B, L)`` with masked prompts and padding."""
    generator = torch.Generator().manual_seed(7)
    student = (torch.randn(B, L, V, generator=generator, dtype=torch.float64) * 2).requires_grad_()
    teacher = torch.randn(B, L, V, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(0, V, (B, L), generator=generator)
    labels[0, :3] = -100  # a prompt
    labels[1, 5:] = -100  # padding
    return student, teacher, labels


def _shifted(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor):
    """What the peers' recipes do before their loss: drop the last position, shift the labels left."""
    return student[:, :-1], teacher[:, :-1], labels[:, 1:]


def trl_generalized_jsd(student, teacher, labels, beta, temperature, num_items_in_batch=None):
    """TRL's GKD loss: log-softmax at T (no T²); β = 0 forward KL, β = 1 reverse KL; mixture
    m = β·p_teacher + (1 − β)·p_student; masked mean over the labels != -100."""
    log_q = F.log_softmax(student / temperature, dim=-1)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    if beta == 0:
        per_entry = F.kl_div(log_q, log_p, reduction="none", log_target=True)
    elif beta == 1:
        per_entry = F.kl_div(log_p, log_q, reduction="none", log_target=True)
    else:
        weight = torch.tensor(beta, dtype=log_q.dtype)
        log_m = torch.logsumexp(torch.stack([log_q + torch.log1p(-weight), log_p + torch.log(weight)]), 0)
        per_entry = beta * F.kl_div(log_m, log_p, reduction="none", log_target=True) + (1 - beta) * F.kl_div(
            log_m, log_q, reduction="none", log_target=True
        )
    mask = labels != -100
    kept = per_entry[mask]
    return kept.sum() / (num_items_in_batch if num_items_in_batch is not None else mask.sum().clamp_min(1))


def torchtune_forward_kl(student, teacher, labels):
    """torchtune's ForwardKLLoss (and its chunked form): −Σ p_teacher · log q_student per token, a
    cross-entropy against the teacher without its entropy, no temperature; mean over counted tokens."""
    teacher_prob = F.softmax(teacher, dim=-1)
    student_logprob = F.log_softmax(student, dim=-1)
    per_token = (teacher_prob * student_logprob).sum(-1)
    mask = (labels != -100).to(per_token.dtype)
    return -(per_token * mask).sum() / mask.sum()


def distillkit_dense_kl(student, teacher, mask, temperature, num_items_in_batch):
    """DistillKit's KLDLoss on dense teacher logits: Σ KL(p ‖ q) at T over masked tokens, × T² / num_items_in_batch."""
    log_q = F.log_softmax(student / temperature, dim=-1)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    per_token = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1) * mask
    return per_token.sum() * temperature**2 / num_items_in_batch


def modelopt_logits_kd(student, teacher, temperature):
    """ModelOpt's LogitsDistillationLoss: KL at T over (B·L, V) rows, batchmean (every row, no mask), × T²."""
    log_q = F.log_softmax(student / temperature, dim=-1).reshape(-1, student.shape[-1])
    p = F.softmax(teacher / temperature, dim=-1).reshape(-1, teacher.shape[-1])
    return F.kl_div(log_q, p, reduction="batchmean") * temperature**2


def ours(student, teacher, labels, kind="forward_kl", **options):
    return token_loss(student, teacher, next_token_targets(labels), kind, reduction="mean", **options)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_trl_generalized_jsd_is_ours_without_t_squared(tensors, beta: float, temperature: float) -> None:
    student, teacher, labels = tensors
    theirs = trl_generalized_jsd(*_shifted(student, teacher, labels), beta, temperature)
    mine = ours(student, teacher, labels, "jsd", beta=beta, temperature=temperature)
    assert_close(mine / temperature**2, theirs, rtol=1e-10, atol=1e-12)


def test_trl_with_num_items_in_batch_is_our_step_normalisation(tensors) -> None:
    student, teacher, labels = tensors
    step_tokens = 40  # the target tokens of the whole step, this micro-batch's being fewer
    theirs = trl_generalized_jsd(*_shifted(student, teacher, labels), 0.5, 1.0, num_items_in_batch=step_tokens)
    summed = token_loss(student, teacher, next_token_targets(labels), "jsd", beta=0.5, reduction="sum")
    assert_close(summed / step_tokens, theirs, rtol=1e-10, atol=1e-12)


def test_torchtune_forward_kl_is_ours_plus_the_teachers_entropy_with_the_same_gradient(tensors) -> None:
    student, teacher, labels = tensors
    theirs = torchtune_forward_kl(*_shifted(student, teacher, labels))
    mine = ours(student, teacher, labels)
    targets = next_token_targets(labels)
    log_p = F.log_softmax(teacher, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)[targets != -100].mean()
    assert_close(theirs, mine + entropy, rtol=1e-10, atol=1e-12)
    (their_grad,) = torch.autograd.grad(theirs, student)
    (my_grad,) = torch.autograd.grad(mine, student)
    assert_close(my_grad, their_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_distillkit_kl_is_ours(tensors, temperature: float) -> None:
    student, teacher, labels = tensors
    shifted_student, shifted_teacher, shifted_labels = _shifted(student, teacher, labels)
    mask = (shifted_labels != -100).to(student.dtype)
    theirs = distillkit_dense_kl(shifted_student, shifted_teacher, mask, temperature, mask.sum())
    assert_close(ours(student, teacher, labels, temperature=temperature), theirs, rtol=1e-10, atol=1e-12)


def test_modelopt_counts_every_position_where_we_count_target_tokens(tensors) -> None:
    student, teacher, labels = tensors
    shifted_student, shifted_teacher, _ = _shifted(student, teacher, labels)
    theirs = modelopt_logits_kd(shifted_student, shifted_teacher, 2.0)
    everything = torch.zeros_like(labels)  # no position masked: the same value
    assert_close(ours(student, teacher, everything, temperature=2.0), theirs, rtol=1e-10, atol=1e-12)
    # with prompts and padding masked, ModelOpt's batchmean still averages over them
    assert abs(float(ours(student, teacher, labels, temperature=2.0).detach()) - float(theirs.detach())) > 1e-3
