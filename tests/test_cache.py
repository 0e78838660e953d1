"""TeacherCache: offline distillation equals online, fingerprints invalidate, damage is detected."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import mlp, tiny_bert
from torch.testing import assert_close
from torch.utils.data import DataLoader, TensorDataset

from kdistill import CacheSpec, Objective, TeacherCache, distill, with_example_index
from kdistill.cache import CacheError
from kdistill.capture import CaptureRequest, capture
from kdistill.losses import functional as LF


def _token_examples(n=24, seed=0, num_labels=3):
    """Examples of different lengths, as a tokenizer would give them (unpadded)."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        length = int(torch.randint(3, 12, (1,), generator=generator))
        examples.append(
            {
                "input_ids": torch.randint(1, 64, (length,), generator=generator),
                "labels": int(torch.randint(0, num_labels, (1,), generator=generator)),
            }
        )
    return examples


def pad_collate(examples, extra_padding=0):
    """Dynamic padding to the longest example of the batch (plus ``extra_padding``)."""
    length = max(len(e["input_ids"]) for e in examples) + extra_padding
    batch = {
        "input_ids": torch.zeros(len(examples), length, dtype=torch.long),
        "attention_mask": torch.zeros(len(examples), length, dtype=torch.long),
        "labels": torch.tensor([e["labels"] for e in examples]),
    }
    for row, example in enumerate(examples):
        batch["input_ids"][row, : len(example["input_ids"])] = example["input_ids"]
        batch["attention_mask"][row, : len(example["input_ids"])] = 1
    if "kd_index" in examples[0]:
        batch["kd_index"] = torch.tensor([e["kd_index"] for e in examples])
    return batch


def _shuffled_loader(dataset, seed=0):
    return DataLoader(
        dataset, batch_size=4, shuffle=True, collate_fn=pad_collate, generator=torch.Generator().manual_seed(seed)
    )


def test_cached_run_equals_online_run(tmp_path):
    examples = _token_examples()
    teacher = tiny_bert(4, 48, seed=1)
    cache = TeacherCache.build(
        teacher, examples, tmp_path / "cache", collate_fn=pad_collate, batch_size=5, progress=False
    )
    assert len(cache) == len(examples)

    def run(use_cache):
        student = tiny_bert(2, 32, seed=2)
        dataset = with_example_index(examples) if use_cache else examples
        distill(
            None if use_cache else teacher,
            student,
            _shuffled_loader(dataset),
            teacher_cache=cache if use_cache else None,
            objective=Objective.hinton(2.0, 0.7),
            lr=1e-3,
            epochs=2,
            gradient_accumulation_steps=2,
            progress=False,
        )
        return student.state_dict()

    online, cached = run(False), run(True)
    for name in online:
        assert_close(cached[name], online[name], rtol=1e-4, atol=1e-5)


def test_cached_tuple_dataset_equals_online(tmp_path):
    inputs, labels = torch.randn(40, 16), torch.randint(0, 4, (40,))
    dataset = TensorDataset(inputs, labels)
    teacher = mlp(16, 64, 4, seed=3)
    cache = TeacherCache.build(teacher, dataset, tmp_path / "c", batch_size=16, progress=False)

    def run(use_cache):
        student = mlp(16, 8, 4, seed=4)
        data = with_example_index(dataset) if use_cache else dataset
        loader = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1))
        distill(
            None if use_cache else teacher,
            student,
            loader,
            teacher_cache=cache if use_cache else None,
            lr=1e-2,
            epochs=2,
            progress=False,
        )
        return student.state_dict()

    online, cached = run(False), run(True)
    for name in online:
        assert_close(cached[name], online[name])


def test_per_token_hidden_states_follow_the_batch_padding(tmp_path):
    examples = _token_examples(10, seed=5)
    teacher = tiny_bert(3, 32, seed=6)
    cache = TeacherCache.build(
        teacher,
        examples,
        tmp_path / "c",
        spec=CacheSpec(hidden_states=(0, 2)),
        collate_fn=pad_collate,
        batch_size=3,
        progress=False,
    )
    order = [7, 2, 9, 0]
    batch = pad_collate([examples[i] for i in order], extra_padding=3)  # padded more than at build time
    mask = batch["attention_mask"]
    stored = cache.features(torch.tensor(order), mask)
    with torch.no_grad():
        live = capture(
            teacher,
            {"input_ids": batch["input_ids"], "attention_mask": mask},
            CaptureRequest(hidden_states=frozenset({0, 2})),
        )
    keep = mask.bool()
    for layer in (0, 2):
        assert_close(stored.hidden_states[layer][keep], live.hidden_states[layer][keep], rtol=1e-4, atol=1e-5)
        assert stored.hidden_states[layer][~keep].abs().sum() == 0
    assert_close(stored.logits, live.logits, rtol=1e-4, atol=1e-5)


