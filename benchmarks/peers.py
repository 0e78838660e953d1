"""kdistill against its peers: the same online logit + hidden-state distillation in three libraries.

One distillation run (same models, data, batches, steps, optimizer, initial weights and
objective) is trained through

* ``kdistill``: :func:`kdistill.distill` with an :class:`~kdistill.Objective`;
* ``kdistill_cached``: the same from a :class:`~kdistill.TeacherCache` of the teacher's logits and
  hidden states, built once beforehand (its build time is reported on its own);
* ``textbrewer``: TextBrewer's ``GeneralDistiller(...).train(...)``;
* ``torchdistill``: torchdistill's config-driven ``DistillationBox`` (``forward_process`` /
  ``post_forward_process``, the loop of torchdistill's Hugging Face examples).

The objective, in kdistill's terms (T = 4)::

    0.7 · T²·KL(p_teacher ‖ p_student) + 0.3 · CE(labels) + 1.0 · mean over pairs of MSE(W·h_student, h_teacher)

over the hidden-state pairs {student 1 ↔ teacher 3, student 2 ↔ teacher 6} (index 0 is the
embeddings, i the output of layer i), each with a learned linear projection W (student width
256 -> teacher width 384). The peers are configured to optimise the same loss (see DESIGN.md,
"The peers' conventions"):

* TextBrewer: ``kd_loss_type='ce'`` is H(p_teacher, p_student) without T², so its weight is
  0.7·T² = 11.2; the hard-label loss is the model's own loss (the adaptor's ``losses``) with
  ``hard_label_weight=0.3``; each ``hidden_mse`` match weighs 1/2 (TextBrewer sums matches,
  kdistill averages them). Its total exceeds the others by 0.7·T²·H(p_teacher), a constant
  without gradient; the JSON reports it and the loss with it subtracted.
* torchdistill: ``KDLoss(alpha=0.3)`` is 0.3·CE + 0.7·T²·KL (its alpha weighs the hard labels);
  ``MSELoss`` terms of weight 1/2 compare the outputs of a small auxiliary model wrapper,
  registered through torchdistill's own registry, that holds the projections.

Both models are BERT, built from a config; the teacher's classifier is re-drawn with std 1 so
that its soft labels carry signal at T = 4, as a trained teacher's do. Dropout is 0 in both
models, so the three runs compute the same numbers and their losses can be compared step by
step. Every sequence is full length (no padding), where the three tools' hidden-state losses
agree (torchdistill's plain ``MSELoss`` would count padded positions).

The contenders share one process (imports and models are built once; every run starts from
fresh copies of the same initial weights; so no per-tool memory is reported) and run in rounds
whose order rotates, so that the drifts of a shared machine hit all of them alike. Each is
summarised by its median step time: the gap between consecutive optimizer steps, the first
step of every run (it creates the optimizer state) left out. Imports, model building and the
cache build are outside the step times. ``vs_textbrewer`` and ``vs_torchdistill`` are the
peer's median step time / kdistill's (> 1: kdistill is faster); ``cached_vs_*`` the same
against kdistill's cached mode; ``cpu_time_ratios`` the same from each step's CPU time. A peer
that fails to import or to run is reported with its error, never left out silently. Prints one
JSON object.

Usage: python benchmarks/peers.py [--quick] [--device cpu|cuda] [--threads N]
(the peers: ``pip install -e .[bench]``)
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification

from kdistill import CacheSpec, HardCE, LogitKD, Objective, TeacherCache, distill, with_example_index
from kdistill.losses import HiddenMSE

BATCH, LENGTH, VOCAB, NUM_LABELS = 32, 64, 8000, 2
TEACHER = {"layers": 6, "hidden": 384, "heads": 12, "intermediate": 1536}
STUDENT = {"layers": 2, "hidden": 256, "heads": 4, "intermediate": 1024}
TEMPERATURE = 4.0
KD_WEIGHT, CE_WEIGHT, HIDDEN_WEIGHT = 0.7, 0.3, 1.0
#: {student hidden-state index: teacher hidden-state index}
LAYER_MAP = {1: 3, 2: 6}
LR = 1e-4
WARMUP_STEPS = 1  # steps of every run left out of the medians (step 1 creates the optimizer state)
CONTENDERS = ("kdistill", "textbrewer", "torchdistill", "kdistill_cached")
PEERS = {"textbrewer": "textbrewer", "torchdistill": "torchdistill.core.distillation"}

Batch = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------
# what every contender shares
# ---------------------------------------------------------------------------


def build_model(kind: str) -> BertForSequenceClassification:
    """The teacher or the student, from a config, with a fixed seed."""
    dims = TEACHER if kind == "teacher" else STUDENT
    torch.manual_seed(0 if kind == "teacher" else 1)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=dims["hidden"],
        num_hidden_layers=dims["layers"],
        num_attention_heads=dims["heads"],
        intermediate_size=dims["intermediate"],
        num_labels=NUM_LABELS,
        max_position_embeddings=128,
        # no dropout: the three tools then compute the same numbers and their losses can be compared
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(config)
    if kind == "teacher":
        # a confident teacher, as a trained one is: at its random init the classifier gives
        # near-uniform soft labels at T = 4, where the KD term would be ~0 and check nothing
        with torch.no_grad():
            model.classifier.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(3))
    return model


def build_dataset(num_batches: int) -> list[Batch]:
    """Synthetic token data: ``num_batches`` batches of full-length sequences with random labels."""
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(1000, VOCAB, (LENGTH,), generator=generator),
            "attention_mask": torch.ones(LENGTH, dtype=torch.long),
            "labels": torch.randint(0, NUM_LABELS, (), generator=generator),
        }
        for _ in range(num_batches * BATCH)
    ]


def initial_projections() -> list[dict[str, torch.Tensor]]:
    """The initial state of each pair's projection, in ``LAYER_MAP`` order, copied into every tool."""
    torch.manual_seed(2)
    return [nn.Linear(STUDENT["hidden"], TEACHER["hidden"]).state_dict() for _ in LAYER_MAP]


