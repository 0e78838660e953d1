"""Which model ``kdistill predict`` and ``kdistill export`` use: a run folder's, or a model folder.

A run folder gives its ``student/``; a run without a student (it fine-tunes the teacher alone)
gives its teacher (``teacher/`` when fine-tuned, else the folder its config names). Anything
else must be a folder written by ``save_pretrained`` (or a hub id). Each case that cannot give
a trained text classifier is one line that says what to give instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdistill.app.run_folder import BEST_DIR, CHECKPOINTS_DIR, LOG_FILE, STUDENT_DIR, TEACHER_DIR, RunFolder
from kdistill.errors import KdistillError
from kdistill.models.gguf import gguf_files, is_gguf_file
from kdistill.models.loading import looks_local

__all__ = ["CAUSAL_LM", "TEXT_CLASSIFICATION", "ChosenModel", "choose_model"]

#: the task whose models ``predict`` and ``export`` serve
TEXT_CLASSIFICATION = "text_classification"
#: the task of every GGUF model (transformers reads GGUF files as causal language models)
CAUSAL_LM = "causal_lm"


@dataclass
class ChosenModel:
    """The model a command works on, and what the run folder (if any) says about it.

    Attributes:
        location: the model folder (or hub id) to load.
        tokenizer: where its tokenizer is (the model's folder unless the run's config names one).
        description: which model it is and where, for the output
            (``"the student of run runs/sst2 (runs/sst2/student)"``).
        data: the run's ``data:`` section (columns, format, encoding, max_length), or None.
        run_folder: the run folder, when the target is a run.
    """

    location: str
    tokenizer: str
    description: str
    data: Any = None
    run_folder: Path | None = None


def _has_model(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def choose_model(target: str, command: str) -> ChosenModel:
    """The model of ``target``: a run folder's student (or teacher, in a run without a student), or a model folder.

    Args:
        target: a run folder, a model folder or a hub id, as the user gave it.
        command: the command's name, for messages (``"predict"``).

    Raises:
        KdistillError: the folder does not exist or holds neither a run nor a model; the run is
            not a text-classification run, or has no student yet.
    """
    path = Path(target).expanduser()
    if looks_local(target) and not path.exists():
        raise KdistillError(
            f"{target!r}: no such run or model folder; give a run folder (a kdistill distill output.dir) "
            "or a model folder written by save_pretrained"
        )
    found = [str(path)] if is_gguf_file(path) else gguf_files(path) if not _has_model(path) else []
    if found:
        raise KdistillError(_gguf_refusal(target, found[0] if path.is_dir() else None, command))
    if path.is_file():
        raise KdistillError(f"{target!r} is a file; give a run folder or a model folder written by save_pretrained")
    if path.is_dir() and RunFolder(path).holds_run():
        return _from_run(path, target, command)
    if path.is_dir() and not _has_model(path):
        raise KdistillError(
            f"{target!r} holds neither a kdistill run nor a model (no config.json): give a run folder or a "
            "model folder written by save_pretrained"
        )
    return ChosenModel(location=target, tokenizer=target, description=f"the model folder {target}")


def _gguf_refusal(target: str, name: str | None, command: str) -> str:
    """Why ``command`` refuses a GGUF model (a file, or ``name`` in the folder ``target``), and what to use."""
    given = f"{target} --gguf-file {name}" if name else target
    use = {
        "predict": f"measure it on a text file with kdistill eval {given} --data FILE.txt",
        "export": f"write it as a plain model folder with kdistill export {given} --format hf",
    }.get(command, f"kdistill eval {given} measures it")
    what = f"{target!r} holds the GGUF file {name}" if name else f"{target!r} is a GGUF file"
    return f"{what}, a causal language model: kdistill {command} works on text classifiers; {use}"


def _from_run(path: Path, target: str, command: str) -> ChosenModel:
    """The model a run folder holds (see :func:`choose_model`)."""
    # the config's schema imports every task (torch, transformers): not at start-up, where
    # ``kdistill predict --help`` only builds its parser
    from kdistill.app.config_loading import load_config

    config = load_config(path / "config.yaml")
    if config.task != TEXT_CLASSIFICATION:
        raise KdistillError(
            f"{target!r} is a {config.task} run: kdistill {command} works on text classifiers "
            f"(task: {TEXT_CLASSIFICATION})"
        )
    student = path / STUDENT_DIR
    if _has_model(student):
        return ChosenModel(str(student), str(student), f"the student of run {target} ({student})", config.data, path)
    if config.student is not None:
        best = path / CHECKPOINTS_DIR / BEST_DIR
        fallback = f", or give its best student so far: kdistill {command} {best}" if _has_model(best) else ""
        raise KdistillError(
            f"run {target!r} holds no student/ yet: the run has not finished (see {path / LOG_FILE}); "
            f"continue it with kdistill distill --resume {target}{fallback}"
        )
    # a run without a student fine-tunes and reports the teacher alone: that teacher is the run's model
    teacher = path / TEACHER_DIR
    if _has_model(teacher):
        return ChosenModel(
            str(teacher),
            str(teacher),
            f"the fine-tuned teacher of run {target} ({teacher}; a run without a student)",
            config.data,
            path,
        )
    section = config.teacher_sections[config.primary_teacher]
    location = section.location()
    return ChosenModel(
        location,
        section.tokenizer or location,
        f"the teacher of run {target} ({location}; a run without a student)",
        config.data,
        path,
    )