def _build(teacher, examples, folder, **kwargs):
    return TeacherCache.build(
        teacher, examples, folder, collate_fn=pad_collate, batch_size=4, progress=False, **kwargs
    )


def test_changed_teacher_dataset_or_tokenisation_invalidate(tmp_path, caplog):
    examples = _token_examples(12)
    teacher = tiny_bert(2, 32, seed=1)
    folder = tmp_path / "cache"
    first = _build(teacher, examples, folder, tokenization={"max_length": 16})
    fingerprint = first.manifest["fingerprint"]

    with caplog.at_level(logging.INFO, logger="kdistill.cache"):
        again = _build(teacher, examples, folder, tokenization={"max_length": 16})
    assert again.manifest["fingerprint"] == fingerprint
    assert "reusing" in caplog.text and "rebuilding" not in caplog.text

    changes = {
        "teacher weights": lambda: (_perturbed(teacher), examples, {"max_length": 16}),
        "dataset": lambda: (teacher, examples[:-1], {"max_length": 16}),
        "tokenisation settings": lambda: (teacher, examples, {"max_length": 32}),
    }
    for what, make in changes.items():
        model, data, tokenization = make()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="kdistill.cache"):
            rebuilt = _build(model, data, folder, tokenization=tokenization)
        assert "rebuilding" in caplog.text and what in caplog.text, caplog.text
        assert rebuilt.manifest["fingerprint"] != fingerprint
        assert len(rebuilt) == len(data)
        # put the original back for the next change
        _build(teacher, examples, folder, tokenization={"max_length": 16})


def _perturbed(model):
    clone = tiny_bert(2, 32, seed=1)
    with torch.no_grad():
        clone.classifier.bias.add_(1e-3)
    return clone


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_damaged_cache_is_detected_and_rebuilt(tmp_path, caplog, damage):
    examples = _token_examples(12)
    teacher = tiny_bert(2, 32, seed=1)
    folder = tmp_path / "cache"
    cache = _build(teacher, examples, folder, shard_megabytes=0.00004)  # several shards
    assert len(cache.manifest["shards"]) > 1
    expected = cache.features(torch.arange(12)).logits.clone()
    del cache
    shard = folder / "logits.00001.npy"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(shard.read_bytes())
        data[-3] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "delete":
        shard.unlink()
    else:
        (folder / "manifest.json").write_text("{ not json")
    with caplog.at_level(logging.WARNING, logger="kdistill.cache"):
        rebuilt = _build(teacher, examples, folder, shard_megabytes=0.00004)
    assert "rebuilding" in caplog.text
    assert_close(rebuilt.features(torch.arange(12)).logits, expected)


def _rewrite_shard(folder, name, change):
    """Replace shard file ``name`` by ``change(its array)`` and record the new size and SHA-256 in the
    manifest, as someone editing the cache by hand would: the checksums alone no longer tell."""
    from kdistill.files.ownership import file_sha256

    path = folder / name
    np.save(path, change(np.load(path)))
    manifest = json.loads((folder / "manifest.json").read_text())
    for shard in manifest["shards"]:
        for entry in shard["files"].values():
            if entry["path"] == name:
                entry.update(bytes=path.stat().st_size, sha256=file_sha256(path))
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _edit_manifest(folder, change):
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _swap_offsets(offsets):
    offsets = offsets.copy()
    offsets[1], offsets[2] = offsets[2], offsets[1]
    return offsets


def _wider_logits(manifest):
    manifest["fields"]["logits"]["row_shape"] = [4]


def _more_examples(manifest):
    manifest["num_examples"] += 2
    manifest["shards"][-1]["end"] += 2


def _other_temperature(manifest):
    manifest["spec"]["temperature"] = 2.0


def _path_outside(manifest):
    manifest["shards"][0]["files"]["logits"]["path"] = "../logits.00000.npy"


