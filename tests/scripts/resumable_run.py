"""A distillation run with checkpoints, for the kill-and-resume test: prints nothing, writes the
final student to OUT/final.safetensors. Usage: resumable_run.py OUT [--resume] [--slow SECONDS]"""

import sys
import time

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification

from kdistill import Objective, distill

torch.set_num_threads(1)
out = sys.argv[1]
resume = "--resume" in sys.argv
slow = float(sys.argv[sys.argv.index("--slow") + 1]) if "--slow" in sys.argv else 0.0


def bert(layers, hidden, seed):
    torch.manual_seed(seed)
    # dropout on: resuming must restore the RNG exactly for the same masks
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=64,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=2 * hidden,
            max_position_embeddings=32,
            num_labels=3,
        )
    )


teacher, student = bert(3, 48, 1), bert(2, 32, 2)
generator = torch.Generator().manual_seed(0)
ids = torch.randint(1, 64, (48, 10), generator=generator)
examples = [
    {
        "input_ids": ids[i],
        "attention_mask": torch.ones(10, dtype=torch.long),
        "labels": torch.tensor(int(ids[i, 0]) % 3),
    }
    for i in range(48)
]
torch.manual_seed(123)  # the shuffle draws from the global RNG, as in most scripts
loader = torch.utils.data.DataLoader(examples, batch_size=4, shuffle=True)
optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.1, total_iters=36)


def pause(model):
    time.sleep(slow)
    return {}


distill(
    teacher,
    student,
    loader,
    objective=Objective.hinton(4.0, 0.7),
    optimizer=optimizer,
    scheduler=scheduler,
    epochs=3,
    gradient_accumulation_steps=2,
    checkpoint_dir=f"{out}/checkpoints",
    save_every=1,
    keep_checkpoints=3,
    resume=resume,
    progress=False,
    eval_fn=pause if slow else None,
    eval_every=1 if slow else None,
)
save_file({k: v.contiguous() for k, v in student.state_dict().items()}, f"{out}/final.safetensors")
