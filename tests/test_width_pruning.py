"""Width pruning by measured activation importance (Minitron): what is measured, what is kept, and
that pruning nothing gives back the teacher, for each family (tiny models built from configs)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert
from torch.testing import assert_close

from kdistill.models.student import make_student
from kdistill.models.width import measure_width_importance

VOCAB = 64


def _perturbed(model):
    """The model with every weight moved off its initial value: Hugging Face initialises norms to 1
    and biases to 0, which would make a wrongly indexed norm or bias look right."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _decoder(family: str, *, head_dim: int | None = 8, tie: bool = True):
    import transformers

    torch.manual_seed(0)
    config_class = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig"}[family]
    model_class = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}[family]
    config = getattr(transformers, config_class)(
        vocab_size=VOCAB,
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=tie,
    )
    if head_dim is not None:
        config.head_dim = head_dim  # wider than hidden / heads: the queries are not the hidden width
    return _perturbed(getattr(transformers, model_class)(config))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=3,
        n_head=4,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return _perturbed(GPT2LMHeadModel(config))


def _bert(kind: str = "classifier"):
    from transformers import BertConfig, BertForMaskedLM, BertModel

    if kind == "classifier":
        return _perturbed(tiny_bert(num_layers=3, hidden=32, heads=4, seed=0))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return _perturbed(BertForMaskedLM(config) if kind == "masked_lm" else BertModel(config))


#: family -> (teacher builder, the narrower widths it is pruned to)
FAMILIES = {
    "llama": (
        lambda: _decoder("llama"),
        dict(hidden_size=12, num_heads=3, num_key_value_heads=1, intermediate_size=32),
    ),
    "qwen2": (
        lambda: _decoder("qwen2", head_dim=None, tie=False),
        dict(hidden_size=16, num_heads=4, num_key_value_heads=2, intermediate_size=32),
    ),
    "mistral": (lambda: _decoder("mistral"), dict(hidden_size=18, num_heads=3, intermediate_size=20)),
    "gpt2": (_gpt2, dict(hidden_size=24, num_heads=3, intermediate_size=64)),
    "bert": (_bert, dict(hidden_size=24, num_heads=3, intermediate_size=40)),
    "bert_masked_lm": (lambda: _bert("masked_lm"), dict(hidden_size=24, num_heads=3, intermediate_size=40)),
    "bert_model": (lambda: _bert("model"), dict(hidden_size=24, num_heads=3, intermediate_size=40)),
}