def _other_storage(manifest):
    manifest["fields"]["logits"]["storage"] = "bf16"


#: damage the checksums do not show (the manifest records the edited file's size and SHA-256, or is
#: itself edited), with the file the message must name: each is found on opening, so the cache is rebuilt
STRUCTURAL_DAMAGE = {
    "offsets that decrease": (
        lambda folder: _rewrite_shard(folder, "offsets.00000.npy", _swap_offsets),
        "offsets.00000.npy holds offsets that do not increase",
    ),
    "offsets past the tokens": (
        lambda folder: _rewrite_shard(folder, "offsets.00000.npy", lambda a: a + 1),
        "offsets.00000.npy holds offsets that do not increase from 0",
    ),
    "a truncated row of a per-token field": (
        lambda folder: _rewrite_shard(folder, "hidden.1.00000.npy", lambda a: a[:-1]),
        "hidden.1.00000.npy holds float32 of shape",
    ),
    "a shape the manifest does not give": (
        lambda folder: _edit_manifest(folder, _wider_logits),
        "logits.00000.npy holds float32 of shape (4, 3); the manifest says float32 of shape (4, 4)",
    ),
    "another storage precision": (
        lambda folder: _edit_manifest(folder, _other_storage),
        "logits.00000.npy holds float32 of shape (4, 3); the manifest says uint16",
    ),
    "more examples than the shards hold": (
        lambda folder: _edit_manifest(folder, _more_examples),
        "offsets.00002.npy holds int64 offsets of shape (5,), not the 7 offsets of its 6 examples",
    ),
    "a spec edited by hand": (
        lambda folder: _edit_manifest(folder, _other_temperature),
        "manifest.json records a spec that does not match its fingerprint",
    ),
    "a file outside the cache": (
        lambda folder: _edit_manifest(folder, _path_outside),
        "manifest.json names the file '../logits.00000.npy'",
    ),
}


@pytest.mark.parametrize("damage", sorted(STRUCTURAL_DAMAGE))
def test_damage_the_checksums_do_not_show_is_found_on_opening_and_rebuilt(tmp_path, caplog, damage):
    examples = _token_examples(12)
    teacher = tiny_bert(2, 32, seed=1)
    folder = tmp_path / "cache"
    spec = CacheSpec(hidden_states=(1,))
    cache = _build(teacher, examples, folder, spec=spec, shard_megabytes=0.00004)  # 4 examples a shard
    assert [shard["end"] for shard in cache.manifest["shards"]] == [4, 8, 12]
    expected = cache.features(torch.arange(12), pad_collate(examples)["attention_mask"])
    fingerprint = cache.manifest["fingerprint"]
    del cache
    make, message = STRUCTURAL_DAMAGE[damage]
    make(folder)
    for verify in (True, False):  # sizes, shapes and offsets are checked even without the checksums
        with pytest.raises(CacheError, match="damaged") as error:
            TeacherCache.open(folder, fingerprint=fingerprint, verify=verify)
        assert message in str(error.value) and len(str(error.value).splitlines()) == 1, str(error.value)
    with caplog.at_level(logging.WARNING, logger="kdistill.cache"):
        rebuilt = _build(teacher, examples, folder, spec=spec, shard_megabytes=0.00004)
    assert "rebuilding" in caplog.text and message in caplog.text
    again = rebuilt.features(torch.arange(12), pad_collate(examples)["attention_mask"])
    assert_close(again.logits, expected.logits)
    assert_close(again.hidden_states[1], expected.hidden_states[1])


def test_top_k_ids_past_the_vocabulary_are_found_on_opening_and_rebuilt(tmp_path, caplog):
    examples = _token_examples(8)
    teacher = tiny_bert(2, 32, num_labels=5, seed=1)
    folder = tmp_path / "cache"
    spec = CacheSpec(top_k=2, temperature=4.0)
    cache = _build(teacher, examples, folder, spec=spec)
    assert cache.fields["topk_indices"]["vocab_size"] == 5
    expected = cache.features(torch.arange(8)).topk.indices.clone()
    del cache

    def past_the_end(ids):
        ids = ids.copy()
        ids[3, 1] = 7  # the teacher has 5 classes
        return ids

    _rewrite_shard(folder, "topk_indices.00000.npy", past_the_end)
    with pytest.raises(CacheError, match="topk_indices.00000.npy holds id 7, past the teacher's vocabulary of 5"):
        TeacherCache.open(folder)
    with caplog.at_level(logging.WARNING, logger="kdistill.cache"):
        rebuilt = _build(teacher, examples, folder, spec=spec)
    assert "rebuilding" in caplog.text and "topk_indices.00000.npy holds id 7" in caplog.text
    assert torch.equal(rebuilt.features(torch.arange(8)).topk.indices, expected)


