"""Distillation losses: pure functions (:mod:`.functional`), terms (:mod:`.terms`), the
:class:`Objective` that combines them, and the seed's :class:`DistillationLoss`, :class:`LayerDistillationLoss` and
:func:`attention_distillation_loss`; intermediate-layer terms live in :mod:`.intermediate`."""

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
from kdistill.losses.intermediate import (
    AttentionKL,
    AttentionMSE,
    EmbeddingMSE,
    HiddenCosine,
    HiddenMSE,
    MiniLMv1,
    MiniLMv2,
)
from kdistill.losses.objective import LossOutput, Objective
from kdistill.losses.seed import DistillationLoss, LayerDistillationLoss, attention_distillation_loss
from kdistill.losses.terms import JSD, HardCE, LogitKD, LogitMSE, ReverseKL, Term

__all__ = [
    "AttentionKL",
    "AttentionMSE",
    "DistillationLoss",
    "EmbeddingMSE",
    "HardCE",
    "HiddenCosine",
    "HiddenMSE",
    "JSD",
    "LayerDistillationLoss",
    "LogitKD",
    "LogitMSE",
    "LossOutput",
    "MiniLMv1",
    "MiniLMv2",
    "Objective",
    "ReverseKL",
    "Term",
    "attention_distillation_loss",
    "attention_kl",
    "attention_mse",
    "hard_ce",
    "hidden_cosine",
    "hidden_mse",
    "jsd",
    "logit_mse",
    "relation_kl",
    "reverse_kl",
    "soft_kd",
]
