"""Shared fixtures: tiny models built from a config (no downloads) and small synthetic batches."""

from __future__ import annotations

import os

# Tiny test models gain nothing from several threads, and OpenMP threads that spin-wait slow
# everything down badly when the cores are shared. Set before torch loads; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch
from torch import nn

torch.set_num_threads(1)

#: the workspace's real data (../shared/data beside the repository), which a user's clone does not
#: have; KDISTILL_SHARED_DATA moves it (.ci/run points it at an empty folder for a pass that checks
#: every test reading it skips cleanly). Tests reach it only through :func:`shared_data`.
SHARED_DATA = Path(os.environ.get("KDISTILL_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def shared_data(*parts: str) -> Path:
    """A folder or file under :data:`SHARED_DATA`; skips the calling test where it is absent. A test
    that calls it carries ``@pytest.mark.shared_data`` (tests/test_offline_suite.py checks)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {Path('../shared/data', *parts)} (the workspace's data; absent on a user's machine)")
    return path


VOCAB = 64


def tiny_bert(num_layers: int = 2, hidden: int = 32, heads: int = 4, num_labels: int = 3, seed: int = 0):
    """A BertForSequenceClassification small enough for unit tests, without dropout (deterministic)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def mlp(in_features: int = 16, hidden: int = 64, classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def token_batches(num_batches: int = 4, batch_size: int = 8, length: int = 12, num_labels: int = 3, seed: int = 0):
    """Dict batches like a Hugging Face collator makes: input_ids, attention_mask (with padding), labels."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        input_ids = torch.randint(1, VOCAB, (batch_size, length), generator=generator)
        lengths = torch.randint(length // 2, length + 1, (batch_size,), generator=generator)
        attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        input_ids = input_ids * attention_mask
        labels = torch.randint(0, num_labels, (batch_size,), generator=generator)
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    return batches


@pytest.fixture
def bert_pair():
    """A 4-layer teacher and a 2-layer student sharing vocabulary and labels."""
    return tiny_bert(num_layers=4, hidden=48, seed=1), tiny_bert(num_layers=2, hidden=32, seed=2)