def make_optimizer(student: nn.Module) -> torch.optim.Optimizer:
    """AdamW over the student; each tool adds its projections itself, with the same defaults."""
    return torch.optim.AdamW(student.parameters(), lr=LR)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class StepClock:
    """Poses as an LR scheduler: each tool steps it right after its optimizer step, so the gaps
    between calls are the tools' real step times."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []

    def step(self, *args: Any, **kwargs: Any) -> None:
        sync(self.device)
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())

    def state_dict(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def _gaps(stamps: list[float]) -> list[float]:
        # the first gap is step 2; steps up to WARMUP_STEPS are left out
        return [b - a for a, b in zip(stamps, stamps[1:])][WARMUP_STEPS - 1 :]

    def durations(self) -> list[float]:
        """Wall-clock step times, from step WARMUP_STEPS + 1 on."""
        return self._gaps(self.stamps)

    def cpu_durations(self) -> list[float]:
        """CPU time of this process (all threads) per step, from step WARMUP_STEPS + 1 on."""
        return self._gaps(self.cpu_stamps)


def teacher_entropy_term(teacher: nn.Module, batch: list[Batch], device: torch.device) -> float:
    """0.7·T²·H(p_teacher) over one batch: what TextBrewer's CE-form KD loss adds to the KL form."""
    inputs = {k: torch.stack([example[k] for example in batch]).to(device) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        log_probs = torch.log_softmax(teacher(**inputs).logits.float() / TEMPERATURE, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1).mean()
    return float(KD_WEIGHT * TEMPERATURE**2 * entropy)


#: one contender's run: ``step_seconds``, ``step_cpu_seconds``, ``train_call_s``, ``first_loss``,
#: ``final_loss``, ``steps`` and what the tool adds (loss parts, TextBrewer's entropy terms)
Run = dict[str, Any]


# ---------------------------------------------------------------------------
# the contenders
# ---------------------------------------------------------------------------


def kdistill_objective() -> Objective:
    """The benchmark's objective in kdistill, with the shared initial projections."""
    hidden = HiddenMSE(LAYER_MAP, student_dim=STUDENT["hidden"], teacher_dim=TEACHER["hidden"])
    for (student_layer, teacher_layer), state in zip(LAYER_MAP.items(), initial_projections()):
        hidden.projections[f"{student_layer}_to_{teacher_layer}"].load_state_dict(state)
    return Objective(
        {"kd": LogitKD(TEMPERATURE), "ce": HardCE(), "hidden": hidden},
        weights={"kd": KD_WEIGHT, "ce": CE_WEIGHT, "hidden": HIDDEN_WEIGHT},
    )


def run_kdistill(
    teacher: nn.Module, student: nn.Module, data: list[Batch], device: torch.device, cache: TeacherCache | None = None
) -> Run:
    """``distill()`` online, or from ``cache`` (then the teacher is not run at all)."""
    objective = kdistill_objective()
    optimizer = make_optimizer(student)  # distill() adds the objective's projections as a group
    accelerator = Accelerator(cpu=device.type == "cpu")
    loader = DataLoader(with_example_index(data) if cache is not None else data, batch_size=BATCH, shuffle=False)
    clock = StepClock(device)
    sync(device)
    start = time.perf_counter()
    history = distill(
        None if cache is not None else teacher,
        student,
        loader,
        objective=objective,
        optimizer=optimizer,
        teacher_cache=cache,
        scheduler=clock,
        max_grad_norm=None,
        progress=False,
        accelerator=accelerator,
    )
    sync(device)
    train_call_s = time.perf_counter() - start
    first = history.steps[0]
    return dict(
        step_seconds=clock.durations(),
        step_cpu_seconds=clock.cpu_durations(),
        train_call_s=train_call_s,
        first_loss=first["loss"],
        final_loss=history.steps[-1]["loss"],
        steps=len(history.steps),
        first_parts={name: first[name] for name in ("kd", "ce", "hidden")},
    )


def run_textbrewer(
    teacher: nn.Module, student: nn.Module, data: list[Batch], device: torch.device, offsets: dict[str, float]
) -> Run:
    """TextBrewer's ``GeneralDistiller(...).train(...)``; ``offsets`` are the teacher-entropy terms
    of the first and the last batch (see :func:`teacher_entropy_term`)."""
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    def adaptor(batch: Batch, outputs: Any) -> dict[str, Any]:
        # what TextBrewer reads: logits, hidden states (index 0 = embeddings, as in kdistill),
        # the model's own hard-label loss, and the padding mask for the hidden-state loss
        return {
            "logits": outputs.logits,
            "hidden": outputs.hidden_states,
            "losses": outputs.loss,
            "inputs_mask": batch["attention_mask"],
        }

    matches = [
        {
            "layer_T": teacher_layer,
            "layer_S": student_layer,
            "feature": "hidden",
            "loss": "hidden_mse",
            # TextBrewer sums the matches; kdistill's HiddenMSE averages them
            "weight": HIDDEN_WEIGHT / len(LAYER_MAP),
            "proj": ["linear", STUDENT["hidden"], TEACHER["hidden"]],
        }
        for student_layer, teacher_layer in LAYER_MAP.items()
    ]
    distill_config = DistillationConfig(
        temperature=TEMPERATURE,
        kd_loss_type="ce",
        kd_loss_weight=KD_WEIGHT * TEMPERATURE**2,
        hard_label_weight=CE_WEIGHT,
        intermediate_matches=matches,
    )
    records: list[torch.Tensor] = []
    first_parts: dict[str, float] = {}

    class RecordingDistiller(GeneralDistiller):
        """A GeneralDistiller that also keeps the losses it reports (TextBrewer sends them only to
        TensorBoard); the training itself is TextBrewer's, unchanged."""

        def write_loss(self, total_loss: torch.Tensor, writer_step: int, losses_dict: dict | None = None) -> None:
            super().write_loss(total_loss, writer_step, losses_dict)
            records.append(total_loss.detach().clone())  # train() divides it in place afterwards
            if writer_step == 0 and losses_dict:
                first_parts.update({name: float(value.detach()) for name, value in losses_dict.items()})

    steps = len(data) // BATCH
    clock = StepClock(device)
    loader = DataLoader(data, batch_size=BATCH, shuffle=False)
    with tempfile.TemporaryDirectory() as folder:
        # TextBrewer saves the student at every checkpoint: one, after the last step (outside the step times)
        train_config = TrainingConfig(device=device, output_dir=folder, ckpt_steps=steps)
        optimizer = make_optimizer(student)  # train() adds the projections as a group
        sync(device)
        start = time.perf_counter()
        distiller = RecordingDistiller(train_config, distill_config, teacher, student, adaptor, adaptor)
        for projection, state in zip(distiller.projs, initial_projections()):
            projection.load_state_dict(state)  # the same initial projections as the other tools
        with distiller:  # teacher in eval mode, student in train mode
            distiller.train(
                optimizer,
                loader,
                num_steps=steps,
                max_grad_norm=-1,
                scheduler_class=lambda optimizer: clock,
                scheduler_args={},
                output_hidden_states=True,
            )
        sync(device)
        train_call_s = time.perf_counter() - start
    losses = [float(value) for value in records]
    return dict(
        step_seconds=clock.durations(),
        step_cpu_seconds=clock.cpu_durations(),
        train_call_s=train_call_s,
        first_loss=losses[0],
        final_loss=losses[-1],
        steps=len(losses),
        teacher_entropy_term=offsets,
        first_loss_minus_entropy=losses[0] - offsets["first"],
        final_loss_minus_entropy=losses[-1] - offsets["final"],
        first_parts=first_parts,
    )


def _layer_path(prefix: str, index: int) -> str:
    """Module path of BERT hidden state ``index`` (>= 1): the output of encoder layer ``index - 1``."""
    return f"{prefix}bert.encoder.layer.{index - 1}"


_TORCHDISTILL_WRAPPER = "HiddenProjections4KdistillBench"


def _register_torchdistill_wrapper() -> None:
    """Register, once, the student wrapper that holds the projections in torchdistill's registry."""
    from torchdistill.models.registry import AUXILIARY_MODEL_WRAPPER_DICT, register_auxiliary_model_wrapper
    from torchdistill.models.wrapper import AuxiliaryModelWrapper

    if _TORCHDISTILL_WRAPPER in AUXILIARY_MODEL_WRAPPER_DICT:
        return

    @register_auxiliary_model_wrapper(key=_TORCHDISTILL_WRAPPER)
    class HiddenProjections(AuxiliaryModelWrapper):
        """torchdistill's way to give a student trainable extras: ``secondary_forward`` runs the
        projections on the hooked hidden states, and hooks on the projections hand their outputs
        to the loss; the box optimises the wrapper's parameters (student and projections)."""

        def __init__(
            self,
            student_model: nn.Module,
            layer_map: dict[int, int],
            student_dim: int,
            teacher_dim: int,
            **kwargs: Any,
        ) -> None:
            super().__init__()
            self.model = student_model
            self.layer_map = dict(layer_map)
            self.projections = nn.ModuleDict(
                {f"{s}_to_{t}": nn.Linear(student_dim, teacher_dim) for s, t in self.layer_map.items()}
            )

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.model(*args, **kwargs)

        def secondary_forward(self, io_dict: dict[str, dict[str, Any]]) -> None:
            for s, t in self.layer_map.items():
                self.projections[f"{s}_to_{t}"](io_dict[_layer_path("model.", s)]["output"])


def torchdistill_config() -> dict[str, Any]:
    """The training configuration of torchdistill's DistillationBox (what its YAML files hold)."""
    hidden_terms = {
        f"hidden_{s}_{t}": {
            "criterion": {"key": "MSELoss", "kwargs": {"reduction": "mean"}},
            "criterion_wrapper": {
                "key": "SimpleLossWrapper",
                "kwargs": {
                    "input": {"is_from_teacher": False, "module_path": f"projections.{s}_to_{t}", "io": "output"},
                    "target": {"is_from_teacher": True, "module_path": _layer_path("", t), "io": "output"},
                },
            },
            # torchdistill sums its terms; kdistill's HiddenMSE averages the pairs
            "weight": HIDDEN_WEIGHT / len(LAYER_MAP),
        }
        for s, t in LAYER_MAP.items()
    }
    return {
        "num_epochs": 1,
        "train_data_loader": {
            "dataset_id": "train",
            "requires_supp": False,
            "sampler": {"class_or_func": torch.utils.data.SequentialSampler, "kwargs": {}},
            "kwargs": {"batch_size": BATCH, "num_workers": 0},
        },
        "teacher": {
            "forward_proc": "forward_batch_only_as_kwargs",
            "requires_grad": False,
            "forward_hook": {"output": ["classifier"] + [_layer_path("", t) for t in LAYER_MAP.values()]},
        },
        "student": {
            "forward_proc": "forward_batch_only_as_kwargs",
            "requires_grad": True,
            "auxiliary_model_wrapper": {
                "key": _TORCHDISTILL_WRAPPER,
                "kwargs": {"layer_map": LAYER_MAP, "student_dim": STUDENT["hidden"], "teacher_dim": TEACHER["hidden"]},
            },
            "forward_hook": {
                "output": ["model.classifier"]
                + [_layer_path("model.", s) for s in LAYER_MAP]
                + [f"projections.{s}_to_{t}" for s, t in LAYER_MAP.items()]
            },
        },
        "optimizer": {"key": "AdamW", "kwargs": {"lr": LR}},
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {
                "sub_terms": {
                    "kd": {
                        "criterion": {
                            "key": "KDLoss",
                            "kwargs": {
                                "student_module_path": "model.classifier",
                                "student_module_io": "output",
                                "teacher_module_path": "classifier",
                                "teacher_module_io": "output",
                                # torchdistill's alpha weighs the hard labels: 1 - kdistill's
                                "temperature": TEMPERATURE,
                                "alpha": CE_WEIGHT,
                                "reduction": "batchmean",
                            },
                        },
                        "weight": 1.0,
                    },
                    **hidden_terms,
                }
            },
        },
    }


