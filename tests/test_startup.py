"""The command starts quickly: its help (and each subcommand's) never imports torch, transformers,
datasets, pandas or accelerate, which take from seconds to a minute to import on a busy machine."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "datasets", "pandas", "accelerate")
PROBE = """
import sys
from kdistill.app.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("HEAVY", sorted(name for name in {heavy!r} if name in sys.modules))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        *([command, "--help"] for command in ("distill", "eval", "predict", "export", "inspect", "demo")),
    ],
    ids=" ".join,
)
def test_the_help_of_the_command_imports_nothing_heavy(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "usage: kdistill" in done.stdout or "kdistill " in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []", done.stdout[-300:]


def test_python_dash_m_kdistill_is_the_command() -> None:
    done = subprocess.run([sys.executable, "-m", "kdistill", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("kdistill "), done.stdout + done.stderr


def test_importing_kdistill_imports_its_public_names_on_first_use() -> None:
    probe = "import sys, kdistill; a = 'torch' in sys.modules; kdistill.Objective; print(a, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.split() == ["False", "True"]
