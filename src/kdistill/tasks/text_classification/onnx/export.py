"""Export a sequence classifier (a distilled student) to ONNX, checked against PyTorch.

:func:`export_onnx` writes one self-contained folder::

    model.onnx          input_ids, attention_mask[, token_type_ids] [batch, sequence] -> logits [batch, labels]
    model_int8.onnx     with int8=True: the same graph with int8 weights (ONNX Runtime dynamic quantisation)
    config.json         the model's config (id2label names the logits' columns)
    tokenizer files     what turns text into the inputs
    export.json         what was checked and measured (the report :func:`export_onnx` returns)

The graph comes from ``torch.onnx.export`` (the ``torch.export`` based exporter) with the batch
and sequence axes dynamic. Before anything is written, ONNX Runtime runs it on sample texts in two
batches of different sizes and lengths, and its logits must match PyTorch's within ``atol``;
otherwise the export is refused. Int8 weights change the logits by design, so the int8 graph is
checked loosely: its argmax agreement with PyTorch is reported, and flagged when low.

The folder is built under a temporary name and moved into place whole; an existing output folder
is replaced only when it is an earlier export (its manifest says so and names every file in it).
The temporary folder (``.NAME.building-PID``) holds a marker, written first, that names the
export and the process; an export killed midway leaves it behind, and the next export to the
same folder deletes it once it is provably such a leftover (:func:`_remove_leftovers`): its
name, its marker or a complete export's manifest, a process that is gone, and no link inside.
"""

from __future__ import annotations

import contextlib
import glob
import inspect
import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdistill._version import __version__
from kdistill.errors import KdistillError, ModelLoadError, OutputFileError
from kdistill.files.ownership import (
    FILES_MANIFEST,
    link_problem,
    swap_in_folder,
    unowned_files,
    unreplaceable_files,
    write_files_manifest,
)
from kdistill.models.loading import load_tokenizer
from kdistill.models.preflight import usable_positions
from kdistill.tasks.text_classification.labels import logit_labels
from kdistill.tasks.text_classification.models import load_classifier
from kdistill.tasks.text_classification.onnx.latency import compare_latency
from kdistill.tasks.text_classification.onnx.runtime import MISSING_ONNX, SAMPLE_TEXTS, onnx_session, require_onnx

__all__ = [
    "EXPORT_KIND",
    "INT8_FILE",
    "MISSING_ONNX",
    "ONNX_FILE",
    "REPORT_FILE",
    "SAMPLE_TEXTS",
    "export_onnx",
    "model_input_names",
    "onnx_session",
    "require_onnx",
]

ONNX_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
REPORT_FILE = "export.json"
#: the kind an export folder's files manifest records: only such a folder is ever replaced
EXPORT_KIND = "onnx-export"
logger = logging.getLogger("kdistill.export")

#: the marker an export writes first into its staging folder, the proof that the folder is its own
STAGING_MARKER = ".kdistill-staging.json"
STAGING_KIND = "onnx-export-staging"
#: int8 logits that pick another class for more than this share of the sample texts are flagged
INT8_MIN_AGREEMENT = 0.9
#: above this many bytes of weights the graph keeps them in a side file (ONNX files stop at 2 GB)
EXTERNAL_DATA_BYTES = 1_500_000_000


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and the quantiser's chatter (deprecation warnings, "torchvision is not
    installed", "consider pre-processing"): kdistill reports what it checked itself. The quantiser
    logs through the root logger, which would otherwise install a handler on it for good."""
    root = logging.getLogger()
    loggers = [root, logging.getLogger("torch.onnx"), logging.getLogger("torch.export")]
    levels = [logger.level for logger in loggers]
    guard = logging.NullHandler()
    root.addHandler(guard)
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        root.removeHandler(guard)


def model_input_names(model: nn.Module, tokenizer: Any) -> list[str]:
    """The graph's inputs: ``input_ids``, ``attention_mask``, and ``token_type_ids`` where the model
    takes them and the tokenizer gives them (a RoBERTa model accepts them but is never fed any)."""
    accepted = inspect.signature(model.forward).parameters
    given = set(getattr(tokenizer, "model_input_names", ()))
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in accepted and "token_type_ids" in given:
        names.append("token_type_ids")
    return names


class _Logits(nn.Module):
    """The classifier as the graph computes it: token tensors in, logits ``[batch, labels]`` out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return self.model(**inputs).logits


def _sample_batches(tokenizer: Any, names: Sequence[str], max_length: int, texts: Sequence[str]) -> list[dict]:
    """Three batches of ``[batch, sequence]`` int64 tensors: the export example (3 texts padded to 16
    tokens: every axis above 1 and unequal, so that neither is fixed in the graph), then the checks:
    one text alone, and every text padded to the longest (another batch size and another length)."""

    def encode(part: Sequence[str], padding: str | bool, length: int) -> dict[str, torch.Tensor]:
        encoded = tokenizer(list(part), truncation=True, max_length=length, padding=padding, return_tensors="pt")
        return {name: encoded[name].to(torch.int64) for name in names}

    texts = list(texts)
    example = encode((texts * 3)[:3], "max_length", min(16, max_length))
    return [example, encode(texts[:1], False, max_length), encode(texts, "longest", max_length)]


