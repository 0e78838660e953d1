"""Sequence-level and on-policy distillation of causal LMs (issue 16): the teacher's stored
continuations, and batches whose completions the student samples and the teacher scores; in the
plain loop, the Trainer and the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_helpers import one_line, run_command
from lm_fixtures import PLAY, make_tokenizer, ragged_rows, tiny_decoder, write_teacher
from test_causal_lm import lm_config

from kdistill import DistillationTrainer, Objective, distill
from kdistill.data.datasets import IGNORE_INDEX, PaddingCollator
from kdistill.errors import KdistillError
from kdistill.losses.token_terms import TokenKD
from kdistill.tasks.causal_lm.generation import GenerationSettings, generate_continuations, teacher_generations
from kdistill.train.on_policy import OnPolicy

VOCAB = 64


def _batch(rows: list[dict[str, list[int]]] | None = None) -> dict[str, torch.Tensor]:
    return PaddingCollator()(rows or ragged_rows(4, vocab=VOCAB))


# ---------------------------------------------------------------------------
# OnPolicy
# ---------------------------------------------------------------------------


def test_the_choice_of_batches_follows_lmbda_and_the_seed() -> None:
    assert not any(OnPolicy(lmbda=0.0).chooses(key) for key in range(200))
    assert all(OnPolicy(lmbda=1.0).chooses(key) for key in range(200))
    half = [OnPolicy(lmbda=0.5, seed=3).chooses(key) for key in range(400)]
    assert half == [OnPolicy(lmbda=0.5, seed=3).chooses(key) for key in range(400)]
    assert 150 < sum(half) < 250


def test_samples_are_repeatable_and_leave_the_training_random_draws_alone() -> None:
    student = tiny_decoder("llama", vocab=VOCAB, layers=2, seed=2).train()
    policy = OnPolicy(lmbda=1.0, new_tokens=6, prompt_tokens=3, seed=5, pad_token_id=0)
    batch = _batch()
    torch.manual_seed(11)
    before = torch.get_rng_state()
    first = policy(batch, student, "0:0")
    assert torch.equal(torch.get_rng_state(), before) and student.training
    second = policy(batch, student, "0:0")
    assert all(torch.equal(first[key], second[key]) for key in first)
    other = OnPolicy(lmbda=1.0, new_tokens=6, prompt_tokens=3, seed=6, pad_token_id=0)(batch, student, "0:0")
    assert not torch.equal(other["input_ids"], first["input_ids"])
    assert (policy.generated, policy.seen) == (2, 2) and policy.seconds > 0


def test_a_sampled_batch_learns_the_samples_only_after_the_unchanged_prompts() -> None:
    student = tiny_decoder("llama", vocab=VOCAB, layers=2, seed=2)
    rows = ragged_rows(4, vocab=VOCAB)
    batch = _batch(rows)
    out = OnPolicy(lmbda=1.0, new_tokens=5, prompt_tokens=3, pad_token_id=0)(batch, student, 1)
    for row, example in enumerate(rows):
        labels = example["labels"]
        first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        prompt = example["input_ids"][: first if first > 0 else 3]
        length = int(out["attention_mask"][row].sum())
        assert out["input_ids"][row, : len(prompt)].tolist() == prompt  # the data's prompt, as it was
        assert length == len(prompt) + 5  # no end token in this model's samples: all 5 kept
        assert (out["labels"][row, : len(prompt)] == IGNORE_INDEX).all()
        assert (
            out["labels"][row, len(prompt) : length].tolist() == out["input_ids"][row, len(prompt) : length].tolist()
        )
        assert (out["labels"][row, length:] == IGNORE_INDEX).all() and (out["input_ids"][row, length:] == 0).all()


def test_sampling_stops_at_the_end_token() -> None:
    student = tiny_decoder("llama", vocab=VOCAB, layers=2, seed=2)
    with torch.no_grad():
        student.lm_head.weight[7] += 50.0  # the student now always says 7
    out = OnPolicy(lmbda=1.0, new_tokens=6, prompt_tokens=3, eos_token_id=7)(_batch(), student, 0)
    assert (out["labels"] == 7).sum(dim=1).tolist() == [1, 1, 1, 1]  # one end token each, then padding


def test_bad_on_policy_settings_are_value_errors() -> None:
    with pytest.raises(ValueError, match="lmbda"):
        OnPolicy(lmbda=1.5)
    with pytest.raises(ValueError, match="temperature"):
        OnPolicy(temperature=0)
    teacher, student = tiny_decoder("llama", vocab=VOCAB, layers=2), tiny_decoder("llama", vocab=VOCAB, layers=1)
    loader = torch.utils.data.DataLoader(ragged_rows(vocab=VOCAB), batch_size=4, collate_fn=PaddingCollator())
    with pytest.raises(ValueError, match="needs the teacher model"):
        distill(None, student, loader, on_policy=OnPolicy(), teacher_cache=object(), progress=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="OnPolicy"):
        distill(teacher, student, loader, on_policy="yes", progress=False)  # type: ignore[arg-type]


class _Spy(torch.nn.Module):
    """A teacher that records the token ids it scores."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.seen = model, []
        self.config = model.config

    def get_output_embeddings(self) -> Any:
        return self.model.get_output_embeddings()

    def forward(self, **inputs: Any) -> Any:
        self.seen.append(inputs["input_ids"].clone())
        return self.model(**inputs)


