"""One optimizer step of token-level distillation, alone or under DDP (torchrun, gloo), for the tests.

Usage: lm_ddp_run.py OUT EXAMPLES_PER_MICRO_BATCH MICRO_BATCHES
Takes the step with the loop and with the Trainer (fresh models each); writes the student's
gradients of each as OUT/gradients-loop.safetensors and OUT/gradients-trainer.safetensors (rank 0),
and OUT/done.json.
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for lm_fixtures

from lm_fixtures import ragged_rows, tiny_decoder

from kdistill import DistillationTrainer, Objective, distill
from kdistill.datasets import PaddingCollator
from kdistill.losses.token_terms import TokenCE, TokenKD

torch.set_num_threads(1)
out, per_batch, accumulation = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
out.mkdir(parents=True, exist_ok=True)
rows = ragged_rows(vocab=64)


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps the gradients of its first step by parameter name (DDP has averaged them by then)."""

    def __init__(self, named):
        self.names = [name for name, _ in named]
        self.recorded = {}
        super().__init__([p for _, p in named], lr=0.1)

    def step(self, closure=None):
        if not self.recorded:
            self.recorded = {n: p.grad.detach().clone() for n, p in zip(self.names, self.param_groups[0]["params"])}
        return super().step(closure)


def setup():
    teacher = tiny_decoder("llama", vocab=64, layers=3, hidden=32, seed=1)
    student = tiny_decoder("llama", vocab=64, layers=2, hidden=32, seed=2).train()
    objective = Objective(
        {"kd": TokenKD("forward_kl", temperature=2.0, chunk_size=5), "ce": TokenCE(chunk_size=7)},
        weights={"kd": 0.6, "ce": 0.4},
    )
    return teacher, student, objective, RecordingSGD(list(student.named_parameters()))


def with_loop():
    teacher, student, objective, optimizer = setup()
    loader = torch.utils.data.DataLoader(rows, batch_size=per_batch, collate_fn=PaddingCollator())
    distill(
        teacher,
        student,
        loader,
        objective=objective,
        optimizer=optimizer,
        gradient_accumulation_steps=accumulation,
        max_grad_norm=None,
        max_steps=1,
        progress=False,
    )
    return optimizer.recorded


def with_trainer():
    from datasets import Dataset
    from transformers import TrainingArguments

    teacher, student, objective, optimizer = setup()
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=per_batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        logging_strategy="no",
        seed=0,
        ddp_backend="gloo" if world > 1 else None,
    )
    trainer = DistillationTrainer(
        teacher_model=teacher,
        model=student,
        args=args,
        objective=objective,
        train_dataset=Dataset.from_list(rows),
        data_collator=PaddingCollator(),
        optimizers=(optimizer, None),
    )
    trainer.train()
    return optimizer.recorded


for mode, run in (("loop", with_loop), ("trainer", with_trainer)):
    recorded = run()
    if rank == 0:
        save_file(
            {name: grad.contiguous() for name, grad in recorded.items()}, str(out / f"gradients-{mode}.safetensors")
        )
if rank == 0:
    (out / "done.json").write_text(json.dumps({"processes": world}))
