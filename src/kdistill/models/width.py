"""Width pruning by measured activation importance, after Minitron (Muralidharan et al., 2024).

A narrower student need not start from random weights. Calibration batches go through the teacher,
forward hooks measure how strongly each hidden channel, each MLP channel and each attention head is
used (:func:`measure_width_importance`), and the student keeps the most used ones: every weight and
bias of the teacher, sliced to the kept rows and columns (:func:`plan_width_pruning`, then
:meth:`WidthPlan.take` per tensor; :func:`kdistill.models.student.make_student` does both).

How each family's parameters run over the widths is one table per family (:data:`WIDTH_FAMILIES`):
a regex on the parameter name says, for each dimension of the tensor, which width it runs over.
Kept indices are sorted ascending, so the kept channels stay in the teacher's order and a plan that
keeps everything reproduces the teacher exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from kdistill.models.anatomy import config_int, layer_stack, model_type_of

__all__ = [
    "WIDTH_FAMILIES",
    "Axis",
    "WidthFamily",
    "WidthImportance",
    "WidthPlan",
    "head_dim_of",
    "measure_width_importance",
    "plan_width_pruning",
    "width_family",
]

#: the width one dimension of a parameter runs over; None: kept whole (vocabulary, positions, labels)
Axis = Literal["hidden", "ffn", "query", "kv", "qkv"] | None

HIDDEN: Axis = "hidden"
FFN: Axis = "ffn"
QUERY: Axis = "query"  # query heads × head_dim
KV: Axis = "kv"  # key/value heads × head_dim
QKV: Axis = "qkv"  # GPT-2's fused c_attn: query | key | value, each heads × head_dim


@dataclass(frozen=True)
class WidthFamily:
    """How one architecture lays its parameters out over the widths that pruning narrows.

    Attributes:
        name: the family as messages name it.
        norms: regex on module paths (from the model) of the LayerNorm/RMSNorm modules, whose
            outputs are the hidden channels measured.
        ffn_input: path, relative to one layer, of the MLP's down projection (its input is the
            MLP's activation).
        heads_input: path, relative to one layer, of the attention output projection (its input
            is the heads' outputs side by side).
        head_dim_in_config: whether the model reads ``config.head_dim`` (Llama, Qwen2, Mistral),
            so that it can stay the teacher's whatever the width; GPT-2 and BERT derive it as
            ``hidden_size / num_heads``.
        parameters: ``(regex, axes)`` pairs; the first regex that matches the end of a parameter's
            name gives, for each dimension of the tensor, the width it runs over. Conv1D's
            ``[in, out]`` layout is simply written in that order.
    """

    name: str
    norms: str
    ffn_input: str
    heads_input: str
    head_dim_in_config: bool
    parameters: tuple[tuple[str, tuple[Axis, ...]], ...]
    compiled: tuple[tuple[re.Pattern[str], tuple[Axis, ...]], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = tuple((re.compile(rf"(^|\.){pattern}$"), axes) for pattern, axes in self.parameters)
        object.__setattr__(self, "compiled", compiled)

    def axes(self, name: str) -> tuple[Axis, ...] | None:
        """The widths each dimension of parameter ``name`` runs over; None when no rule names it."""
        for pattern, axes in self.compiled:
            if pattern.search(name):
                return axes
        return None


_DECODER = WidthFamily(
    name="llama",
    norms=r"(^|\.)(input_layernorm|post_attention_layernorm|norm)$",
    ffn_input="mlp.down_proj",
    heads_input="self_attn.o_proj",
    head_dim_in_config=True,
    parameters=(
        (r"embed_tokens\.weight", (None, HIDDEN)),
        (r"(input_layernorm|post_attention_layernorm|norm)\.weight", (HIDDEN,)),
        (r"self_attn\.q_proj\.weight", (QUERY, HIDDEN)),
        (r"self_attn\.q_proj\.bias", (QUERY,)),
        (r"self_attn\.[kv]_proj\.weight", (KV, HIDDEN)),
        (r"self_attn\.[kv]_proj\.bias", (KV,)),
        (r"self_attn\.o_proj\.weight", (HIDDEN, QUERY)),
        (r"self_attn\.o_proj\.bias", (HIDDEN,)),
        (r"mlp\.(gate|up)_proj\.weight", (FFN, HIDDEN)),
        (r"mlp\.(gate|up)_proj\.bias", (FFN,)),
        (r"mlp\.down_proj\.weight", (HIDDEN, FFN)),
        (r"mlp\.down_proj\.bias", (HIDDEN,)),
        (r"(lm_head|score)\.weight", (None, HIDDEN)),
    ),
)

_GPT2 = WidthFamily(
    name="gpt2",
    norms=r"(^|\.)ln_(1|2|f)$",
    ffn_input="mlp.c_proj",
    heads_input="attn.c_proj",
    head_dim_in_config=False,
    parameters=(
        (r"(wte|wpe)\.weight", (None, HIDDEN)),
        (r"ln_(1|2|f)\.(weight|bias)", (HIDDEN,)),
        # Conv1D weights are [in, out]
        (r"attn\.c_attn\.weight", (HIDDEN, QKV)),
        (r"attn\.c_attn\.bias", (QKV,)),
        (r"attn\.c_proj\.weight", (QUERY, HIDDEN)),
        (r"attn\.c_proj\.bias", (HIDDEN,)),
        (r"mlp\.c_fc\.weight", (HIDDEN, FFN)),
        (r"mlp\.c_fc\.bias", (FFN,)),
        (r"mlp\.c_proj\.weight", (FFN, HIDDEN)),
        (r"mlp\.c_proj\.bias", (HIDDEN,)),
        (r"lm_head\.weight", (None, HIDDEN)),
    ),
)

_BERT = WidthFamily(
    name="bert",
    norms=r"(^|\.)LayerNorm$",
    ffn_input="output.dense",
    heads_input="attention.output.dense",
    head_dim_in_config=False,
    parameters=(
        (r"embeddings\.(word|position|token_type)_embeddings\.weight", (None, HIDDEN)),
        (r"LayerNorm\.(weight|bias)", (HIDDEN,)),
        (r"attention\.self\.query\.weight", (QUERY, HIDDEN)),
        (r"attention\.self\.query\.bias", (QUERY,)),
        (r"attention\.self\.(key|value)\.weight", (KV, HIDDEN)),
        (r"attention\.self\.(key|value)\.bias", (KV,)),
        # before output.dense, which would match it too
        (r"attention\.output\.dense\.weight", (HIDDEN, QUERY)),
        (r"attention\.output\.dense\.bias", (HIDDEN,)),
        (r"intermediate\.dense\.weight", (FFN, HIDDEN)),
        (r"intermediate\.dense\.bias", (FFN,)),
        (r"output\.dense\.weight", (HIDDEN, FFN)),
        (r"output\.dense\.bias", (HIDDEN,)),
        # the pooler and the MLM transform map hidden to hidden: their outputs feed layers that read
        # hidden channels (the classifier, the decoder tied to the word embeddings)
        (r"(pooler|cls\.predictions\.transform)\.dense\.weight", (HIDDEN, HIDDEN)),
        (r"(pooler|cls\.predictions\.transform)\.dense\.bias", (HIDDEN,)),
        (r"classifier\.weight", (None, HIDDEN)),
        (r"classifier\.bias", (None,)),
        (r"cls\.predictions\.decoder\.weight", (None, HIDDEN)),
        (r"cls\.predictions\.(decoder\.)?bias", (None,)),
    ),
)

#: ``config.model_type`` -> how that family is pruned
WIDTH_FAMILIES: dict[str, WidthFamily] = {
    "llama": _DECODER,
    "qwen2": replace(_DECODER, name="qwen2"),
    "mistral": replace(_DECODER, name="mistral"),
    "gpt2": _GPT2,
    "bert": _BERT,
}


def width_family(model: nn.Module) -> WidthFamily:
    """How ``model``'s family is pruned in width.

    Raises:
        ValueError: kdistill has no width table for the model's family; names those it has.
    """
    model_type = model_type_of(model)
    family = WIDTH_FAMILIES.get(model_type) if model_type else None
    if family is None:
        raise ValueError(
            f"width pruning knows the model types {', '.join(sorted(WIDTH_FAMILIES))} "
            f"(Llama/SmolLM2, Qwen2, Mistral, GPT-2, BERT), not {type(model).__name__} (model type {model_type!r}); "
            "leave width_importance out for a randomly initialised narrower student"
        )
    return family


@dataclass(frozen=True)
class _Widths:
    hidden: int
    heads: int
    kv: int
    ffn: int
    head_dim: int


def _widths(config: Any) -> _Widths:
    hidden = config_int(config, "hidden_size")
    heads = config_int(config, "num_attention_heads")
    if hidden is None or not heads:
        raise ValueError(f"cannot read hidden_size and num_attention_heads from {type(config).__name__}")
    # GPT-2's n_inner=None means 4 × n_embd
    ffn = config_int(config, "intermediate_size", "n_inner") or 4 * hidden
    return _Widths(hidden, heads, config_int(config, "num_key_value_heads") or heads, ffn, head_dim_of(config))


def head_dim_of(config: Any) -> int:
    """The width of one attention head of a model of ``config``: ``config.head_dim`` where the
    config has one, else ``hidden_size / num_attention_heads``."""
    explicit = config_int(config, "head_dim")
    if explicit:
        return explicit
    hidden, heads = config_int(config, "hidden_size"), config_int(config, "num_attention_heads")
    if not hidden or not heads:
        raise ValueError(f"cannot read hidden_size and num_attention_heads from {type(config).__name__}")
    return hidden // heads


# ---------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class WidthImportance:
    """How strongly a teacher uses each channel and head, measured on calibration batches
    (padding excluded); larger is more important.

    Attributes:
        hidden: ``[H]``, per hidden channel, the mean ``|output|`` of each LayerNorm/RMSNorm,
            summed over the norms.
        ffn: one ``[F]`` per teacher layer: the mean ``|input|`` of the MLP's down projection.
        heads: one ``[num_heads]`` per teacher layer: the mean L2 norm of each head's slice of
            the input of the attention output projection.
        tokens: how many (non-padding) tokens were measured.
    """

    hidden: Tensor
    ffn: tuple[Tensor, ...]
    heads: tuple[Tensor, ...]
    tokens: int

    def __post_init__(self) -> None:
        if len(self.ffn) != len(self.heads):
            raise ValueError(f"WidthImportance has {len(self.ffn)} ffn and {len(self.heads)} heads layers")


def _layers(model: nn.Module) -> nn.ModuleList:
    found = layer_stack(model)
    if found is None:
        raise ValueError(f"cannot find the layer list of {type(model).__name__} to measure or prune")
    return found[1]


def _on_device(batch: Any, device: torch.device) -> dict[str, Any]:
    if not isinstance(batch, Mapping):
        raise TypeError(f"calibration batches must be dicts of tensors (model(**batch)), got {type(batch).__name__}")
    return {key: value.to(device) if isinstance(value, Tensor) else value for key, value in batch.items()}


def measure_width_importance(model: nn.Module, batches: Iterable[Mapping[str, Any]]) -> WidthImportance:
    """Run ``model`` on calibration batches and measure how strongly it uses each hidden channel,
    MLP channel and attention head (Minitron's activation importance).

    The model runs in eval mode under ``no_grad`` (its mode is restored afterwards); forward hooks
    record the activations and are removed afterwards, also when a batch fails. Positions where
    ``attention_mask`` is 0 are left out of every statistic.

    Args:
        model: a Hugging Face model of a family in :data:`WIDTH_FAMILIES`.
        batches: dicts of tensors that the model takes as ``model(**batch)``, each of
            ``(B, L)`` tokens (``input_ids``, optionally ``attention_mask`` ...); tensors are moved
            to the model's device.

    Returns:
        a :class:`WidthImportance` of the model's widths.

    Raises:
        ValueError: the family is not supported, or the batches hold no (non-padding) token.
    """
    family = width_family(model)
    layers = _layers(model)
    widths = _widths(model.config)
    norms = [module for name, module in model.named_modules() if re.search(family.norms, name)]
    if not norms:
        raise ValueError(f"found no normalisation layers in {type(model).__name__} to measure hidden channels on")
    device = next(model.parameters()).device
    sums: dict[Any, Tensor] = {}
    current: dict[str, Any] = {"mask": None, "tokens": 0}

    def real_tokens(x: Tensor) -> Tensor:
        """``(B, L, C)`` -> ``(N, C)``: the activations of the non-padding tokens, in float32."""
        mask = current["mask"]
        if mask is None:
            return x.reshape(-1, x.shape[-1]).float()
        if x.shape[:-1] != mask.shape:
            raise ValueError(
                f"an activation of shape {tuple(x.shape)} does not line up with the attention_mask of shape "
                f"{tuple(mask.shape)}, so padding cannot be left out"
            )
        return x[mask.to(x.device)].float()

    def add(key: Any, value: Tensor) -> None:
        sums[key] = sums[key] + value if key in sums else value

    def on_norm(module: nn.Module, args: Any, output: Tensor) -> None:
        add("hidden", real_tokens(output).abs().sum(0))

    def on_ffn(index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            add(("ffn", index), real_tokens(args[0]).abs().sum(0))

        return hook

    def on_heads(index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = real_tokens(args[0])
            add(("heads", index), x.view(x.shape[0], widths.heads, -1).norm(dim=-1).sum(0))
            if index == 0:  # every hook sees the same tokens: count them once
                current["tokens"] += x.shape[0]

        return hook

    handles = []
    training = model.training
    try:
        handles += [norm.register_forward_hook(on_norm) for norm in norms]
        for index, layer in enumerate(layers):
            handles.append(layer.get_submodule(family.ffn_input).register_forward_pre_hook(on_ffn(index)))
            handles.append(layer.get_submodule(family.heads_input).register_forward_pre_hook(on_heads(index)))
        model.eval()
        with torch.no_grad():
            for batch in batches:
                inputs = _on_device(batch, device)
                mask = inputs.get("attention_mask")
                current["mask"] = mask.bool() if isinstance(mask, Tensor) else None
                model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    tokens = current["tokens"]
    if not tokens:
        raise ValueError("the calibration batches hold no tokens to measure (none given, or all padding)")
    depth = len(layers)
    silent = [i + 1 for i in range(depth) if ("ffn", i) not in sums or ("heads", i) not in sums]
    if silent or "hidden" not in sums:
        raise ValueError(f"layers {silent} of {type(model).__name__} did not run on the calibration batches")
    return WidthImportance(
        hidden=(sums["hidden"] / tokens).cpu(),
        ffn=tuple((sums["ffn", i] / tokens).cpu() for i in range(depth)),
        heads=tuple((sums["heads", i] / tokens).cpu() for i in range(depth)),
        tokens=tokens,
    )


# ---------------------------------------------------------------------------
# pruning
# ---------------------------------------------------------------------------


def _top(scores: Tensor, keep: int) -> Tensor:
    """The indices of the ``keep`` largest ``scores``, in ascending order (ties: the earlier index)."""
    return torch.argsort(scores, descending=True, stable=True)[:keep].sort().values


def _kept_heads(scores: Tensor, kv: int, keep_heads: int, keep_kv: int) -> tuple[Tensor, Tensor]:
    """``(query heads, key/value heads)`` kept, both ascending: the ``keep_kv`` groups whose query
    heads sum to the most, and in each the ``keep_heads / keep_kv`` most important query heads, so
    that every kept query head still reads its own key/value head."""
    group = scores.numel() // kv
    groups = _top(scores.view(kv, group).sum(1), keep_kv)
    per_group = keep_heads // keep_kv
    queries = [int(g) * group + _top(scores[int(g) * group : (int(g) + 1) * group], per_group) for g in groups]
    return torch.cat(queries), groups


def _head_channels(heads: Tensor, head_dim: int) -> Tensor:
    """Heads ``[n]`` -> the ``[n · head_dim]`` channels they occupy."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


@dataclass(frozen=True, eq=False)
class WidthPlan:
    """Which teacher channels a width-pruned student keeps (indices ascending), per teacher layer
    where they differ by layer.

    Attributes:
        family: the family's parameter table.
        hidden: ``[H']`` kept hidden channels.
        ffn: one ``[F']`` of kept MLP channels per teacher layer.
        query_heads: one ``[n']`` of kept query heads per teacher layer.
        kv_heads: one ``[kv']`` of kept key/value heads per teacher layer.
        head_dim: the width of one head (the teacher's, kept).
        query_width: the teacher's query width ``n · head_dim`` (where GPT-2's fused key and
            value start).
        sizes: ``{"hidden" | "heads" | "kv" | "intermediate": (teacher, student)}``.
    """

    family: WidthFamily
    hidden: Tensor
    ffn: tuple[Tensor, ...]
    query_heads: tuple[Tensor, ...]
    kv_heads: tuple[Tensor, ...]
    head_dim: int
    query_width: int
    sizes: dict[str, tuple[int, int]]

    def _index(self, axis: Axis, layer: int | None, name: str) -> Tensor:
        if axis == HIDDEN:
            return self.hidden
        if layer is None:
            raise ValueError(f"{name} runs over {axis} channels, which belong to a layer, but is outside the layers")
        if axis == FFN:
            return self.ffn[layer]
        if axis == KV:
            return _head_channels(self.kv_heads[layer], self.head_dim)
        query = _head_channels(self.query_heads[layer], self.head_dim)
        if axis == QUERY:
            return query
        return torch.cat([query + part * self.query_width for part in range(3)])  # QKV

    def take(self, name: str, tensor: Tensor, layer: int | None = None) -> Tensor:
        """The kept part of one teacher parameter.

        Args:
            name: the teacher's parameter name (``model.layers.3.self_attn.q_proj.weight``).
            tensor: its value.
            layer: the 0-based teacher layer it belongs to; None outside the layers.

        Returns:
            ``tensor`` with each pruned dimension cut to the kept indices: a Llama ``q_proj``
            ``[n · head_dim, H]`` becomes ``[n' · head_dim, H']``, an embedding ``[V, H]`` becomes
            ``[V, H']``.
        """
        axes = self.family.axes(name)
        if axes is None or len(axes) != tensor.dim():
            raise ValueError(
                f"the {self.family.name} width table has no rule for {name} of shape {tuple(tensor.shape)}"
            )
        for dim, axis in enumerate(axes):
            if axis is not None:
                tensor = tensor.index_select(dim, self._index(axis, layer, name).to(tensor.device))
        return tensor


def _check_fits(teacher: _Widths, student: _Widths) -> None:
    for what, have, want in (
        ("hidden_size", teacher.hidden, student.hidden),
        ("num_heads", teacher.heads, student.heads),
        ("num_key_value_heads", teacher.kv, student.kv),
        ("intermediate_size", teacher.ffn, student.ffn),
    ):
        if want > have:
            raise ValueError(f"pruning keeps teacher channels, so {what} {want} cannot exceed the teacher's {have}")
    if student.head_dim != teacher.head_dim:
        raise ValueError(f"pruning keeps the teacher's head_dim {teacher.head_dim}, got {student.head_dim}")
    group = teacher.heads // teacher.kv
    if student.heads % student.kv or student.heads // student.kv > group:
        fits = [kv for kv in range(1, teacher.kv + 1) if student.heads % kv == 0 and student.heads // kv <= group]
        advice = (
            f"use num_key_value_heads={' or '.join(map(str, fits))}"
            if fits
            else f"use num_heads a multiple of num_key_value_heads (at most {teacher.kv}), {group} or fewer per group"
        )
        raise ValueError(
            f"{student.heads} heads on {student.kv} key/value heads cannot keep whole key/value groups of the "
            f"teacher ({teacher.heads} heads in {teacher.kv} groups of {group}); {advice}"
        )


def plan_width_pruning(teacher: nn.Module, importance: WidthImportance, student_config: Any) -> WidthPlan:
    """Choose the teacher channels a student of ``student_config`` keeps: hidden channels ranked
    over the whole model, MLP channels and heads per layer, whole key/value groups.

    Args:
        teacher: the measured teacher.
        importance: :func:`measure_width_importance` of ``teacher``.
        student_config: the student's config, of the teacher's family, no wider and with the
            teacher's ``head_dim``.

    Raises:
        ValueError: the family or one of its parameters is unknown, ``importance`` was measured on
            another model, or the student's widths do not fit in the teacher's.
    """
    family = width_family(teacher)
    unknown = [name for name, value in teacher.state_dict().items() if family.axes(name) is None]
    if unknown:
        raise ValueError(
            f"width pruning of {family.name} does not know {', '.join(unknown[:3])} of {type(teacher).__name__}; "
            "leave width_importance out for a randomly initialised narrower student"
        )
    if not isinstance(importance, WidthImportance):
        raise TypeError(f"width_importance must be a WidthImportance, got {type(importance).__name__}")
    t, s = _widths(teacher.config), _widths(student_config)
    depth = len(_layers(teacher))
    measured = (tuple(importance.hidden.shape), len(importance.ffn), {tuple(f.shape) for f in importance.ffn})
    if measured != ((t.hidden,), depth, {(t.ffn,)}) or {tuple(h.shape) for h in importance.heads} != {(t.heads,)}:
        raise ValueError(
            f"width_importance was measured on another model ({len(importance.ffn)} layers, hidden "
            f"{importance.hidden.numel()}); the teacher has {depth} layers, hidden {t.hidden}, "
            f"intermediate {t.ffn}, {t.heads} heads"
        )
    _check_fits(t, s)
    kept = [_kept_heads(scores, t.kv, s.heads, s.kv) for scores in importance.heads]
    sizes = {"hidden": (t.hidden, s.hidden), "heads": (t.heads, s.heads)}
    if config_int(teacher.config, "num_key_value_heads") is not None:
        sizes["kv"] = (t.kv, s.kv)
    sizes["intermediate"] = (t.ffn, s.ffn)
    return WidthPlan(
        family=family,
        hidden=_top(importance.hidden, s.hidden),
        ffn=tuple(_top(scores, s.ffn) for scores in importance.ffn),
        query_heads=tuple(queries for queries, _ in kept),
        kv_heads=tuple(groups for _, groups in kept),
        head_dim=t.head_dim,
        query_width=t.heads * t.head_dim,
        sizes=sizes,
    )
