"""kdistill: knowledge distillation for PyTorch and Hugging Face Transformers.

The public API:

* losses: :class:`DistillationLoss` (the seed's), :class:`Objective` and its terms, and the
  pure functions in :mod:`kdistill.losses.functional`;
* training: :func:`distill` / :func:`train_distillation` (plain loop) and
  :class:`DistillationTrainer` (``transformers.Trainer``);
* offline distillation: :class:`TeacherCache` and :func:`with_example_index`.
"""

from kdistill._version import __version__
from kdistill.batch import with_example_index
from kdistill.cache import CacheSpec, TeacherCache
from kdistill.capture import Features
from kdistill.losses import (
    JSD,
    DistillationLoss,
    HardCE,
    LogitKD,
    LogitMSE,
    LossOutput,
    Objective,
    ReverseKL,
    Term,
)
from kdistill.train import DistillationTrainer, History, distill, train_distillation

__all__ = [
    "JSD",
    "CacheSpec",
    "DistillationLoss",
    "DistillationTrainer",
    "Features",
    "HardCE",
    "History",
    "LogitKD",
    "LogitMSE",
    "LossOutput",
    "Objective",
    "ReverseKL",
    "TeacherCache",
    "Term",
    "__version__",
    "distill",
    "train_distillation",
    "with_example_index",
]
