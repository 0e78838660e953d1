"""Causal-LM test fixtures, built here and never downloaded: a byte-level BPE tokenizer with a
ChatML template, tiny decoders of each supported family, and a folder holding a teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["CHATML", "CORPUS", "DECODERS", "PLAY", "make_tokenizer", "ragged_rows", "tiny_decoder", "write_teacher"]

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "to be or not to be, that is the question",
    "the user asks a question and the assistant answers it",
    "hello world, how are you today? fine, thank you",
]
SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

#: a few lines in the manner of the plays, to train and test on
PLAY = (
    "KING. Now is the winter of our discontent made glorious summer by this sun.\n"
    "QUEEN. What say you, my lord? Speak, for the hour is late and the night is cold.\n"
    "FOOL. The cat sat on the mat, and the dog sat on the log, and so the world goes round.\n"
)


def make_tokenizer(
    vocab_size: int = 300, *, chat_template: str | None = CHATML, eos: bool = True, corpus: list[str] | None = None
) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` that adds ``<s>`` in front when asked to add special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator((corpus or CORPUS) * 5, trainer)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>" if eos else None,
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=chat_template,
    )


def _llama(vocab: int, layers: int, hidden: int, tie: bool) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )


def _qwen2(vocab: int, layers: int, hidden: int, tie: bool) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )


def _mistral(vocab: int, layers: int, hidden: int, tie: bool) -> Any:
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )


def _gpt2(vocab: int, layers: int, hidden: int, tie: bool) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab,
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        n_positions=128,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=tie,
    )


#: family name -> config builder (vocabulary, layers, hidden, tied)
DECODERS = {"llama": _llama, "qwen2": _qwen2, "mistral": _mistral, "gpt2": _gpt2}


def tiny_decoder(
    family: str = "llama", *, vocab: int = 300, layers: int = 4, hidden: int = 32, tie: bool = True, seed: int = 0
) -> Any:
    """A randomly initialised ``AutoModelForCausalLM`` of ``family``, small enough for unit tests."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = DECODERS[family](vocab, layers, hidden, tie)
    return AutoModelForCausalLM.from_config(config).eval()


def write_teacher(folder: Path, family: str = "llama", *, tokenizer: Any | None = None, **options: Any) -> Path:
    """Save a tiny decoder and its tokenizer into ``folder`` (a ``save_pretrained`` folder)."""
    tokenizer = tokenizer if tokenizer is not None else make_tokenizer()
    model = tiny_decoder(family, vocab=len(tokenizer), **options)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def ragged_rows(count: int = 8, *, vocab: int = 64, longest: int = 12, seed: int = 0) -> list[dict[str, list[int]]]:
    """Examples of different lengths whose first tokens are a masked prompt of different lengths, so
    that examples hold very different numbers of target tokens (one holds none at all)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for index in range(count):
        length = int(torch.randint(3, longest + 1, (1,), generator=generator))
        ids = torch.randint(3, vocab, (length,), generator=generator).tolist()
        prompt = length if index == count - 1 else int(torch.randint(0, length - 1, (1,), generator=generator))
        labels = [-100] * prompt + ids[prompt:]
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": labels})
    return rows
