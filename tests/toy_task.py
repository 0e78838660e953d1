"""A stub task, written as a user would write one (docs/adding_a_task.md): regression of a number
from four, with small MLPs as teacher and student. It adds one file and one registration and
touches none of kdistill's core; ``kdistill distill`` runs it end to end."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdistill.errors import DataError, ModelLoadError
from kdistill.losses import LogitMSE, Objective
from kdistill.models.speed import measure_speed, with_speedup
from kdistill.schema import Section
from kdistill.tasks import Models, Task, TaskData, register_task


class ToyData(Section):
    """The ``data:`` section: a CSV of x1..x4,y and the share held out for validation."""

    train: str
    validation_fraction: float = Field(0.25, gt=0, lt=1)


class MLP(nn.Module):
    """A small regressor; ``save_pretrained`` writes its sizes and weights to a folder."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.layers = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def save_pretrained(self, folder: Path) -> None:
        (folder / "config.json").write_text(json.dumps({"hidden": self.hidden}))
        save_file(self.state_dict(), str(folder / "model.safetensors"))

    @classmethod
    def from_folder(cls, folder: str) -> MLP:
        path = Path(folder)
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{folder!r} holds no toy model (config.json)")
        model = cls(json.loads((path / "config.json").read_text())["hidden"])
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model


def _collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {"x": torch.stack([x for x, _ in items]), "labels": torch.stack([y for _, y in items])}


class ToyRegression(Task):
    name = "toy_regression"
    data_section = ToyData
    primary_metric = "mse"
    higher_is_better = False
    metric_columns = (("mse", "MSE"),)

    def read(self, data: ToyData) -> TensorDataset:
        rows = [line.split(",") for line in Path(data.train).read_text().splitlines()[1:] if line.strip()]
        if len(rows) < 4:
            raise DataError(f"{data.train!r} has {len(rows)} rows: too few")
        values = torch.tensor([[float(v) for v in row] for row in rows])
        return TensorDataset(values[:, :4], values[:, 4:])

    def load_models(self, teacher: Any, student: Any | None, raw: Any, *, seed: int) -> Models:
        torch.manual_seed(seed)
        built = MLP.from_folder(student.path) if student is not None else None
        return Models(
            teacher=MLP.from_folder(teacher.path).eval(),
            teacher_location=teacher.path,
            student=built,
            tokenizer=None,
            teacher_tokenizer=None,
            student_note="student: a small MLP",
        )

    def prepare(self, data: ToyData, raw: TensorDataset, models: Models, *, progress: bool) -> TaskData:
        held = max(1, round(len(raw) * data.validation_fraction))
        validation = torch.utils.data.Subset(raw, range(held))
        train = torch.utils.data.Subset(raw, range(held, len(raw)))
        return TaskData(
            train=train,
            validation=validation,
            test=None,
            distill=train,
            collate=_collate,
            sizes={"train": len(train), "validation": len(validation)},
            description="regression",
        )

    def finetune_objective(self) -> Objective:
        raise NotImplementedError("the toy teacher comes trained")

    def evaluate(
        self, models: Mapping[str, nn.Module], loader: DataLoader, *, progress: bool, desc: str = "evaluating"
    ) -> dict[str, dict[str, float]]:
        results = {}
        with torch.no_grad():
            for name, model in models.items():
                errors = [(model(x=batch["x"]) - batch["labels"]).pow(2) for batch in loader]
                results[name] = {"mse": float(torch.cat(errors).mean())}
        return results

    def measure_speed(self, models: Mapping[str, nn.Module], batch: Any) -> dict[str, dict[str, float]]:
        return with_speedup(
            {name: measure_speed(model, {"x": batch["x"]}, min_seconds=0.01) for name, model in models.items()}
        )

    def load_trained(self, location: str, role: str) -> tuple[nn.Module, Any]:
        return MLP.from_folder(location).eval(), None

    def eval_data(
        self,
        data: ToyData,
        path: str,
        models: Mapping[str, tuple[nn.Module, Any]],
        *,
        max_length: int | None,
        max_examples: int | None,
        progress: bool,
    ) -> TaskData:
        dataset = self.read(ToyData(train=path))
        return TaskData(
            train=dataset,
            validation=dataset,
            test=dataset,
            distill=dataset,
            collate=_collate,
            sizes={"test": len(dataset)},
        )

    def save(self, model: nn.Module, tokenizer: Any, folder: Path) -> None:
        model.save_pretrained(folder)

    def read_weights(self, model: nn.Module, folder: Path) -> None:
        model.load_state_dict(MLP.from_folder(str(folder)).state_dict())


register_task(ToyRegression)
# the toy task's one loss term: the student's output against the teacher's (LogitMSE is registered as logit_mse)
__all__ = ["MLP", "LogitMSE", "ToyRegression"]