def _trained_on_policy(path: str, tmp_path: Path) -> tuple[_Spy, torch.nn.Module, OnPolicy, dict[str, torch.Tensor]]:
    teacher = _Spy(tiny_decoder("llama", vocab=VOCAB, layers=3, seed=1))
    student = tiny_decoder("llama", vocab=VOCAB, layers=2, seed=2)
    before = {name: value.clone() for name, value in teacher.state_dict().items()}
    policy = OnPolicy(lmbda=1.0, new_tokens=4, prompt_tokens=3, seed=1)
    objective = Objective({"kd": TokenKD("jsd", beta=0.5)})
    rows = ragged_rows(8, vocab=VOCAB)
    if path == "loop":
        loader = torch.utils.data.DataLoader(rows, batch_size=4, collate_fn=PaddingCollator())
        distill(teacher, student, loader, objective=objective, on_policy=policy, lr=1e-2, progress=False)
    else:
        from datasets import Dataset
        from lm_fixtures import one_step_arguments

        trainer = DistillationTrainer(
            teacher_model=teacher,
            model=student,
            args=one_step_arguments(tmp_path / "trainer", 4, 2),
            objective=objective,
            train_dataset=Dataset.from_list(rows),
            data_collator=PaddingCollator(),
            on_policy=policy,
        )
        trainer.train()
    return teacher, student, policy, before


@pytest.mark.parametrize("path", ["loop", "trainer"])
def test_the_teacher_scores_the_students_own_tokens_and_learns_nothing(path: str, tmp_path: Path) -> None:
    teacher, student, policy, before = _trained_on_policy(path, tmp_path)
    assert policy.generated == policy.seen == 2
    data_ids = {tuple(row["input_ids"]) for row in ragged_rows(8, vocab=VOCAB)}
    for scored in teacher.seen:  # every batch the teacher scored is a sampled one, not the data's
        for row in scored.tolist():
            assert tuple(token for token in row if token != 0) not in data_ids
    assert all(torch.equal(value, before[name]) for name, value in teacher.state_dict().items())
    assert all(parameter.grad is None for parameter in teacher.parameters())


# ---------------------------------------------------------------------------
# the teacher's continuations (sequence-level KD)
# ---------------------------------------------------------------------------


def test_greedy_continuations_are_the_models_own_greedy_decoding() -> None:
    model = tiny_decoder("llama", vocab=VOCAB, layers=2, seed=3)
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
    found = generate_continuations(model, prompts, GenerationSettings(new_tokens=4), pad_token_id=0, eos_token_id=None)
    for prompt, continuation in zip(prompts, found, strict=True):
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert continuation == expected[0, len(prompt) :].tolist()


