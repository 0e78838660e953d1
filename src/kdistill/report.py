"""Evaluation and reporting: accuracy, macro-F1, agreement, size, CPU speed, curves, report.md.

Everything here works on a plain model and a ``DataLoader`` of dict batches, so ``kdistill
eval``, the end of a ``kdistill distill`` run and the demo measure the same way.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kdistill.capture import call_model, logits_from_output
from kdistill.data import TEACHER_PREFIX

__all__ = [
    "WEIGHT_SUFFIXES",
    "classification_metrics",
    "format_bytes",
    "format_table",
    "measure_speed",
    "model_inputs",
    "plot_curves",
    "predict",
    "check_metrics_file",
    "update_metrics_file",
    "weights_size",
    "write_report",
]

#: files that hold weights, counted by :func:`weights_size`
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def model_inputs(batch: Mapping[str, torch.Tensor], teacher_side: bool = False) -> dict[str, torch.Tensor]:
    """The inputs one model takes from a batch: its own token ids, never the labels.

    With separate teacher tokens, the teacher reads the ``teacher_*`` keys (renamed) and the
    student the others.
    """
    has_teacher_keys = any(key.startswith(TEACHER_PREFIX) for key in batch)
    inputs = {}
    for key, value in batch.items():
        if key in ("labels", "label"):
            continue
        if key.startswith(TEACHER_PREFIX):
            if teacher_side:
                inputs[key[len(TEACHER_PREFIX):]] = value
        elif not (teacher_side and has_teacher_keys):
            inputs[key] = value
    return inputs


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable[Mapping[str, torch.Tensor]],
    *,
    teacher_side: bool = False,
    desc: str = "evaluating",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits of ``model`` over every batch of ``loader``, with a progress bar.

    Returns:
        ``(logits (N, C), labels (N,) or None)``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, labels = [], []
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    for batch in tqdm(loader, desc=desc, total=total, unit="batch", disable=not progress, leave=False, dynamic_ncols=True):
        inputs = {k: v.to(device) for k, v in model_inputs(batch, teacher_side).items()}
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


def weights_size(model: nn.Module | None = None, folder: str | Path | None = None) -> int:
    """Bytes of the weights: the weight files in ``folder`` if it has any, else the parameters' bytes."""
    if folder is not None and Path(folder).is_dir():
        files = [p for p in Path(folder).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
        if files:
            return sum(p.stat().st_size for p in files)
    if model is None:
        return 0
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def folder_size(folder: str | Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


@torch.no_grad()
def measure_speed(
    model: nn.Module, batch: Mapping[str, torch.Tensor], *, teacher_side: bool = False, min_seconds: float = 0.5,
    min_repeats: int = 5, max_repeats: int = 50,
) -> dict[str, float]:
    """CPU latency of one batch (median) and throughput.

    The model runs on the CPU under ``no_grad`` in eval mode, after two warm-up passes, until
    ``min_seconds`` have passed and at least ``min_repeats`` runs were timed.

    Returns:
        ``{"latency_ms": ..., "throughput": examples per second, "batch_size": ...}``.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval().to("cpu")
    inputs = {k: v.cpu() for k, v in model_inputs(batch, teacher_side).items()}
    size = next(iter(inputs.values())).shape[0]
    for _ in range(2):
        call_model(model, inputs)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - started < min_seconds):
        tick = time.perf_counter()
        call_model(model, inputs)
        times.append(time.perf_counter() - tick)
    model.to(device).train(was_training)
    latency = statistics.median(times)
    return {"latency_ms": latency * 1e3, "throughput": size / latency, "batch_size": float(size)}


def format_bytes(count: float) -> str:
    """``12.3 MB`` style (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A plain-text table: ``columns`` are ``(key, header)``; numbers right-aligned."""
    cells = [[header for _, header in columns]]
    for row in rows:
        cells.append([_cell(row.get(key)) for key, _ in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for n, line in enumerate(cells):
        parts = [value.ljust(widths[i]) if i == 0 else value.rjust(widths[i]) for i, value in enumerate(line)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """The same table in Markdown."""
    lines = ["| " + " | ".join(header for _, header in columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


#: the columns of the comparison table (eval, distill and report.md)
COMPARISON_COLUMNS = (
    ("model", "model"),
    ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"),
    ("agreement", "agreement"),
    ("parameters", "parameters"),
    ("size", "weights"),
    ("latency", "latency/batch"),
    ("throughput", "examples/s"),
    ("speedup", "speed-up"),
)


def comparison_rows(models: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows for :data:`COMPARISON_COLUMNS` from ``{"teacher": metrics, "student": metrics}``."""
    rows = []
    for name, metrics in models.items():
        rows.append({
            "model": name,
            "accuracy": metrics.get("accuracy"),
            "macro_f1": metrics.get("macro_f1"),
            "agreement": metrics.get("agreement"),
            "parameters": metrics.get("parameters"),
            "size": format_bytes(metrics["size_bytes"]) if metrics.get("size_bytes") is not None else None,
            "latency": f"{metrics['latency_ms']:.1f} ms" if metrics.get("latency_ms") is not None else None,
            "throughput": f"{metrics['throughput']:,.0f}" if metrics.get("throughput") is not None else None,
            "speedup": f"{metrics['speedup']:.2f}x" if metrics.get("speedup") is not None else None,
        })
    return rows


def plot_curves(
    stages: Sequence[tuple[str, Any]],
    path: str | Path,
    title: str = "kdistill training",
) -> Path:
    """A PNG of every loss part over the optimizer steps, and the validation accuracy.

    Args:
        stages: ``(name, History)`` per training stage, drawn one after the other.
        path: the PNG to write.
        title: the figure's title.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    offset = 0.0
    accuracy_points: list[tuple[float, float]] = []
    for stage_index, (stage_name, history) in enumerate(stages):
        steps = [record["step"] + offset for record in history.steps]
        keys = [key for key in (history.steps[0] if history.steps else {}) if key not in ("step", "epoch", "lr")]
        for key in keys:
            label = key if len(stages) == 1 else f"{stage_name}: {key}"
            style = "-" if key == "loss" else "--"
            loss_axis.plot(steps, [record[key] for record in history.steps], style, label=label, linewidth=1.2)
        for record in history.evals:
            value = record.get("accuracy", record.get("val_accuracy"))
            if value is not None:
                accuracy_points.append((record["step"] + offset, value))
        if history.steps:
            offset = steps[-1]
            if stage_index < len(stages) - 1:
                loss_axis.axvline(offset, color="grey", linewidth=0.8, linestyle=":")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("loss (each part unweighted)")
    loss_axis.set_title("training loss")
    if loss_axis.lines:
        loss_axis.legend(fontsize=8)
    if accuracy_points:
        accuracy_axis.plot(*zip(*accuracy_points), "o-", color="tab:green")
    accuracy_axis.set_xlabel("optimizer step")
    accuracy_axis.set_ylabel("validation accuracy")
    accuracy_axis.set_title("student on the validation split")
    accuracy_axis.set_ylim(0, 1.02)
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _atomic_write(path: Path, text: str) -> None:
    """Write through a temporary file, so a crash never leaves half a file over a whole one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _is_metrics_file(content: Any) -> bool:
    """Whether parsed JSON is a metrics file kdistill wrote (it names kdistill inside)."""
    if not isinstance(content, dict):
        return False
    run = content.get("run")
    return "kdistill" in content or (isinstance(run, dict) and "kdistill_version" in run)


def check_metrics_file(path: str | Path) -> None:
    """Refuse, writing nothing, a metrics file path that holds something kdistill did not write.

    Raises:
        OutputFileError: ``path`` is a folder, or a file that is not a kdistill metrics file.
    """
    from kdistill.errors import OutputFileError

    path = Path(path)
    if path.is_dir():
        raise OutputFileError(f"{str(path)!r} is a folder; give a .json file for the metrics")
    if not path.exists():
        return
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        content = None
    if not _is_metrics_file(content):
        raise OutputFileError(f"{str(path)!r} exists and is not a metrics file kdistill wrote: kdistill never "
                              "replaces a file it did not write; give a new file name")


def update_metrics_file(path: str | Path, updates: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into the metrics JSON file at ``path`` (created if absent), keeping the other keys.

    Returns:
        The whole merged content.

    Raises:
        OutputFileError: ``path`` exists and is not a metrics file kdistill wrote (it is left as it is).
    """
    from kdistill._version import __version__

    path = Path(path)
    check_metrics_file(path)
    content: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    content.update(updates)
    content["kdistill"] = {"version": __version__}
    _atomic_write(path, json.dumps(content, indent=2, default=_json_default) + "\n")
    return content


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_report(path: str | Path, metrics: Mapping[str, Any], *, curves: str | None = None, config_file: str | None = None) -> Path:
    """Write ``report.md``: what was distilled, the comparison table, the training and the files.

    Args:
        path: the Markdown file.
        metrics: the content of ``metrics.json``.
        curves: the PNG's file name, shown inline.
        config_file: the resolved config's file name.
    """
    run = metrics.get("run", {})
    data = metrics.get("data", {})
    lines = [f"# kdistill run: {run.get('name', '')}", ""]
    lines.append(
        f"Teacher `{run.get('teacher', '?')}` distilled into a student with "
        f"{metrics.get('student', {}).get('parameters', 0):,} parameters "
        f"({run.get('compression', float('nan')):.1f}x fewer than the teacher's), "
        f"objective `{run.get('objective', '?')}`, in {run.get('seconds', 0):.0f} s."
    )
    lines += ["", f"## Results on the {data.get('evaluated_on', 'validation')} split "
                  f"({data.get(data.get('evaluated_on', 'validation'), '?')} examples)", ""]
    models = {name: metrics[name] for name in ("teacher", "student") if name in metrics}
    lines.append(markdown_table(comparison_rows(models), COMPARISON_COLUMNS))
    speed = metrics.get("speed", {})
    if speed:
        lines += ["", f"Latency is the median CPU time of one batch of {int(speed.get('batch_size', 0))} examples "
                      f"({speed.get('threads', '?')} threads); weights are the weight files on disk."]
    lines += ["", "## Training", ""]
    for stage in metrics.get("training", {}).get("stages", []):
        losses = ", ".join(f"{k} {v:.4f}" for k, v in stage.get("final", {}).items())
        lines.append(f"- stage `{stage['name']}`: {stage['steps']} steps, objective `{stage['objective']}`; last epoch: {losses}")
    validations = metrics.get("validation", [])
    if validations:
        # the table above measures student/, the last step's student: say so, and where the best one is
        last, best = validations[-1], max(validations, key=lambda r: r.get("accuracy", 0))
        lines.append(f"- `student/` (measured above) is the student after the last step: validation accuracy "
                     f"{last.get('accuracy', float('nan')):.4f} at step {int(last.get('global_step', last['step']))}")
        kept = metrics.get("training", {}).get("best_student")
        where = f"kept in `{kept['folder']}/`" if kept else "not kept (output.save_best is false)"
        lines.append(f"- the best validation accuracy, {best.get('accuracy', float('nan')):.4f} at step "
                     f"{int(best.get('global_step', best['step']))}, is the student {where}")
    lines += ["", f"Data: {', '.join(f'{k} {v:,}' for k, v in data.items() if isinstance(v, int))} examples; "
                  f"labels {', '.join(map(str, data.get('labels', [])))}."]
    if curves:
        lines += ["", f"![training curves]({curves})"]
    lines += ["", "## Files", "",
              f"- `{config_file or 'config.yaml'}`: the resolved config (every default filled in)",
              "- `run.log`: the log", "- `checkpoints/`: the student during training",
              "- `student/`: the final student and its tokenizer, for `AutoModelForSequenceClassification.from_pretrained`",
              "- `metrics.json`: every number above", ""]
    path = Path(path)
    _atomic_write(path, "\n".join(lines))
    return path
