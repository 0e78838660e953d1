"""The kdistill console script."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kdistill import __version__
from kdistill.app.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"kdistill {__version__}"


@pytest.mark.slow
def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "kdistill.app.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "usage: kdistill" in result.stdout
