"""The sampled teacher cache of causal LMs (``teacher.cache: {sparse: sampled, samples: N}``, issue 25):
its forward-KL gradient is unbiased where top-k's is not, its draws are stored compactly, read back,
reproducible and independent of batching, a run trains from it, and what it cannot serve is refused
in one line."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_helpers import one_line, run_command
from lm_fixtures import PLAY, make_tokenizer, tiny_decoder, write_plays
from torch.testing import assert_close

from kdistill.cache import CacheError, CacheSpec, TeacherCache, cache_key
from kdistill.cache.sampling import count_draws, draw_ids, example_uniforms, samples_from_hidden
from kdistill.capture import Features
from kdistill.losses import chunked_token_loss, token_loss, token_loss_sampled, token_loss_topk

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

VOCAB, POSITIONS, SAMPLES, SEEDS, T = 8, 3, 4, 2000, 2.0


# ---------------------------------------------------------------------------
# the estimator
# ---------------------------------------------------------------------------


def _draws(log_p: torch.Tensor, seeds: int, samples: int) -> tuple[torch.Tensor, ...]:
    """``seeds`` draws of every position of ``log_p`` ``(P, V)``, seeded as the cache seeds examples
    0..seeds-1: the ids' log-probabilities, ids and counts, each ``(seeds, P, W)``."""
    positions, vocab = log_p.shape
    uniforms = torch.stack([example_uniforms(seed, positions, samples) for seed in range(seeds)])
    rows = log_p.expand(seeds, positions, vocab).reshape(-1, vocab)
    ids, counts = count_draws(draw_ids(rows, uniforms.reshape(-1, samples)), min(samples, vocab))
    shape = (seeds, positions, ids.shape[-1])
    return rows.gather(-1, ids).reshape(shape), ids.reshape(shape), counts.reshape(shape)


def _problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(POSITIONS, VOCAB, generator=generator, dtype=torch.float64) * 2
    student = torch.randn(POSITIONS, VOCAB, generator=generator, dtype=torch.float64)
    return teacher, student, torch.zeros(POSITIONS, dtype=torch.long)