def run_torchdistill(teacher: nn.Module, student: nn.Module, data: list[Batch], device: torch.device) -> Run:
    """torchdistill's ``DistillationBox`` driven by the loop of its examples."""
    from torchdistill.core.distillation import DistillationBox

    _register_torchdistill_wrapper()
    clock = StepClock(device)
    losses: list[torch.Tensor] = []
    sync(device)
    start = time.perf_counter()
    box = DistillationBox(teacher, student, {"train": data}, torchdistill_config(), device, None, False, 1)
    for projection, state in zip(box.student_model.projections.values(), initial_projections()):
        projection.load_state_dict(state)  # the same initial projections as the other tools
    box.pre_epoch_process(epoch=0)
    for batch in box.train_data_loader:
        batch = {key: value.to(device) for key, value in batch.items()}
        targets = batch.pop("labels")
        loss = box.forward_process(batch, targets)
        box.post_forward_process(loss=loss)
        clock.step()
        losses.append(loss.detach())  # no .item(): no per-step sync charged to torchdistill
    box.post_epoch_process()
    sync(device)
    train_call_s = time.perf_counter() - start
    box.clean_modules()  # its hooks stay on the models otherwise
    return dict(
        step_seconds=clock.durations(),
        step_cpu_seconds=clock.cpu_durations(),
        train_call_s=train_call_s,
        first_loss=float(losses[0]),
        final_loss=float(losses[-1]),
        steps=len(losses),
    )


