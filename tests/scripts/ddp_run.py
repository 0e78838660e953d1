"""Distillation under DDP for the tests: launched with torchrun (2 processes, gloo) or alone.

Usage: ddp_run.py loop|trainer OUT BATCH_PER_PROCESS
Writes OUT/result-<rank>.json (loss curve, saved-checkpoint count) and OUT/student.safetensors (rank 0).
"""

import json
import logging
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification

torch.set_num_threads(1)
mode, out, per_process = sys.argv[1], sys.argv[2], int(sys.argv[3])
rank = int(os.environ.get("RANK", "0"))
os.makedirs(out, exist_ok=True)


def bert(layers, hidden, seed):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


teacher, student = bert(3, 48, 1), bert(2, 32, 2)
generator = torch.Generator().manual_seed(0)
ids = torch.randint(1, 64, (32, 10), generator=generator)
rows = [{"input_ids": ids[i].tolist(), "attention_mask": [1] * 10, "labels": int(ids[i, 0]) % 3} for i in range(32)]

saves = []


class CountSaves(logging.Handler):
    def emit(self, record):
        if "saved checkpoint" in record.getMessage():
            saves.append(record.getMessage())


logging.getLogger("kdistill").addHandler(CountSaves())
logging.getLogger("kdistill").setLevel(logging.INFO)

if mode == "loop":
    from kdistill import Objective, distill

    examples = [{k: torch.tensor(v) for k, v in row.items()} for row in rows]
    loader = torch.utils.data.DataLoader(examples, batch_size=per_process, shuffle=False)
    history = distill(
        teacher,
        student,
        loader,
        objective=Objective.hinton(4.0, 0.7),
        optimizer=torch.optim.SGD(student.parameters(), lr=0.5),
        epochs=2,
        max_grad_norm=None,
        checkpoint_dir=f"{out}/checkpoints",
        save_every=2,
        log_every=1,
        progress=False,
    )
    losses = [record["loss"] for record in history.steps]
else:
    from datasets import Dataset
    from transformers import TrainerCallback, TrainingArguments

    from kdistill import DistillationTrainer

    losses = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    args = TrainingArguments(
        output_dir=f"{out}/trainer",
        per_device_train_batch_size=per_process,
        num_train_epochs=2,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="steps",
        save_steps=4,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )
    trainer = DistillationTrainer(
        teacher_model=teacher,
        model=student,
        args=args,
        train_dataset=Dataset.from_list(rows),
        callbacks=[Losses()],
        temperature=4.0,
        alpha=0.7,
    )
    trainer.train()

with open(f"{out}/result-{rank}.json", "w") as handle:
    json.dump({"losses": losses, "saves": len(saves)}, handle)
if rank == 0:
    save_file({k: v.detach().contiguous() for k, v in student.state_dict().items()}, f"{out}/student.safetensors")
if torch.distributed.is_initialized():
    # tear the group down before the interpreter does: a gloo group left to exit-time destructors
    # has aborted a child process (SIGABRT) after its results were written
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