def _dense_gradient(teacher: torch.Tensor, student: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    leaf = student.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(token_loss(leaf, teacher, targets, "forward_kl", temperature=T), leaf)
    return grad


def _tolerance(teacher: torch.Tensor) -> torch.Tensor:
    """Four standard errors of the mean of ``SEEDS`` gradients: per position the gradient estimate
    is ``T·(q − c/N)``, whose covariance is ``T²·(diag(p) − p pᵀ)/N``."""
    p = torch.softmax(teacher / T, dim=-1)
    return 4 * T * torch.sqrt(p * (1 - p) / (SAMPLES * SEEDS)) + 1e-9


def test_the_mean_sampled_gradient_is_the_forward_kl_gradient() -> None:
    teacher, student, targets = _problem()
    log_p = torch.log_softmax(teacher / T, dim=-1)
    top, ids, counts = _draws(log_p, SEEDS, SAMPLES)
    assert torch.equal(counts.sum(dim=-1), torch.full((SEEDS, POSITIONS), SAMPLES))
    leaf = student.expand(SEEDS, POSITIONS, VOCAB).clone().requires_grad_(True)
    loss = token_loss_sampled(leaf, top, ids, counts, targets.expand(SEEDS, -1), temperature=T)
    (grads,) = torch.autograd.grad(loss, leaf)
    dense = _dense_gradient(teacher, student, targets)
    error = (grads.mean(dim=0) - dense).abs()
    assert bool((error <= _tolerance(teacher)).all()), (error / _tolerance(teacher)).max()
    # one draw's gradient is T·(q − c/N), exactly
    empirical = torch.zeros(POSITIONS, VOCAB, dtype=torch.float64).scatter_add_(-1, ids[0], counts[0].double())
    assert_close(grads[0], T * (torch.softmax(student / T, dim=-1) - empirical / SAMPLES))
    # the value estimates the KL: its mean over the draws is the dense loss
    values = token_loss_sampled(
        leaf.detach(), top, ids, counts, targets.expand(SEEDS, -1), temperature=T, reduction="none"
    ).sum(dim=-1)
    exact = token_loss(student, teacher, targets, "forward_kl", temperature=T)
    assert abs(float(values.mean() - exact)) <= 4 * float(values.std()) / math.sqrt(SEEDS)


@pytest.mark.parametrize("k", [2, 4])
def test_top_k_s_gradient_is_biased_beyond_that_tolerance(k: int) -> None:
    teacher, student, targets = _problem()
    log_p = torch.log_softmax(teacher / T, dim=-1)
    top, ids = log_p.topk(k, dim=-1)
    rest = torch.log(-torch.expm1(torch.logsumexp(top, dim=-1)))
    leaf = student.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(token_loss_topk(leaf, top, ids, rest, targets, "forward_kl", temperature=T), leaf)
    error = (grad - _dense_gradient(teacher, student, targets)).abs()
    assert not bool((error <= _tolerance(teacher)).all())
    assert float((error / _tolerance(teacher)).max()) > 3  # 12 standard errors, where the draws stay within 4


def test_the_chunked_sampled_loss_equals_the_dense_one_and_skips_uncounted_positions() -> None:
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 5, 6, generator=generator, requires_grad=True)
    weight = torch.randn(VOCAB + 3, 6, generator=generator, requires_grad=True)  # a head padded by 3 ids
    log_p = torch.log_softmax(torch.randn(10, VOCAB, generator=generator) / T, dim=-1)
    top, ids, counts = (tensor.reshape(2, 5, -1) for tensor in _draws(log_p, 1, SAMPLES))
    targets = torch.tensor([[1, 2, 3, -100, -100], [4, -100, 5, 6, 7]])
    dense = token_loss_sampled(hidden @ weight.T, top, ids, counts, targets, temperature=T, vocab_size=VOCAB)
    dense_grads = torch.autograd.grad(dense, (hidden, weight))
    chunked = chunked_token_loss(
        hidden,
        weight,
        None,
        targets,
        "forward_kl",
        teacher_sampled=(top, ids, counts),
        temperature=T,
        vocab_size=VOCAB,
        chunk_size=3,
    )
    assert_close(chunked, dense)
    for got, expected in zip(torch.autograd.grad(chunked, (hidden, weight)), dense_grads, strict=True):
        assert_close(got, expected)
    with torch.no_grad():
        assert_close(
            chunked_token_loss(
                hidden,
                weight,
                None,
                targets,
                "forward_kl",
                teacher_sampled=(top, ids, counts),
                temperature=T,
                vocab_size=VOCAB,
            ),
            dense.detach(),
        )


@pytest.mark.parametrize("kind", ["reverse_kl", "jsd", "tv"])
def test_other_divergences_from_draws_are_refused(kind: str) -> None:
    log_p = torch.log_softmax(torch.randn(4, VOCAB), dim=-1)
    top, ids, counts = _draws(log_p, 1, SAMPLES)
    with pytest.raises(ValueError, match=f"forward_kl only .* not {kind}"):
        chunked_token_loss(
            torch.randn(1, 4, 6),
            torch.randn(VOCAB, 6),
            None,
            torch.zeros(1, 4, dtype=torch.long),
            kind,
            teacher_sampled=(top, ids, counts),
        )


def test_draws_follow_the_uniforms_not_the_chunks_and_never_pick_an_impossible_id() -> None:
    log_p = torch.log_softmax(torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(2)), dim=-1)
    log_p[:, 3] = float("-inf")  # probability 0
    uniforms = example_uniforms(5, 6, 200)
    whole = draw_ids(log_p, uniforms)
    assert torch.equal(whole, torch.cat([draw_ids(log_p[i : i + 1], uniforms[i : i + 1]) for i in range(6)]))
    assert int(whole.min()) >= 0 and int(whole.max()) < VOCAB and not bool((whole == 3).any())
    # the rows of an example do not depend on how many of its positions are drawn
    assert torch.equal(example_uniforms(5, 2, 200), uniforms[:2])
    assert not torch.equal(example_uniforms(6, 6, 200), uniforms)


