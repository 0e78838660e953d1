"""Two teachers routed per example, in both training paths, alone or under DDP (torchrun, gloo).

Usage: multi_teacher_ddp_run.py OUT BATCH_PER_PROCESS
Trains with the loop and with the Trainer (fresh models each); writes OUT/result-<rank>.json (each
path's loss curve) and OUT/student-loop.safetensors, OUT/student-trainer.safetensors (rank 0).
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tiny_models

from tiny_models import build, text_batch, two_teachers

from kdistill import DistillationTrainer, Objective, distill
from kdistill.data.batch import ROUTE_KEY
from kdistill.losses import HardCE, LogitKD
from kdistill.losses.combine import TeacherMix

torch.set_num_threads(1)
out, per_process = Path(sys.argv[1]), int(sys.argv[2])
rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
out.mkdir(parents=True, exist_ok=True)

batch = text_batch(batch_size=32, length=10, seed=3)
# rows 4-7 are all teacher a's: under 2 processes the loop's second shard of step 1 skips teacher b
routes = [0, 1, 1, 0, 0, 0, 0, 0] + [i % 2 for i in range(24)]
rows = [{key: value[i].tolist() for key, value in batch.items()} | {ROUTE_KEY: routes[i]} for i in range(32)]


def models():
    teachers = two_teachers()
    routed = TeacherMix.of(["a", "b"], "route")
    objective = Objective({"kd": LogitKD(2.0), "ce": HardCE()}, weights={"kd": 0.7, "ce": 0.3}, teachers=routed)
    return teachers, build("bert", 2, 32, seed=2).train(), objective


def with_loop():
    teachers, student, objective = models()
    examples = [{key: torch.tensor(value) for key, value in row.items()} for row in rows]
    history = distill(
        teachers,
        student,
        torch.utils.data.DataLoader(examples, batch_size=per_process, shuffle=False),
        objective=objective,
        optimizer=torch.optim.SGD(student.parameters(), lr=0.5),
        max_grad_norm=None,
        log_every=1,
        progress=False,
    )
    return [record["loss"] for record in history.steps], student


def with_trainer():
    from datasets import Dataset
    from transformers import TrainerCallback, TrainingArguments

    teachers, student, objective = models()
    losses = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=per_process,
        num_train_epochs=1,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        ddp_backend="gloo" if world > 1 else None,
    )
    trainer = DistillationTrainer(
        teacher_model=teachers,
        model=student,
        args=args,
        objective=objective,
        train_dataset=Dataset.from_list(rows),
        callbacks=[Losses()],
    )
    trainer.train()
    return losses, student


results = {}
for mode, run in (("loop", with_loop), ("trainer", with_trainer)):
    results[mode], student = run()
    if rank == 0:
        state = {k: v.detach().contiguous() for k, v in student.state_dict().items()}
        save_file(state, str(out / f"student-{mode}.safetensors"))
(out / f"result-{rank}.json").write_text(json.dumps({"processes": world, **results}))
if torch.distributed.is_initialized():
    # as in ddp_run.py: destroy the gloo group before exit-time destructors can abort the process
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
