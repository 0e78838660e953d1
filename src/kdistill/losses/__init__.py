"""Distillation losses: pure functions (:mod:`.functional`), terms (:mod:`.terms`), the
:class:`Objective` that combines them, and the seed's :class:`DistillationLoss`, :class:`LayerDistillationLoss` and
:func:`attention_distillation_loss`; intermediate-layer terms live in :mod:`.intermediate`, token-level (causal
LM) losses in :mod:`.tokens` (from drawn ids: :mod:`.sampled`) and their chunked, memory-bounded form in
:mod:`.chunked`."""

# isort: off
# the order terms register in is the order a config's error messages list them: logit terms,
# then hidden states, then attention maps and relations (the token-level terms come with their task)
from kdistill.losses.terms import JSD, HardCE, LogitKD, LogitMSE, ReverseKL, Term
from kdistill.losses.intermediate import EmbeddingMSE, HiddenCosine, HiddenMSE
from kdistill.losses.attention_terms import AttentionKL, AttentionMSE, MiniLMv1, MiniLMv2

# isort: on
from kdistill.losses.chunked import chunked_token_loss
from kdistill.losses.combine import TeacherMix
from kdistill.losses.functional import (
    attention_kl,
    attention_mse,
    hard_ce,
    hidden_cosine,
    hidden_mse,
    jsd,
    logit_mse,
    relation_kl,
    reverse_kl,
    soft_kd,
)
from kdistill.losses.objective import LossOutput, Objective
from kdistill.losses.sampled import token_loss_sampled
from kdistill.losses.seed import DistillationLoss, LayerDistillationLoss, attention_distillation_loss
from kdistill.losses.tokens import DIVERGENCES, next_token_targets, token_loss, token_loss_topk

__all__ = [
    "DIVERGENCES",
    "JSD",
    "AttentionKL",
    "AttentionMSE",
    "DistillationLoss",
    "EmbeddingMSE",
    "HardCE",
    "HiddenCosine",
    "HiddenMSE",
    "LayerDistillationLoss",
    "LogitKD",
    "LogitMSE",
    "LossOutput",
    "MiniLMv1",
    "MiniLMv2",
    "Objective",
    "ReverseKL",
    "TeacherMix",
    "Term",
    "attention_distillation_loss",
    "attention_kl",
    "attention_mse",
    "chunked_token_loss",
    "hard_ce",
    "hidden_cosine",
    "hidden_mse",
    "jsd",
    "logit_mse",
    "next_token_targets",
    "relation_kl",
    "reverse_kl",
    "soft_kd",
    "token_loss",
    "token_loss_sampled",
    "token_loss_topk",
]