# ---------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------


def version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(error: BaseException) -> dict[str, str]:
    return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-2500:]}


def summarise(runs: list[Run]) -> dict[str, Any]:
    """Median step time over every run's steps, median call time, the first run's losses."""
    steps = [seconds for run in runs for seconds in run["step_seconds"]]
    cpu_steps = [seconds for run in runs for seconds in run["step_cpu_seconds"]]
    summary: dict[str, Any] = {
        "step_ms": round(statistics.median(steps) * 1e3, 2),
        "step_ms_quartiles": [round(q * 1e3, 1) for q in statistics.quantiles(steps, n=4)] if len(steps) > 1 else None,
        "step_cpu_ms": round(statistics.median(cpu_steps) * 1e3, 2),
        "step_samples": len(steps),
        "train_call_s": round(statistics.median(run["train_call_s"] for run in runs), 2),
        "steps_per_run": runs[0]["steps"],
        "runs": len(runs),
    }
    if "peak_cuda_mb" in runs[0]:
        summary["peak_cuda_mb"] = round(max(run["peak_cuda_mb"] for run in runs), 1)
    # every run starts from the same weights and data: report the first one's losses, and how far
    # the others strayed from it (0 when the tool is deterministic)
    for key in ("first_loss", "final_loss", "first_loss_minus_entropy", "final_loss_minus_entropy"):
        if key in runs[0]:
            summary[key] = round(runs[0][key], 5)
    summary["final_loss_spread_over_runs"] = float(
        f"{max(run['final_loss'] for run in runs) - min(run['final_loss'] for run in runs):.3g}"
    )
    if "teacher_entropy_term" in runs[0]:
        summary["teacher_entropy_term"] = {k: round(v, 5) for k, v in runs[0]["teacher_entropy_term"].items()}
    if "first_parts" in runs[0]:
        summary["first_parts"] = {k: round(v, 5) for k, v in runs[0]["first_parts"].items()}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 rounds of 5 steps per tool (under 3 minutes on 2 CPU cores); default 5 rounds of 16",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds, num_batches = (2, 5) if args.quick else (5, 16)

    # a peer that cannot even be imported (e.g. with this transformers) is reported as such
    errors: dict[str, dict[str, str]] = {}
    for peer, module in PEERS.items():
        try:
            importlib.import_module(module)
        except Exception as error:
            errors[peer] = describe(error)

    data = build_dataset(num_batches)
    pristine_teacher, pristine_student = build_model("teacher").to(device).eval(), build_model("student").to(device)
    # TextBrewer's loss carries 0.7·T²·H(p_teacher); computed once, outside every timing
    offsets = {
        "first": teacher_entropy_term(pristine_teacher, data[:BATCH], device),
        "final": teacher_entropy_term(pristine_teacher, data[-BATCH:], device),
    }
    runners: dict[str, Callable[[nn.Module, nn.Module], Run]] = {
        "kdistill": lambda teacher, student: run_kdistill(teacher, student, data, device),
        "textbrewer": lambda teacher, student: run_textbrewer(teacher, student, data, device, offsets),
        "torchdistill": lambda teacher, student: run_torchdistill(teacher, student, data, device),
    }
    runs: dict[str, list[Run]] = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory() as folder:
        # the cache is built once, as a user builds it once for all epochs and runs
        sync(device)
        start = time.perf_counter()
        cache = TeacherCache.build(
            pristine_teacher,
            data,
            f"{folder}/cache",
            spec=CacheSpec(hidden_states=tuple(sorted(LAYER_MAP.values()))),
            batch_size=BATCH,
            device=device,
            progress=False,
        )
        sync(device)
        cache_build_s = time.perf_counter() - start
        cache_mb = sum(path.stat().st_size for path in cache.folder.iterdir()) / 2**20
        runners["kdistill_cached"] = lambda teacher, student: run_kdistill(teacher, student, data, device, cache)

        for round_index in range(rounds):
            # rotate the order so that a drift of a shared machine does not always hit the same tool
            shift = round_index % len(CONTENDERS)
            for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
                if name in errors:
                    continue
                # fresh copies: every run starts from the same weights, and no tool's hooks or
                # frozen flags leak into another's run
                teacher, student = copy.deepcopy(pristine_teacher), copy.deepcopy(pristine_student)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                try:
                    run = runners[name](teacher, student)
                except Exception as error:
                    if name not in PEERS:
                        raise
                    errors[name] = describe(error)
                    continue
                if device.type == "cuda":
                    run["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
                run["round"] = round_index
                runs[name].append(run)
                del teacher, student

    results: dict[str, dict[str, Any]] = {}
    for name in CONTENDERS:
        package = "kdistill" if name.startswith("kdistill") else name
        results[name] = (
            {**errors[name], "version": version_of(package)}
            if name in errors
            else {**summarise(runs[name]), "version": version_of(package)}
        )
    results["kdistill_cached"].update(
        {
            "cache_build_s": round(cache_build_s, 2),
            "cache_build_ms_per_batch": round(cache_build_s / num_batches * 1e3, 1),
            "cache_mb": round(cache_mb, 1),
        }
    )

    def ratio(peer: str, against: str, key: str = "step_ms") -> float | None:
        if "error" in results[peer]:
            return None
        return round(results[peer][key] / results[against][key], 3)

    def round_ratios(peer: str, against: str) -> list[float] | None:
        if "error" in results[peer]:
            return None
        medians = {
            name: {run["round"]: statistics.median(run["step_seconds"]) for run in runs[name]}
            for name in (peer, against)
        }
        return [
            round(medians[peer][r] / medians[against][r], 3) for r in sorted(medians[peer]) if r in medians[against]
        ]

    def on_kdistill_scale(key: str) -> dict[str, float | None]:
        return {
            "kdistill": results["kdistill"].get(key),
            "kdistill_cached": results["kdistill_cached"].get(key),
            "textbrewer": results["textbrewer"].get(f"{key}_minus_entropy"),
            "torchdistill": results["torchdistill"].get(key),
        }

    def spread(values: dict[str, float | None]) -> float | None:
        present = [v for v in values.values() if v is not None]
        return float(f"{max(present) - min(present):.3g}") if len(present) > 1 else None

    first, final = on_kdistill_scale("first_loss"), on_kdistill_scale("final_loss")
    print(
        json.dumps(
            {
                "vs_textbrewer": ratio("textbrewer", "kdistill"),
                "vs_torchdistill": ratio("torchdistill", "kdistill"),
                "cached_vs_textbrewer": ratio("textbrewer", "kdistill_cached"),
                "cached_vs_torchdistill": ratio("torchdistill", "kdistill_cached"),
                # each round's ratio of run medians, runs close in time: how much the ratios scatter
                "round_ratios": {
                    "vs_textbrewer": round_ratios("textbrewer", "kdistill"),
                    "vs_torchdistill": round_ratios("torchdistill", "kdistill"),
                },
                # the same ratios from the CPU time of the steps (all threads of this process): with one
                # thread (--threads 1) far less swayed by other processes than wall time; with more,
                # threads that spin while waiting for each other inflate it too; meaningless on CUDA
                "cpu_time_ratios": {
                    "vs_textbrewer": ratio("textbrewer", "kdistill", "step_cpu_ms"),
                    "vs_torchdistill": ratio("torchdistill", "kdistill", "step_cpu_ms"),
                    "cached_vs_textbrewer": ratio("textbrewer", "kdistill_cached", "step_cpu_ms"),
                    "cached_vs_torchdistill": ratio("torchdistill", "kdistill_cached", "step_cpu_ms"),
                },
                **results,
                "loss_agreement": {
                    "first_loss": first,
                    "first_loss_max_abs_diff": spread(first),
                    "final_loss": final,
                    "final_loss_max_abs_diff": spread(final),
                    "note": (
                        "losses on kdistill's scale. TextBrewer's kd_loss_type='ce' is H(p_T, p_S) = KL + H(p_T), so "
                        "its own loss exceeds the others by 0.7*T^2*H(p_T) of the batch (its teacher_entropy_term), "
                        "a constant without gradient, subtracted here"
                    ),
                },
                "objective": (
                    "0.7*T^2*KL(p_teacher||p_student) + 0.3*CE(labels) + 1.0*mean over pairs of "
                    f"MSE(W h_student, h_teacher); T={TEMPERATURE:g}; pairs (student: teacher hidden-state "
                    f"index) {LAYER_MAP}; W a learned linear projection per pair"
                ),
                "peer_settings": {
                    "textbrewer": (
                        f"GeneralDistiller: kd_loss_type='ce', kd_loss_weight={KD_WEIGHT * TEMPERATURE**2:g} "
                        f"(0.7*T^2), hard_label_weight={CE_WEIGHT} on the model's own loss (adaptor 'losses'), "
                        f"hidden_mse weight {HIDDEN_WEIGHT / len(LAYER_MAP):g} per pair with proj 'linear'"
                    ),
                    "torchdistill": (
                        f"DistillationBox: WeightedSumLoss of KDLoss(alpha={CE_WEIGHT}, T={TEMPERATURE:g}) and "
                        f"MSELoss weight {HIDDEN_WEIGHT / len(LAYER_MAP):g} per pair, the projections in an "
                        "auxiliary model wrapper"
                    ),
                },
                "settings": {
                    "teacher": TEACHER,
                    "student": STUDENT,
                    "vocab": VOCAB,
                    "batch": BATCH,
                    "length": LENGTH,
                    "steps_per_run": num_batches,
                    "rounds": rounds,
                    "warmup_steps_dropped": WARMUP_STEPS,
                    "optimizer": f"AdamW(lr={LR:g}), no clipping, no LR schedule",
                    "dropout": 0.0,
                    "padding": "none",
                    "device": str(device),
                    "quick": args.quick,
                },
                "machine": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "transformers": version_of("transformers"),
                    "threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(),
                    "processor": platform.machine(),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
