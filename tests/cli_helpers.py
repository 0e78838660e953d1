"""Helpers of the command-line tests: a small run config, and running the command in-process."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import yaml

from kdistill.app.cli import main


def write_run_config(root: Path, name: str = "run.yaml", **sections: Any) -> Path:
    """A config distilling ``root/teacher`` into a 1-layer student on ``root/train.csv`` (tested on
    ``root/test.csv``), into ``root/never``; ``sections`` replace whole sections."""
    config = {
        "teacher": {"path": str(root / "teacher")},
        "student": {"from_teacher": {"num_layers": 1}},
        "data": {"train": str(root / "train.csv"), "test": str(root / "test.csv"), "max_length": 16},
        "objective": {"preset": "hinton", "temperature": 2.0, "alpha": 0.7},
        "training": {"epochs": 1, "batch_size": 8, "lr": 1.0e-3},
        "output": {"dir": str(root / "never")},
        **sections,
    }
    path = root / name
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def run_command(args: list[str]) -> tuple[int, str]:
    """Run ``kdistill ARGS`` in-process; its exit status and stderr (stdout is dropped)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    return code, err.getvalue()


def one_line(args: list[str], *, after_log: bool = False) -> str:
    """Run the command: it must exit 2 with one error line on stderr and no traceback; that line.

    With ``after_log`` the run had started, so the console copy of its log comes first.
    """
    code, err = run_command(args)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert code == 2 and "Traceback" not in err, err
    assert errors == lines[-1:] and (after_log or len(lines) == 1), err
    return lines[-1]


def succeeds(args: list[str]) -> None:
    """Run the command: it must exit 0."""
    code, err = run_command(args)
    assert code == 0, err
