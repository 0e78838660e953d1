"""Ready-made distillation recipes built on the Objective and the two training paths."""

from kdistill.recipes.minilm import minilm_objectives
from kdistill.recipes.tinybert import TinyBERTConfig, TinyBERTDistillation, TinyBERTHistory

__all__ = ["TinyBERTConfig", "TinyBERTDistillation", "TinyBERTHistory", "minilm_objectives"]
