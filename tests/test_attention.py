"""Attention maps recomputed with SDPA kept equal eager attention, per supported family."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_bert
from tiny_models import FAMILIES, batch_for, build, text_batch
from torch.testing import assert_close

from kdistill.attention import (
    AttentionLayout,
    UnsupportedArchitectureError,
    additive_mask,
    layer_attention,
    register_attention_layout,
    supported_model_types,
)
from kdistill.capture import CaptureRequest, capture


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
        vocab_size=64, embedding_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation=attn,
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
    import kdistill.attention as attention

    monkeypatch.setitem(attention._LAYOUTS, "electra", attention._LAYOUTS["bert"])
    assert "electra" in supported_model_types()
    inputs = _inputs("bert")
    features = capture(_electra("sdpa"), inputs, CaptureRequest(attentions={1}))
    with torch.no_grad():
        reference = _electra("eager")(**inputs, output_attentions=True).attentions
    assert_close(features.attentions[1], reference[0])


def test_register_attention_layout_checks_its_arguments(monkeypatch):
    import kdistill.attention as attention

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
