"""Every Python example of docs/intermediate.md runs as written, in order, in one fresh process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "docs" / "intermediate.md"

# subprocesses or whole runs: left out of a quick `pytest -m "not slow"`
pytestmark = pytest.mark.slow


def test_intermediate_docs_examples_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOCUMENT.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) >= 10, "docs/intermediate.md lost its examples"
    script = tmp_path / "intermediate_examples.py"
    script.write_text("\n".join(blocks), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # the printed layer map and the report are what the page says they are
    assert re.search(r" 2  bert\.encoder\.layer\.1 +<- +4  bert\.encoder\.layer\.3", result.stdout)
    assert "student layer 3 is out of range" in result.stdout
    assert re.search(r"student: 2 layers, hidden 48 \(teacher: 4 layers, hidden 48\).*1\.81x smaller", result.stdout)
