"""What a run reports: the comparison table, the metrics file and ``report.md``.

``kdistill distill``, ``kdistill eval`` and the demo measure with the task's own metrics and one
definition of size and speed (:func:`measure_models`), and print them with the same table.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from kdistill._version import __version__
from kdistill.errors import OutputFileError
from kdistill.files.writing import check_writable, write_atomic
from kdistill.models.loading import count_parameters
from kdistill.models.speed import MODEL_KEYS, speed_record

__all__ = [
    "WEIGHT_SUFFIXES",
    "check_metrics_file",
    "comparison_table",
    "format_bytes",
    "format_table",
    "markdown_table",
    "measure_models",
    "speed_lines",
    "speed_note",
    "update_metrics_file",
    "weights_size",
    "write_report",
]

logger = logging.getLogger(__name__)

#: files that hold weights, counted by :func:`weights_size`
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


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
    lines = [
        "| " + " | ".join(header for _, header in columns) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


#: the columns of the comparison table (eval, distill and report.md)
def comparison_columns(
    metric_columns: Sequence[tuple[str, str]], throughput_unit: str = "examples/s"
) -> tuple[tuple[str, str], ...]:
    """The comparison table's columns: the model, the task's metrics, then size and speed."""
    return (
        ("model", "model"),
        *metric_columns,
        ("parameters", "parameters"),
        ("size", "weights"),
        ("latency", "latency"),
        ("throughput", throughput_unit),
        ("speedup", "speed-up"),
    )


def comparison_rows(
    models: Mapping[str, Mapping[str, Any]], metric_columns: Sequence[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Rows for :func:`comparison_columns` from ``{"teacher": metrics, "student": metrics}``."""
    rows = []
    for name, metrics in models.items():
        row: dict[str, Any] = {"model": name, **{key: metrics.get(key) for key, _ in metric_columns}}
        row.update(
            parameters=metrics.get("parameters"),
            size=format_bytes(metrics["size_bytes"]) if metrics.get("size_bytes") is not None else None,
            latency=_with_spread("{:.1f} ms", metrics.get("latency_ms"), metrics.get("latency_spread")),
            throughput=f"{metrics['throughput']:,.0f}" if metrics.get("throughput") is not None else None,
            # the teacher's speed-up over itself is 1 in every round: its spread says nothing
            speedup=_with_spread(
                "{:.2f}x", metrics.get("speedup"), metrics.get("speedup_spread") if name != "teacher" else None
            ),
        )
        rows.append(row)
    return rows


def _with_spread(shown: str, value: float | None, spread: float | None) -> str | None:
    """A median with its spread where one was measured: ``2.97x (IQR 6%)``."""
    if value is None:
        return None
    return shown.format(value) + (f" (IQR {spread:.0%})" if spread is not None else "")


def _count(number: Any, unit: str) -> str:
    """``1 thread``, ``2 threads``; ``? threads`` when unknown."""
    if not isinstance(number, int):
        return f"? {unit}s"
    return f"{number} {unit}{'' if number == 1 else 's'}"


def speed_note(task: Any, speed: Mapping[str, Any]) -> str:
    """How the latency and speed-up columns were measured: the task's words (batch size, sequence
    length and threads filled in), the rounds and what "IQR" means, and the machine's load."""
    length = speed.get("sequence_length")
    note = task.speed_note.format(
        batch=int(speed.get("batch_size") or 0),
        length=length if length is not None else "?",
        new_tokens=speed.get("new_tokens", "?"),
        threads=_count(speed.get("threads"), "thread"),
    )
    rounds = speed.get("rounds")
    if rounds:
        note += (
            f"; the models were timed in {rounds} alternating rounds, the speed-up is the median of the "
            "rounds' ratios, and IQR is the interquartile range over the median"
        )
    load = speed.get("load_average")
    if load is not None:
        note += f"; load average {load:.1f} on {_count(speed.get('cpu_count'), 'CPU')}"
    return note


def speed_lines(task: Any, speed: Mapping[str, Any]) -> list[str]:
    """The note on the speed measurement, and its warning when the machine was busy (each one line)."""
    lines = [speed_note(task, speed)]
    if speed.get("warning"):
        lines.append(f"Warning: {speed['warning']}")
    return lines


