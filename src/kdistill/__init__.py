"""kdistill: knowledge distillation for PyTorch and Hugging Face Transformers.

The public API:

* losses: :class:`DistillationLoss`, :class:`LayerDistillationLoss` and
  :func:`attention_distillation_loss` (the seed's), :class:`Objective` and its terms (logit
  terms, hidden-state, attention and MiniLM relation terms), and the pure functions in
  :mod:`kdistill.losses.functional`;
* training: :func:`distill` / :func:`train_distillation` (plain loop) and
  :class:`DistillationTrainer` (``transformers.Trainer``); :class:`TinyBERTDistillation`;
* models: :func:`make_student`, layer maps (:func:`uniform_map` ...) and :func:`print_layer_map`;
  :func:`prune_vocabulary` (keep only the word embeddings a set of texts uses);
* offline distillation: :class:`TeacherCache` and :func:`with_example_index`;
* runs from a config: :func:`load_config`, :func:`run_distill`, :func:`run_demo` (what the
  ``kdistill`` command calls), and :class:`KdistillError` for a user's mistakes;
* deployment: :func:`export_onnx` (a classifier folder to ONNX, checked against PyTorch and timed).
"""

from kdistill._version import __version__
from kdistill.app.config import RunConfig
from kdistill.app.config_loading import load_config
from kdistill.app.demo import run_demo
from kdistill.app.run import run_distill
from kdistill.cache import CacheSpec, TeacherCache
from kdistill.capture import CaptureRequest, Features
from kdistill.data.batch import with_example_index
from kdistill.errors import KdistillError, NonFiniteLossError
from kdistill.losses import (
    JSD,
    AttentionKL,
    AttentionMSE,
    DistillationLoss,
    EmbeddingMSE,
    HardCE,
    HiddenCosine,
    HiddenMSE,
    LayerDistillationLoss,
    LogitKD,
    LogitMSE,
    LossOutput,
    MiniLMv1,
    MiniLMv2,
    Objective,
    ReverseKL,
    Term,
    attention_distillation_loss,
)
from kdistill.models.layer_maps import (
    describe_layer_map,
    every_kth_map,
    last_k_map,
    print_layer_map,
    resolve_layer_map,
    uniform_map,
    validate_layer_map,
)
from kdistill.models.student import StudentReport, make_student
from kdistill.recipes import TinyBERTConfig, TinyBERTDistillation
from kdistill.tasks.text_classification.onnx.export import export_onnx
from kdistill.tasks.text_classification.vocab_pruning import VocabularyReport, prune_vocabulary
from kdistill.train import DistillationTrainer, History, distill, train_distillation

__all__ = [
    "JSD",
    "AttentionKL",
    "AttentionMSE",
    "CacheSpec",
    "CaptureRequest",
    "DistillationLoss",
    "DistillationTrainer",
    "EmbeddingMSE",
    "Features",
    "HardCE",
    "HiddenCosine",
    "HiddenMSE",
    "History",
    "KdistillError",
    "LayerDistillationLoss",
    "LogitKD",
    "LogitMSE",
    "LossOutput",
    "MiniLMv1",
    "MiniLMv2",
    "NonFiniteLossError",
    "Objective",
    "ReverseKL",
    "RunConfig",
    "StudentReport",
    "TeacherCache",
    "Term",
    "TinyBERTConfig",
    "TinyBERTDistillation",
    "VocabularyReport",
    "__version__",
    "attention_distillation_loss",
    "describe_layer_map",
    "distill",
    "every_kth_map",
    "export_onnx",
    "last_k_map",
    "load_config",
    "make_student",
    "print_layer_map",
    "prune_vocabulary",
    "resolve_layer_map",
    "run_demo",
    "run_distill",
    "train_distillation",
    "uniform_map",
    "validate_layer_map",
    "with_example_index",
]
