"""Causal-LM test fixtures, built here and never downloaded: a byte-level BPE tokenizer with a
ChatML template, tiny decoders of each supported family, a folder holding a teacher, and a tiny
GGUF file."""

from __future__ import annotations

import json
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
    "write_gguf",
    "write_plays",
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


def write_plays(root: Path, *, test: bool = True, **teacher_options: Any) -> Path:
    """``root`` with a tiny Llama teacher (``teacher/``) and the plays to train, validate and test on."""
    write_teacher(root / "teacher", **teacher_options)
    (root / "train.txt").write_text(PLAY * 12, encoding="utf-8")
    (root / "validation.txt").write_text(PLAY * 2, encoding="utf-8")
    if test:
        (root / "test.txt").write_text(PLAY[::-1] + PLAY, encoding="utf-8")
    return root


#: a Llama layer's weights by their names in transformers and in a GGUF file
_GGUF_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _rotary_order(weight: Any, heads: int) -> Any:
    """A query or key projection in llama.cpp's order of the rotary halves (transformers undoes it on loading)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(path: Path, *, tokenizer: Any | None = None, layers: int = 4, seed: int = 0) -> tuple[Any, Any]:
    """Write a tiny Llama and its byte-level BPE tokenizer as the GGUF file ``path``, its matrices
    quantised to Q8_0 (so that loading it dequantises, as a real GGUF teacher's Q4_1 does).

    Returns:
        ``(model, tokenizer)``: the float model the file was written from, and the tokenizer.
    """
    import gguf

    tokenizer = tokenizer if tokenizer is not None else make_tokenizer()
    # transformers' GGUF tokenizer (GPT2Tokenizer) adds <|endoftext|> when the vocabulary lacks it, as
    # every real byte-level GGUF vocabulary has it: so does this one, and the two tokenizers agree
    tokenizer.add_tokens(["<|endoftext|>"], special_tokens=True)
    model = tiny_decoder("llama", vocab=len(tokenizer), layers=layers, seed=seed)
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    specials = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in specials else 1 for token in tokens])  # 3: control, 1: normal
    writer.add_token_merges([" ".join(merge) if isinstance(merge, list) else merge for merge in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    weights = model.state_dict()

    def add(name: str, tensor: torch.Tensor) -> None:
        array = tensor.detach().float().numpy()
        if array.ndim == 2 and array.shape[-1] % 32 == 0:
            kind = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, array)

    add("token_embd.weight", weights["model.embed_tokens.weight"])  # tied: the file has no output.weight
    add("output_norm.weight", weights["model.norm.weight"])
    for index in range(config.num_hidden_layers):
        for ours, theirs in _GGUF_LAYER.items():
            tensor = weights[f"model.layers.{index}.{ours}.weight"]
            if theirs in ("attn_q", "attn_k"):
                heads = config.num_attention_heads if theirs == "attn_q" else config.num_key_value_heads
                tensor = torch.from_numpy(_rotary_order(tensor.numpy(), heads))
            add(f"blk.{index}.{theirs}.weight", tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model, tokenizer


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