def comparison_table(metrics: Mapping[str, Any], task: Any, markdown: bool = False) -> str:
    """The teacher-versus-student table of a metrics record (``kdistill distill``, ``eval`` and ``report.md``),
    with the task's metric columns and throughput unit."""
    models = {name: metrics[name] for name in ("teacher", "student") if name in metrics}
    rows = comparison_rows(models, task.metric_columns)
    if list(models) == ["student"]:
        rows[0]["model"] = "model"  # one model measured alone (kdistill eval MODEL) is no one's student
    columns = comparison_columns(task.metric_columns, task.throughput_unit)
    return markdown_table(rows, columns) if markdown else format_table(rows, columns)


def measure_models(
    task: Any,
    models: Mapping[str, nn.Module],
    folders: Mapping[str, Path | None],
    loader: Any,
    probe: Any,
    *,
    progress: bool,
    desc: str,
    log_warning: bool = True,
    options: Any = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Everything the comparison table shows, for each model: the task's metrics on ``loader``,
    parameters, weights on disk (the files in its folder where it has one), and on ``probe``,
    timed in alternating rounds (:mod:`kdistill.models.speed`), the median latency, throughput and
    speed-up with their spreads; and the task's own further measurements on ``probe``
    (``task.extra_measurements``, with ``options``, the run's ``evaluation:`` section: a causal LM's
    student as the teacher's draft model). A busy machine is logged as a warning (``log_warning``; a caller
    that prints the record's warning itself passes False, or the user reads it twice).

    Returns:
        ``(metrics by model, how speed was measured)``: the second is
        :func:`kdistill.models.speed.speed_record` (batch shape, rounds, threads, load, warning).
    """
    results = task.evaluate(models, loader, progress=progress, desc=desc)
    speeds = task.measure_speed(models, probe)
    extra = task.extra_measurements(models, probe, options)
    for name, model in models.items():
        results[name].update(
            parameters=count_parameters(model),
            size_bytes=weights_size(model, folders.get(name)),
            **{key: speeds[name][key] for key in MODEL_KEYS if key in speeds[name]},
            **extra.get(name, {}),
        )
    record = speed_record(speeds)
    if record["warning"] and log_warning:
        logger.warning("speed: %s", record["warning"])
    return results, record


def _is_metrics_file(content: Any) -> bool:
    """Whether parsed JSON is a metrics file kdistill wrote (it names kdistill inside)."""
    if not isinstance(content, dict):
        return False
    run = content.get("run")
    return "kdistill" in content or (isinstance(run, dict) and "kdistill_version" in run)


def check_metrics_file(path: str | Path) -> None:
    """Refuse, writing nothing, a metrics file path that holds something kdistill did not write.

    Raises:
        OutputFileError: ``path`` is a folder, a symbolic link (or its staging name is), or a file
            that is not a kdistill metrics file.
    """
    path = Path(path)
    check_writable(path)
    if path.is_dir():
        raise OutputFileError(f"{str(path)!r} is a folder; give a .json file for the metrics")
    if not path.exists():
        return
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        content = None
    if not _is_metrics_file(content):
        raise OutputFileError(
            f"{str(path)!r} exists and is not a metrics file kdistill wrote: kdistill never "
            "replaces a file it did not write; give a new file name"
        )


def update_metrics_file(path: str | Path, updates: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into the metrics JSON file at ``path`` (created if absent), keeping the other keys.

    Returns:
        The whole merged content.

    Raises:
        OutputFileError: ``path`` exists and is not a metrics file kdistill wrote (it is left as it is).
    """
    path = Path(path)
    check_metrics_file(path)
    content: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    content.update(updates)
    content["kdistill"] = {"version": __version__}
    write_atomic(path, json.dumps(content, indent=2, default=_json_default) + "\n")
    return content


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


#: what each file of a run folder holds, for report.md's list of files
FILE_NOTES = {
    "config.yaml": "the resolved config (every value that ran)",
    "run.log": "the log",
    "checkpoints": "the student during training (and `best-student/`, the best on validation)",
    "student": "the final student and its tokenizer (plain `transformers` loads it)",
    "teacher": "the fine-tuned teacher and its tokenizer",
    "teachers": "each fine-tuned teacher of several, by name, with its tokenizer",
    "metrics.json": "every number above",
    "training_curves.png": "the training curves",
}


def _summary(metrics: Mapping[str, Any]) -> str:
    run = metrics.get("run", {})
    if "student" not in metrics:
        return (
            f"Teacher `{run.get('teacher', '?')}` fine-tuned on the data (no student in this run), "
            f"in {run.get('seconds', 0):.0f} s."
        )
    return (
        f"Teacher `{run.get('teacher', '?')}` distilled into a student with "
        f"{metrics['student'].get('parameters', 0):,} parameters "
        f"({_smaller(run.get('compression'))}), "
        f"objective `{run.get('objective', '?')}`, in {run.get('seconds', 0):.0f} s."
    )


def _smaller(compression: Any) -> str:
    """``2.0x smaller than the teacher, 50% fewer parameters``: a ratio says "smaller", a share "fewer"."""
    if not isinstance(compression, (int, float)) or not compression > 0:
        return "compared with the teacher: unknown"
    return f"{compression:.1f}x smaller than the teacher, {1 - 1 / compression:.0%} fewer parameters"


def _validation_lines(metrics: Mapping[str, Any], primary: str, higher_is_better: bool) -> list[str]:
    """Which student the table measures and where the best one on validation is."""
    validations = [record for record in metrics.get("validation", []) if primary in record]
    if not validations:
        return []
    last = validations[-1]
    best = (max if higher_is_better else min)(validations, key=lambda record: record[primary])
    kept = metrics.get("training", {}).get("best_student")
    where = f"kept in `{kept['folder']}/`" if kept else "not kept (output.save_best is false)"
    return [
        f"- `student/` (measured above) is the student after the last step: validation {primary} "
        f"{last[primary]:.4f} at step {int(last.get('global_step', last['step']))}",
        f"- the best validation {primary}, {best[primary]:.4f} at step "
        f"{int(best.get('global_step', best['step']))}, is the student {where}",
    ]


def _sample_lines(samples: Sequence[Mapping[str, str]]) -> list[str]:
    """Each model's continuation of the same prompts, side by side (a task that generates gives them)."""
    if not samples:
        return []
    lines = ["", "## Samples", "", "Greedy continuations of the same prompts (test split):", ""]
    for number, sample in enumerate(samples, 1):
        lines.append(f"**Prompt {number}**")
        lines += ["", "```text", sample["prompt"].strip(), "```", ""]
        for name in ("teacher", "student"):
            if name in sample:
                lines += [f"*{name}*:", "", "```text", sample[name].strip(), "```", ""]
    return lines


def _pruning_lines(metrics: Mapping[str, Any], primary: str) -> list[str]:
    """One line on the pruned vocabulary of ``student/`` (``student.prune_vocabulary``)."""
    pruning = metrics.get("vocabulary_pruning")
    if not pruning:
        return []
    vocabulary, parameters, size = pruning["vocabulary"], pruning["parameters"], pruning["size_bytes"]
    after, before = pruning["student"][primary], pruning["unpruned_student"][primary]
    teacher = metrics.get("teacher", {}).get("parameters")
    return [
        "",
        f"Vocabulary pruned after training: `student/` keeps the {vocabulary['kept']:,} of {vocabulary['total']:,} "
        f"tokens its training texts use, {parameters['before']:,} -> {parameters['after']:,} parameters "
        f"({format_bytes(size['before'])} -> {format_bytes(size['after'])}"
        + (f"; {teacher / parameters['after']:.1f}x smaller than the teacher" if teacher else "")
        + f"); on the {pruning['evaluated_on']} split, "
        f"re-tokenised, {primary} {after:.4f} (the table's student, unpruned: {before:.4f}); "
        f"{pruning['with_unknown']:.1%} of its examples have an unknown token and "
        f"{pruning['changed']:.1%} other tokens than before pruning.",
    ]


def teachers_lines(metrics: Mapping[str, Any], primary: str) -> list[str]:
    """Several teachers: each one's score, weight and the student's agreement with it, and the
    combination's (what the student learnt from), as a Markdown table; none for one teacher."""
    teachers = metrics.get("teachers")
    if not teachers:
        return []

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, (int, float)) else "-"

    combined = metrics.get("combined", {})
    lines = [
        "",
        "## The teachers",
        "",
        f"The student learnt from their combination: {combined.get('rule', '?')}. The table above compares it "
        f"with the teacher it was built from ({metrics.get('run', {}).get('teacher', '?')}).",
        "",
        f"| teacher | weight | {primary} | student agreement |",
        "|---|---|---|---|",
    ]
    for name, found in teachers.items():
        lines.append(
            f"| {name} | {found.get('weight', 0):.3g} | {cell(found.get(primary))} | "
            f"{cell(found.get('student_agreement'))} |"
        )
    score = combined.get(primary, combined.get("accuracy"))
    lines.append(f"| combined | 1 | {cell(score)} | {cell(combined.get('agreement'))} |")
    return lines


def _choice_lines(metrics: Mapping[str, Any], primary: str) -> list[str]:
    """How the student's layers and width were chosen by measurement (``student.from_teacher``)."""
    choice = metrics.get("student_choice")
    if not choice:
        return []

    def shown(loss: float | None) -> str:
        if loss is None:
            return "-"
        return f"perplexity {math.exp(min(loss, 700)):,.1f}" if primary == "perplexity" else f"loss {loss:.4f}"

    lines = ["", "## How the student was chosen", ""]
    layers = choice.get("layer_choice")
    if layers:
        kept = ", ".join(str(layer) for layer in layers["layer_map"].values())
        lines.append(
            f"- layers: teacher layers {kept} by `{layers['rule']}`, measured on {choice['calibration_tokens']:,} "
            f"training tokens: {layers['why']}; with the uniform copy's layers: {shown(choice.get('uniform_loss'))}."
        )
        scores = ", ".join(f"{number}: {value:.3g}" for number, value in enumerate(layers["scores"], 1))
        lines.append(f"- per-layer scores ({layers['rule']}): {scores}")
    width = choice.get("width")
    if width:
        pruned = ", ".join(f"{name} {before} -> {after}" for name, (before, after) in width.items())
        lines.append(f"- width pruned by activation on the same tokens: {pruned}")
    untrained = choice.get("untrained", {})
    if primary in untrained:
        lines.append(f"- before training, on the evaluation split: {primary} {untrained[primary]:,.4g}")
    return lines


def write_report(path: str | Path, metrics: Mapping[str, Any], *, task: Any, files: Sequence[str] = ()) -> Path:
    """Write ``report.md``: what was distilled, the comparison table, the training and the files.

    Args:
        path: the Markdown file.
        metrics: the content of ``metrics.json``.
        task: the run's task (its metric columns, primary metric and speed measurement).
        files: the run folder's entries, listed with what each holds.
    """
    data = metrics.get("data", {})
    evaluated = data.get("evaluated_on", "validation")
    primary = task.primary_metric
    lines = [
        f"# kdistill run: {metrics.get('run', {}).get('name', '')}",
        "",
        _summary(metrics),
        "",
        f"## Results on the {evaluated} split ({data.get(evaluated, '?')} examples)",
        "",
        comparison_table(metrics, task, markdown=True),
    ]
    speed = metrics.get("speed", {})
    if speed:
        note, *warning = speed_lines(task, speed)
        lines += ["", f"{note}. Weights are the weight files on disk."]
        lines += ["", f"**{warning[0]}**"] if warning else []
    extra = task.extra_lines(metrics)
    lines += ["", *extra] if extra else []
    final = metrics.get("final_validation", {})
    if final and evaluated != "validation":
        shown = ", ".join(f"{name} {values[primary]:.4f}" for name, values in final.items() if primary in values)
        lines += ["", f"On the validation split, {primary}: {shown}."]
    lines += teachers_lines(metrics, primary)
    lines += _pruning_lines(metrics, primary)
    lines += _choice_lines(metrics, primary)
    lines += ["", "## Training", ""]
    tuned = metrics.get("training", {}).get("teacher_finetune")
    if tuned:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in tuned.get("final", {}).items())
        lines.append(
            f"- teacher fine-tuning: {tuned['steps']} steps ({tuned['epochs']} epoch(s), lr {tuned['lr']:g}, "
            f"batch {tuned['batch_size']}); last epoch: {losses}"
        )
    for name, found in metrics.get("teachers", {}).items():
        tuned = found.get("finetune")
        if tuned:
            lines.append(
                f"- teacher {name} fine-tuning: {tuned['steps']} steps ({tuned['epochs']} epoch(s), "
                f"lr {tuned['lr']:g})"
            )
    for stage in metrics.get("training", {}).get("stages", []):
        losses = ", ".join(f"{k} {v:.4f}" for k, v in stage.get("final", {}).items())
        lines.append(
            f"- stage `{stage['name']}`: {stage['steps']} steps, objective `{stage['objective']}`; "
            f"last epoch: {losses}"
        )
    lines += _validation_lines(metrics, primary, task.higher_is_better)
    counts = ", ".join(f"{k} {v:,}" for k, v in data.items() if isinstance(v, int))
    details = ", ".join(
        f"{k} {', '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in data.items()
        if not isinstance(v, int) and k != "evaluated_on"
    )
    lines += ["", f"Data: {counts}" + (f"; {details}." if details else ".")]
    lines += _sample_lines(metrics.get("samples", []))
    if "training_curves.png" in files:
        lines += ["", "![training curves](training_curves.png)"]
    lines += ["", "## Files", ""] + [f"- `{name}`: {FILE_NOTES[name]}" for name in files if name in FILE_NOTES] + [""]
    path = Path(path)
    write_atomic(path, "\n".join(lines))
    return path
