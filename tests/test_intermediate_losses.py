"""Hidden-state, embedding and attention losses: closed forms, padding invariance, projections."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_bert
from safetensors.torch import load_file
from test_capture import TinyCNN
from tiny_models import pad_more, text_batch
from torch.testing import assert_close

from kdistill import Objective, distill
from kdistill.capture import capture
from kdistill.losses import (
    AttentionKL,
    AttentionMSE,
    EmbeddingMSE,
    HiddenCosine,
    HiddenMSE,
    LayerDistillationLoss,
    MiniLMv1,
    MiniLMv2,
    attention_distillation_loss,
)
from kdistill.losses import functional as LF

# ---------------------------------------------------------------------------
# pure functions
# ---------------------------------------------------------------------------


def _padding_mask(batch=3, length=6):
    mask = torch.ones(batch, length)
    mask[0, 4:] = 0
    mask[2, 2:] = 0
    return mask


def test_hidden_mse_closed_form_and_mask():
    student, teacher = torch.randn(3, 6, 5), torch.randn(3, 6, 5)
    assert_close(LF.hidden_mse(student, teacher), F.mse_loss(student, teacher))
    mask = _padding_mask()
    real = mask.bool()
    assert_close(LF.hidden_mse(student, teacher, mask), F.mse_loss(student[real], teacher[real]))
    assert LF.hidden_mse(student, student, mask) == 0
    assert_close(LF.hidden_mse(student[:, 0], teacher[:, 0]), F.mse_loss(student[:, 0], teacher[:, 0]))
    assert LF.hidden_mse(student.bfloat16(), teacher.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="widths differ"):
        LF.hidden_mse(torch.randn(3, 6, 4), teacher)
    with pytest.raises(ValueError, match=r"mask must have shape \(3, 6\)"):
        LF.hidden_mse(student, teacher, torch.ones(3, 5))


def test_hidden_cosine_closed_form():
    student, teacher = torch.randn(3, 6, 5), torch.randn(3, 6, 5)
    expected = (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    assert_close(LF.hidden_cosine(student, teacher), expected)
    assert_close(LF.hidden_cosine(2 * teacher, teacher), torch.tensor(0.0), atol=1e-6, rtol=0)  # scale-blind
    assert_close(LF.hidden_cosine(-teacher, teacher), torch.tensor(2.0))
    mask = _padding_mask()
    real = mask.bool()
    assert_close(
        LF.hidden_cosine(student, teacher, mask),
        (1 - F.cosine_similarity(student[real], teacher[real], dim=-1)).mean(),
    )


def _maps(batch=3, heads=4, length=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, heads, length, length, generator=generator).softmax(-1)


def test_attention_mse_closed_forms_and_head_modes():
    student, teacher = _maps(heads=4), _maps(heads=4, seed=1)
    assert_close(LF.attention_mse(student, teacher), F.mse_loss(student, teacher))
    wide_teacher = _maps(heads=6, seed=2)
    seed_way = F.mse_loss(student, wide_teacher.mean(1, keepdim=True).expand_as(student))
    assert_close(LF.attention_mse(student, wide_teacher), seed_way)  # auto = average_teacher on mismatch
    assert_close(LF.attention_mse(student, wide_teacher, heads="average_teacher"), seed_way)
    assert_close(
        LF.attention_mse(student, wide_teacher, heads="average_both"),
        F.mse_loss(student.mean(1), wide_teacher.mean(1)),
    )
    with pytest.raises(ValueError, match="heads='per_head' needs equal head counts, got 4 student and 6 teacher"):
        LF.attention_mse(student, wide_teacher, heads="per_head")
    with pytest.raises(ValueError, match="heads must be one of"):
        LF.attention_mse(student, teacher, heads="max")
    with pytest.raises(ValueError, match=r"\(B, heads, L, L\)"):
        LF.attention_mse(student[0], teacher[0])


def test_attention_mse_counts_real_query_key_pairs_only():
    student, teacher = _maps(), _maps(seed=1)
    mask = _padding_mask()
    pairs = (mask[:, None, :, None] * mask[:, None, None, :]).bool().expand_as(student)
    assert_close(LF.attention_mse(student, teacher, mask), F.mse_loss(student[pairs], teacher[pairs]))


def test_attention_kl_closed_form():
    student, teacher = _maps(), _maps(seed=1)
    expected = F.kl_div(student.log(), teacher, reduction="sum") / (3 * 4 * 6)
    assert_close(LF.attention_kl(student, teacher), expected)
    assert LF.attention_kl(teacher, teacher) == 0


def test_relation_kl_is_zero_for_identical_states_and_kl_otherwise():
    states = torch.randn(2, 4, 5, 8)
    assert LF.relation_kl(states, states) == 0
    other = torch.randn(2, 4, 5, 8)
    student_rel = (other @ other.transpose(-1, -2) / 8**0.5).log_softmax(-1)
    teacher_rel = (states @ states.transpose(-1, -2) / 8**0.5).softmax(-1)
    expected = F.kl_div(student_rel, teacher_rel, reduction="sum") / (2 * 4 * 5)
    assert_close(LF.relation_kl(other, states), expected)
    # relation heads regroup the full width: (B, H, L, d) and (B, L, H·d) agree
    flat = states.transpose(1, 2).reshape(2, 5, 32)
    assert_close(
        LF.relation_kl(other, states, relation_heads=2),
        LF.relation_kl(other.transpose(1, 2).reshape(2, 5, 32), flat, relation_heads=2),
    )
    with pytest.raises(ValueError, match="does not split into 3 relation heads"):
        LF.relation_kl(other, states, relation_heads=3)


# ---------------------------------------------------------------------------
# terms on real models: padding invariance, projections
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    # different depth, width and head count: projections and head averaging are exercised
    teacher = tiny_bert(num_layers=4, hidden=48, heads=6, seed=1).eval()
    student = tiny_bert(num_layers=2, hidden=32, heads=4, seed=2).eval()
    return student, teacher


def _terms(student, teacher):
    return {
        "hidden_mse": HiddenMSE.from_models(student, teacher),
        "hidden_cosine": HiddenCosine.from_models(student, teacher, {0: 0, 2: 4}),
        "embedding": EmbeddingMSE.from_models(student, teacher),
        "attention_probs": AttentionMSE.from_models(student, teacher),
        "attention_scores": AttentionMSE.from_models(student, teacher, on="scores"),
        "attention_both": AttentionMSE.from_models(student, teacher, heads="average_both"),
        "attention_kl": AttentionKL.from_models(student, teacher),
        "minilm_v1": MiniLMv1.from_models(student, teacher),
        "minilm_v2": MiniLMv2.from_models(student, teacher, relation_heads=8),
    }


def _loss_parts(objective, student, teacher, batch):
    with torch.no_grad():
        student_side = capture(student, batch, objective.request("student"))
        teacher_side = capture(teacher, batch, objective.request("teacher"))
    return objective(student_side, teacher_side).parts


@pytest.mark.parametrize("hold_maps", [True, False], ids=["maps-held", "maps-recomputed"])
def test_padding_a_batch_more_changes_no_intermediate_loss(models, monkeypatch, hold_maps):
    import kdistill.capture.attention_maps as attention_maps

    monkeypatch.setattr(attention_maps, "HOLD_MAPS_UP_TO_BYTES", 2**40 if hold_maps else 0)
    student, teacher = models
    objective = Objective(_terms(student, teacher))
    batch = text_batch(batch_size=4, length=10, seed=3)
    batch.pop("labels")
    assert (batch["attention_mask"] == 0).any()
    parts = _loss_parts(objective, student, teacher, batch)
    padded = _loss_parts(objective, student, teacher, pad_more(batch, extra=7))
    assert set(parts) == set(_terms(student, teacher))
    for name in parts:
        assert parts[name] > 0, name
        assert_close(padded[name], parts[name], rtol=1e-4, atol=1e-6, msg=name)


def test_without_the_mask_padding_would_change_the_loss(models):
    """The check above can fail: the same maps compared without a mask do change with padding."""
    student, teacher = models
    batch = text_batch(batch_size=4, length=10, seed=3)
    batch.pop("labels")
    padded = pad_more(batch, extra=7)
    losses = []
    for inputs in (batch, padded):
        with torch.no_grad():
            s = capture(student, inputs, AttentionMSE({1: 2}).request("student")).attentions[1]
            t = capture(teacher, inputs, AttentionMSE({1: 2}).request("teacher")).attentions[2]
        losses.append(LF.attention_mse(s, t))
    assert not torch.isclose(losses[0], losses[1], rtol=1e-3)


def test_projections_are_sized_from_the_models_and_receive_gradients(models):
    student, teacher = models
    term = HiddenMSE.from_models(student, teacher)
    assert sorted(term.projections) == ["1_to_2", "2_to_4"]
    assert term.projections["1_to_2"].weight.shape == (48, 32)
    batch = text_batch(batch_size=2, length=6)
    batch.pop("labels")
    loss = term(capture(student, batch, term.request("student")), capture(teacher, batch, term.request("teacher")))
    loss.backward()
    for projection in term.projections.values():
        assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    same_width = HiddenMSE.from_models(tiny_bert(num_layers=2, hidden=48), teacher)
    assert len(same_width.projections) == 0 and not list(same_width.parameters())
    shared = HiddenMSE.from_models(student, teacher, shared_projection=True)
    assert shared.projection is not None and len(list(shared.parameters())) == 2


def test_objective_state_dict_round_trip_restores_projections(models):
    student, teacher = models
    objective = Objective(
        {"hidden": HiddenMSE.from_models(student, teacher), "embedding": EmbeddingMSE.from_models(student, teacher)}
    )
    state = {k: v.clone() for k, v in objective.state_dict().items()}
    assert {"terms.hidden.projections.1_to_2.weight", "terms.embedding.projections.0_to_0.weight"} <= set(state)
    torch.manual_seed(123)
    restored = Objective(
        {"hidden": HiddenMSE.from_models(student, teacher), "embedding": EmbeddingMSE.from_models(student, teacher)}
    )
    assert not torch.equal(
        restored.state_dict()["terms.hidden.projections.1_to_2.weight"],
        state["terms.hidden.projections.1_to_2.weight"],
    )
    restored.load_state_dict(state)
    for key, value in restored.state_dict().items():
        assert_close(value, state[key])


def test_distill_trains_the_projections_with_the_student():
    teacher, student = tiny_bert(num_layers=4, hidden=48, seed=1), tiny_bert(num_layers=2, hidden=32, seed=2)
    objective = Objective(
        {"hidden": HiddenMSE.from_models(student, teacher), "attention": AttentionMSE.from_models(student, teacher)}
    )
    before = objective.terms["hidden"].projections["2_to_4"].weight.detach().clone()
    history = distill(
        teacher,
        student,
        text_batch(num_batches=3),
        objective=objective,
        epochs=4,
        lr=3e-3,
        progress=False,
        log_every=1,
    )
    assert not torch.equal(before, objective.terms["hidden"].projections["2_to_4"].weight)
    hidden = history.series("hidden")
    assert hidden[-1] < hidden[0]
    assert "projections" not in " ".join(student.state_dict())


def test_a_cnn_is_distilled_by_naming_its_modules():
    teacher, student = TinyCNN(widths=(8, 16), seed=1), TinyCNN(widths=(4, 4), seed=2)
    term = HiddenMSE(
        {"stages.0": "stages.0", "stages.1": "stages.1"},
        student_dim={"stages.0": 4, "stages.1": 4},
        teacher_dim={"stages.0": 8, "stages.1": 16},
    )
    assert term.projections["stages_1_to_stages_1"].weight.shape == (16, 4)
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(8, 1, 6, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator))
        for _ in range(3)
    ]
    history = distill(
        teacher,
        student,
        batches,
        objective=Objective({"features": term}),
        epochs=6,
        lr=1e-2,
        progress=False,
        log_every=1,
    )
    losses = history.series("features")
    assert losses[-1] < 0.7 * losses[0]
    with pytest.raises(ValueError, match="widths differ"):
        unprojected = HiddenMSE({"stages.1": "stages.1"})
        unprojected(
            capture(student, batches[0][0], unprojected.request("student")),
            capture(teacher, batches[0][0], unprojected.request("teacher")),
        )


def test_term_arguments_are_checked():
    with pytest.raises(ValueError, match="empty"):
        HiddenMSE({})
    with pytest.raises(TypeError, match="module path"):
        AttentionMSE({"layer1": "layer2"})
    with pytest.raises(ValueError, match="attention layers start at 1"):
        AttentionKL({0: 0})
    with pytest.raises(ValueError, match="on must be 'probs' or 'scores'"):
        AttentionMSE({1: 1}, on="logits")
    with pytest.raises(ValueError, match="shared_projection=True needs the same widths"):
        HiddenMSE({"a": "b", "c": "d"}, student_dim={"a": 4, "c": 8}, teacher_dim=16, shared_projection=True)
    with pytest.raises(ValueError, match=r"out of range.*layers 0\.\.2"):
        HiddenMSE.from_models(tiny_bert(num_layers=2), tiny_bert(num_layers=4), {3: 4})


def test_term_requests_name_only_their_layers():
    term = AttentionMSE({1: 2, 2: 4}, on="scores")
    assert term.request("student").attention_scores == {1, 2} and not term.request("student").attentions
    assert term.request("teacher").attention_scores == {2, 4} and not term.request("teacher").logits
    hidden = HiddenMSE({0: 0, 2: "bert.encoder.layer.3"})
    assert hidden.request("student").hidden_states == {0, 2}
    assert hidden.request("teacher").modules == {"bert.encoder.layer.3"} and hidden.request(
        "teacher"
    ).hidden_states == {0}


# ---------------------------------------------------------------------------
# the seed's names
# ---------------------------------------------------------------------------


def test_layer_distillation_loss_works_as_the_seed_and_skips_padding():
    loss_fn = LayerDistillationLoss(teacher_dim=48, student_dim=32)
    assert isinstance(loss_fn.projector, torch.nn.Linear)
    teacher_hidden, student_hidden = torch.randn(3, 6, 48), torch.randn(3, 6, 32, requires_grad=True)
    assert_close(
        loss_fn(teacher_hidden, student_hidden), F.mse_loss(loss_fn.projector(student_hidden), teacher_hidden)
    )
    mask = _padding_mask()
    real = mask.bool()
    loss = loss_fn(teacher_hidden, student_hidden, mask)
    assert_close(loss, F.mse_loss(loss_fn.projector(student_hidden)[real], teacher_hidden[real]))
    loss.backward()
    assert loss_fn.projector.weight.grad is not None
    assert isinstance(LayerDistillationLoss(32, 32).projector, torch.nn.Identity)
    with pytest.raises(ValueError, match=r"seed's argument order is \(teacher_hidden, student_hidden\)"):
        loss_fn(student_hidden, teacher_hidden)


def test_attention_distillation_loss_works_as_the_seed_with_fixes():
    teacher_attentions = tuple(_maps(heads=6, seed=i) for i in range(4))
    student_attentions = tuple(_maps(heads=4, seed=10 + i) for i in range(2))
    mapping = {0: 1, 1: 3}
    seed_way = (
        sum(
            F.mse_loss(
                student_attentions[s], teacher_attentions[t].mean(1, keepdim=True).expand_as(student_attentions[s])
            )
            for s, t in mapping.items()
        )
        / 2
    )
    assert_close(attention_distillation_loss(teacher_attentions, student_attentions, mapping), seed_way)
    mask = _padding_mask()
    masked = attention_distillation_loss(teacher_attentions, student_attentions, mapping, mask=mask)
    expected = (
        sum(LF.attention_mse(student_attentions[s], teacher_attentions[t], mask) for s, t in mapping.items()) / 2
    )
    assert_close(masked, expected)
    same_heads = tuple(_maps(heads=4, seed=20 + i) for i in range(2))
    assert_close(
        attention_distillation_loss(same_heads, student_attentions, {0: 0, 1: 1}),
        (F.mse_loss(student_attentions[0], same_heads[0]) + F.mse_loss(student_attentions[1], same_heads[1])) / 2,
    )
    both = attention_distillation_loss(teacher_attentions, student_attentions, {0: 0}, heads="average_both")
    assert_close(both, F.mse_loss(student_attentions[0].mean(1), teacher_attentions[0].mean(1)))
    with pytest.raises(ValueError, match="non-empty"):
        attention_distillation_loss(teacher_attentions, student_attentions, {})
    with pytest.raises(
        ValueError, match=r"teacher attention layer 4 is not in the given attentions \(valid: 0\.\.3\)"
    ):
        attention_distillation_loss(teacher_attentions, student_attentions, {0: 4})


# ---------------------------------------------------------------------------
# the Trainer path: projections optimised, checkpointed, resumed, never exported
# ---------------------------------------------------------------------------


def test_trainer_checkpoints_and_resumes_projections_and_exports_the_student_only(tmp_path):
    from datasets import Dataset
    from transformers import TrainingArguments

    from kdistill import DistillationTrainer
    from kdistill.train.trainer import OBJECTIVE_STATE_NAME

    batch = text_batch(batch_size=16, length=8)
    dataset = Dataset.from_dict({key: value.tolist() for key, value in batch.items()})

    def make(seed):
        teacher, student = tiny_bert(num_layers=4, hidden=48, seed=1), tiny_bert(num_layers=2, hidden=32, seed=2)
        torch.manual_seed(seed)
        objective = Objective(
            {
                "hidden": HiddenMSE.from_models(student, teacher),
                "embedding": EmbeddingMSE.from_models(student, teacher),
            }
        )
        args = TrainingArguments(
            output_dir=str(tmp_path / "out"),
            per_device_train_batch_size=8,
            max_steps=2,
            learning_rate=1e-2,
            save_strategy="steps",
            save_steps=2,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            logging_steps=1,
        )
        return DistillationTrainer(
            teacher_model=teacher, model=student, args=args, train_dataset=dataset, objective=objective
        ), objective

    trainer, objective = make(seed=0)
    initial = objective.terms["hidden"].projections["1_to_2"].weight.detach().clone()
    trainer.train()
    trained = {k: v.detach().clone() for k, v in objective.state_dict().items()}
    assert not torch.equal(initial, trained["terms.hidden.projections.1_to_2.weight"])
    held = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in held for p in objective.parameters())

    checkpoint = tmp_path / "out" / "checkpoint-2"
    saved = load_file(str(checkpoint / OBJECTIVE_STATE_NAME))
    assert_close(saved["terms.hidden.projections.1_to_2.weight"], trained["terms.hidden.projections.1_to_2.weight"])
    student_weights = load_file(str(checkpoint / "model.safetensors"))
    assert not any("projection" in key for key in student_weights)

    resumed, fresh_objective = make(seed=99)
    assert not torch.equal(
        fresh_objective.terms["hidden"].projections["1_to_2"].weight, trained["terms.hidden.projections.1_to_2.weight"]
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for key, value in fresh_objective.state_dict().items():
        assert_close(value, trained[key], msg=key)

    export = tmp_path / "export"
    resumed.save_model(str(export))
    assert not any("projection" in key for key in load_file(str(export / "model.safetensors")))


def test_losses_are_float32_after_a_bf16_forward_pass(models):
    student, teacher = models
    objective = Objective(_terms(student, teacher))
    batch = text_batch(batch_size=4, length=10, seed=3)
    batch.pop("labels")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            teacher_side = capture(teacher, batch, objective.request("teacher"))
        student_side = capture(student, batch, objective.request("student"))
    assert student_side.attention_inputs[1].query.dtype == torch.bfloat16  # the projections ran in bf16
    result = objective(student_side, teacher_side)
    reference = _loss_parts(objective, student, teacher, batch)
    for name, value in result.parts.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
        assert_close(value, reference[name], rtol=0.1, atol=1e-3, msg=name)
    assert result.total.dtype == torch.float32


def test_a_shared_projection_with_nothing_to_project_is_refused(models) -> None:
    student, teacher = models
    same_width = tiny_bert(num_layers=2, hidden=teacher.config.hidden_size)
    with pytest.raises(ValueError, match="shared_projection=True has no effect: every pair has one width"):
        HiddenMSE.from_models(same_width, teacher, shared_projection=True)
    with pytest.raises(ValueError, match="shared_projection=True has no effect: the widths are not given"):
        HiddenMSE({"a": "b"}, shared_projection=True)
    assert HiddenMSE.from_models(student, teacher, shared_projection=True).projection is not None