def test_sampled_continuations_depend_on_the_seed_not_on_the_batch() -> None:
    model = tiny_decoder("llama", vocab=VOCAB, layers=2, seed=3)
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13], [20, 21]]

    def sample(seed: int, batch_size: int) -> list[list[int]]:
        settings = GenerationSettings(new_tokens=5, do_sample=True, seed=seed, batch_size=batch_size)
        return generate_continuations(model, prompts, settings, pad_token_id=0, eos_token_id=None)

    assert sample(1, 1) == sample(1, 3) and sample(1, 2) != sample(2, 2)


def test_continuations_are_stored_once_and_read_back(tmp_path: Path) -> None:
    model = tiny_decoder("llama", vocab=VOCAB, layers=2, seed=3)
    prompts, settings = [[5, 6, 7], [9, 10]], GenerationSettings(new_tokens=3)
    first, folder, reused = teacher_generations(
        model, prompts, settings, pad_token_id=0, eos_token_id=None, root=tmp_path
    )
    again, same, reused_again = teacher_generations(
        model, prompts, settings, pad_token_id=0, eos_token_id=None, root=tmp_path
    )
    assert (reused, reused_again, same, again) == (False, True, folder, first)
    _, other, _ = teacher_generations(
        model, prompts, GenerationSettings(new_tokens=4), pad_token_id=0, eos_token_id=None, root=tmp_path
    )
    assert other != folder  # other settings, another fingerprint


def test_a_generations_folder_holding_foreign_files_is_refused(tmp_path: Path) -> None:
    model = tiny_decoder("llama", vocab=VOCAB, layers=2, seed=3)
    prompts, settings = [[5, 6, 7]], GenerationSettings(new_tokens=3)
    _, folder, _ = teacher_generations(model, prompts, settings, pad_token_id=0, eos_token_id=None, root=tmp_path)
    (folder / "ends.npy").unlink()  # damaged, and a file of the user's beside it
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(KdistillError, match="kdistill did not write"):
        teacher_generations(model, prompts, settings, pad_token_id=0, eos_token_id=None, root=tmp_path)
    assert (folder / "notes.txt").read_text() == "mine"


def _consistent(folder: Path, name: str, array: Any, **marker_changes: Any) -> None:
    """Write ``array`` as ``name`` and record its size and SHA-256 in the marker (with ``marker_changes``),
    as an edit by hand would: the checksums alone no longer tell."""
    from kdistill.files.ownership import file_sha256

    np.save(folder / name, np.asarray(array, dtype=np.int64))
    marker_path = folder / ".kdistill-generations.json"
    marker = json.loads(marker_path.read_text())
    marker["files"][name] = {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}
    marker.update(marker_changes)
    marker_path.write_text(json.dumps(marker))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-5])


def _without_checksums(folder: Path) -> None:
    marker = json.loads((folder / ".kdistill-generations.json").read_text())
    del marker["files"], marker["format"]  # as an earlier kdistill wrote it
    (folder / ".kdistill-generations.json").write_text(json.dumps(marker))


