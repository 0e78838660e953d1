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

from lm_fixtures import loop_gradients, one_step_arguments, ragged_rows, step_setup

from kdistill import DistillationTrainer
from kdistill.data.datasets import PaddingCollator

torch.set_num_threads(1)
out, per_batch, accumulation = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
out.mkdir(parents=True, exist_ok=True)
rows = ragged_rows(vocab=64)


def with_trainer():
    from datasets import Dataset

    teacher, student, objective, optimizer = step_setup()
    trainer = DistillationTrainer(
        teacher_model=teacher,
        model=student,
        args=one_step_arguments(out / "trainer", per_batch, accumulation, processes=world),
        objective=objective,
        train_dataset=Dataset.from_list(rows),
        data_collator=PaddingCollator(),
        optimizers=(optimizer, None),
    )
    trainer.train()
    return optimizer.recorded


for mode, run in (("loop", lambda: loop_gradients(per_batch, accumulation)), ("trainer", with_trainer)):
    recorded = run()
    if rank == 0:
        save_file(
            {name: grad.contiguous() for name, grad in recorded.items()}, str(out / f"gradients-{mode}.safetensors")
        )
if rank == 0:
    (out / "done.json").write_text(json.dumps({"processes": world}))
if torch.distributed.is_initialized():
    # as in ddp_run.py: destroy the gloo group before exit-time destructors can abort the process
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
