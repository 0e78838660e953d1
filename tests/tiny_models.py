"""Tiny encoders of each supported family, built from a config (no downloads), and padding helpers."""

from __future__ import annotations

import torch
from conftest import VOCAB, tiny_bert, token_batches

__all__ = ["FAMILIES", "batch_for", "build", "image_batch", "pad_more", "text_batch", "two_teachers"]


def _roberta(num_layers: int, hidden: int, heads: int, seed: int, attn: str):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=72,
        num_labels=3,
        pad_token_id=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation=attn,
    )
    return RobertaForSequenceClassification(config)


def _xlm_roberta(num_layers: int, hidden: int, heads: int, seed: int, attn: str):
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=72,
        num_labels=3,
        pad_token_id=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation=attn,
    )
    return XLMRobertaForSequenceClassification(config)


def _distilbert(num_layers: int, hidden: int, heads: int, seed: int, attn: str):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=VOCAB,
        dim=hidden,
        n_layers=num_layers,
        n_heads=heads,
        hidden_dim=hidden * 2,
        max_position_embeddings=64,
        num_labels=3,
        dropout=0.0,
        attention_dropout=0.0,
        seq_classif_dropout=0.0,
        attn_implementation=attn,
    )
    return DistilBertForSequenceClassification(config)


def _vit(num_layers: int, hidden: int, heads: int, seed: int, attn: str, deit: bool = False):
    from transformers import DeiTConfig, DeiTForImageClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config_class, model_class = (
        (DeiTConfig, DeiTForImageClassification) if deit else (ViTConfig, ViTForImageClassification)
    )
    config = config_class(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation=attn,
    )
    return model_class(config)


def _bert(num_layers: int, hidden: int, heads: int, seed: int, attn: str):
    model = tiny_bert(num_layers=num_layers, hidden=hidden, heads=heads, seed=seed)
    if attn != "sdpa":
        model.set_attn_implementation(attn)
    return model


FAMILIES = {
    "bert": _bert,
    "roberta": _roberta,
    "xlm-roberta": _xlm_roberta,
    "distilbert": _distilbert,
    "vit": _vit,
    "deit": lambda *args: _vit(*args, deit=True),
}


def build(family: str, num_layers: int = 2, hidden: int = 32, heads: int = 4, seed: int = 0, attn: str = "sdpa"):
    """A tiny classifier of ``family`` with the given attention implementation, in eval mode."""
    return FAMILIES[family](num_layers, hidden, heads, seed, attn).eval()


def two_teachers() -> dict:
    """Two tiny BERT teachers ``a`` and ``b`` of different shapes, confident and unlike each other."""
    teachers = {"a": build("bert", 2, 48, seed=1), "b": build("bert", 3, 32, seed=3)}
    with torch.no_grad():
        for teacher in teachers.values():
            # a random classifier's logits are near 0 for every teacher: the soft labels would carry no signal
            teacher.classifier.weight.mul_(150)
    return teachers


def text_batch(batch_size: int = 4, length: int = 10, seed: int = 0, num_batches: int = 1):
    """A dict batch with right padding (some rows shorter), labels removed."""
    batches = token_batches(num_batches=num_batches, batch_size=batch_size, length=length, seed=seed)
    for batch in batches:
        # ids 0 and 1 are padding ids of BERT and RoBERTa: keep real tokens away from them
        batch["input_ids"] = torch.where(batch["attention_mask"].bool(), batch["input_ids"].clamp_min(2), 1)
    return batches if num_batches > 1 else batches[0]


def image_batch(batch_size: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(batch_size, 3, 16, 16, generator=generator),
        "labels": torch.randint(0, 3, (batch_size,), generator=generator),
    }


def batch_for(family: str, **kwargs):
    return (
        image_batch(**{k: v for k, v in kwargs.items() if k in ("batch_size", "seed")})
        if family in ("vit", "deit")
        else text_batch(**kwargs)
    )


def pad_more(batch: dict, extra: int, pad_id: int = 1) -> dict:
    """The same batch with ``extra`` more padding positions at the end of every row."""
    padded = dict(batch)
    rows = batch["input_ids"].shape[0]
    padded["input_ids"] = torch.cat([batch["input_ids"], torch.full((rows, extra), pad_id, dtype=torch.long)], dim=1)
    padded["attention_mask"] = torch.cat(
        [batch["attention_mask"], torch.zeros(rows, extra, dtype=batch["attention_mask"].dtype)], dim=1
    )
    return padded