def _agreement(model: nn.Module, session: Any, batches: Sequence[dict]) -> dict[str, Any]:
    """How the graph's logits compare with PyTorch's on ``batches``: the largest absolute difference,
    and the share of texts whose argmax (predicted class) is the same."""
    largest, same, rows = 0.0, 0, 0
    shapes = []
    for batch in batches:
        with torch.inference_mode():
            expected = model(**batch).logits.float().numpy()
        got = session.run(["logits"], {name: tensor.numpy() for name, tensor in batch.items()})[0]
        largest = max(largest, float(np.abs(got - expected).max()))
        same += int((got.argmax(axis=1) == expected.argmax(axis=1)).sum())
        rows += len(expected)
        shapes.append(list(batch["input_ids"].shape))
    return {"max_abs_diff": largest, "argmax_agreement": same / rows, "texts": rows, "batches": shapes}


def _check_output(out: Path) -> None:
    """Refuse an output folder that holds anything but an earlier export.

    Raises:
        OutputFileError: ``out`` is a file, or a folder with files that are not an export's.
    """
    if out.is_symlink():
        raise OutputFileError(
            f"the output {str(out)!r} {link_problem(out)}; give the folder itself, or a new folder for the export"
        )
    if out.is_file():
        raise OutputFileError(f"the output {str(out)!r} is a file; give a folder for the export")
    shown = unreplaceable_files(out, EXPORT_KIND)
    if shown:
        raise OutputFileError(
            f"the output folder {str(out)!r} holds files that are not a kdistill ONNX export ({', '.join(shown)}): "
            "kdistill never replaces what it did not write; give a new or empty folder"
        )


