"""benchmarks/quality.py's bookkeeping: rows saved as they finish, failures recorded and retried,
saved rows skipped, and --jobs running several rows at once. The kdistill runs are faked: the
real ones are the benchmark itself (hours), not a test."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quality_script():
    spec = importlib.util.spec_from_file_location("quality_under_test", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeRuns:
    """Stands in for ``kdistill distill``: a score from the recipe and seed, and a record of how
    many runs were in flight at once."""

    def __init__(self, fail: set[str]):
        self.fail, self.started, self.running, self.most = fail, [], 0, 0
        self.finished: list[str] = []
        self.overrides: dict[str, list[str]] = {}
        self.lock = threading.Lock()

    def __call__(self, config: Path, folder: Path, overrides: list[str], log: Path) -> dict:
        if config.name == "teacher.yaml":
            return {"teacher": {"accuracy": 0.9, "macro_f1": 0.9, "parameters": 1000}, "run": {"seconds": 5.0}}
        with self.lock:
            self.started.append(folder.name)
            self.overrides[folder.name] = list(overrides)
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            # a starting row is slower than the row after it: a chained run that did not wait fails
            time.sleep(0.15 if config.stem == "tinybert" else 0.05)
            if folder.name in self.fail:
                raise RuntimeError(f"kdistill distill failed (exit 1); see {log}")
            (folder / "student").mkdir(parents=True)
            with self.lock:
                self.finished.append(folder.name)
            seed = int(folder.name.rsplit("-s", 1)[1])
            score = 0.80 + 0.01 * seed + (0.02 if config.stem == "hinton" else 0.0)
            return {
                "student": {"accuracy": score, "macro_f1": score, "agreement": 0.95, "parameters": 500},
                "teacher": {"accuracy": 0.9, "macro_f1": 0.9},
                "run": {"seconds": 2.0},
            }
        finally:
            with self.lock:
                self.running -= 1


def _run(module, monkeypatch, tmp_path: Path, runs: FakeRuns, jobs: int, recipes: str = "no_teacher,hinton") -> dict:
    monkeypatch.setattr(module, "kdistill", runs)
    monkeypatch.setattr(module, "measure_speedup", lambda teacher, overrides: {"speedup": 3.0})
    (tmp_path / "data" / "sst2").mkdir(parents=True, exist_ok=True)
    output = tmp_path / "quality.json"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "quality.py",
            str(tmp_path / "data"),
            "--task",
            "sst2",
            "--seeds",
            "2",
            "--students",
            "a",
            "--recipes",
            recipes,
            "--runs-dir",
            str(tmp_path / "runs"),
            "--output",
            str(output),
            "--jobs",
            str(jobs),
        ],
    )
    module.main()
    return json.loads(output.read_text())


def test_parallel_rows_are_saved_failures_recorded_then_retried(tmp_path, monkeypatch, capsys):
    module = _quality_script()
    # main() sets KDISTILL_CACHE and OMP_NUM_THREADS for its runs: keep them out of this process
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
    runs = FakeRuns(fail={"a-hinton-s1"})
    results = _run(module, monkeypatch, tmp_path, runs, jobs=2)
    assert runs.most == 2  # two rows in flight at once
    assert sorted(results["runs"]) == ["a/hinton/0", "a/no_teacher/0", "a/no_teacher/1"]
    assert list(results["failures"]) == ["a/hinton/1"]
    assert {run["jobs"] for run in results["runs"].values()} == {2}
    assert os.environ["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))  # each run's share
    rows = {row["recipe"]: row for row in results["rows"]}
    assert abs(rows["no_teacher"]["metric_mean"] - 0.805) < 1e-9 and rows["no_teacher"]["seeds"] == 2
    assert rows["teacher"]["metric_mean"] == 0.9 and rows["hinton"]["speedup"] == 3.0

    # a second invocation runs only what is missing: the failed row, which now succeeds
    again = FakeRuns(fail=set())
    results = _run(module, monkeypatch, tmp_path, again, jobs=1)
    assert again.started == ["a-hinton-s1"] and again.most == 1
    assert "failures" not in results or not results["failures"]
    rows = {row["recipe"]: row for row in results["rows"]}
    assert abs(rows["hinton"]["metric_mean"] - 0.825) < 1e-9 and rows["hinton"]["seeds"] == 2


def test_a_chained_recipe_runs_after_its_starting_row_and_from_its_student(tmp_path, monkeypatch, capsys):
    module = _quality_script()
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
    assert module.STARTS_FROM["tinybert_augmented"] == "tinybert"
    # asked for the chained recipe alone: its starting rows run too, seed 1's fails
    runs = FakeRuns(fail={"a-tinybert-s1"})
    results = _run(module, monkeypatch, tmp_path, runs, jobs=4, recipes="tinybert_augmented")
    assert runs.finished.index("a-tinybert-s0") < runs.finished.index("a-tinybert_augmented-s0")
    start = tmp_path / "runs" / "sst2" / "a-tinybert-s0" / "student"
    assert runs.overrides["a-tinybert_augmented-s0"][-2:] == ["student.from_teacher=null", f"student.path={start}"]
    assert sorted(results["runs"]) == ["a/tinybert/0", "a/tinybert_augmented/0"]
    assert sorted(results["failures"]) == ["a/tinybert/1", "a/tinybert_augmented/1"]
    assert "a-tinybert_augmented-s1" not in runs.started  # nothing to start from
    # the chained row is recorded with the override that makes it repeatable
    assert results["runs"]["a/tinybert_augmented/0"]["overrides"][-1] == f"student.path={start}"
