"""The student as the teacher's draft model (assisted generation): the share of drafted tokens the
teacher accepts, counted exactly; the teacher's speed alone and assisted; the assisted output checked
against the teacher's greedy output; students that cannot draft skipped with a reason (issue 25)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from lm_fixtures import tiny_decoder

from kdistill.errors import ConfigError
from kdistill.models.student import make_student
from kdistill.tasks import get_task
from kdistill.tasks.causal_lm import drafting
from kdistill.tasks.causal_lm.config import LMEvaluationOptions
from kdistill.tasks.causal_lm.drafting import (
    counted_passes,
    draft_lines,
    draft_measurement,
    probe_prompts,
    why_no_draft,
)
from kdistill.tasks.causal_lm.evaluation import generate

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NEW_TOKENS = 8


@pytest.fixture(scope="module")
def teacher() -> Any:
    return tiny_decoder("llama", vocab=300, layers=2, seed=0)


def _prompts(count: int = 3, length: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(5, 300, (1, length), generator=generator) for _ in range(count)]


def _long_drafts(model: Any, tokens: int = 3) -> Any:
    """``model`` drafting ``tokens`` a round whatever its confidence (transformers stops a draft at a token
    of probability under 0.4 by default, and a random model is never that sure: one token a round)."""
    model.generation_config.num_assistant_tokens = tokens
    model.generation_config.assistant_confidence_threshold = 0.0
    return model


def test_acceptance_and_speed_up_are_measured_on_a_tiny_pair(teacher: Any) -> None:
    student, _ = make_student(teacher, num_layers=1)
    record = draft_measurement(teacher, student.eval(), _prompts(), new_tokens=NEW_TOKENS, eos_token_id=2)
    assert record["prompts"] == 3 and record["prompt_tokens"] == 8 and record["new_tokens"] == NEW_TOKENS
    assert record["drafted"] > 0 and 0 <= record["accepted"] <= record["drafted"]
    assert record["acceptance"] == pytest.approx(record["accepted"] / record["drafted"])
    assert 1.0 <= record["tokens_per_teacher_pass"] <= NEW_TOKENS
    assert record["teacher_tokens_per_s"] > 0 and record["assisted_tokens_per_s"] > 0
    assert 0 < record["speedup"] < 100 and record["speedup_spread"] >= 0
    assert record["identical"] == 3  # every timed prompt compared, and greedy verification kept the output
    assert 0 < record["seconds"] < 60
    (line,) = draft_lines(record)
    assert "3 prompts of up to 8 tokens, 8 new tokens each" in line and "tokens the student drafted" in line
    assert "the output was the teacher's greedy output on all 3 prompts" in line


def test_a_student_identical_to_the_teacher_has_every_drafted_token_accepted(teacher: Any) -> None:
    twin = _long_drafts(copy.deepcopy(teacher))
    twin.generation_config.num_assistant_tokens_schedule = "heuristic"
    record = draft_measurement(teacher, twin, _prompts(), new_tokens=NEW_TOKENS, eos_token_id=2)
    assert record["acceptance"] == 1.0 and record["accepted"] == record["drafted"]
    assert record["identical"] == record["prompts"] == 3
    # drafts of several tokens all accepted: more than two tokens for each pass of the teacher
    assert record["tokens_per_teacher_pass"] > 2
    # the heuristic schedule writes its draft length back to the student's config: put back afterwards
    assert twin.generation_config.num_assistant_tokens == 3
    assert "the teacher accepted 100% of the" in draft_lines(record)[0]


def test_the_counts_are_the_matches_transformers_counts_itself(teacher: Any) -> None:
    student, _ = make_student(teacher, num_layers=1)
    student = _long_drafts(student.eval(), tokens=4)
    rounds: list[tuple[int, int]] = []
    own = teacher._get_candidate_generator

    def observed(*args: Any, **kwargs: Any) -> Any:
        candidates = own(*args, **kwargs)
        update = candidates.update_candidate_strategy

        def record(ids: torch.Tensor, scores: torch.Tensor, matches: int) -> Any:
            rounds.append((scores.shape[1] - 1, int(matches)))  # scores: the draft's positions and one more
            return update(ids, scores, matches)

        candidates.update_candidate_strategy = record
        return candidates

    teacher._get_candidate_generator = observed
    try:
        drafted = accepted = 0
        for prompt in _prompts(count=2):
            with counted_passes({"teacher": teacher, "student": student}) as passes:
                new = generate(teacher, prompt, 12, 2, assistant=student)
            drafted += passes["student"]
            accepted += new.shape[1] - passes["teacher"]
    finally:
        del teacher._get_candidate_generator
    assert drafted == sum(draft for draft, _ in rounds) and accepted == sum(match for _, match in rounds)
    assert drafted > len(rounds)  # drafts of more than one token, so the counts say something


def test_outputs_that_differ_are_counted_and_reported_not_raised(teacher: Any, monkeypatch: Any) -> None:
    flipped: list[int] = []

    def noisy(model: Any, prompt: torch.Tensor, new_tokens: int, eos: Any, *, assistant: Any = None) -> Any:
        new = generate(model, prompt, new_tokens, eos, assistant=assistant)
        if assistant is not None and new_tokens == NEW_TOKENS and not flipped:
            flipped.append(1)
            new[0, -1] = (new[0, -1] + 1) % 300  # a near-tie that fell the other way
        return new

    monkeypatch.setattr(drafting, "generate", noisy)
    record = draft_measurement(teacher, copy.deepcopy(teacher), _prompts(), new_tokens=NEW_TOKENS, eos_token_id=2)
    assert record["identical"] == 2 and record["prompts"] == 3
    assert "differed from the teacher's greedy output on 1 of 3 prompts (float rounding" in draft_lines(record)[0]


def test_students_that_cannot_draft_are_skipped_with_a_reason(teacher: Any) -> None:
    task = get_task("causal_lm")
    batch = {"input_ids": torch.randint(5, 300, (2, 10)), "attention_mask": torch.ones(2, 10, dtype=torch.long)}
    other = tiny_decoder("llama", vocab=320, layers=1)
    reason = why_no_draft(teacher, other)
    assert reason is not None and "vocabulary has 320 ids and the teacher's 300" in reason
    assert why_no_draft(teacher, teacher) == "the student is the teacher itself"
    assert task.extra_measurements({"teacher": teacher, "student": other}, batch) == {
        "student": {"draft": {"skipped": reason}}
    }
    off = task.extra_measurements(
        {"teacher": teacher, "student": copy.deepcopy(teacher)}, batch, LMEvaluationOptions(draft_model=False)
    )
    assert off == {"student": {"draft": {"skipped": "evaluation.draft_model is false"}}}
    assert task.extra_measurements({"student": teacher}, batch) == {}  # one model measured alone
    line = task.extra_lines({"student": off["student"]})
    assert line == ["Student as the teacher's draft model (assisted generation): not measured, as "
                    "evaluation.draft_model is false."]  # fmt: skip
    assert task.extra_lines({"student": {"perplexity": 3.0}}) == []


def test_the_prompts_are_the_probes_first_examples_without_their_padding() -> None:
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0], [0, 0, 0, 0], [11, 12, 13, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]]),
    }
    prompts = probe_prompts(batch, length=3, count=3)
    assert [prompt.tolist() for prompt in prompts] == [[[5, 6, 7]], [[9, 10]], [[11, 12, 13]]]


def test_the_evaluation_section_is_a_causal_lm_key_only() -> None:
    from kdistill.app.config_loading import parse_config

    lm = {"task": "causal_lm", "teacher": {"path": "t"}, "student": {"from_teacher": {"num_layers": 1}}}
    assert parse_config({**lm, "data": {"train": "d.txt"}}).evaluation.draft_model is True
    off = parse_config({**lm, "data": {"train": "d.txt"}, "evaluation": {"draft_model": False}})
    assert off.evaluation.draft_model is False
    classifier = {"teacher": {"path": "t"}, "student": {"from_teacher": {"num_layers": 1}}, "data": {"train": "d.csv"}}
    with pytest.raises(ConfigError, match="evaluation: unknown key"):
        parse_config({**classifier, "evaluation": {"draft_model": False}})
