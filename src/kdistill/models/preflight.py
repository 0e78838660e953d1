"""Checks that a model, its inputs and a batch fit together and fit the machine, before any work.

Each check turns what would otherwise fail minutes into a run (an index error deep inside an
embedding, an out-of-memory kill) into one line that names the setting to change:

* :func:`usable_positions` / :func:`check_max_length`: ``data.max_length`` within the position
  embeddings of every model; :func:`check_generated_length`: a prompt and the tokens generated
  after it (sequence-level KD, on-policy samples) within them too, since both models then read
  the whole sequence; :func:`fit_generation` shortens kdistill's own generations (report samples,
  speed) to fit;
* :func:`check_token_ids`: every token id a tokenizer produced has a row in the model's
  embeddings (a tokenizer of another model would index past them);
* :func:`estimate_parameters` / :func:`check_memory`: a student built from a config, or a
  batch of activations, that cannot fit in the machine's memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from kdistill.errors import ConfigError, ModelLoadError
from kdistill.models.anatomy import model_dims

__all__ = [
    "check_generated_length",
    "check_max_length",
    "check_memory",
    "check_token_ids",
    "estimate_parameters",
    "fit_generation",
    "machine_memory",
    "model_memory_per_layer",
    "usable_positions",
]

_POSITION_NAMES = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
#: families whose position ids start after the padding id (RoBERTa counts from pad_token_id + 1)
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer")


def _config_of(model: nn.Module) -> Any:
    return getattr(model, "config", None)


def usable_positions(model: nn.Module) -> int | None:
    """How many tokens one sequence may hold in ``model``, or None where the config does not say
    (a model without a position limit: no check applies to it)."""
    config = _config_of(model)
    for name in _POSITION_NAMES:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if getattr(config, "model_type", None) in _OFFSET_POSITIONS:
                value -= int(getattr(config, "pad_token_id", 1) or 0) + 1
            return value
    return None


def _tightest(models: Iterable[tuple[str, nn.Module]]) -> tuple[str, int] | None:
    """``(role, positions)`` of the model that holds the fewest tokens; None when none says."""
    limits = [(positions, role) for role, model in models if (positions := usable_positions(model)) is not None]
    if not limits:
        return None
    positions, role = min(limits, key=lambda pair: pair[0])
    return role, positions


def check_max_length(
    max_length: int, models: Iterable[tuple[str, nn.Module]], setting: str = "data.max_length"
) -> None:
    """Refuse a ``max_length`` longer than a model's position embeddings.

    Args:
        max_length: tokens per sequence asked for.
        models: ``(role, model)`` pairs; the one with the fewest positions is named.
        setting: how the user sets ``max_length`` (the config key or the flag).

    Raises:
        ConfigError: naming the model and the most it takes.
    """
    tightest = _tightest(models)
    if tightest is not None and max_length > tightest[1]:
        role, positions = tightest
        raise ConfigError(
            f"{setting} {max_length} is more than the {role}'s {positions} token positions: it would "
            f"fail on the first text that long; set {setting} to {positions} or less"
        )


def check_generated_length(
    longest_prompt: int,
    new_tokens: int,
    models: Iterable[tuple[str, nn.Module]],
    setting: str,
    prompts: str,
) -> None:
    """Refuse generating ``new_tokens`` after prompts of up to ``longest_prompt`` tokens where the
    whole sequence would not fit a model's position embeddings (every model reads it after: the
    student learns it, the teacher scores it).

    Args:
        longest_prompt: tokens of the longest prompt generation starts from.
        new_tokens: tokens generated after it.
        models: ``(role, model)`` pairs; the one with the fewest positions is named.
        setting: the config block that sets ``new_tokens`` (``objective.on_policy``).
        prompts: what makes the prompts that long, with the keys that set it, for the message.

    Raises:
        ConfigError: naming ``new_tokens``, the prompt, the model and the most ``new_tokens`` may be.
    """
    tightest = _tightest(models)
    reached = longest_prompt + new_tokens
    if tightest is None or reached <= tightest[1]:
        return
    role, positions = tightest
    room = positions - longest_prompt
    fix = f"set {setting}.new_tokens to {room} or less" if room >= 1 else "shorten the prompts"
    raise ConfigError(
        f"{setting}.new_tokens {new_tokens} after prompts of up to {longest_prompt} tokens ({prompts}) makes "
        f"sequences of {reached} tokens, more than the {role}'s {positions} token positions: it would fail "
        f"mid-run; {fix}"
    )


def fit_generation(prompt_tokens: int, new_tokens: int, models: Iterable[nn.Module]) -> tuple[int, int]:
    """``(prompt_tokens, new_tokens)`` shortened so that a prompt and its continuation fit every
    model's positions: the prompt gives way first, and ``new_tokens`` keeps at most half of them."""
    limits = [positions for model in models if (positions := usable_positions(model)) is not None]
    if not limits or prompt_tokens + new_tokens <= min(limits):
        return prompt_tokens, new_tokens
    positions = min(limits)
    new_tokens = max(1, min(new_tokens, positions // 2))
    return max(1, min(prompt_tokens, positions - new_tokens)), new_tokens


def check_token_ids(columns: Sequence[Sequence[int]], model: nn.Module, role: str, tokenizer_setting: str) -> None:
    """Refuse token ids past the model's embedding rows (a tokenizer that belongs to another model).

    Args:
        columns: the token ids of every example.
        model: the model that reads them.
        role: ``teacher`` or ``student``, for the message.
        tokenizer_setting: where the tokenizer came from (``student.tokenizer``), for the message.

    Raises:
        ModelLoadError: naming the largest id and the embedding size.
    """
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if not isinstance(rows, int):
        return
    largest = max((max(ids) for ids in columns if len(ids)), default=-1)
    if largest >= rows:
        raise ModelLoadError(
            f"the tokenizer produces token id {largest:,} but the {role}'s embeddings have {rows:,} "
            f"rows: the tokenizer ({tokenizer_setting}) does not belong to this model; give the "
            "model's own tokenizer"
        )


def machine_memory() -> int | None:
    """Bytes of memory of this machine (the GPU's where training runs on one), or None if unknown."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def estimate_parameters(num_layers: int, hidden_size: int, intermediate_size: int, vocab_size: int) -> int:
    """Parameters of a transformer of these sizes: per layer 4·H² (attention) + 2·H·I (feed-forward),
    plus V·H of embeddings; biases and norms are a rounding error."""
    return num_layers * (4 * hidden_size**2 + 2 * hidden_size * intermediate_size) + vocab_size * hidden_size


def model_memory_per_layer(model: nn.Module, batch: int, length: int, *, all_layers: bool = False) -> float:
    """Bytes of activations one transformer layer of ``model`` keeps for a batch, in float32
    (Korthikanti et al. 2022: ``34·s·b·h + 5·a·s²·b`` bytes at 16 bits); for every layer with
    ``all_layers`` (training keeps them all for backward). 0 for a model without a config."""
    try:
        dims = model_dims(model)
    except TypeError:
        return 0.0
    one = 2.0 * batch * length * (34 * dims.hidden_size + 5 * (dims.num_heads or 1) * length)
    return one * (dims.num_layers if all_layers else 1)


def check_memory(what: str, bytes_needed: float, fix: str) -> None:
    """Refuse work that needs more memory than the machine has at all.

    Args:
        what: what needs the memory (``the student's weights and optimizer state``).
        bytes_needed: the estimate.
        fix: the setting to change.

    Raises:
        ConfigError: the estimate exceeds the machine's total memory.
    """
    total = machine_memory()
    if total is not None and bytes_needed > total:
        raise ConfigError(
            f"{what} would need about {bytes_needed / 1e9:,.0f} GB, more than this machine's "
            f"{total / 1e9:,.0f} GB of memory; {fix}"
        )