def test_an_examples_draws_do_not_depend_on_its_batch() -> None:
    # small integers and quarters: every logit is exact, so the two batches see the same distributions
    generator = torch.Generator().manual_seed(3)
    layer = torch.nn.Linear(6, VOCAB, bias=False)
    layer.weight.data = torch.randint(-4, 5, (VOCAB, 6), generator=generator).float() / 4
    hidden = torch.randint(-3, 4, (2, 5, 6), generator=generator).float()
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    spec = CacheSpec(samples=SAMPLES, temperature=T, from_hidden=True)
    both = samples_from_hidden(Features(final_hidden=hidden, output_layer=layer), keep, spec, [3, 7])
    alone = samples_from_hidden(Features(final_hidden=hidden[1:], output_layer=layer), keep[1:], spec, [7])
    for name, rows in alone.items():
        assert torch.equal(both[name][3:], rows), name


# ---------------------------------------------------------------------------
# the cache
# ---------------------------------------------------------------------------


def _lm_dataset(tokenizer: Any, length: int = 24) -> Any:
    from kdistill.data.batch import with_example_index
    from kdistill.tasks.causal_lm.config import LMDataConfig
    from kdistill.tasks.causal_lm.data import tokenize_documents
    from kdistill.tasks.causal_lm.reading import Documents

    documents = Documents("text", [PLAY * 4], "plays")
    config = LMDataConfig(train="x.txt", max_length=length)
    return with_example_index(tokenize_documents(documents, tokenizer, config, progress=False).dataset)


@pytest.fixture(scope="module")
def lm() -> dict[str, Any]:
    from kdistill.data.datasets import PaddingCollator

    tokenizer = make_tokenizer()
    return {
        "tokenizer": tokenizer,
        "teacher": tiny_decoder("llama", vocab=len(tokenizer), layers=3, seed=1),
        "dataset": _lm_dataset(tokenizer),
        "collate": PaddingCollator(tokenizer.pad_token_id),
    }


def _build(lm: dict[str, Any], folder: Path, samples: int = 26, **options: Any) -> TeacherCache:
    spec = CacheSpec(samples=samples, temperature=T, dtype="bf16", from_hidden=True)
    return TeacherCache.build(
        lm["teacher"], lm["dataset"], folder, spec=spec, collate_fn=lm["collate"], progress=False, **options
    )


def _stored_bytes(cache: TeacherCache) -> int:
    return sum(
        (cache.folder / entry["path"]).stat().st_size - 128  # minus the .npy header
        for shard in cache.manifest["shards"]
        for entry in shard["files"].values()
    )


def test_a_sampled_cache_stores_n_draws_of_every_real_token_and_reads_them_back(lm, tmp_path: Path) -> None:
    from kdistill.capture import capture
    from kdistill.capture.features import CaptureRequest

    cache = _build(lm, tmp_path / "cache", batch_size=5)
    dataset, vocab = lm["dataset"], len(lm["tokenizer"])
    tokens = sum(len(row["input_ids"]) for row in dataset)
    arrays = {name: np.load(cache.folder / f"{name}.00000.npy") for name in cache.fields}
    assert arrays["sample_indices"].dtype == np.uint16 and arrays["sample_counts"].dtype == np.uint8
    assert arrays["sample_indices"].shape == arrays["sample_counts"].shape == (tokens, 26)  # real tokens only
    assert (arrays["sample_counts"].sum(axis=-1) == 26).all() and int(arrays["sample_indices"].max()) < vocab
    # 26 × (2 + 1 + 2) bytes a token, and an 8-byte offset per example
    assert _stored_bytes(cache) == tokens * 130 + 8 * (len(dataset) + 1)
    assert _stored_bytes(cache) / tokens <= 136

    # a training batch padded past its blocks: draws at the real tokens, nothing at the padding
    batch = lm["collate"]([dataset[i] for i in (4, 0, 9)])
    mask = torch.cat([batch["attention_mask"], torch.zeros(3, 5, dtype=torch.long)], dim=1)
    sampled = cache.features(batch["kd_index"], mask).sampled
    assert sampled.samples == 26 and sampled.temperature == T
    assert torch.equal(sampled.counts.sum(dim=-1), mask.long() * 26)
    # the stored log-probabilities are the teacher's, at T, of the ids drawn (bf16)
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
    teacher = capture(lm["teacher"], inputs, CaptureRequest(logits=False, final_hidden=True))
    log_p = torch.log_softmax(teacher.output_layer(teacher.final_hidden).float() / T, dim=-1)
    real = batch["attention_mask"].bool()
    expected = log_p.gather(-1, sampled.indices[:, : real.shape[1]])[real]
    assert_close(sampled.log_probs[:, : real.shape[1]][real], expected, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("samples", [16, 32, 64])
def test_a_sampled_cache_takes_5_bytes_a_draw(lm, tmp_path: Path, samples: int) -> None:
    cache = _build(lm, tmp_path / "cache", samples=samples)
    tokens = sum(len(row["input_ids"]) for row in lm["dataset"])
    assert _stored_bytes(cache) == tokens * 5 * samples + 8 * (len(lm["dataset"]) + 1)


def test_a_rebuilt_sampled_cache_is_identical(lm, tmp_path: Path) -> None:
    first, second = _build(lm, tmp_path / "a"), _build(lm, tmp_path / "b")
    assert first.manifest["fingerprint"] == second.manifest["fingerprint"]

    def digests(cache: TeacherCache) -> dict[str, str]:
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in cache.folder.glob("*.npy")}

    assert digests(first) == digests(second) and len(digests(first)) == 4  # ids, counts, log-probs, offsets
    assert (first.folder / "manifest.json").read_text() == (second.folder / "manifest.json").read_text()