def test_a_manifest_that_is_not_a_cache_manifest_is_rebuilt_not_an_internal_error(tmp_path, caplog):
    examples = _token_examples(8)
    teacher = tiny_bert(2, 32, seed=1)
    folder = tmp_path / "cache"
    expected = _build(teacher, examples, folder).features(torch.arange(8)).logits.clone()
    for text in (
        "[1, 2]",
        json.dumps({"format": 1, "complete": True}),
        json.dumps({"format": 1, "complete": True, "fingerprint": "x", "parts": {}, "spec": {}}),
    ):
        (folder / "manifest.json").write_text(text)
        with pytest.raises(CacheError):
            TeacherCache.open(folder)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kdistill.cache"):
            rebuilt = _build(teacher, examples, folder)
        assert "rebuilding" in caplog.text
        assert_close(rebuilt.features(torch.arange(8)).logits, expected)


def test_the_checks_on_opening_cost_little_beside_the_checksums(tmp_path):
    """The shapes, offsets and id scan are a small share of opening: the SHA-256 is the cost."""
    import time

    from kdistill.files.ownership import file_sha256

    examples = [{"input_ids": torch.randint(1, 64, (64,)), "labels": 0} for _ in range(64)]
    folder = tmp_path / "cache"
    spec = CacheSpec(top_k=4, temperature=2.0, hidden_states=(0, 1, 2))
    _build(tiny_bert(2, 256, seed=1), examples, folder, spec=spec)
    files = sorted(folder.glob("*.npy"))
    assert sum(path.stat().st_size for path in files) > 10 * 2**20

    def best(action):
        times = []
        for _ in range(3):
            started = time.perf_counter()
            action()
            times.append(time.perf_counter() - started)
        return min(times)

    hashing = best(lambda: [file_sha256(path) for path in files])
    opening = best(lambda: TeacherCache.open(folder))
    assert opening < 1.5 * hashing + 0.05, (opening, hashing)


def test_failed_build_leaves_the_previous_cache_intact(tmp_path):
    examples = _token_examples(12)
    teacher = tiny_bert(2, 32, seed=1)
    folder = tmp_path / "cache"
    good = _build(teacher, examples, folder)
    manifest = (folder / "manifest.json").read_text()

    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.calls = tiny_bert(2, 32, seed=9), 0

        def forward(self, **inputs):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("out of memory, say")
            return self.inner(**inputs)

    with pytest.raises(RuntimeError, match="out of memory"):
        _build(Exploding(), examples, folder)
    assert (folder / "manifest.json").read_text() == manifest
    # no half-written folder left behind (the lock file of concurrent builders stays, empty)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["cache"]
    assert TeacherCache.open(folder, fingerprint=good.manifest["fingerprint"])


def test_runs_side_by_side_build_one_cache_and_share_it(tmp_path):
    """Two builders of the same cache at once (a sweep's runs): the teacher runs over the data
    once, the second waits and reads what the first wrote."""
    import threading
    import time

    class Slow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.calls = mlp(16, 32, 4, seed=3), 0

        def forward(self, inputs):
            self.calls += 1
            time.sleep(0.02)  # long enough for the second builder to arrive while the first works
            return self.inner(inputs)

    dataset = TensorDataset(torch.randn(40, 16), torch.randint(0, 4, (40,)))
    teacher, caches, errors = Slow(), [], []

    def build():
        try:
            caches.append(TeacherCache.build(teacher, dataset, tmp_path / "c", batch_size=8, progress=False))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert teacher.calls == 5  # 40 examples in batches of 8, once
    index = torch.arange(40)
    assert_close(caches[0].features(index).logits, caches[1].features(index).logits)
    assert_close(caches[0].features(index).logits, teacher.inner(dataset.tensors[0]))


