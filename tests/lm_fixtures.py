"""Causal-LM test fixtures, built here and never downloaded: a byte-level BPE tokenizer with a
ChatML template, tiny decoders of each supported family, and a folder holding a teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHATML",
    "CORPUS",
    "DECODERS",
    "PLAY",
    "RecordingSGD",
    "loop_gradients",
    "make_tokenizer",
    "one_step_arguments",
    "ragged_rows",
    "step_setup",
    "tiny_decoder",
    "write_teacher",
]

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


def _llama_like(config_class: str) -> Any:
    """A config builder for the Llama-shaped families (grouped-query attention: 4 heads, 2 for keys/values)."""

    def build(vocab: int, layers: int, hidden: int, tie: bool, positions: int = 128) -> Any:
        import transformers

        return getattr(transformers, config_class)(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=positions,
            tie_word_embeddings=tie,
        )

    return build


def _gpt2(vocab: int, layers: int, hidden: int, tie: bool, positions: int = 128) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab,
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        n_positions=positions,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=tie,
    )


#: family name -> config builder (vocabulary, layers, hidden, tied[, positions])
DECODERS = {
    "llama": _llama_like("LlamaConfig"),
    "qwen2": _llama_like("Qwen2Config"),
    "mistral": _llama_like("MistralConfig"),
    "gpt2": _gpt2,
}


def tiny_decoder(
    family: str = "llama",
    *,
    vocab: int = 300,
    layers: int = 4,
    hidden: int = 32,
    tie: bool = True,
    seed: int = 0,
    positions: int = 128,
) -> Any:
    """A randomly initialised ``AutoModelForCausalLM`` of ``family``, small enough for unit tests
    (``positions``: its position embeddings, ``max_position_embeddings`` / ``n_positions``)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = DECODERS[family](vocab, layers, hidden, tie, positions)
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


# ---------------------------------------------------------------------------
# one optimizer step of token-level distillation (the normalisation tests and their DDP script)
# ---------------------------------------------------------------------------


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps the gradients of its first step by parameter name (under DDP, averaged by then)."""

    def __init__(self, named: list[tuple[str, torch.nn.Parameter]], lr: float = 0.1) -> None:
        self.names = [name for name, _ in named]
        self.recorded: dict[str, torch.Tensor] = {}
        super().__init__([parameter for _, parameter in named], lr=lr)

    def step(self, closure: Any = None) -> Any:
        if not self.recorded:
            params = self.param_groups[0]["params"]
            self.recorded = {name: p.grad.detach().clone() for name, p in zip(self.names, params, strict=True)}
        return super().step(closure)


def step_setup(vocab: int = 64) -> tuple[Any, Any, Any, RecordingSGD]:
    """Teacher, student, a token-level objective (chunks of 5 and 7 tokens) and a recording optimizer."""
    from kdistill import Objective
    from kdistill.losses.token_terms import TokenCE, TokenKD

    teacher = tiny_decoder("llama", vocab=vocab, layers=3, hidden=32, seed=1)
    student = tiny_decoder("llama", vocab=vocab, layers=2, hidden=32, seed=2).train()
    objective = Objective(
        {"kd": TokenKD("forward_kl", temperature=2.0, chunk_size=5), "ce": TokenCE(chunk_size=7)},
        weights={"kd": 0.6, "ce": 0.4},
    )
    return teacher, student, objective, RecordingSGD(list(student.named_parameters()))


def one_step_arguments(output_dir: Path, per_batch: int, accumulation: int, *, processes: int = 1) -> Any:
    """``TrainingArguments`` of one plain SGD step (no clipping, no schedule), on the CPU."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
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
        ddp_backend="gloo" if processes > 1 else None,
    )


def loop_gradients(per_batch: int, accumulation: int, *, wrap: Any = None) -> dict[str, torch.Tensor]:
    """The student's gradients of one step of the plain loop over :func:`ragged_rows`, taken in
    micro-batches of ``per_batch`` examples, ``accumulation`` of them (``wrap`` may replace the objective)."""
    from kdistill import distill
    from kdistill.data.datasets import PaddingCollator

    teacher, student, objective, optimizer = step_setup()
    loader = torch.utils.data.DataLoader(ragged_rows(vocab=64), batch_size=per_batch, collate_fn=PaddingCollator())
    distill(
        teacher,
        student,
        loader,
        objective=wrap(objective) if wrap is not None else objective,
        optimizer=optimizer,
        gradient_accumulation_steps=accumulation,
        max_grad_norm=None,
        max_steps=1,
        progress=False,
    )
    return optimizer.recorded