#: the stored continuations are [[a, b, c], [d, e, f]] (new_tokens=3, no end token): each damage, with
#: what the log line must say; the issue's case was ends.npy edited to end at 3 tokens of 161 entries
GENERATION_DAMAGE = {
    "ends.npy edited": (
        lambda f: np.save(f / "ends.npy", np.arange(1, 162) // 54),
        "ends.npy does not match the checksum recorded when it was written",
    ),
    "ids.npy truncated": (lambda f: _truncate(f / "ids.npy"), "ids.npy does not match the checksum"),
    "ids.npy deleted": (lambda f: (f / "ids.npy").unlink(), "ids.npy is missing"),
    "marker deleted": (lambda f: (f / ".kdistill-generations.json").unlink(), "the marker"),
    "marker unreadable": (lambda f: (f / ".kdistill-generations.json").write_text("{"), "is unreadable"),
    "no checksums": (_without_checksums, "records no checksums (written by an earlier kdistill)"),
    "ends that decrease": (
        lambda f: _consistent(f, "ends.npy", [6, 4]),
        "ends.npy is not the increasing ends of the 6 ids in ids.npy",
    ),
    "ends past the ids": (
        lambda f: _consistent(f, "ends.npy", [3, 7]),
        "ends.npy is not the increasing ends of the 6 ids in ids.npy",
    ),
    "more continuations than prompts": (
        lambda f: _consistent(f, "ends.npy", [1, 2, 3, 4, 5, 6], count=6),
        "ends.npy holds 6 continuations, 2 prompts were given",
    ),
    "a continuation longer than new_tokens": (
        lambda f: _consistent(f, "ends.npy", [1, 6]),
        "ends.npy holds a continuation of 5 tokens, more than new_tokens=3",
    ),
    "ids past the vocabulary": (
        lambda f: _consistent(f, "ids.npy", [5, 6, 7, VOCAB + 100, 1, 2]),
        f"ids.npy holds id {VOCAB + 100}, past the teacher's vocabulary of {VOCAB} ids",
    ),
    "a negative id": (lambda f: _consistent(f, "ids.npy", [5, 6, 7, -1, 1, 2]), "ids.npy holds the negative id -1"),
    "ids of another shape": (
        lambda f: _consistent(f, "ids.npy", [[5, 6, 7], [1, 2, 3]]),
        "ids.npy holds a int64 array of shape (2, 3), not 1-D integers",
    ),
}


@pytest.mark.parametrize("damage", sorted(GENERATION_DAMAGE))
def test_damaged_stored_continuations_are_generated_again_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    model = tiny_decoder("llama", vocab=VOCAB, layers=2, seed=3)
    prompts, settings = [[5, 6, 7], [9, 10]], GenerationSettings(new_tokens=3)
    first, folder, _ = teacher_generations(model, prompts, settings, pad_token_id=0, eos_token_id=None, root=tmp_path)
    assert [len(row) for row in first] == [3, 3]
    make, message = GENERATION_DAMAGE[damage]
    make(folder)
    with caplog.at_level("WARNING", logger="kdistill.generation"):
        again, same, reused = teacher_generations(
            model, prompts, settings, pad_token_id=0, eos_token_id=None, root=tmp_path
        )
    assert (again, same, reused) == (first, folder, False)  # never the damaged copy
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and str(folder) in lines[0] and message in lines[0], lines
    assert "generating them again" in lines[0]
    assert teacher_generations(model, prompts, settings, pad_token_id=0, eos_token_id=None, root=tmp_path) == (
        first,
        folder,
        True,
    )


# ---------------------------------------------------------------------------
# through the command
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plays(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("policy")
    write_teacher(root / "teacher", tokenizer=make_tokenizer())
    (root / "train.txt").write_text(PLAY * 6, encoding="utf-8")
    (root / "validation.txt").write_text(PLAY, encoding="utf-8")
    (root / "test.txt").write_text(PLAY, encoding="utf-8")
    return root


def test_sequence_kd_trains_on_the_teachers_continuations_and_stores_them(
    plays: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    objective = {"terms": {"ce": {"type": "token_ce"}}, "sequence_kd": {"prompt_tokens": 8, "new_tokens": 6}}
    for run in ("first", "second"):
        config = lm_config(plays, f"{run}.yaml", objective=objective, output={"dir": str(tmp_path / run)})
        code, err = run_command(["distill", str(config), "--no-progress", "training.epochs=1"])
        assert code == 0, err
    first = json.loads((tmp_path / "first" / "metrics.json").read_text())["data"]["sequence_kd"]
    second = json.loads((tmp_path / "second" / "metrics.json").read_text())["data"]["sequence_kd"]
    assert first["continuations"] == second["continuations"] > 0 and 0 < first["tokens"] <= 6 * first["continuations"]
    assert (first["reused"], second["reused"]) == (False, True) and first["folder"] == second["folder"]
    assert "read back from" in (tmp_path / "second" / "run.log").read_text()
    # the case: ends.npy damaged into 161 ends of 3 tokens was trained on; now it is generated again
    np.save(Path(first["folder"]) / "ends.npy", np.arange(1, 162) // 54)
    config = lm_config(plays, "third.yaml", objective=objective, output={"dir": str(tmp_path / "third")})
    code, err = run_command(["distill", str(config), "--no-progress", "training.epochs=1"])
    assert code == 0, err
    third = json.loads((tmp_path / "third" / "metrics.json").read_text())["data"]["sequence_kd"]
    assert (third["continuations"], third["tokens"], third["reused"]) == (
        first["continuations"],
        first["tokens"],
        False,
    )
    log = (tmp_path / "third" / "run.log").read_text()
    assert (
        "are damaged (ends.npy does not match the checksum recorded when it was written); generating them again" in log
    )


def test_on_policy_through_the_command_reports_its_share_of_the_time(plays: Path, tmp_path: Path) -> None:
    objective = {
        "terms": {"kd": {"type": "token_kd", "divergence": "jsd", "beta": 0.5}},
        "on_policy": {"lmbda": 1.0, "new_tokens": 4, "prompt_tokens": 8},
    }
    config = lm_config(plays, "policy.yaml", objective=objective, output={"dir": str(tmp_path / "run")})
    code, err = run_command(["distill", str(config), "--no-progress", "training.epochs=1"])
    assert code == 0, err
    stage = json.loads((tmp_path / "run" / "metrics.json").read_text())["training"]["stages"][0]
    policy = stage["on_policy"]
    assert policy["sampled_batches"] == policy["batches"] > 0 and 0 < policy["generation_share"] < 1
    assert "sampled by the student" in (tmp_path / "run" / "run.log").read_text()


def test_on_policy_with_a_teacher_cache_is_refused_in_one_line(plays: Path, tmp_path: Path) -> None:
    objective = {"terms": {"kd": {"type": "token_kd"}}, "on_policy": {"lmbda": 0.5}}
    teacher = {"path": str(plays / "teacher"), "cache": str(tmp_path / "cache")}
    config = lm_config(plays, "cached.yaml", teacher=teacher, objective=objective, output={"dir": str(tmp_path / "r")})
    line = one_line(["distill", str(config), "--no-progress"])
    assert "objective.on_policy needs the teacher online" in line and "remove teacher.cache" in line


# ---------------------------------------------------------------------------
# generation past what the models can read (issue 23): refused by --check, before any work
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("objective", "student", "expected"),
    [
        (
            {"sequence_kd": {"prompt_tokens": 8, "new_tokens": 200}},
            None,
            "objective.sequence_kd.new_tokens 200 after prompts of up to 8 tokens (a text block's first tokens, "
            "objective.sequence_kd.prompt_tokens 8 at most) makes sequences of 208 tokens, more than the teacher's "
            "128 token positions: it would fail mid-run; set objective.sequence_kd.new_tokens to 120 or less",
        ),
        (
            {"on_policy": {"prompt_tokens": 8, "new_tokens": 200}},
            None,
            "objective.on_policy.new_tokens 200 after prompts of up to 8 tokens",
        ),
        # the student reads fewer positions than the teacher: it is the one named
        (
            {"on_policy": {"prompt_tokens": 8, "new_tokens": 40}},
            "short",
            "makes sequences of 48 tokens, more than the student's 40 token positions: it would fail mid-run; "
            "set objective.on_policy.new_tokens to 32 or less",
        ),
        # on-policy samples after the prompts of the teacher's continuations (sequence_kd's, not on_policy's)
        (
            {"sequence_kd": {"prompt_tokens": 20, "new_tokens": 4}, "on_policy": {"new_tokens": 110}},
            None,
            "objective.on_policy.new_tokens 110 after prompts of up to 20 tokens (the prompts of "
            "objective.sequence_kd: a text block's first tokens, objective.sequence_kd.prompt_tokens 20 at most)",
        ),
    ],
)
def test_generation_past_the_models_positions_is_refused_in_one_line_before_any_work(
    plays: Path, tmp_path: Path, objective: dict[str, Any], student: str | None, expected: str
) -> None:
    sections: dict[str, Any] = {"objective": {"terms": {"kd": {"type": "token_kd"}}, **objective}}
    if student is not None:
        # a student of its own with 40 positions, and the teacher's tokenizer (data.max_length 32 fits it)
        folder = write_teacher(tmp_path / student, tokenizer=make_tokenizer(), layers=2, positions=40)
        sections["student"] = {"path": str(folder)}
    config = lm_config(plays, "long.yaml", output={"dir": str(tmp_path / "run")}, **sections)
    for flags in (["--check"], []):
        # before: --check passed, and the run died mid-run with an IndexError (an internal error)
        assert expected in one_line(["distill", str(config), "--no-progress", *flags])
    assert not (tmp_path / "run").exists()


def test_prompt_tokens_that_cut_no_prompt_are_refused(plays: Path, tmp_path: Path) -> None:
    train = tmp_path / "pairs.jsonl"
    records = [{"prompt": "KING. Now is the winter", "completion": " of our discontent."}] * 12
    train.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    data = {"train": str(train), "validation": str(plays / "validation.txt"), "max_length": 32}
    objective = {"terms": {"kd": {"type": "token_kd"}}, "on_policy": {"prompt_tokens": 8, "new_tokens": 4}}
    config = lm_config(plays, "pairs.yaml", data=data, objective=objective, output={"dir": str(tmp_path / "r")})
    line = one_line(["distill", str(config), "--no-progress", "--check"])
    assert "objective.on_policy.prompt_tokens 8 has no effect" in line and "a prompt of its own" in line


def test_a_model_without_a_position_limit_is_never_refused_and_generation_is_fitted_to_one_with_one() -> None:
    from kdistill.models.preflight import check_generated_length, fit_generation

    unlimited = torch.nn.Linear(2, 2)  # no config: nothing says how many positions it reads
    check_generated_length(10_000, 4096, [("teacher", unlimited)], "objective.on_policy", "the data's prompts")
    assert fit_generation(48, 40, [unlimited]) == (48, 40)
    short = tiny_decoder("gpt2", vocab=VOCAB, layers=1, positions=40)
    assert fit_generation(48, 40, [unlimited, short]) == (20, 20) and fit_generation(8, 4, [short]) == (8, 4)
    with pytest.raises(KdistillError, match="more than the teacher's 40 token positions"):
        check_generated_length(8, 40, [("student", unlimited), ("teacher", short)], "objective.on_policy", "x")


def test_python_generation_past_the_positions_is_a_value_error_not_an_index_error() -> None:
    short = tiny_decoder("gpt2", vocab=VOCAB, layers=1, positions=16)
    with pytest.raises(ValueError, match="more than the model's 16 token positions; use new_tokens <= 13"):
        generate_continuations(
            short, [[5, 6, 7]], GenerationSettings(new_tokens=20), pad_token_id=0, eos_token_id=None
        )
    with pytest.raises(ValueError, match="more than the student's 16 token positions"):
        OnPolicy(lmbda=1.0, new_tokens=20, prompt_tokens=4)(_batch(), short, key=0)


def test_a_run_with_models_of_few_positions_fits_the_reports_generations(tmp_path: Path) -> None:
    # the report's samples (48-token prompts + 40 tokens) and speed (+ 32) ran past 40 positions: IndexError
    write_teacher(tmp_path / "teacher", "gpt2", tokenizer=make_tokenizer(), positions=40)
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.txt").write_text(PLAY * 2, encoding="utf-8")
    training = {"epochs": 1, "batch_size": 8, "lr": 1.0e-3, "max_steps": 1}
    code, err = run_command(["distill", str(lm_config(tmp_path, training=training)), "--no-progress"])
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    speed = metrics["speed"]
    assert metrics["samples"] and (speed["sequence_length"], speed["new_tokens"]) == (20, 20)