def test_top_k_equals_full_kd_when_k_covers_the_vocabulary(tmp_path):
    examples = _token_examples(16)
    teacher = tiny_bert(2, 32, num_labels=5, seed=1)
    student = tiny_bert(2, 32, num_labels=5, seed=2)
    full = _build(teacher, examples, tmp_path / "full")
    top_all = _build(teacher, examples, tmp_path / "k5", spec=CacheSpec(top_k=5, temperature=4.0))
    top_two = _build(teacher, examples, tmp_path / "k2", spec=CacheSpec(top_k=2, temperature=4.0))
    batch = pad_collate(examples[:8])
    indices = torch.arange(8)
    with torch.no_grad():
        student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference = LF.soft_kd(student_logits, full.features(indices).logits, 4.0)
    objective = Objective.hinton(4.0, alpha=1.0)
    from kdistill import Features

    exact = objective(Features(logits=student_logits), top_all.features(indices)).total
    assert_close(exact, reference, rtol=1e-5, atol=1e-6)
    bound = objective(Features(logits=student_logits), top_two.features(indices)).total
    assert 0 < bound.item() <= reference.item() + 1e-6
    with pytest.raises(ValueError, match="temperature 4"):
        Objective.hinton(2.0, alpha=1.0)(Features(logits=student_logits), top_two.features(indices))


@pytest.mark.parametrize("dtype,tolerance", [("fp16", 1e-3), ("bf16", 8e-3)])
def test_storage_precision_error_is_within_the_documented_bound(tmp_path, dtype, tolerance):
    examples = _token_examples(16)
    teacher = tiny_bert(2, 32, seed=1)
    exact = _build(teacher, examples, tmp_path / "fp32").features(torch.arange(16)).logits
    stored = _build(teacher, examples, tmp_path / dtype, spec=CacheSpec(dtype=dtype)).features(torch.arange(16)).logits
    assert stored.dtype == torch.float32
    relative = ((stored - exact).abs() / exact.abs().clamp_min(1e-3)).max().item()
    assert relative <= tolerance / 2, relative
    student = torch.randn(16, 3)
    loss_error = abs(LF.soft_kd(student, stored, 4.0) - LF.soft_kd(student, exact, 4.0)) / LF.soft_kd(
        student, exact, 4.0
    )
    assert loss_error <= tolerance


def test_batches_without_indices_are_a_clear_error(tmp_path):
    examples = _token_examples(8)
    cache = _build(tiny_bert(2, 32, seed=1), examples, tmp_path / "c")
    loader = DataLoader(examples, batch_size=4, collate_fn=pad_collate)
    with pytest.raises(ValueError, match="with_example_index"):
        distill(None, tiny_bert(2, 32, seed=2), loader, teacher_cache=cache, progress=False)


def test_cache_that_lacks_a_requested_layer_is_a_clear_error(tmp_path):
    examples = _token_examples(8)
    cache = _build(tiny_bert(2, 32, seed=1), examples, tmp_path / "c")
    assert cache.provides(CaptureRequest(hidden_states=frozenset({1}))) is not None
    assert "hidden states of teacher layers [1]" in cache.provides(CaptureRequest(hidden_states=frozenset({1})))
    for request in (
        CaptureRequest(attentions={1}),
        CaptureRequest(attention_scores={1}),
        CaptureRequest(qkv={1}),
        CaptureRequest(modules={"bert.encoder"}),
    ):
        assert "use online distillation" in cache.provides(request)
    assert cache.provides(CaptureRequest()) is None


def test_manifest_records_what_is_stored(tmp_path):
    examples = _token_examples(8)
    _build(tiny_bert(2, 32, seed=1), examples, tmp_path / "c", spec=CacheSpec(hidden_states=(1,), dtype="fp16"))
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_examples"] == 8
    assert manifest["fields"]["logits"]["storage"] == "fp16"
    assert manifest["fields"]["hidden.1"]["per_token"] is True
    assert np.load(tmp_path / "c" / manifest["shards"][0]["files"]["logits"]["path"], mmap_mode="r").shape == (8, 3)


def test_bad_specs_are_clear_errors():
    with pytest.raises(ValueError, match="dtype"):
        CacheSpec(dtype="int8")
    with pytest.raises(ValueError, match="temperature"):
        CacheSpec(top_k=5)
    with pytest.raises(ValueError, match="stores nothing"):
        CacheSpec(logits=False)


