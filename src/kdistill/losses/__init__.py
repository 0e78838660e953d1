"""Distillation losses: pure functions (:mod:`.functional`), terms (:mod:`.terms`), the
:class:`Objective` that combines them, and the seed's :class:`DistillationLoss`."""

from kdistill.losses.functional import hard_ce, jsd, logit_mse, reverse_kl, soft_kd
from kdistill.losses.objective import LossOutput, Objective
from kdistill.losses.seed import DistillationLoss
from kdistill.losses.terms import JSD, HardCE, LogitKD, LogitMSE, ReverseKL, Term

__all__ = [
    "DistillationLoss",
    "HardCE",
    "JSD",
    "LogitKD",
    "LogitMSE",
    "LossOutput",
    "Objective",
    "ReverseKL",
    "Term",
    "hard_ce",
    "jsd",
    "logit_mse",
    "reverse_kl",
    "soft_kd",
]
