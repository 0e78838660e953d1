"""Several teachers of a causal LM (issue 26), through ``kdistill distill`` with tiny SmolLM2-shaped
(Llama) teachers that share one tokenizer: ``combine: route`` with ``data.teacher_field`` on
prompt/completion records, a ``mixture`` of ``token_kd`` online (in chunks) and from top-k caches,
``confidence`` online; each training example keeps its teacher through the held-out splits and
token budgets; the loop runs each routed teacher on its own rows only; and the one-line errors of
bad input."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from cli_helpers import one_line, run_command
from lm_fixtures import make_tokenizer, tiny_decoder, write_teacher

from kdistill.app.teachers import route_indices
from kdistill.data.batch import with_routes
from kdistill.data.datasets import IGNORE_INDEX, PaddingCollator
from kdistill.tasks.causal_lm.config import LMDataConfig
from kdistill.tasks.causal_lm.data import prepare_splits, tokenize_documents
from kdistill.tasks.causal_lm.reading import read_documents

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: prompts and completions the tiny teachers are distilled on (each record's completion is its own)
SUBJECTS = ["the cat", "the dog", "the king", "the queen", "the fool", "the user", "the mat", "the log"]


def _records(count: int = 16) -> list[dict[str, Any]]:
    """Prompt/completion records with distinct completions, routed a, a, b, a, a, b ... (not alternating,
    so that a shift of one would put examples on the wrong teacher)."""
    return [
        {
            "prompt": f"tell me of {SUBJECTS[i % len(SUBJECTS)]}: ",
            "completion": f"{SUBJECTS[(i * 3) % len(SUBJECTS)]} sat on the mat {i} times",
            "teacher": "b" if i % 3 == 2 else "a",
        }
        for i in range(count)
    ]


def _jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lm_teachers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny Llama teachers with the same tokenizer (different seeds), training records that name
    their teacher and validation records."""
    root = tmp_path_factory.mktemp("lm_teachers")
    tokenizer = make_tokenizer()
    write_teacher(root / "a", "llama", tokenizer=tokenizer, layers=2, seed=1)
    write_teacher(root / "b", "llama", tokenizer=tokenizer, layers=2, seed=2)
    records = _records()
    _jsonl(root / "train.jsonl", records)
    _jsonl(root / "validation.jsonl", [{k: r[k] for k in ("prompt", "completion")} for r in records[:4]])
    return root


