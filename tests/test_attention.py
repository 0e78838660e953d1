"""Attention maps recomputed with SDPA kept equal eager attention, per supported family."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_bert
from tiny_models import FAMILIES, batch_for, build, text_batch
from torch.testing import assert_close

from kdistill.capture import CaptureRequest, capture
from kdistill.capture.attention_maps import additive_mask
from kdistill.models.anatomy import (
    AttentionLayout,
    UnsupportedArchitectureError,
    layer_attention,
    register_attention_layout,
    supported_model_types,
)


def _inputs(family):
    batch = batch_for(family, batch_size=3, length=9, seed=4)
    batch.pop("labels", None)
    return batch


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_recomputed_attention_equals_eager_attention(family):
    model = build(family, num_layers=3, seed=3)
    inputs = _inputs(family)
    assert model.config._attn_implementation == "sdpa"
    features = capture(model, inputs, CaptureRequest(attentions={1, 3}, attention_scores={2}))
    assert model.config._attn_implementation == "sdpa"  # the model kept its attention

    eager = build(family, num_layers=3, seed=3, attn="eager")
    with torch.no_grad():
        reference = eager(**inputs, output_attentions=True).attentions
    assert sorted(features.attentions) == [1, 3]
    for layer in (1, 3):
        assert_close(features.attentions[layer], reference[layer - 1])
    # the scores are the logits of those probabilities: softmax(scores + mask) gives eager's map
    mask = additive_mask(inputs.get("attention_mask"), features.attention_scores[2].shape[-1])
    scores = features.attention_scores[2] + (0 if mask is None else mask)
    assert_close(scores.softmax(-1), reference[1])


def test_padding_gets_no_attention_and_rows_sum_to_one():
    model = build("bert", num_layers=2)
    inputs = text_batch(batch_size=4, length=10, seed=1)
    inputs.pop("labels")
    assert (inputs["attention_mask"] == 0).any()
    probs = capture(model, inputs, CaptureRequest(attentions={1})).attentions[1]
    padded_keys = inputs["attention_mask"][:, None, None, :].expand_as(probs) == 0
    assert torch.count_nonzero(probs[padded_keys]) == 0
    assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))


def test_sdpa_runs_in_every_layer_while_maps_are_captured(monkeypatch):
    model = build("bert", num_layers=3)
    inputs = _inputs("bert")
    calls = []
    original = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    features = capture(model, inputs, CaptureRequest(attentions={2}))
    assert len(calls) == 3 and list(features.attentions) == [2]


def test_causal_bert_decoder_matches_eager():
    model = tiny_bert(num_layers=2, seed=5)
    model.config.is_decoder = True
    inputs = _inputs("bert")
    features = capture(model.eval(), inputs, CaptureRequest(attentions={1, 2}))
    model.set_attn_implementation("eager")
    with torch.no_grad():
        reference = model(**inputs, output_attentions=True).attentions
    for layer in (1, 2):
        assert_close(features.attentions[layer], reference[layer - 1])
    assert torch.count_nonzero(features.attentions[1].triu(1)) == 0


def _electra(attn):
    from transformers import ElectraConfig, ElectraForSequenceClassification

    torch.manual_seed(0)
    config = ElectraConfig(
        vocab_size=64,
        embedding_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation=attn,
    )
    return ElectraForSequenceClassification(config).eval()


def test_unknown_architecture_names_the_eager_fallback():
    assert "electra" not in supported_model_types()
    with pytest.raises(ValueError, match='attn_implementation="eager"') as error:
        capture(_electra("sdpa"), _inputs("bert"), CaptureRequest(attentions={1}))
    assert isinstance(error.value, UnsupportedArchitectureError)
    assert "electra" in str(error.value) and "bert" in str(error.value)


def test_eager_fallback_returns_eager_maps_for_an_unknown_architecture():
    model = _electra("eager")
    inputs = _inputs("bert")
    features = capture(model, inputs, CaptureRequest(attentions={2}, hidden_states={1}))
    with torch.no_grad():
        reference = model(**inputs, output_attentions=True).attentions
    assert list(features.attentions) == [2]
    assert_close(features.attentions[2], reference[1])
    # scores need the recompute: a clear error rather than a silent wrong answer
    with pytest.raises(ValueError, match="probabilities"):
        capture(model, inputs, CaptureRequest(attention_scores={1}))


def test_registering_a_layout_teaches_a_new_architecture(monkeypatch):
    import kdistill.models.anatomy as attention

    monkeypatch.setitem(attention._LAYOUTS, "electra", attention._LAYOUTS["bert"])
    assert "electra" in supported_model_types()
    inputs = _inputs("bert")
    features = capture(_electra("sdpa"), inputs, CaptureRequest(attentions={1}))
    with torch.no_grad():
        reference = _electra("eager")(**inputs, output_attentions=True).attentions
    assert_close(features.attentions[1], reference[0])


def test_register_attention_layout_checks_its_arguments(monkeypatch):
    import kdistill.models.anatomy as attention

    monkeypatch.setattr(attention, "_LAYOUTS", dict(attention._LAYOUTS))
    with pytest.raises(TypeError, match="AttentionLayout"):
        register_attention_layout("electra", {"layers": "encoder.layer"})
    with pytest.raises(ValueError, match="model_type"):
        register_attention_layout("", AttentionLayout("encoder.layer", ("q",), ("k",), ("v",)))
    register_attention_layout("electra", AttentionLayout("encoder.layer", ("attention.nope",), ("k",), ("v",)))
    with pytest.raises(UnsupportedArchitectureError, match="no query projection"):
        layer_attention(_electra("sdpa"), [1])


def test_attention_layer_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match=r"attention layers 1\.\.2"):
        capture(build("bert"), _inputs("bert"), CaptureRequest(attentions={3}))


def test_non_hf_module_attention_error_names_the_fallback():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="not a Hugging Face model"):
        capture(model, torch.randn(2, 4), CaptureRequest(attentions={1}))


# ---------------------------------------------------------------------------
# the block-wise kernels behind the recompute and the attention losses
# ---------------------------------------------------------------------------


def _qk(batch=3, heads=4, length=7, dim=5, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    make = lambda: torch.randn(batch, heads, length, dim, generator=generator, dtype=dtype, requires_grad=True)  # noqa: E731
    return make(), make()


def _padding(batch=3, length=7):
    mask = torch.ones(batch, length)
    mask[0, 5:] = 0
    mask[2, 3:] = 0
    return mask


def test_block_kernels_pass_gradcheck(monkeypatch):
    import kdistill.capture.attention_maps as attention_maps
    from kdistill.losses.layerwise import _MaskedSquaredSum

    monkeypatch.setattr(attention_maps, "BLOCK_BYTES", 600)  # several blocks even for tiny inputs
    query, key = _qk()
    mask = additive_mask(_padding(), 7).double()
    assert torch.autograd.gradcheck(lambda q, k: attention_maps._AttentionProbs.apply(q, k, 0.4, mask), (query, key))
    causal = additive_mask(_padding(), 7, causal=True).double()
    assert torch.autograd.gradcheck(lambda q, k: attention_maps._AttentionProbs.apply(q, k, 0.4, causal), (query, key))
    teacher = torch.rand(3, 4, 7, 7, dtype=torch.float64)
    pair = _padding()[:, None, :, None].double() * _padding()[:, None, None, :].double()
    student = torch.rand(3, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s: _MaskedSquaredSum.apply(s, teacher.mean(1, keepdim=True), pair), (student,)
    )
    teacher_query, teacher_key = (t.detach() for t in _qk(heads=2, seed=1))
    for softmax in (True, False):
        for average in (True, False):
            target = teacher.mean(1, keepdim=True) if average else teacher
            options = (0.4, 1.0, softmax, average, False)
            assert torch.autograd.gradcheck(
                lambda q, k: attention_maps._ProjectedMapsMSE.apply(
                    q, k, mask, pair, target, None, None, None, options
                ),
                (query, key),
            ), (softmax, average)
            # the teacher given as its query and key (2 heads, averaged against the student's 4)
            options = (0.4, 0.3, softmax, average, True)
            assert torch.autograd.gradcheck(
                lambda q, k: attention_maps._ProjectedMapsMSE.apply(
                    q, k, mask, pair, None, teacher_query, teacher_key, mask, options
                ),
                (query, key),
            ), (softmax, average)


@pytest.mark.parametrize("on", ["probs", "scores"])
@pytest.mark.parametrize(
    ("student_heads", "heads"), [(4, "per_head"), (4, "average_both"), (2, "average_teacher"), (2, "average_both")]
)
def test_loss_from_attention_inputs_equals_the_loss_on_maps(monkeypatch, on, student_heads, heads):
    import kdistill.capture.attention_maps as attention_maps
    from kdistill.capture.attention_maps import AttentionInputs
    from kdistill.losses.functional import attention_mse, attention_mse_from_inputs

    monkeypatch.setattr(attention_maps, "BLOCK_BYTES", 900)
    query, key = _qk(heads=student_heads, dtype=torch.float32)
    padding = _padding()
    inputs = AttentionInputs(query, key, 0.45, additive_mask(padding, 7))
    teacher_query, teacher_key = (t.detach() for t in _qk(heads=4, dtype=torch.float32, seed=1))
    teacher_inputs = AttentionInputs(teacher_query, teacher_key, 0.35, additive_mask(padding, 7))
    teacher = teacher_inputs.probs() if on == "probs" else teacher_inputs.scores()
    maps = inputs.probs() if on == "probs" else inputs.scores()
    reference = attention_mse(maps, teacher, padding, heads)
    reference_grads = torch.autograd.grad(reference, (query, key))
    for target in (teacher, teacher_inputs):  # the teacher's maps, or its query and key
        fused = attention_mse_from_inputs(inputs, target, padding, heads, on)
        fused_grads = torch.autograd.grad(fused, (query, key))
        assert_close(fused, reference)
        for got, expected in zip(fused_grads, reference_grads):
            assert_close(got, expected)


def test_recomputed_maps_are_lazy_and_the_mse_term_never_builds_large_student_maps(monkeypatch):
    import kdistill.capture.attention_maps as attention_maps
    from kdistill.capture import LazyMaps
    from kdistill.losses import AttentionKL, AttentionMSE

    monkeypatch.setattr(attention_maps, "HOLD_MAPS_UP_TO_BYTES", 1024)  # these tiny maps count as large

    teacher, student = build("bert", num_layers=4, hidden=48, seed=1), build("bert", num_layers=2, seed=2)
    inputs = _inputs("bert")
    term = AttentionMSE({1: 2, 2: 4})
    student_side = capture(student, inputs, term.request("student"))
    teacher_side = capture(teacher, inputs, term.request("teacher"))
    assert isinstance(student_side.attentions, LazyMaps) and list(student_side.attentions) == [1, 2]
    assert not student_side.attentions.is_computed(1) and 2 in student_side.attentions
    loss = term(student_side, teacher_side)
    # the loss worked from the attention inputs of both sides: no map was built
    assert not student_side.attentions.is_computed(1) and not teacher_side.attentions.is_computed(2)
    maps = student_side.attentions[1]  # reading computes and keeps the map
    assert student_side.attentions.is_computed(1) and student_side.attentions[1] is maps
    assert_close(term(student_side, teacher_side), loss)  # the same loss from the computed maps
    assert teacher_side.attentions.is_computed(2)
    assert AttentionKL({1: 2})(student_side, teacher_side) > 0


def test_small_student_maps_are_held_rather_than_recomputed():
    from kdistill.losses import AttentionMSE

    teacher, student = build("bert", num_layers=4, hidden=48, seed=1), build("bert", num_layers=2, seed=2)
    inputs = _inputs("bert")
    term = AttentionMSE({2: 4})
    student_side = capture(student, inputs, term.request("student"))
    assert not student_side.attention_inputs[2].worth_recomputing
    term(student_side, capture(teacher, inputs, term.request("teacher")))
    assert student_side.attentions.is_computed(2)