def _export_graph(model: nn.Module, example: dict[str, torch.Tensor], path: Path) -> None:
    """Write the graph of ``model`` on ``example``'s inputs to ``path``, batch and sequence axes dynamic."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    with _quiet():
        torch.onnx.export(
            _Logits(model).eval(),
            (),
            str(path),
            kwargs=example,
            input_names=list(example),
            output_names=["logits"],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in example},
            dynamo=True,
            external_data=weights > EXTERNAL_DATA_BYTES,
            verbose=False,
        )


def _quantize(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation: int8 weights, activations quantised on the fly (no calibration data)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            use_external_data_format=(source.parent / f"{source.name}.data").exists(),
        )


def _staging_folder(out: Path) -> Path:
    """A new staging folder beside ``out``, its marker written before anything else goes in."""
    built = out.parent / f".{out.name}.building-{os.getpid()}"
    built.mkdir(parents=True)
    marker = {"kdistill": STAGING_KIND, "for": out.name, "pid": os.getpid(), "version": __version__}
    (built / STAGING_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    return built


def _process_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs now (one that runs, or another user's, may still be writing)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _is_leftover(folder: Path, out: Path) -> bool:
    """Whether ``folder`` (named like a staging or replaced folder of ``out``) is provably what a killed
    export of ``out`` left: a real folder of a process that is gone, holding no link, and either
    its staging marker naming ``out`` and that process, or a complete export (a manifest of kind
    ``onnx-export`` that names every file in it)."""
    found = re.fullmatch(rf"\.{re.escape(out.name)}\.(building|old)-(\d+)", folder.name)
    if found is None or folder.is_symlink() or not folder.is_dir() or not _process_gone(int(found.group(2))):
        return False
    if any(path.is_symlink() for path in folder.rglob("*")):
        return False
    marker: Any = None
    with contextlib.suppress(OSError, ValueError):
        marker = json.loads((folder / STAGING_MARKER).read_text(encoding="utf-8"))
    if (
        found.group(1) == "building"
        and isinstance(marker, dict)
        and marker.get("kdistill") == STAGING_KIND
        and marker.get("for") == out.name
        and marker.get("pid") == int(found.group(2))
    ):
        return True
    manifest: Any = None
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads((folder / FILES_MANIFEST).read_text(encoding="utf-8"))
    return isinstance(manifest, dict) and manifest.get("kdistill") == EXPORT_KIND and not unowned_files(folder)


def _remove_leftovers(out: Path) -> list[Path]:
    """Delete what earlier exports of ``out`` that were killed midway left beside it; the folders deleted."""
    if not out.parent.is_dir():
        return []
    removed = []
    for folder in sorted(out.parent.glob(f".{glob.escape(out.name)}.*-*")):
        if _is_leftover(folder, out):
            shutil.rmtree(folder)
            removed.append(folder)
            logger.info("deleted %s, left by an export of %s that was stopped midway", folder, out)
    return removed


def export_onnx(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    int8: bool = False,
    atol: float = 1e-4,
    latency: bool = True,
    threads: int | None = None,
    rounds: int = 10,
    length: int = 128,
    texts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Export a sequence classifier folder to ONNX, check it against PyTorch, optionally quantise and time it.

    Args:
        model_dir: a folder written by ``save_pretrained`` holding an
            ``AutoModelForSequenceClassification`` and its tokenizer (a run's ``student/``).
        out_dir: the export folder to write (new, empty, or an earlier export, which is replaced).
        int8: also write ``model_int8.onnx`` (dynamic int8 quantisation) and report its agreement.
        atol: the largest difference allowed between the ONNX Runtime and PyTorch logits.
        latency: time PyTorch and ONNX Runtime (and int8) at batch 1 and 32 (see
            :func:`kdistill.tasks.text_classification.onnx.latency.compare_latency`).
        threads: CPU threads for the timing (torch and ONNX Runtime alike); default torch's current number.
        rounds: alternating timing rounds.
        length: tokens per text in the timed batches (capped by the model's positions).
        texts: the sample texts of the checks (default :data:`SAMPLE_TEXTS`).

    Returns:
        The report, also written to ``export.json``: files, inputs, labels, ``checks`` (per graph:
        ``max_abs_diff``, ``argmax_agreement``, ``texts``, ``batches``) and ``latency``.

    Raises:
        KdistillError: the ONNX packages are missing; the model cannot be loaded or exported; the
            ONNX logits differ from PyTorch's by more than ``atol`` (nothing is written).
        OutputFileError: ``out_dir`` holds files that are not an earlier export.
    """
    require_onnx()
    out = Path(out_dir)
    _check_output(out)
    location = str(model_dir)
    fix = "export a classifier trained for its labels (a run's student/)"
    model = load_classifier(location, "model").trained("model", fix)
    # the export's config.json names the logits for whatever serves it: refused where it cannot say which is which
    classes = logit_labels(model.config, f"the model's config.json ({location})", read_file=True)
    if (problem := classes.refusal()) is not None:
        raise ModelLoadError(f"{problem}; nothing was exported")
    classes.warn()
    tokenizer = load_tokenizer(location, "model")
    names = model_input_names(model, tokenizer)
    max_length = min(length, usable_positions(model) or length)
    batches = _sample_batches(tokenizer, names, min(128, max_length), texts or SAMPLE_TEXTS)
    _remove_leftovers(out)
    built = _staging_folder(out)
    try:
        report = _build(
            model, tokenizer, names, batches, built, location=location, labels=classes.names, int8=int8, atol=atol
        )
        if latency:
            graphs = {"onnxruntime": built / ONNX_FILE, **({"onnxruntime int8": built / INT8_FILE} if int8 else {})}
            report["latency"] = compare_latency(
                model, graphs, tokenizer, names, length=max_length, rounds=rounds, threads=threads
            )
        (built / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        # from here the files manifest proves the folder: the staging marker is not part of the export
        write_files_manifest(built, EXPORT_KIND, leave_out=[STAGING_MARKER])
        (built / STAGING_MARKER).unlink()
        swap_in_folder(built, out)
    finally:
        if built.exists():
            shutil.rmtree(built)
    return report


def _build(
    model: nn.Module,
    tokenizer: Any,
    names: list[str],
    batches: list[dict],
    folder: Path,
    *,
    location: str,
    labels: list[str],
    int8: bool,
    atol: float,
) -> dict[str, Any]:
    """Write the graph(s), the config and the tokenizer into ``folder`` and check them; the report."""
    try:
        _export_graph(model, batches[0], folder / ONNX_FILE)
    except Exception as error:  # the exporter raises many kinds; each means "this model does not export"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise KdistillError(
            f"torch.onnx.export cannot export {location!r} ({type(model).__name__}): {first}"
        ) from None
    checks = {"onnxruntime": _agreement(model, onnx_session(folder / ONNX_FILE), batches[1:])}
    found = checks["onnxruntime"]
    if not found["max_abs_diff"] <= atol:  # also refuses NaN
        raise KdistillError(
            f"the ONNX graph of {location!r} does not compute what the model computes: its logits differ from "
            f"PyTorch's by up to {found['max_abs_diff']:.2e} (tolerance {atol:g}) on sample batches of "
            f"{found['texts']} rows; nothing was written (a larger tolerance: --atol / atol=)"
        )
    files = [ONNX_FILE]
    if int8:
        _quantize(folder / ONNX_FILE, folder / INT8_FILE)
        checks["onnxruntime int8"] = _agreement(model, onnx_session(folder / INT8_FILE), batches[1:])
        checks["onnxruntime int8"]["flagged"] = checks["onnxruntime int8"]["argmax_agreement"] < INT8_MIN_AGREEMENT
        files.append(INT8_FILE)
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {
        "kdistill": {"version": __version__, "export": EXPORT_KIND},
        "source": location,
        "architecture": type(model).__name__,
        "files": {name: (folder / name).stat().st_size for name in files},
        "inputs": {name: ["batch", "sequence"] for name in names},
        "outputs": {"logits": ["batch", len(labels)]},
        "labels": labels,
        "atol": atol,
        "checks": checks,
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
