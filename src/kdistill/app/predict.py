"""``kdistill predict``: a trained text classifier's labels and probabilities for texts or a data file.

The model is a run folder's student (or its teacher, in a run without a student) or any model
folder (:mod:`kdistill.app.model_folder`). Inference is ``transformers.pipeline("text-classification")``
around the model and tokenizer kdistill loaded (so a folder without a trained head is refused in
one line rather than predicting noise): the probabilities are the pipeline's own (softmax for a
single-label classifier), batched, with a progress bar. A data file is read with the reader
``kdistill eval`` uses (a run's columns and format, or ``--text-column`` / ``--format``), and the
predictions go to a CSV file: the text, the predicted label, one probability column per label.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kdistill.app.arguments import (
    add_data_flags,
    add_gguf_flag,
    as_eval_flags,
    data_flag_values,
    file_argument,
    model_argument,
    positive_int,
    resolve_model,
)
from kdistill.app.model_folder import TEXT_CLASSIFICATION, ChosenModel, choose_model
from kdistill.app.run_folder import METRICS_FILE
from kdistill.errors import DataError, KdistillError, OutputFileError
from kdistill.files.ownership import (
    check_replaceable_marked_file,
    is_marked_file,
    marker_path,
    write_marked_file,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "PREDICTED_COLUMN",
    "PREDICTIONS_KIND",
    "PROBABILITY_PREFIX",
    "Predictions",
    "add_parser",
    "check_predictions_output",
    "is_predictions_file",
    "load_trained_classifier",
    "predict_probabilities",
    "run",
    "write_predictions",
]

#: the column of the predicted label
PREDICTED_COLUMN = "predicted_label"
#: the prefix of the probability columns, one per label: ``prob_<label>``
PROBABILITY_PREFIX = "prob_"
#: the kind of file the marker beside a predictions file names (``preds.csv.kdistill.json``)
PREDICTIONS_KIND = "predictions"
#: the predictions file of ``--data`` without ``--output``
DEFAULT_OUTPUT = "predictions.csv"
#: the label column of the data section a file is read with: predictions read no labels
UNREAD_LABEL = "kdistill_unread_label"
#: tokens per text when neither the run nor --max-length says (most encoders read 512)
DEFAULT_MAX_LENGTH = 512

HELP = """\
Predict labels with a trained text classifier: a run folder's student (or its teacher, in a run
without a student) or a model folder. --text prints each text's label and probability; --data
reads a file as kdistill eval does (the run's columns and format, or --text-column and --format)
and writes a CSV: the text, the predicted label and one probability column per label.
"""

EXAMPLES = """\
examples:
  kdistill predict runs/sst2 --text "a lovely, moving film" --text "dull and far too long"
  kdistill predict runs/sst2 --data reviews.csv --output preds.csv
  kdistill predict models/student --data reviews.jsonl --text-column review --batch-size 64
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``predict`` command: the model or run, the texts or the data file, and the output file."""
    predict = commands.add_parser(
        "predict",
        help="labels and probabilities from a run's student or a classifier folder",
        description=HELP,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument(
        "model", metavar="RUN_OR_MODEL", type=model_argument, help="a run folder, a model folder or a hub id"
    )
    add_gguf_flag(predict, "RUN_OR_MODEL")  # refused, saying what to use: a GGUF model is a causal LM
    given = predict.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", action="append", metavar="TEXT", help="a text to classify (repeat for more)")
    given.add_argument(
        "--data",
        metavar="FILE",
        type=file_argument,
        help="a CSV/TSV/JSON/JSONL/Parquet file of texts (labels not needed)",
    )
    predict.add_argument(
        "--output",
        metavar="FILE.csv",
        type=file_argument,
        help=f"the predictions CSV (default with --data: ./{DEFAULT_OUTPUT})",
    )
    add_data_flags(predict, labels=False)
    predict.add_argument("--batch-size", type=positive_int, default=32, help="texts per batch (default 32)")
    predict.add_argument(
        "--max-length", type=positive_int, help=f"tokens per text (default: a run's, else {DEFAULT_MAX_LENGTH})"
    )
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass
class Predictions:
    """A classifier's predictions for some texts.

    Attributes:
        texts: the (first) texts, N of them.
        pairs: the second texts of sentence pairs, or None.
        labels: the class names in id order, C of them.
        probabilities: ``[N, C]`` float array; row i holds text i's probability of each class.
    """

    texts: list[str]
    pairs: list[str] | None
    labels: list[str]
    probabilities: np.ndarray

    def predicted(self) -> list[str]:
        """The most probable label of each text (N names)."""
        return [self.labels[i] for i in self.probabilities.argmax(axis=1).tolist()]


def run(args: argparse.Namespace) -> int:
    """Run ``kdistill predict``; returns the exit status (errors are raised as :class:`KdistillError`)."""
    output = Path(args.output) if args.output else (Path(DEFAULT_OUTPUT) if args.data else None)
    if output is not None:
        # refused before any loading: a taken file name costs nothing
        check_predictions_output(output)
    chosen = choose_model(resolve_model(args.model, args.gguf_file, "RUN_OR_MODEL"), "predict")
    section = _data_section(chosen, args) if args.data else None
    if section is not None:
        texts, pairs = _read_texts(args.data, section)
    else:
        texts, pairs = _given_texts(args.text), None
    model, tokenizer = load_trained_classifier(chosen)
    _logit_labels(model, chosen).warn()
    max_length = _max_length(model, tokenizer, chosen, args.max_length)
    probabilities = predict_probabilities(
        model,
        tokenizer,
        texts,
        pairs,
        batch_size=args.batch_size,
        max_length=max_length,
        progress=not args.no_progress,
    )
    predictions = Predictions(texts, pairs, _label_names(model, chosen), probabilities)
    print(f"model: {chosen.description}; labels: {', '.join(predictions.labels)}")
    if args.text:
        print(_text_table(predictions))
    if output is not None:
        text_column, pair_column = _column_names(section)
        write_predictions(output, predictions, text_column=text_column, pair_column=pair_column)
        counts = dict(zip(*np.unique(predictions.predicted(), return_counts=True)))
        shown = ", ".join(f"{label} {int(counts.get(label, 0)):,}" for label in predictions.labels)
        print(f"{len(texts):,} predictions written to {output} ({shown}; its marker: {marker_path(output)})")
    return 0


def _read_texts(path: str, section: Any) -> tuple[list[str], list[str] | None]:
    """The texts (and second texts) of a data file, read as ``kdistill eval`` reads it.

    Raises:
        DataError: the file cannot be read, or lacks a column; the message names the flags
            (``--text-column``) where the reader names config keys (``data.text_column``).
    """
    from kdistill.tasks.text_classification.reading import load_table

    try:
        table = load_table(path, section, labelled=False)
    except KdistillError as error:
        raise type(error)(as_eval_flags(str(error))) from None
    return table.texts, table.pairs


def _given_texts(texts: list[str]) -> list[str]:
    for number, text in enumerate(texts, 1):
        if not text.strip():
            raise DataError(f"--text number {number} is empty; give each --text a text to classify")
    return list(texts)


def _data_section(chosen: ChosenModel, args: argparse.Namespace) -> Any:
    """The ``data:`` section to read ``--data`` with: the run's (else the defaults), with the flags applied.

    Raises:
        KdistillError: a flag's value is invalid (named as the flag).
    """
    from pydantic import ValidationError

    from kdistill.tasks import get_task

    section = get_task(TEXT_CLASSIFICATION).data_section
    base = chosen.data.model_dump() if chosen.data is not None else {}
    flags = data_flag_values(args)
    # the file to predict on takes the place of the run's training file; its other splits do not apply
    values = {**base, "train": args.data, "hub": None, "validation": None, "test": None, "augment": None}
    values.update(flags)
    # predictions need no labels, but the section checks that the label column is among the
    # columns a header-less file or a line pattern names: give it one nobody reads
    given = {"columns": values.get("columns"), "line_pattern": values.get("line_pattern")}
    checked = dict(values, label_column=UNREAD_LABEL)
    if given["columns"] is not None:
        checked["columns"] = [*given["columns"], UNREAD_LABEL]
    if given["line_pattern"] is not None:
        checked["line_pattern"] = f"{given['line_pattern']}(?P<{UNREAD_LABEL}>)"
    try:
        return section.model_validate(checked).model_copy(update=given)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "the data options"
        message = first["msg"].removeprefix("Value error, ")
        # the message speaks of what the user gave, not of the unread label added above
        message = message.replace(f"(?P<{UNREAD_LABEL}>)", "").replace(f", {UNREAD_LABEL}", "")
        raise KdistillError(f"{flag}: {message}") from None


def load_trained_classifier(chosen: ChosenModel) -> tuple[nn.Module, Any]:
    """The chosen model (in eval mode) and its tokenizer, refused when its classification head is untrained.

    Raises:
        ModelLoadError: the folder holds no model, or one whose head was never trained (its
            predictions would be noise).
    """
    from kdistill.models.loading import load_tokenizer
    from kdistill.tasks.text_classification.models import load_classifier

    fix = "give a classifier trained for its labels (a run folder, or a model saved with its trained head)"
    model = load_classifier(chosen.location, "model").trained("model", fix)
    return model, load_tokenizer(chosen.tokenizer, "model")


def _max_length(model: nn.Module, tokenizer: Any, chosen: ChosenModel, given: int | None) -> int:
    """Tokens per text: ``--max-length``, else the run's, else what the model and tokenizer read."""
    from kdistill.models.preflight import check_max_length, usable_positions

    if given is not None:
        check_max_length(given, [("model", model)], "--max-length")
        return given
    limits = [chosen.data.max_length if chosen.data is not None else DEFAULT_MAX_LENGTH]
    limits.append(usable_positions(model) or limits[0])
    # a tokenizer saved without a limit says 10**30
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        limits.append(limit)
    return min(limits)


def predict_probabilities(
    model: nn.Module,
    tokenizer: Any,
    texts: list[str],
    pairs: list[str] | None = None,
    *,
    batch_size: int = 32,
    max_length: int = DEFAULT_MAX_LENGTH,
    progress: bool = True,
) -> np.ndarray:
    """Each text's probability of each class, through ``transformers.pipeline("text-classification")``.

    Args:
        model: a sequence classifier (``AutoModelForSequenceClassification``), in eval mode.
        tokenizer: its tokenizer.
        texts: N texts.
        pairs: N second texts for a sentence-pair classifier, or None.
        batch_size: texts per forward pass (each batch is padded to its longest text).
        max_length: tokens per text; longer texts are truncated.
        progress: show a progress bar.

    Returns:
        ``[N, C]`` float32 array in the order of the model's logits (logit j is ``config.id2label[j]``,
        as transformers reads it): the pipeline's scores, softmax of the logits for a single-label
        classifier.

    Raises:
        ModelLoadError: the model's ``id2label`` gives two classes the same name, or has a key
            that is not a logit number.
    """
    from transformers import pipeline

    from kdistill.tasks.text_classification.labels import logit_labels

    names = logit_labels(model.config).names
    column = {name: i for i, name in enumerate(names)}
    with _every_logit_named(model, names):
        classifier = pipeline("text-classification", model=model, tokenizer=tokenizer, device=model.device)
        probabilities = _pipeline_scores(classifier, texts, pairs, column, batch_size, max_length, progress)
    return probabilities


@contextmanager
def _every_logit_named(model: nn.Module, names: list[str]) -> Iterator[None]:
    """The model with an ``id2label`` that names every logit while the pipeline runs: a logit the
    config leaves unnamed (ids that are not 0 to C-1) is LABEL_j, where the pipeline itself would
    stop at it with a KeyError; every other logit keeps its name, so the scores are the pipeline's."""
    config = model.config
    saved, complete = config.id2label, dict(enumerate(names))
    if saved == complete:
        yield
        return
    config.id2label = complete
    try:
        yield
    finally:
        config.id2label = saved


def _pipeline_scores(
    classifier: Any,
    texts: list[str],
    pairs: list[str] | None,
    column: dict[str, int],
    batch_size: int,
    max_length: int,
    progress: bool,
) -> np.ndarray:
    """The pipeline's score of each class for each text, as ``[N, C]`` in logit order."""
    from tqdm.auto import tqdm

    inputs: list[Any] = texts if pairs is None else [{"text": t, "text_pair": p} for t, p in zip(texts, pairs)]
    probabilities = np.zeros((len(texts), len(column)), dtype=np.float32)
    # the pipeline batches internally; calling it a chunk at a time gives the progress bar its steps
    chunk = batch_size * 8
    with tqdm(total=len(inputs), desc="predicting", unit="text", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(inputs), chunk):
            part = inputs[start : start + chunk]
            results = classifier(part, batch_size=batch_size, top_k=None, truncation=True, max_length=max_length)
            for row, scores in enumerate(results, start):
                for score in scores:
                    probabilities[row, column[str(score["label"])]] = score["score"]
            bar.update(len(part))
    return probabilities


def _logit_labels(model: nn.Module, chosen: ChosenModel) -> Any:
    """The model's :class:`~kdistill.tasks.text_classification.labels.LogitLabels` (as transformers
    reads its config), naming its folder in messages."""
    from kdistill.tasks.text_classification.labels import logit_labels

    return logit_labels(model.config, f"the model's config.json ({chosen.location})", read_file=True)


def _label_names(model: nn.Module, chosen: ChosenModel) -> list[str]:
    """The class names in the order of the logits: the model's ``id2label`` (logit j is
    ``id2label[j]``); where it holds only LABEL_0, LABEL_1 ... the run's recorded labels
    (``metrics.json``), which name the same classes in the same order."""
    from kdistill.tasks.text_classification.labels import is_default_names

    names = _logit_labels(model, chosen).names
    if not is_default_names(dict(enumerate(names))) or chosen.run_folder is None:
        return names
    try:
        recorded = json.loads((chosen.run_folder / METRICS_FILE).read_text(encoding="utf-8"))["data"]["labels"]
    except (OSError, ValueError, KeyError, TypeError):
        return names
    if isinstance(recorded, list) and len(recorded) == len(names) and len(set(map(str, recorded))) == len(names):
        return [str(name) for name in recorded]
    return names


def _text_table(predictions: Predictions) -> str:
    """One line per text: the label, its probability and the text."""
    predicted = predictions.predicted()
    best = predictions.probabilities.max(axis=1)
    width = max(len("label"), *(len(label) for label in predicted))
    lines = [f"{'label':<{width}}  probability  text"]
    for label, probability, text in zip(predicted, best.tolist(), predictions.texts):
        lines.append(f"{label:<{width}}  {probability:<11.4f}  {' '.join(text.split())}")
    return "\n".join(lines)


def _column_names(section: Any) -> tuple[str, str | None]:
    """The names of the text columns in the predictions file: the input's own (``text`` for --text)."""
    if section is None:
        return "text", None
    text = section.text_column if isinstance(section.text_column, str) else "text"
    return text, section.text_pair_column


def is_predictions_file(path: Path) -> bool:
    """Whether the file at ``path`` is a predictions CSV kdistill wrote: its marker beside it,
    ``FILE.kdistill.json``, names it as kdistill's predictions and the SHA-256 of its very bytes (a
    data file, a file whose header merely looks like kdistill's, or a predictions file a person
    edited, does not match)."""
    return is_marked_file(path, PREDICTIONS_KIND)


def check_predictions_output(path: Path) -> None:
    """Refuse, before any work, an output path kdistill may not write (see :func:`write_predictions`).

    Raises:
        OutputFileError: the name does not end in .csv, or the file exists and kdistill did not write it.
    """
    if path.suffix.lower() != ".csv":
        raise OutputFileError(f"--output {str(path)!r}: the predictions are CSV; give a file name ending in .csv")
    check_replaceable_marked_file(path, PREDICTIONS_KIND, "a predictions file", "--output")


def write_predictions(
    path: str | os.PathLike[str],
    predictions: Predictions,
    *,
    text_column: str = "text",
    pair_column: str | None = None,
) -> Path:
    """Write ``predictions`` as CSV (UTF-8): the text (and pair), ``predicted_label``, ``prob_<label>`` per label.

    The file is written whole through a temporary file, and only where nothing is, or a
    predictions file kdistill wrote. The CSV holds the predictions alone (any CSV reader reads
    it); beside it goes ``FILE.kdistill.json``, its marker: the SHA-256 of the file, its rows,
    columns and labels, and the kdistill version (see :func:`is_predictions_file`).

    Raises:
        OutputFileError: ``path`` holds a file kdistill did not write (it is left as it is).
    """
    path = Path(path)
    check_predictions_output(path)
    header = [text_column, *([pair_column or "text_pair"] if predictions.pairs is not None else [])]
    header += [PREDICTED_COLUMN, *(f"{PROBABILITY_PREFIX}{label}" for label in predictions.labels)]

    def write(handle: Any) -> None:
        writer = csv.writer(handle)
        writer.writerow(header)
        predicted = predictions.predicted()
        for row, text in enumerate(predictions.texts):
            pair = [predictions.pairs[row]] if predictions.pairs is not None else []
            scores = [f"{float(p):.6g}" for p in predictions.probabilities[row]]
            writer.writerow([text, *pair, predicted[row], *scores])

    details = {"rows": len(predictions.texts), "columns": header, "labels": list(predictions.labels)}
    write_marked_file(path, PREDICTIONS_KIND, write, details)
    return path
