"""capture(): only what is requested, from HF outputs or hooks by module path; hooks always removed."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert
from tiny_models import text_batch
from torch import nn
from torch.testing import assert_close

from kdistill.capture import CaptureRequest, Features, capture, features_from_output


class TinyCNN(nn.Module):
    """A torchvision-style CNN: stages of conv blocks, then a classifier."""

    def __init__(self, widths=(4, 8), classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        layers, channels = [], 1
        for width in widths:
            layers.append(nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()))
            channels = width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, images):
        return self.fc(self.pool(self.stages(images)).flatten(1))


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def _inputs(**kwargs):
    batch = text_batch(**kwargs)
    batch.pop("labels")
    return batch


def test_request_union_validation_and_emptiness():
    a = CaptureRequest(logits=False, hidden_states=[0, 2], modules=["x"])
    b = CaptureRequest(attentions={1}, attention_scores={2}, qkv={3})
    union = a | b
    assert union.logits and union.hidden_states == {0, 2} and union.attention_layers == {1, 2, 3}
    assert union.modules == {"x"} and not union.logits_only
    assert CaptureRequest(logits=False).empty and CaptureRequest().logits_only
    assert not CaptureRequest(logits=False, modules={"x"}).empty
    with pytest.raises(ValueError, match=">= 1"):
        CaptureRequest(attentions={0})
    with pytest.raises(ValueError, match=">= 0"):
        CaptureRequest(hidden_states={-1})
    with pytest.raises(TypeError, match="module paths"):
        CaptureRequest(modules="layer2")


def test_logits_only_fast_path_is_unchanged():
    model = tiny_bert(seed=1).eval()
    inputs = _inputs()
    features = capture(model, inputs)
    with torch.no_grad():
        expected = features_from_output(model(**inputs), inputs["attention_mask"])
    assert_close(features.logits, expected.logits)
    assert features.hidden_states == {} and features.attentions == {} and features.modules == {}
    assert _hook_count(model) == 0


def test_only_the_requested_layers_are_kept():
    model = tiny_bert(num_layers=3, seed=1).eval()
    inputs = _inputs()
    with torch.no_grad():
        reference = model(**inputs, output_hidden_states=True).hidden_states
    hf_hooks = _hook_count(model)  # Transformers keeps its own output-recording hooks
    features = capture(model, inputs, CaptureRequest(logits=False, hidden_states={0, 2}, qkv={3}))
    assert sorted(features.hidden_states) == [0, 2]
    assert_close(features.hidden_states[2], reference[2])
    assert features.attentions == {} and list(features.values) == [3]
    assert features.queries[3].shape == (4, 4, 10, 8)  # (B, heads, L, head_dim)
    assert features.logits is not None  # free to keep when the model returns it
    assert_close(features.attention_mask, inputs["attention_mask"])
    assert _hook_count(model) == hf_hooks


def test_module_paths_capture_any_module_and_features_are_differentiable():
    model = TinyCNN()
    images = torch.randn(2, 1, 6, 6)
    features = capture(model, images, CaptureRequest(modules={"stages.0", "stages.1"}))
    assert features.modules["stages.0"].shape == (2, 4, 6, 6)
    assert features.modules["stages.1"].shape == (2, 8, 6, 6)
    assert features.logits.shape == (2, 3)
    features.modules["stages.1"].sum().backward()
    assert model.stages[0][0].weight.grad is not None
    assert _hook_count(model) == 0


def test_module_path_of_a_hf_model_takes_the_first_tensor_of_a_tuple_output():
    model = tiny_bert(seed=1).eval()
    inputs = _inputs()
    features = capture(model, inputs, CaptureRequest(hidden_states={1}, modules={"bert.encoder.layer.0"}))
    assert_close(features.modules["bert.encoder.layer.0"], features.hidden_states[1])


def test_hooks_are_removed_when_the_forward_pass_raises():
    class Broken(TinyCNN):
        def forward(self, images):
            self.stages(images)
            raise RuntimeError("boom")

    model = Broken()
    with pytest.raises(RuntimeError, match="boom"):
        capture(model, torch.randn(1, 1, 4, 4), CaptureRequest(modules={"stages.0"}))
    assert _hook_count(model) == 0
    bert = tiny_bert(seed=1)
    with pytest.raises((IndexError, RuntimeError)):
        capture(bert, {"input_ids": torch.full((1, 100), 2)}, CaptureRequest(attentions={1}))  # too long
    assert _hook_count(bert) == 0


def test_hooks_go_on_the_unwrapped_module():
    model = TinyCNN()

    class Wrapper(nn.Module):  # stands for DDP: calls the module, has other submodule names
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    features = capture(Wrapper(model), torch.randn(2, 1, 4, 4), CaptureRequest(modules={"stages.1"}), module=model)
    assert features.modules["stages.1"].shape == (2, 8, 4, 4)


def test_clear_errors_for_bad_requests():
    model = TinyCNN()
    with pytest.raises(ValueError, match="no submodule 'stages.7'.*top-level modules are"):
        capture(model, torch.randn(1, 1, 4, 4), CaptureRequest(modules={"stages.7"}))
    with pytest.raises(ValueError, match="Name the modules"):
        capture(model, torch.randn(1, 1, 4, 4), CaptureRequest(hidden_states={1}))
    with pytest.raises(ValueError, match=r"valid layers are 0\.\.2 \(0 is the embedding output\)"):
        capture(tiny_bert(), _inputs(), CaptureRequest(hidden_states={3}))


def test_logits_are_required_only_when_requested():
    class Backbone(TinyCNN):
        def forward(self, images):
            return {"features": self.stages(images)}

    with pytest.raises(TypeError, match="cannot find logits"):
        capture(Backbone(), torch.randn(1, 1, 4, 4), CaptureRequest(modules={"stages.0"}))
    features = capture(Backbone(), torch.randn(1, 1, 4, 4), CaptureRequest(logits=False, modules={"stages.0"}))
    assert isinstance(features, Features) and features.logits is None and list(features.modules) == ["stages.0"]


def test_a_module_that_runs_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Linear(3, 3)

        def forward(self, x):
            return self.block(self.block(x))

    model = Twice()
    with pytest.raises(RuntimeError, match="more than once"):
        capture(model, torch.randn(2, 3), CaptureRequest(modules={"block"}))
    assert _hook_count(model) == 0


def test_a_module_that_never_runs_is_reported():
    class Skips(TinyCNN):
        def forward(self, images):
            return self.fc(self.pool(self.stages[0](images)).flatten(1)[:, :0].new_zeros(images.shape[0], 8))

    with pytest.raises(ValueError, match="did not run"):
        capture(Skips(), torch.randn(1, 1, 4, 4), CaptureRequest(modules={"stages.1"}))


def test_reentrant_gradient_checkpointing_is_refused_not_silently_untrained():
    model = tiny_bert(seed=1).train()
    inputs = _inputs()
    request = CaptureRequest(attentions={1}, modules={"bert.encoder.layer.0.output"})
    checkpointing = getattr(model, "activation_checkpointing_enable", None) or (
        lambda kwargs: model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    )
    checkpointing({"use_reentrant": True})
    with pytest.raises(ValueError, match="use_reentrant': False"):
        capture(model, inputs, request)
    with torch.no_grad():  # the teacher side: nothing to train, nothing to refuse
        capture(model, inputs, request)
    checkpointing({"use_reentrant": False})
    features = capture(model, inputs, request)
    features.attentions[1].sum().backward()
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad is not None
