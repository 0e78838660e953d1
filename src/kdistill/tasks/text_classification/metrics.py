"""Measuring classifiers: their logits over a loader, accuracy, macro-F1 and agreement."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kdistill.capture.features import logits_from_output
from kdistill.models.anatomy import call_model

__all__ = ["agreement", "classification_metrics", "predict"]


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable[Mapping[str, torch.Tensor]],
    *,
    desc: str = "evaluating",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits of ``model`` over every batch of ``loader`` (labels never fed to it), with a progress bar.

    Returns:
        ``(logits (N, C), labels (N,) or None)``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, labels = [], []
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in tqdm(
        loader, desc=desc, total=total, unit="batch", disable=not progress, leave=False, dynamic_ncols=True
    ):
        inputs = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "label", "kd_index")}
        logits.append(logits_from_output(call_model(model, inputs)).float().cpu())
        if "labels" in batch:
            labels.append(batch["labels"].cpu())
    model.train(was_training)
    all_logits = torch.cat(logits).numpy() if logits else np.zeros((0, 0))
    return all_logits, (torch.cat(labels).numpy() if labels else None)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_labels: int | None = None) -> dict[str, float]:
    """Accuracy and macro-F1 (every class weighs the same, present or predicted).

    Args:
        logits: ``(N, C)``.
        labels: ``(N,)`` class ids.
        num_labels: classes to average over; default ``C``.
    """
    from sklearn.metrics import f1_score

    predictions = logits.argmax(-1)
    classes = list(range(num_labels if num_labels is not None else logits.shape[-1]))
    return {
        "accuracy": float((predictions == labels).mean()) if len(labels) else float("nan"),
        "macro_f1": float(f1_score(labels, predictions, labels=classes, average="macro", zero_division=0)),
    }


def agreement(student_logits: np.ndarray, teacher_logits: np.ndarray) -> float:
    """The fraction of examples where the student predicts the teacher's class."""
    return float((student_logits.argmax(-1) == teacher_logits.argmax(-1)).mean())