def test_counts_that_do_not_add_up_are_found_on_opening(lm, tmp_path: Path) -> None:
    from kdistill.files.ownership import file_sha256

    cache = _build(lm, tmp_path / "cache", samples=8)
    path = cache.folder / "sample_counts.00000.npy"
    counts = np.load(path)
    counts[5, 0] += 1
    np.save(path, counts)
    manifest = json.loads((cache.folder / "manifest.json").read_text())
    manifest["shards"][0]["files"]["sample_counts"].update(bytes=path.stat().st_size, sha256=file_sha256(path))
    (cache.folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="sample_counts.00000.npy holds tokens whose counts do not add up to their 8"):
        TeacherCache.open(cache.folder)


def test_the_key_tells_the_sparse_forms_and_draws_apart_and_keeps_top_k_keys() -> None:
    teacher = torch.nn.Linear(2, 2)
    data = [torch.zeros(2)]
    keys = {
        name: cache_key(teacher, data, spec)[0]
        for name, spec in {
            "top_k": CacheSpec(top_k=32, temperature=1.0, dtype="bf16", from_hidden=True),
            "16": CacheSpec(samples=16, temperature=1.0, dtype="bf16", from_hidden=True),
            "26": CacheSpec(samples=26, temperature=1.0, dtype="bf16", from_hidden=True),
            "26 at T=2": CacheSpec(samples=26, temperature=2.0, dtype="bf16", from_hidden=True),
        }.items()
    }
    assert len(set(keys.values())) == 4
    # the spec part of a top-k cache's key is the one of kdistill before sampled caches: their caches stay valid
    top_k = CacheSpec(top_k=32, temperature=1.0, dtype="bf16", from_hidden=True)
    assert cache_key(teacher, data, top_k)[1]["spec"] == "ce1dd3ccf89126339239e2a853a542da"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"samples": 0}, "samples must be from 1 to 255"),
        ({"samples": 256}, "samples must be from 1 to 255"),
        ({"samples": 8, "top_k": 4}, "give top_k or samples, not both"),
        ({"samples": 8, "from_hidden": False}, "give from_hidden=True"),
        ({"samples": 8, "temperature": None}, "needs the temperature"),
    ],
)
def test_impossible_sampled_specs_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CacheSpec(**{"temperature": 1.0, "from_hidden": True, **options})


