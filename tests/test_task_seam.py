"""The seam between the core, the tasks and the command: a stub task runs through ``kdistill
distill`` end to end without touching the core, and the import rule holds (the core imports
nothing from tasks/ or app/, tasks/ nothing from app/)."""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path

import torch
import yaml
from cli_helpers import run_command
from toy_task import MLP

SRC = Path(__file__).resolve().parents[1] / "src" / "kdistill"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at its top, inside functions or under TYPE_CHECKING."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_core_imports_nothing_from_tasks_or_the_command_and_tasks_nothing_from_the_command() -> None:
    broken = []
    for path in sorted(SRC.rglob("*.py")):
        part = path.relative_to(SRC).parts
        if part in (("__init__.py",), ("__main__.py",)):
            continue  # the public facade re-exports the command's entry points; python -m kdistill runs it
        layer = part[0] if part[0] in ("tasks", "app") else "core"
        forbidden = {"core": ("kdistill.tasks", "kdistill.app"), "tasks": ("kdistill.app",), "app": ()}[layer]
        for module in _imports(path):
            if module.startswith(forbidden):
                broken.append(f"{path.relative_to(SRC)} ({layer}) imports {module}")
    assert not broken, broken


def test_a_stub_task_runs_through_kdistill_distill_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = torch.randn(4)
    rng = random.Random(0)
    rows = ["x1,x2,x3,x4,y"]
    for _ in range(96):
        x = [rng.uniform(-1, 1) for _ in range(4)]
        rows.append(",".join(f"{v:.4f}" for v in [*x, float(torch.tensor(x) @ weights)]))
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    teacher, student = MLP(32), MLP(4)
    # the teacher learns the function first (a user's own trained model)
    data = torch.tensor([[float(v) for v in row.split(",")] for row in rows[1:]])
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(300):
        loss = (teacher(data[:, :4]) - data[:, 4:]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, model in (("teacher", teacher), ("student", student)):
        (tmp_path / name).mkdir()
        model.save_pretrained(tmp_path / name)
    config = {
        "task": "toy_regression",
        "teacher": {"path": str(tmp_path / "teacher")},
        "student": {"path": str(tmp_path / "student")},
        "data": {"train": str(tmp_path / "data.csv")},
        "objective": {"terms": {"mse": {"type": "logit_mse"}}},
        "training": {"epochs": 20, "batch_size": 8, "lr": 1.0e-2},
        "output": {"dir": str(tmp_path / "run")},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    code, err = run_command(["distill", str(tmp_path / "run.yaml"), "--no-progress"])
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["run"]["task"] == "toy_regression" and metrics["data"]["evaluated_on"] == "validation"
    # distilled: the student ends near its teacher, and the best student was chosen by the lowest MSE
    assert metrics["student"]["mse"] < 0.1 and metrics["teacher"]["mse"] < 0.05
    best = metrics["training"]["best_student"]
    assert best["mse"] == min(record["mse"] for record in metrics["validation"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| model | MSE | parameters |" in report and "validation mse" in report
    assert (tmp_path / "run" / "student" / "model.safetensors").is_file()
    # and kdistill eval measures the run's student with the task's metric
    code, err = run_command(["eval", str(tmp_path / "run"), "--no-progress"])
    assert code == 2 and "give the data to evaluate on: --data FILE" in err  # the run held its validation out
    code, err = run_command(["eval", str(tmp_path / "run"), "--data", str(tmp_path / "data.csv"), "--no-progress"])
    assert code == 0, err
    assert "mse" in json.loads((tmp_path / "run" / "metrics.json").read_text())["eval"]["student"]


def test_the_adding_a_task_guide_quotes_the_stub_task_as_it_is() -> None:
    """docs/adding_a_task.md's code is taken from tests/toy_task.py (which runs end to end above),
    and its YAML is a config of the stub task."""
    import re

    from kdistill.app.config_loading import parse_config

    root = SRC.parents[1]
    guide = (root / "docs" / "adding_a_task.md").read_text(encoding="utf-8")
    stub = (root / "tests" / "toy_task.py").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", guide, re.DOTALL)
    assert len(blocks) == 3
    for block in blocks:
        assert block.strip() in stub, block
    (config,) = re.findall(r"```yaml\n(.*?)```", guide, re.DOTALL)
    assert parse_config(yaml.safe_load(config)).task == "toy_regression"