def test_trainer_with_a_cache_equals_the_online_trainer(tmp_path):
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast, TrainingArguments

    vocab = {f"w{i}": i for i in range(2, 64)}
    vocab["[PAD]"], vocab["[UNK]"] = 0, 1
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")
    examples = _token_examples(16)
    data = Dataset.from_dict(
        {
            "input_ids": [e["input_ids"].tolist() for e in examples],
            "attention_mask": [[1] * len(e["input_ids"]) for e in examples],
            "labels": [e["labels"] for e in examples],
        }
    )
    collator = DataCollatorWithPadding(tokenizer)
    teacher = tiny_bert(4, 48, seed=1)
    cache = TeacherCache.build(teacher, data, tmp_path / "cache", collate_fn=collator, batch_size=4, progress=False)

    from kdistill import DistillationTrainer

    def run(use_cache):
        student = tiny_bert(2, 32, seed=2)
        args = TrainingArguments(
            output_dir=str(tmp_path / "out"),
            per_device_train_batch_size=4,
            num_train_epochs=2,
            learning_rate=1e-3,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
            gradient_accumulation_steps=2,
        )
        trainer = DistillationTrainer(
            teacher_model=None if use_cache else teacher,
            teacher_cache=cache if use_cache else None,
            model=student,
            args=args,
            data_collator=collator,
            train_dataset=with_example_index(data) if use_cache else data,
        )
        trainer.train()
        return student.state_dict()

    online, cached = run(False), run(True)
    for name in online:
        assert_close(cached[name], online[name], rtol=1e-4, atol=1e-5)


def test_indexed_dataset_exposes_the_wrapped_dataset_attributes():
    class WithLengths(list):
        lengths = [3, 1, 2]

    indexed = with_example_index(WithLengths([{"x": 1}, {"x": 2}, {"x": 3}]))
    assert indexed.lengths == [3, 1, 2]
    assert indexed[1] == {"x": 2, "kd_index": 1}


def test_padding_collator_keeps_example_indices():
    from kdistill.data.datasets import PaddingCollator, TokenizedDataset

    dataset = with_example_index(TokenizedDataset({"input_ids": [[5, 6, 7], [8]]}, [1, 0]))
    batch = PaddingCollator(pad_token_id=0)([dataset[0], dataset[1]])
    assert batch["kd_index"].tolist() == [0, 1]
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]


def test_length_sorted_cache_pass_stores_every_example_in_its_own_row(tmp_path, monkeypatch):
    """The cache pass batches examples of similar length (less padding); every row, logits and
    per-token hidden states alike, must still belong to the example of its index."""
    from kdistill.cache import shards as cache_module
    from kdistill.data.datasets import PaddingCollator, TokenizedDataset

    generator = torch.Generator().manual_seed(3)
    lengths = torch.randint(2, 20, (70,), generator=generator).tolist()
    ids = [torch.randint(5, 60, (n,), generator=generator).tolist() for n in lengths]
    dataset = TokenizedDataset({"input_ids": ids, "attention_mask": [[1] * n for n in lengths]}, [0] * len(ids))
    teacher = tiny_bert(num_layers=2).eval()
    collator = PaddingCollator(pad_token_id=0)
    # small windows, so that the pass spans several of them and several shards
    monkeypatch.setattr(cache_module, "SORT_WINDOW_BATCHES", 3)
    windows = cache_module.length_sorted_windows(len(dataset), dataset.lengths, 8)
    assert [i for w in windows for b in w for i in b] != list(range(70))  # really reordered
    cache = TeacherCache.build(
        teacher,
        dataset,
        tmp_path / "cache",
        spec=CacheSpec(hidden_states=(1,)),
        batch_size=8,
        collate_fn=collator,
        shard_megabytes=0.01,
        progress=False,
    )
    assert len(cache.manifest["shards"]) > 1
    request = CaptureRequest(logits=True, hidden_states=frozenset({1}))
    for picked in ([5, 69, 0, 33], [12, 13, 40]):
        batch = collator([dataset[i] for i in picked])
        online = capture(teacher, batch, request)
        stored = cache.features(torch.tensor(picked), batch["attention_mask"])
        assert_close(stored.logits, online.logits, rtol=1e-5, atol=1e-5)
        keep = batch["attention_mask"].bool()
        assert_close(stored.hidden_states[1][keep], online.hidden_states[1][keep], rtol=1e-5, atol=1e-5)