# ---------------------------------------------------------------------------
# a run
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plays(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plays(tmp_path_factory.mktemp("plays"))


def _config(plays: Path, folder: Path, cache: dict[str, Any], terms: dict[str, Any] | None = None) -> Path:
    import yaml

    config = {
        "task": "causal_lm",
        "teacher": {"path": str(plays / "teacher"), "cache": cache},
        "student": {"from_teacher": {"num_layers": 2}},
        "data": {
            "train": str(plays / "train.txt"),
            "validation": str(plays / "validation.txt"),
            "test": str(plays / "test.txt"),
            "max_length": 32,
        },
        "objective": {
            "terms": terms
            or {
                "kd": {"type": "token_kd", "divergence": "forward_kl", "temperature": 1.0, "weight": 0.5},
                "ce": {"type": "token_ce", "weight": 0.5},
            }
        },
        "training": {"epochs": 1, "batch_size": 8, "lr": 2.0e-3},
        "output": {"dir": str(folder / "run"), "save_checkpoints": False},
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_a_run_trains_from_a_sampled_cache_end_to_end(plays: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    config = _config(plays, tmp_path, {"dir": str(cache), "sparse": "sampled", "samples": 8})
    code, err = run_command(["distill", str(config), "--no-progress"])
    assert code == 0, err
    run = tmp_path / "run"
    assert "teacher outputs from the cache" in (run / "run.log").read_text()
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["spec"]["samples"] == 8 and manifest["spec"]["temperature"] == 1.0
    assert set(manifest["fields"]) == {"sample_indices", "sample_counts", "sample_logprobs"}
    resolved = (run / "config.yaml").read_text()
    assert "sparse: sampled" in resolved and "samples: 8" in resolved


def test_the_default_draws_are_recorded_in_the_resolved_config() -> None:
    from kdistill.app.config import DEFAULT_SAMPLES, CacheConfig

    assert CacheConfig(sparse="sampled").samples == DEFAULT_SAMPLES == 26
    assert CacheConfig().sparse == "top_k" and CacheConfig().samples is None


@pytest.mark.parametrize(
    ("cache", "terms", "message"),
    [
        (
            {"sparse": "sampled"},
            {"kd": {"type": "token_kd", "divergence": "reverse_kl"}},
            "teacher.cache.sparse: sampled trains only token_kd with divergence: forward_kl, and term kd "
            "(distill stage) is token_kd with divergence: reverse_kl: set teacher.cache.sparse: top_k, or remove "
            "teacher.cache to run the teacher online",
        ),
        (
            {"sparse": "sampled", "samples": 4},
            {
                "kd": {"type": "token_kd", "divergence": "forward_kl"},
                "js": {"type": "token_kd", "divergence": "jsd", "weight": 0.5},
            },
            "term js (distill stage) is token_kd with divergence: jsd: set teacher.cache.sparse: top_k",
        ),
        ({"sparse": "sampled", "samples": 0}, None, "teacher.cache.samples"),
        ({"sparse": "sampled", "samples": 256}, None, "teacher.cache.samples"),
        ({"samples": 16}, None, "samples applies to sparse: sampled only"),
        ({"sparse": "random"}, None, "teacher.cache.sparse"),
    ],
)
def test_what_a_sampled_cache_cannot_serve_is_one_line(
    plays: Path, tmp_path: Path, cache: dict[str, Any], terms: dict[str, Any] | None, message: str
) -> None:
    config = _config(plays, tmp_path, {"dir": str(tmp_path / "cache"), **cache}, terms)
    line = one_line(["distill", str(config), "--no-progress"])
    assert message in line, line
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_a_sampled_cache_for_a_classifier_is_one_line(tmp_path: Path) -> None:
    from cli_helpers import write_run_config
    from text_fixtures import save_classifier, sentences, write_csv

    save_classifier(tmp_path / "teacher", num_layers=2, hidden=32, heads=4, seed=1, id2label={0: "neg", 1: "pos"})
    write_csv(tmp_path / "train.csv", sentences(16, seed=0, labels=("neg", "pos")))
    write_csv(tmp_path / "test.csv", sentences(8, seed=1, labels=("neg", "pos")))
    config = write_run_config(tmp_path, teacher={"path": str(tmp_path / "teacher"), "cache": {"sparse": "sampled"}})
    line = one_line(["distill", str(config), "--no-progress"])
    assert "sparse: sampled trains only token_kd" in line and "term kd (distill stage) is kd" in line, line