def teachers_config(root: Path, name: str, combine: str, out: Path, **sections: Any) -> Path:
    """A run distilling teachers a and b (weights 1 and 3) into a 1-layer student copied from a, with
    token_kd and token_ce; ``combine: route`` reads ``data.teacher_field: teacher``. Each of ``sections``
    updates the section of its name key by key (``teachers={"b": ...}`` replaces teacher b only)."""
    data: dict[str, Any] = {
        "train": str(root / "train.jsonl"),
        "validation": str(root / "validation.jsonl"),
        "max_length": 64,
    }
    if combine == "route":
        data["teacher_field"] = "teacher"
    teachers = {"a": {"path": str(root / "a")}, "b": {"path": str(root / "b"), "weight": 3.0}}
    config = {
        "task": "causal_lm",
        "teachers": teachers,
        "student": {"from_teacher": {"num_layers": 1}},
        "data": data,
        "objective": {
            "terms": {
                "kd": {"type": "token_kd", "weight": 1, "temperature": 2.0, "chunk_size": 16},
                "ce": {"type": "token_ce", "weight": 0.5},
            },
            "teachers": {"combine": combine},
        },
        "training": {"epochs": 1, "batch_size": 4, "lr": 2.0e-3},
        "output": {"dir": str(out)},
        "evaluation": {"draft_model": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}  # type: ignore[dict-item]
        else:
            config[key] = value
    path = root / name
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _run(config: Path) -> dict[str, Any]:
    code, err = run_command(["distill", str(config), "--no-progress"])
    assert code == 0, err
    out = Path(yaml.safe_load(config.read_text())["output"]["dir"])
    return json.loads((out / "metrics.json").read_text())


def _check_teachers_and_combination(metrics: dict[str, Any], rule: str) -> None:
    """metrics.json has both teachers and their combination; the combined next-token distribution (a
    mixture with the fixed weights) is no worse, in log-perplexity, than the weighted mean of the
    teachers' (Jensen: -log Σ wᵢ pᵢ ≤ Σ wᵢ (-log pᵢ) token by token)."""
    teachers, combined = metrics["teachers"], metrics["combined"]
    assert set(teachers) == {"a", "b"}
    assert combined["rule"].startswith(rule)
    assert [teachers[name]["weight"] for name in ("a", "b")] == pytest.approx([0.25, 0.75])
    bound = sum(found["weight"] * math.log(found["perplexity"]) for found in teachers.values())
    assert combined["perplexity"] > 1 and math.log(combined["perplexity"]) <= bound + 1e-6
    assert 0 <= combined["agreement"] <= 1


# ---------------------------------------------------------------------------
# whole runs
# ---------------------------------------------------------------------------


def test_a_routed_run_reports_each_teacher_and_their_combination(lm_teachers: Path, tmp_path: Path) -> None:
    config = teachers_config(lm_teachers, "route.yaml", "route", tmp_path / "run")
    metrics = _run(config)
    _check_teachers_and_combination(metrics, "route")
    assert metrics["student"]["perplexity"] > 1
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## The teachers" in report and "| combined |" in report


def test_a_teacher_no_record_names_is_warned_of(
    lm_teachers: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the run reads the routes from the records: with every record on a, b teaches nothing
    train = _jsonl(tmp_path / "train.jsonl", [{**record, "teacher": "a"} for record in _records()])
    config = teachers_config(
        lm_teachers, "only_a.yaml", "route", tmp_path / "run", data={"train": str(train)}, training={"max_steps": 1}
    )
    with caplog.at_level(logging.WARNING, logger="kdistill.run"):
        _run(config)
    warned = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("no training example names teacher b" in message for message in warned), warned
    assert not any("names teacher a" in message for message in warned)


#: the metrics of the online mixture run, of the cached one, and the folder of their caches
Mixtures = tuple[dict[str, Any], dict[str, Any], Path]


@pytest.fixture(scope="module")
def mixtures(lm_teachers: Path, tmp_path_factory: pytest.TempPathFactory) -> Mixtures:
    """The metrics of a token_kd mixture of a and b online (in chunks of 16 tokens), and from each
    teacher's cache of every id (top_k: the vocabulary, in float32) in a folder of its own."""
    root = tmp_path_factory.mktemp("mixtures")
    online = _run(teachers_config(lm_teachers, "online.yaml", "mixture", root / "online"))
    everything = {"top_k": len(make_tokenizer()), "topk_dtype": "fp32"}
    teachers = {
        name: {
            "path": str(lm_teachers / name),
            "weight": weight,
            "cache": {"dir": str(root / "caches" / name), **everything},
        }
        for name, weight in (("a", 1.0), ("b", 3.0))
    }
    cached = _run(teachers_config(lm_teachers, "cached.yaml", "mixture", root / "cached", teachers=teachers))
    return online, cached, root / "caches"


def test_a_token_kd_mixture_online_reports_each_teacher_and_their_combination(
    mixtures: Mixtures,
) -> None:
    _check_teachers_and_combination(mixtures[0], "mixture")


def test_a_token_kd_mixture_from_top_k_caches_trains_the_student_the_online_one_does(
    mixtures: Mixtures,
) -> None:
    online, cached, caches = mixtures
    for name in ("a", "b"):
        assert (caches / name / "manifest.json").is_file()  # each teacher was read from a cache of its own
    _check_teachers_and_combination(cached, "mixture")
    # from caches the mixture is Σ ωᵢ KL(pᵢ ‖ q) per teacher, online KL(Σ ωᵢ pᵢ ‖ q): the same gradient
    # (q − Σ ωᵢ pᵢ), so the same student, and a loss above the online one by the teachers' spread
    assert cached["student"]["perplexity"] == pytest.approx(online["student"]["perplexity"], rel=1e-4)
    kd_online = online["training"]["stages"][0]["final"]["kd"]
    kd_cached = cached["training"]["stages"][0]["final"]["kd"]
    assert kd_cached > kd_online * (1 + 1e-3)


def test_a_confidence_run_online_reports_each_teacher_and_their_combination(lm_teachers: Path, tmp_path: Path) -> None:
    config = teachers_config(lm_teachers, "confidence.yaml", "confidence", tmp_path / "run")
    metrics = _run(config)
    _check_teachers_and_combination(metrics, "confidence")
    assert metrics["teacher_set"]["combine"].startswith("confidence")


# ---------------------------------------------------------------------------
# each example keeps its teacher
# ---------------------------------------------------------------------------


def _completion_key(labels: list[int]) -> tuple[int, ...]:
    return tuple(label for label in labels if label != IGNORE_INDEX)


def test_held_out_splits_and_token_budgets_keep_each_examples_teacher(tmp_path: Path) -> None:
    tokenizer = make_tokenizer()
    records = _records(24)
    records[5]["prompt"] = "a prompt far too long to fit " * 8  # dropped: no route may be left behind
    train = _jsonl(tmp_path / "train.jsonl", records)
    config = LMDataConfig(
        train=str(train), teacher_field="teacher", max_length=64, validation_fraction=0.25, max_train_tokens=450
    )
    splits = prepare_splits(config, tokenizer, progress=False, teachers=["a", "b"])
    expected = {
        _completion_key(
            tokenizer(r["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ): r["teacher"]
        for r in records
    }
    for role in ("train", "validation"):
        split = splits[role]
        assert split.routes is not None and len(split.routes) == len(split)
        found = [_completion_key(labels) for labels in split.dataset.columns["labels"]]
        assert [expected[key] for key in found] == split.routes
    assert splits["train"].stats["left_out"] > 0 and splits["train"].stats["dropped"] == 1
    assert set(splits["train"].routes) == {"a", "b"}
    # the validation file of a run is read without routes
    assert read_documents(train, config, role="validation").routes is None


def test_chat_records_name_their_teachers(tmp_path: Path) -> None:
    tokenizer = make_tokenizer()
    records = [
        {
            "messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}],
            "who": r["teacher"],
        }
        for r in _records(6)
    ]
    config = LMDataConfig(train=str(_jsonl(tmp_path / "chat.jsonl", records)), teacher_field="who", max_length=64)
    documents = read_documents(config.train, config, teachers=["a", "b"])
    split = tokenize_documents(documents, tokenizer, config, progress=False)
    assert split.routes == [r["who"] for r in records]


# ---------------------------------------------------------------------------
# the loop runs each routed teacher on its own rows
# ---------------------------------------------------------------------------


def _rows_seen(model: torch.nn.Module, seen: list[tuple[int, ...]], sizes: list[int]) -> Any:
    """Record each row the model's forward reads (its unpadded ids) and each batch's size."""

    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        mask = kwargs.get("attention_mask")
        sizes.append(int(ids.shape[0]))
        for row in range(ids.shape[0]):
            length = int(mask[row].sum()) if mask is not None else ids.shape[1]
            seen.append(tuple(ids[row, :length].tolist()))

    return model.register_forward_pre_hook(hook, with_kwargs=True)


def _distil_routed_lm(folder: Path, combine: str) -> tuple[dict[str, Counter], dict[str, list[int]], list[str]]:
    """distill() with two tiny decoder teachers on prompt/completion examples routed by their records, in
    batches of 4 in order: the rows each teacher's forward read, its batch sizes, and the examples' teachers."""
    from kdistill import Objective, distill
    from kdistill.losses.combine import TeacherMix
    from kdistill.losses.token_terms import TokenCE, TokenKD

    tokenizer = make_tokenizer()
    names = ["a", "b"]
    config = LMDataConfig(train=str(_jsonl(folder / "train.jsonl", _records(10))), teacher_field="teacher")
    split = tokenize_documents(read_documents(config.train, config, teachers=names), tokenizer, config, progress=False)
    assert split.routes is not None
    dataset = with_routes(split.dataset, route_indices(split.routes, names)) if combine == "route" else split.dataset
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=4, shuffle=False, collate_fn=PaddingCollator(pad_token_id=tokenizer.pad_token_id)
    )
    vocab = len(tokenizer)
    teachers = {name: tiny_decoder("llama", vocab=vocab, layers=2, seed=seed) for name, seed in zip(names, (1, 2))}
    student = tiny_decoder("llama", vocab=vocab, layers=1, seed=3).train()
    seen: dict[str, list[tuple[int, ...]]] = {name: [] for name in names}
    sizes: dict[str, list[int]] = {name: [] for name in names}
    hooks = [_rows_seen(model, seen[name], sizes[name]) for name, model in teachers.items()]
    objective = Objective(
        {"kd": TokenKD("forward_kl", temperature=2.0, chunk_size=8), "ce": TokenCE()},
        weights={"kd": 1.0, "ce": 0.5},
        teachers=TeacherMix.of(names, combine=combine),
    )
    distill(teachers, student, loader, objective=objective, epochs=1, progress=False)
    for handle in hooks:
        handle.remove()
    return {name: Counter(rows) for name, rows in seen.items()}, sizes, split.routes


def _examples(folder: Path) -> list[tuple[int, ...]]:
    tokenizer = make_tokenizer()
    config = LMDataConfig(train=str(folder / "train.jsonl"))
    split = tokenize_documents(read_documents(config.train, config), tokenizer, config, progress=False)
    return [tuple(ids) for ids in split.dataset.columns["input_ids"]]


def test_the_loop_runs_each_routed_teacher_on_its_own_rows_only(tmp_path: Path) -> None:
    seen, sizes, routes = _distil_routed_lm(tmp_path, "route")
    examples = _examples(tmp_path)
    batches = [routes[start : start + 4] for start in range(0, len(routes), 4)]
    assert len(set(routes)) == 2 and any(len(set(batch)) == 2 for batch in batches)  # mixed batches
    for name in ("a", "b"):
        assert seen[name] == Counter(ids for ids, route in zip(examples, routes, strict=True) if route == name)
        # one forward per batch that holds some of its rows, on those rows only
        assert sizes[name] == [batch.count(name) for batch in batches if name in batch]


def test_a_mixture_runs_every_teacher_on_every_row(tmp_path: Path) -> None:
    seen, sizes, routes = _distil_routed_lm(tmp_path, "mixture")
    examples = _examples(tmp_path)
    batches = [len(routes[start : start + 4]) for start in range(0, len(routes), 4)]
    for name in ("a", "b"):
        assert seen[name] == Counter(examples) and sizes[name] == batches


# ---------------------------------------------------------------------------
# bad input: one line, exit 2
# ---------------------------------------------------------------------------


def _refused(config: Path) -> str:
    return one_line(["distill", str(config), "--no-progress"], after_log=True)


def test_teachers_with_different_tokenizers_are_refused(lm_teachers: Path, tmp_path: Path) -> None:
    write_teacher(tmp_path / "other", "llama", tokenizer=make_tokenizer(200), layers=2, seed=3)
    teachers = {"a": {"path": str(lm_teachers / "a")}, "b": {"path": str(tmp_path / "other")}}
    line = _refused(teachers_config(lm_teachers, "tok.yaml", "mixture", tmp_path / "run", teachers=teachers))
    assert "teachers.b: its tokenizer is not the student's" in line
    assert not (tmp_path / "run").exists()


def test_a_record_routed_to_an_unknown_teacher_names_its_line(lm_teachers: Path, tmp_path: Path) -> None:
    records = _records()
    records[6]["teacher"] = "c"
    train = _jsonl(tmp_path / "train.jsonl", records)
    line = _refused(teachers_config(lm_teachers, "c.yaml", "route", tmp_path / "run", data={"train": str(train)}))
    assert "train.jsonl' line 7" in line and "teacher 'c'" in line and "the teachers are a, b" in line


@pytest.mark.parametrize(
    "value,expected",
    [(None, "has no 'teacher' (data.teacher_field)"), (1, "'teacher' (data.teacher_field) is a number")],
)
def test_a_record_without_a_teacher_name_is_one_line(
    lm_teachers: Path, tmp_path: Path, value: Any, expected: str
) -> None:
    records = _records()
    if value is None:
        del records[3]["teacher"]
    else:
        records[3]["teacher"] = value
    train = _jsonl(tmp_path / "train.jsonl", records)
    line = _refused(teachers_config(lm_teachers, "bad.yaml", "route", tmp_path / "run", data={"train": str(train)}))
    assert "train.jsonl' line 4" in line and expected in line


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_packed_text_cannot_route(lm_teachers: Path, tmp_path: Path, suffix: str) -> None:
    train = tmp_path / f"train{suffix}"
    if suffix == ".txt":
        train.write_text("the cat sat on the mat. " * 40, encoding="utf-8")
    else:
        _jsonl(train, [{"text": r["completion"], "teacher": r["teacher"]} for r in _records()])
    config = teachers_config(lm_teachers, "text.yaml", "route", tmp_path / "run", data={"train": str(train)})
    line = _refused(config)
    assert "packed into blocks" in line and "prompt/completion or chat records" in line


@pytest.mark.parametrize(
    "setting,expected",
    [
        ({"sequence_kd": {"new_tokens": 8}}, "objective.sequence_kd trains on continuations written by one teacher"),
        ({"on_policy": {"new_tokens": 8}}, "objective.on_policy rebuilds batches"),
    ],
)
def test_what_would_lose_each_examples_teacher_is_refused_with_route(
    lm_teachers: Path, tmp_path: Path, setting: dict[str, Any], expected: str
) -> None:
    config = teachers_config(lm_teachers, "gen.yaml", "route", tmp_path / "run", objective=setting)
    line = _refused(config)
    assert expected in line and "data.teacher_field" in line
    assert not (tmp_path / "run").exists()


def test_every_teacher_must_take_data_max_length(lm_teachers: Path, tmp_path: Path) -> None:
    write_teacher(tmp_path / "short", "llama", tokenizer=make_tokenizer(), layers=2, seed=3, positions=32)
    teachers = {"a": {"path": str(lm_teachers / "a")}, "b": {"path": str(tmp_path / "short")}}
    line = _refused(teachers_config(lm_teachers, "short.yaml", "mixture", tmp_path / "run", teachers=teachers))
    assert "data.max_length 64 is more than the teacher b's 32 token positions" in line


def test_the_teacher_field_is_a_key_of_its_own() -> None:
    with pytest.raises(ValueError, match="prompt_field and teacher_field name the same key 'prompt'"):
        LMDataConfig(train="train.jsonl", teacher_field="prompt")
    assert LMDataConfig(train="train.jsonl", teacher_field="who").route_field == "who"
    assert LMDataConfig(train="train.jsonl").route_field is None


def test_the_smollm2_two_teacher_example_is_a_valid_config() -> None:
    from kdistill.app.config_loading import load_config

    example = Path(__file__).resolve().parents[1] / "examples" / "multi_teacher" / "smollm2_two_teachers.yaml"
    config = load_config(example)
    assert list(config.teachers) == ["tuned", "untuned"] and config.primary_teacher == "tuned"
    assert config.objective.teachers.combine == "mixture"
    assert config.teachers["tuned"].weight == 3.0 and config.teachers["untuned"].gguf_file
