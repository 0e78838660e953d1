"""docs/results.md shows the quality benchmark's tables exactly as its results files hold them."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("quality_*.json"))


def _quality_script():
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_results_doc_tables_match_the_results_files(path: Path) -> None:
    results = json.loads(path.read_text(encoding="utf-8"))
    task = path.stem.removeprefix("quality_")
    document = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- table {task} -->\n(.*?)\n<!-- /table {task} -->", document, re.DOTALL)
    assert found, f"docs/results.md has no table for {task}"
    assert found.group(1).strip() == _quality_script().markdown_table(results).strip(), (
        f"regenerate it: python benchmarks/quality.py ../shared/data --task {task} --table"
    )


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_results_files_have_the_promised_shape(path: Path) -> None:
    results = json.loads(path.read_text(encoding="utf-8"))
    rows = results["rows"]
    assert rows[0]["recipe"] == "teacher"
    for row in rows:
        assert {"student", "recipe", "metric_mean", "metric_std", "retention", "speedup", "params"} <= set(row)
        assert 0.0 <= row["metric_mean"] <= 1.0 and row["metric_std"] >= 0.0
    for student in {row["student"] for row in rows} - {"teacher"}:
        assert any(row["student"] == student and row["recipe"] == "no_teacher" for row in rows), student


# the several-teachers quality benchmark per task (multi_teacher_cost_cpu.json is another benchmark's)
MULTI_TEACHER = [
    path
    for path in sorted((ROOT / "benchmarks" / "results").glob("multi_teacher_*.json"))
    if not path.stem.startswith("multi_teacher_cost")
]


@pytest.mark.parametrize("path", MULTI_TEACHER, ids=lambda p: p.name)
def test_the_several_teachers_table_matches_its_results_file(path: Path) -> None:
    spec = importlib.util.spec_from_file_location("multi_teacher", ROOT / "benchmarks" / "multi_teacher.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    results = json.loads(path.read_text(encoding="utf-8"))
    name = path.stem
    document = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- table {name} -->\n(.*?)\n<!-- /table {name} -->", document, re.DOTALL)
    assert found, f"docs/results.md has no table for {name}"
    assert found.group(1).strip() == script.markdown_table(results).strip(), (
        "regenerate it: python benchmarks/multi_teacher.py ../shared/data --table"
    )