def _batches(num_batches: int = 2, seed: int = 0):
    """Calibration batches of 3 rows, right-padded (some rows shorter)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        input_ids = torch.randint(3, VOCAB, (3, 8), generator=generator)
        attention_mask = torch.ones(3, 8, dtype=torch.long)
        attention_mask[1, 5:] = 0
        attention_mask[2, 3:] = 0
        batches.append({"input_ids": input_ids * attention_mask, "attention_mask": attention_mask})
    return batches


def _output(model, batch):
    with torch.no_grad():
        output = model.eval()(**batch)
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


def _top(scores, keep):
    return scores.topk(keep).indices.sort().values


def _channels(heads, head_dim):
    return torch.cat([torch.arange(int(h) * head_dim, (int(h) + 1) * head_dim) for h in heads])


def _teacher_widths(teacher):
    config = teacher.config
    ffn = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * config.hidden_size
    return dict(
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        intermediate_size=ffn,
        **(
            {"num_key_value_heads": config.num_key_value_heads} if getattr(config, "num_key_value_heads", None) else {}
        ),
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pruning_nothing_gives_back_the_teacher(family):
    build, _ = FAMILIES[family]
    teacher = build()
    importance = measure_width_importance(teacher, _batches())
    student, report = make_student(
        teacher, teacher.config.num_hidden_layers, width_importance=importance, **_teacher_widths(teacher)
    )
    batch = _batches(1, seed=5)[0]
    assert_close(_output(student, batch), _output(teacher, batch), rtol=0, atol=0)
    assert report.reduction == 1.0 and report.initialised_from == {1: 1, 2: 2, 3: 3}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pruned_students_of_every_family_run_and_report_their_widths(family, tmp_path):
    build, narrow = FAMILIES[family]
    teacher = build()
    importance = measure_width_importance(teacher, _batches())
    student, report = make_student(teacher, 2, width_importance=importance, **narrow)
    batch = _batches(1)[0]
    output = _output(student, batch)
    assert output.shape[0] == 3 and torch.isfinite(output).all()
    assert report.width_pruned["hidden"] == (teacher.config.hidden_size, narrow["hidden_size"])
    assert report.width_pruned["heads"] == (teacher.config.num_attention_heads, narrow["num_heads"])
    assert report.width_pruned["intermediate"][1] == narrow["intermediate_size"]
    assert "width pruned by activation: hidden" in str(report) and report.initialised_from == {1: 2, 2: 3}
    # transformers checks the config again on saving (Qwen2's layer_types must match the depth)
    student.save_pretrained(tmp_path)
    reloaded = type(student).from_pretrained(tmp_path)
    assert_close(_output(reloaded, batch), output)


def test_llama_keeps_the_teachers_weights_at_the_kept_indices_and_stays_tied():
    teacher = _decoder("llama")
    importance = measure_width_importance(teacher, _batches())
    student, report = make_student(
        teacher,
        2,
        hidden_size=12,
        num_heads=3,
        num_key_value_heads=1,
        intermediate_size=32,
        width_importance=importance,
    )
    assert str(report).endswith("width pruned by activation: hidden 24->12, heads 6->3 (kv 2->1), intermediate 48->32")
    assert student.config.head_dim == 8 and student.config.num_key_value_heads == 1
    hidden = _top(importance.hidden, 12)
    source = teacher.model.layers[1]  # student layer 1 <- teacher layer 2
    layer = student.model.layers[0]
    group = int(importance.heads[1].view(2, 3).sum(1).argmax())
    queries = _channels(range(3 * group, 3 * group + 3), 8)  # the whole kept group
    ffn = _top(importance.ffn[1], 32)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight[:, hidden])
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()  # still tied
    assert torch.equal(layer.input_layernorm.weight, source.input_layernorm.weight[hidden])
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight[hidden])
    assert torch.equal(layer.self_attn.q_proj.weight, source.self_attn.q_proj.weight[queries][:, hidden])
    assert torch.equal(layer.self_attn.k_proj.weight, source.self_attn.k_proj.weight[_channels([group], 8)][:, hidden])
    assert torch.equal(layer.self_attn.o_proj.weight, source.self_attn.o_proj.weight[hidden][:, queries])
    assert torch.equal(layer.mlp.up_proj.weight, source.mlp.up_proj.weight[ffn][:, hidden])
    assert torch.equal(layer.mlp.down_proj.weight, source.mlp.down_proj.weight[hidden][:, ffn])


def test_depth_and_width_are_pruned_together_through_an_explicit_layer_map():
    teacher = _decoder("mistral")
    importance = measure_width_importance(teacher, _batches())
    student, report = make_student(
        teacher, 2, hidden_size=12, num_heads=3, layer_map={1: 1, 2: 3}, width_importance=importance
    )
    assert report.initialised_from == {1: 1, 2: 3} and student.config.num_key_value_heads == 1
    hidden, ffn = _top(importance.hidden, 12), _top(importance.ffn[2], 24)  # intermediate scaled: 48 · 12 / 24
    assert torch.equal(
        student.model.layers[0].post_attention_layernorm.weight,
        teacher.model.layers[0].post_attention_layernorm.weight[hidden],
    )
    gate = teacher.model.layers[2].mlp.gate_proj.weight
    assert torch.equal(student.model.layers[1].mlp.gate_proj.weight, gate[ffn][:, hidden])


def test_qwen2_biases_and_an_untied_head_are_cut_to_the_kept_channels():
    teacher = _decoder("qwen2", head_dim=None, tie=False)
    importance = measure_width_importance(teacher, _batches())
    student, _ = make_student(
        teacher,
        3,
        hidden_size=16,
        num_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        width_importance=importance,
    )
    assert student.config.head_dim == 4  # the teacher's 24 / 6, not 16 / 2
    hidden = _top(importance.hidden, 16)
    source, layer = teacher.model.layers[2], student.model.layers[2]
    groups = importance.heads[2].view(2, 3)
    queries = torch.stack([3 * g + groups[g].argmax() for g in range(2)])  # the best head of each group
    assert torch.equal(layer.self_attn.q_proj.bias, source.self_attn.q_proj.bias[_channels(queries, 4)])
    assert torch.equal(layer.self_attn.v_proj.bias, source.self_attn.v_proj.bias)  # both groups kept
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight[:, hidden])
    assert student.lm_head.weight.data_ptr() != student.model.embed_tokens.weight.data_ptr()


def test_gpt2_fused_attention_and_conv1d_layout_are_cut_on_the_right_axes():
    teacher = _gpt2()
    importance = measure_width_importance(teacher, _batches())
    student, report = make_student(
        teacher, 2, hidden_size=16, num_heads=2, intermediate_size=64, width_importance=importance
    )
    assert "kv" not in report.width_pruned and "heads 4->2, intermediate 128->64" in str(report)
    hidden = _top(importance.hidden, 16)
    heads = _top(importance.heads[2], 2)  # student layer 2 <- teacher layer 3
    queries = _channels(heads, 8)
    fused = torch.cat([queries, 32 + queries, 64 + queries])  # q | k | v, each 4 heads of 8
    ffn = _top(importance.ffn[2], 64)
    source, layer = teacher.transformer.h[2], student.transformer.h[1]
    assert torch.equal(layer.attn.c_attn.weight, source.attn.c_attn.weight[hidden][:, fused])  # Conv1D: [in, out]
    assert torch.equal(layer.attn.c_attn.bias, source.attn.c_attn.bias[fused])
    assert torch.equal(layer.attn.c_proj.weight, source.attn.c_proj.weight[queries][:, hidden])
    assert torch.equal(layer.mlp.c_fc.weight, source.mlp.c_fc.weight[hidden][:, ffn])
    assert torch.equal(layer.mlp.c_proj.weight, source.mlp.c_proj.weight[ffn][:, hidden])
    assert torch.equal(layer.ln_1.bias, source.ln_1.bias[hidden])
    assert torch.equal(student.transformer.wpe.weight, teacher.transformer.wpe.weight[:, hidden])
    assert student.lm_head.weight.data_ptr() == student.transformer.wte.weight.data_ptr()
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight[:, hidden])


def test_bert_embeddings_pooler_classifier_and_masked_lm_head_are_cut():
    teacher = _bert()
    importance = measure_width_importance(teacher, _batches())
    student, _ = make_student(
        teacher, 1, hidden_size=16, num_heads=2, intermediate_size=40, width_importance=importance
    )
    hidden = _top(importance.hidden, 16)
    queries = _channels(_top(importance.heads[2], 2), 8)
    source, layer = teacher.bert.encoder.layer[2], student.bert.encoder.layer[0]
    embeddings = student.bert.embeddings
    assert torch.equal(
        embeddings.token_type_embeddings.weight, teacher.bert.embeddings.token_type_embeddings.weight[:, hidden]
    )
    assert torch.equal(embeddings.LayerNorm.weight, teacher.bert.embeddings.LayerNorm.weight[hidden])
    assert torch.equal(layer.attention.self.query.bias, source.attention.self.query.bias[queries])
    assert torch.equal(layer.attention.output.dense.weight, source.attention.output.dense.weight[hidden][:, queries])
    assert torch.equal(layer.attention.output.LayerNorm.bias, source.attention.output.LayerNorm.bias[hidden])
    assert torch.equal(student.bert.pooler.dense.weight, teacher.bert.pooler.dense.weight[hidden][:, hidden])
    assert torch.equal(student.classifier.weight, teacher.classifier.weight[:, hidden])
    assert torch.equal(student.classifier.bias, teacher.classifier.bias)

    masked = _bert("masked_lm")
    importance = measure_width_importance(masked, _batches())
    student, _ = make_student(masked, 2, hidden_size=16, num_heads=2, width_importance=importance)
    hidden = _top(importance.hidden, 16)
    transform = masked.cls.predictions.transform
    assert torch.equal(student.cls.predictions.transform.dense.bias, transform.dense.bias[hidden])
    assert (
        student.cls.predictions.decoder.weight.data_ptr() == student.bert.embeddings.word_embeddings.weight.data_ptr()
    )
    assert torch.equal(student.cls.predictions.decoder.weight, masked.cls.predictions.decoder.weight[:, hidden])
    assert torch.equal(student.cls.predictions.bias, masked.cls.predictions.bias)


@pytest.mark.parametrize(("heads", "kv"), [(4, 2), (3, 1)])
def test_grouped_query_attention_keeps_whole_key_value_groups(heads, kv):
    teacher = _decoder("llama")  # 6 heads on 2 key/value heads: groups {0, 1, 2} and {3, 4, 5}
    importance = measure_width_importance(teacher, _batches())
    student, _ = make_student(
        teacher, 3, hidden_size=12, num_heads=heads, num_key_value_heads=kv, width_importance=importance
    )
    assert (student.config.num_attention_heads, student.config.num_key_value_heads) == (heads, kv)
    assert _output(student, _batches(1)[0]).shape == (3, 8, VOCAB)
    hidden = _top(importance.hidden, 12)
    for index in range(3):
        scores = importance.heads[index].view(2, 3)
        groups = _top(scores.sum(1), kv)
        queries = torch.cat([3 * g + _top(scores[g], heads // kv) for g in groups])
        attention, source = student.model.layers[index].self_attn, teacher.model.layers[index].self_attn
        # each student key/value head is a teacher one, and its queries come from that teacher group
        assert torch.equal(attention.k_proj.weight, source.k_proj.weight[_channels(groups, 8)][:, hidden])
        assert torch.equal(attention.q_proj.weight, source.q_proj.weight[_channels(queries, 8)][:, hidden])
        assert [int(q) // 3 for q in queries] == [int(groups[j // (heads // kv)]) for j in range(heads)]


def test_the_most_important_channels_and_heads_are_kept():
    teacher = _decoder("llama")
    before = measure_width_importance(teacher, _batches())
    channel = int(before.hidden.argmin())
    ffn = int(before.ffn[2].argmin())
    group = int(before.heads[2].view(2, 3).sum(1).argmin())
    with torch.no_grad():
        for name, module in teacher.named_modules():
            if name.endswith("norm"):
                module.weight[channel] *= 30  # every norm makes this channel loud
        teacher.model.layers[2].mlp.up_proj.weight[ffn] *= 30
        teacher.model.layers[2].self_attn.v_proj.weight[group * 8 : (group + 1) * 8] *= 30
    after = measure_width_importance(teacher, _batches())
    assert int(after.hidden.argmax()) == channel and int(after.ffn[2].argmax()) == ffn
    student, _ = make_student(
        teacher, 1, hidden_size=6, num_heads=3, num_key_value_heads=1, intermediate_size=4, width_importance=after
    )  # the student's one layer is the teacher's last
    kept = _top(after.hidden, 6)
    assert channel in kept.tolist()
    position = int((kept < channel).sum())  # the kept channels keep the teacher's order
    assert student.model.norm.weight[position] == teacher.model.norm.weight[channel]
    up = student.model.layers[0].mlp.up_proj.weight
    assert any(torch.equal(up[row], teacher.model.layers[2].mlp.up_proj.weight[ffn, kept]) for row in range(4))
    assert torch.equal(
        student.model.layers[0].self_attn.v_proj.weight,
        teacher.model.layers[2].self_attn.v_proj.weight[group * 8 : (group + 1) * 8][:, kept],
    )


def _one_line_error(match, call, error=ValueError):
    with pytest.raises(error, match=match) as caught:
        call()
    assert "\n" not in str(caught.value), str(caught.value)


def test_shapes_that_do_not_fit_are_one_line_errors():
    llama = _decoder("llama")
    importance = measure_width_importance(llama, _batches(1))

    def prune(teacher=llama, measured=importance, **widths):
        return lambda: make_student(teacher, 2, width_importance=measured, **widths)

    _one_line_error("hidden_size 48 cannot exceed the teacher's 24", prune(hidden_size=48, num_heads=6))
    _one_line_error("intermediate_size 96 cannot exceed the teacher's 48", prune(intermediate_size=96))
    _one_line_error(
        "num_key_value_heads 3 must divide num_heads 4", prune(hidden_size=12, num_heads=4, num_key_value_heads=3)
    )
    _one_line_error(
        "num_key_value_heads 4 cannot exceed the teacher's 2",
        prune(hidden_size=12, num_heads=4, num_key_value_heads=4),
    )
    _one_line_error(
        r"4 heads on 1 key/value heads cannot keep whole key/value groups.*num_key_value_heads=2",
        prune(hidden_size=12, num_heads=4, num_key_value_heads=1),
    )
    _one_line_error("hidden_size 14 is not divisible by 3 attention heads", prune(hidden_size=14, num_heads=3))
    _one_line_error(
        "cannot go with init='random'", lambda: make_student(llama, 2, init="random", width_importance=importance)
    )
    gpt2 = _gpt2()
    _one_line_error("measured on another model", prune(teacher=gpt2, hidden_size=16, num_heads=2))
    gpt2_importance = measure_width_importance(gpt2, _batches(1))
    _one_line_error(
        r"gpt2 derives head_dim .* head_dim 8, but hidden_size 24 with 4 heads gives 6; use num_heads=3",
        prune(teacher=gpt2, measured=gpt2_importance, hidden_size=24, num_heads=4),
    )
    _one_line_error("use a multiple of 8", prune(teacher=gpt2, measured=gpt2_importance, hidden_size=20, num_heads=4))
    bert = _bert()
    _one_line_error(
        "grouped-query attention, which BertConfig does not have",
        prune(teacher=bert, measured=measure_width_importance(bert, _batches(1)), num_key_value_heads=2),
    )
    _one_line_error(
        r"knows the model types bert, gpt2, llama, mistral, qwen2 .*distilbert",
        lambda: measure_width_importance(_distilbert(), _batches(1)),
    )
    _one_line_error(r"knows the model types .*distilbert", prune(teacher=_distilbert(), hidden_size=16))


def _distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64
    )
    return DistilBertForSequenceClassification(config).eval()


def test_a_head_the_table_does_not_know_is_refused_before_pruning():
    from transformers import BertConfig, BertForQuestionAnswering

    model = _perturbed(
        BertForQuestionAnswering(
            BertConfig(
                vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
            )
        )
    )
    importance = measure_width_importance(model, _batches(1))
    _one_line_error(
        "does not know qa_outputs.weight",
        lambda: make_student(model, 2, hidden_size=16, num_heads=2, width_importance=importance),
    )


def _hooks(model):
    return sum(len(module._forward_hooks) + len(module._forward_pre_hooks) for module in model.modules())


def test_hooks_are_removed_and_the_mode_restored_also_after_an_error():
    teacher = _gpt2().train()
    assert _hooks(teacher) == 0
    importance = measure_width_importance(teacher, _batches())
    assert _hooks(teacher) == 0 and teacher.training
    assert importance.tokens == 2 * (8 + 5 + 3)
    assert importance.hidden.shape == (32,) and len(importance.ffn) == len(importance.heads) == 3
    assert importance.ffn[0].shape == (128,) and importance.heads[0].shape == (4,)
    broken = [_batches(1)[0], {"input_ids": torch.zeros(2, 40, dtype=torch.long)}]  # past the 32 positions
    with pytest.raises(Exception):  # noqa: B017 - whatever the model raises
        measure_width_importance(teacher, broken)
    assert _hooks(teacher) == 0 and teacher.training
    _one_line_error("hold no tokens", lambda: measure_width_importance(teacher, []))
    _one_line_error("dicts of tensors", lambda: measure_width_importance(teacher, [torch.zeros(2, 3)]), TypeError)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_padding_is_left_out_of_the_statistics(family):
    teacher = FAMILIES[family][0]()
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, VOCAB, (2, 6), generator=generator)
    plain = {"input_ids": input_ids, "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    padded = {
        "input_ids": torch.cat([input_ids, torch.full((2, 4), 7)], dim=1),
        "attention_mask": torch.cat([torch.ones(2, 6), torch.zeros(2, 4)], dim=1).long(),
    }
    without, with_padding = (measure_width_importance(teacher, [batch]) for batch in (plain, padded))
    assert without.tokens == with_padding.tokens == 12
    assert_close(with_padding.hidden, without.hidden, rtol=1e-5, atol=1e-6)
    for first, second in zip(without.ffn + without.heads, with_padding.ffn + with_padding.heads, strict=True):
        assert_close(second, first, rtol=1e-5, atol=1e-6)


def test_num_key_value_heads_also_shapes_a_random_student():
    teacher = _decoder("llama")
    student, report = make_student(teacher, 2, hidden_size=12, num_heads=3, num_key_value_heads=1, seed=0)
    assert student.config.num_key_value_heads == 1 and report.width_pruned is None
    assert "randomly initialised" in str(report)
    _one_line_error(
        "give hidden_size too, or width_importance", lambda: make_student(teacher, 2, num_key_value_heads=1)
    )
