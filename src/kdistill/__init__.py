"""kdistill: knowledge distillation for PyTorch and Hugging Face Transformers.

The public API:

* losses: :class:`DistillationLoss`, :class:`LayerDistillationLoss` and
  :func:`attention_distillation_loss` (the seed's), :class:`Objective` and its terms (logit
  terms, hidden-state, attention and MiniLM relation terms), and the pure functions in
  :mod:`kdistill.losses.functional`;
* training: :func:`distill` / :func:`train_distillation` (plain loop) and
  :class:`DistillationTrainer` (``transformers.Trainer``); :class:`TinyBERTDistillation`;
* models: :func:`make_student`, layer maps (:func:`uniform_map` ...) and :func:`print_layer_map`;
  :func:`measure_width_importance` (a teacher's channels and heads ranked, to prune a narrower
  student from it);
  :func:`prune_vocabulary` (keep only the word embeddings a set of texts uses);
* offline distillation: :class:`TeacherCache` and :func:`with_example_index`;
* runs from a config: :func:`load_config`, :func:`run_distill`, :func:`run_demo` (what the
  ``kdistill`` command calls), and :class:`KdistillError` for a user's mistakes;
* deployment: :func:`export_onnx` (a classifier folder to ONNX, checked against PyTorch and timed).
"""

from typing import TYPE_CHECKING, Any

from kdistill._version import __version__

if TYPE_CHECKING:
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
        TeacherMix,
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
    from kdistill.models.width import WidthImportance, measure_width_importance
    from kdistill.recipes import TinyBERTConfig, TinyBERTDistillation
    from kdistill.tasks.text_classification.onnx.export import export_onnx
    from kdistill.tasks.text_classification.vocab_pruning import VocabularyReport, prune_vocabulary
    from kdistill.train import DistillationTrainer, History, distill, train_distillation

#: where each public name lives; imported on first use (PEP 562), so that ``import kdistill`` and
#: the ``kdistill`` command's ``--help`` and config errors do not pay for torch and transformers
_PUBLIC = {
    "RunConfig": "kdistill.app.config",
    "load_config": "kdistill.app.config_loading",
    "run_demo": "kdistill.app.demo",
    "run_distill": "kdistill.app.run",
    "CacheSpec": "kdistill.cache",
    "TeacherCache": "kdistill.cache",
    "CaptureRequest": "kdistill.capture",
    "Features": "kdistill.capture",
    "with_example_index": "kdistill.data.batch",
    "KdistillError": "kdistill.errors",
    "NonFiniteLossError": "kdistill.errors",
    "AttentionKL": "kdistill.losses",
    "AttentionMSE": "kdistill.losses",
    "DistillationLoss": "kdistill.losses",
    "EmbeddingMSE": "kdistill.losses",
    "HardCE": "kdistill.losses",
    "HiddenCosine": "kdistill.losses",
    "HiddenMSE": "kdistill.losses",
    "JSD": "kdistill.losses",
    "LayerDistillationLoss": "kdistill.losses",
    "LogitKD": "kdistill.losses",
    "LogitMSE": "kdistill.losses",
    "LossOutput": "kdistill.losses",
    "MiniLMv1": "kdistill.losses",
    "MiniLMv2": "kdistill.losses",
    "Objective": "kdistill.losses",
    "ReverseKL": "kdistill.losses",
    "TeacherMix": "kdistill.losses",
    "Term": "kdistill.losses",
    "attention_distillation_loss": "kdistill.losses",
    "describe_layer_map": "kdistill.models.layer_maps",
    "every_kth_map": "kdistill.models.layer_maps",
    "last_k_map": "kdistill.models.layer_maps",
    "print_layer_map": "kdistill.models.layer_maps",
    "resolve_layer_map": "kdistill.models.layer_maps",
    "uniform_map": "kdistill.models.layer_maps",
    "validate_layer_map": "kdistill.models.layer_maps",
    "StudentReport": "kdistill.models.student",
    "make_student": "kdistill.models.student",
    "WidthImportance": "kdistill.models.width",
    "measure_width_importance": "kdistill.models.width",
    "TinyBERTConfig": "kdistill.recipes",
    "TinyBERTDistillation": "kdistill.recipes",
    "export_onnx": "kdistill.tasks.text_classification.onnx.export",
    "VocabularyReport": "kdistill.tasks.text_classification.vocab_pruning",
    "prune_vocabulary": "kdistill.tasks.text_classification.vocab_pruning",
    "DistillationTrainer": "kdistill.train",
    "History": "kdistill.train",
    "distill": "kdistill.train",
    "train_distillation": "kdistill.train",
}

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
    "TeacherMix",
    "Term",
    "TinyBERTConfig",
    "TinyBERTDistillation",
    "VocabularyReport",
    "WidthImportance",
    "__version__",
    "attention_distillation_loss",
    "describe_layer_map",
    "distill",
    "every_kth_map",
    "export_onnx",
    "last_k_map",
    "load_config",
    "make_student",
    "measure_width_importance",
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


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'kdistill' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
