"""Both training paths: the plain loop (:mod:`.loop`) and the ``transformers.Trainer`` subclass (:mod:`.trainer`)."""

from kdistill.train.loop import History, distill, train_distillation
from kdistill.train.trainer import DistillationTrainer

__all__ = ["DistillationTrainer", "History", "distill", "train_distillation"]
