"""Distil a wide MLP into a small one on scikit-learn's handwritten digits (offline, ~10 s on a CPU).

Run:  python examples/digits_distill.py [--epochs N] [--seed S]

It trains a teacher (64-512-512-10), then the same small student (64-16-10), from the same
initial weights and on the same data, twice: once alone on the hard labels, once with
kdistill's ``train_distillation`` (T = 4, alpha = 0.7), and prints the test accuracy, size and
speed of each.
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdistill import train_distillation


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(inputs).argmax(-1) == labels).float().mean().item()


def train_alone(model: nn.Module, loader: DataLoader, epochs: int, lr: float) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for inputs, labels in loader:
            loss = nn.functional.cross_entropy(model(inputs), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def latency_ms(model: nn.Module, inputs: torch.Tensor, repeats: int = 200) -> float:
    model.eval()
    with torch.no_grad():
        for _ in range(10):
            model(inputs)
        start = time.perf_counter()
        for _ in range(repeats):
            model(inputs)
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="student epochs (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=args.seed, stratify=y)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=32, shuffle=True)

    start = time.perf_counter()
    teacher = mlp([64, 512, 512, 10])
    train_alone(teacher, DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True), 30, 1e-3)

    torch.manual_seed(args.seed + 1)
    alone = mlp([64, 16, 10])
    distilled = mlp([64, 16, 10])
    distilled.load_state_dict(alone.state_dict())  # same initial weights: only the teacher differs
    train_alone(alone, loader, args.epochs, 3e-3)
    train_distillation(
        teacher,
        distilled,
        loader,
        torch.optim.Adam(distilled.parameters(), lr=3e-3),
        epochs=args.epochs,
        temperature=4.0,
        alpha=0.7,
        progress=False,
    )

    probe = x_test[:256]
    teacher_ms = latency_ms(teacher, probe)
    rows = [("teacher", teacher), ("student alone", alone), ("student distilled", distilled)]
    print(f"{'model':<28}{'test acc':>9}{'params':>9}{'speed-up':>10}")
    for name, model in rows:
        params = sum(p.numel() for p in model.parameters())
        speedup = 1.0 if model is teacher else teacher_ms / latency_ms(model, probe)
        print(f"{name:<28}{accuracy(model, x_test, y_test):>9.3f}{params:>9,}{speedup:>9.1f}x")
    print(f"total time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
