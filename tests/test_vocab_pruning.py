"""Vocabulary pruning (kdistill.prune_vocabulary and student.prune_vocabulary): text the kept
vocabulary covers reads the same tokens and gets the same logits; other words are re-spelled
with kept pieces or become one [UNK]; the special tokens stay; the model shrinks by the dropped
rows; the saved folder is plain transformers; tokenizers other than WordPiece are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line, succeeds, write_run_config
from text_fixtures import WORDS, save_classifier, sentences, write_csv

from kdistill import VocabularyReport, prune_vocabulary
from kdistill.errors import VocabularyError
from kdistill.tasks.text_classification.vocab_pruning import tokenization_drift

#: pieces beyond the fixtures' words: whole words and the pieces that spell them otherwise
EXTRA = ("play", "##ing", "playing", "##s", "run", "scene", "twist", "##y", "never", "used")
#: what the pruned vocabulary is read from: "playing" whole, "run" + "##ing", none of "play", "##s", "scene" ...
SEEN = ["the movie was good", "a film is really bad", "quite playing the cast", "runing not very fun"]
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_classifier(tmp_path_factory.mktemp("vocab") / "model", tokenizer_extra=EXTRA, seed=3)


@pytest.fixture(scope="module")
def loaded(model_folder: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoModelForSequenceClassification.from_pretrained(model_folder).eval(), AutoTokenizer.from_pretrained(
        model_folder
    )


@pytest.fixture(scope="module")
def pruned(loaded):
    model, tokenizer = loaded
    return prune_vocabulary(model, tokenizer, SEEN)


def _logits(model, tokenizer, texts):
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


def test_seen_text_reads_the_same_tokens_and_gets_the_same_logits(loaded, pruned) -> None:
    model, tokenizer = loaded
    small, small_tokenizer, report = pruned
    new_id = {old: new for new, old in enumerate(report.kept_ids)}
    # held-out sentences made only of words the pruning texts used, and pairs of them
    texts = ["good movie", "the cast was really bad , not fun", "playing quite very runing", "a film"]
    for text in texts:
        before, after = tokenizer(text)["input_ids"], small_tokenizer(text)["input_ids"]
        assert after == [new_id[i] for i in before]
        assert small_tokenizer.convert_ids_to_tokens(after) == tokenizer.convert_ids_to_tokens(before)
    torch.testing.assert_close(
        _logits(small, small_tokenizer, texts), _logits(model, tokenizer, texts), atol=1e-5, rtol=0
    )
    pair = small_tokenizer("good movie", "bad film")
    assert pair["input_ids"] == [new_id[i] for i in tokenizer("good movie", "bad film")["input_ids"]]
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)  # the original is left whole


def test_words_needing_a_dropped_piece_are_re_spelled_or_become_one_unk(loaded, pruned) -> None:
    _, tokenizer = loaded
    _, small_tokenizer, _ = pruned
    # "plays" was play ##s; neither piece was kept and nothing else spells it: the whole word is one [UNK]
    assert tokenizer.tokenize("the plays") == ["the", "play", "##s"]
    assert small_tokenizer.tokenize("the plays") == ["the", "[UNK]"]
    # "running" never was in the vocabulary: [UNK] before and after
    assert small_tokenizer.tokenize("running good") == ["[UNK]", "good"]
    drift = tokenization_drift(tokenizer, small_tokenizer, ["good movie", "the plays", "running"])
    assert drift["unchanged"] == [0, 2] and drift["with_unknown"] == pytest.approx(2 / 3)
    assert drift["with_unknown_before"] == pytest.approx(1 / 3) and drift["changed"] == pytest.approx(1 / 3)


def test_a_dropped_whole_word_is_spelled_with_the_kept_pieces(loaded) -> None:
    model, tokenizer = loaded
    # "playing" is one piece in the full vocabulary; kept are "play" and "##ing" (from "play" and "runing")
    _, small_tokenizer, _ = prune_vocabulary(model, tokenizer, ["play", "runing"])
    assert tokenizer.tokenize("playing") == ["playing"]
    assert small_tokenizer.tokenize("playing") == ["play", "##ing"]


def test_special_tokens_are_kept_and_renumbered_consistently(loaded, pruned) -> None:
    _, tokenizer = loaded
    small, small_tokenizer, report = pruned
    vocabulary = small_tokenizer.get_vocab()
    assert all(token in vocabulary for token in SPECIALS)
    for name in ("pad", "unk", "cls", "sep", "mask"):
        assert getattr(small_tokenizer, f"{name}_token") == getattr(tokenizer, f"{name}_token")
        new = getattr(small_tokenizer, f"{name}_token_id")
        assert report.kept_ids[new] == getattr(tokenizer, f"{name}_token_id")
    encoded = small_tokenizer("good", "bad")["input_ids"]
    assert encoded[0] == small_tokenizer.cls_token_id and encoded[-1] == small_tokenizer.sep_token_id
    assert small.config.pad_token_id == small_tokenizer.pad_token_id
    assert small.get_input_embeddings().padding_idx == small_tokenizer.pad_token_id
    assert small_tokenizer.tokenize("good [MASK] film") == ["good", "[MASK]", "film"]


def test_the_model_shrinks_by_the_dropped_rows(loaded, pruned) -> None:
    model, tokenizer = loaded
    small, small_tokenizer, report = pruned
    used = {piece for text in SEEN for piece in tokenizer.tokenize(text)}
    assert isinstance(report, VocabularyReport)
    assert report.kept == len(used | set(SPECIALS)) == len(small_tokenizer) == small.config.vocab_size
    assert report.total == len(tokenizer) == 5 + len(WORDS) + len(EXTRA)
    hidden = model.config.hidden_size
    assert report.parameters_before - report.parameters_after == (report.total - report.kept) * hidden
    assert report.bytes_before - report.bytes_after == (report.total - report.kept) * hidden * 4
    assert small.get_input_embeddings().weight.shape == (report.kept, hidden)
    assert list(report.kept_ids) == sorted(report.kept_ids)
    assert "kept" in report.as_dict()["vocabulary"] and f"{report.kept:,} of {report.total:,}" in str(report)


def test_the_saved_folder_reloads_with_plain_transformers(loaded, pruned, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    small, small_tokenizer, report = pruned
    small.save_pretrained(tmp_path)
    small_tokenizer.save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert model.config.vocab_size == report.kept == len(tokenizer)
    texts = ["the movie was good", "playing a very bad film"]
    torch.testing.assert_close(_logits(model, tokenizer, texts), _logits(*loaded, texts), atol=1e-5, rtol=0)


def test_a_tied_language_model_head_stays_tied_and_keeps_its_columns(loaded) -> None:
    from transformers import BertConfig, BertForMaskedLM

    _, tokenizer = loaded
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    model = BertForMaskedLM(config).eval()
    small, small_tokenizer, report = prune_vocabulary(model, tokenizer, SEEN)
    head = small.get_output_embeddings()
    assert head.weight is small.get_input_embeddings().weight and head.bias is small.cls.predictions.bias
    assert head.weight.shape[0] == head.bias.shape[0] == report.kept
    text = "the movie was good"
    full = _logits(model, tokenizer, [text])[..., list(report.kept_ids)]
    torch.testing.assert_close(_logits(small, small_tokenizer, [text]), full, atol=1e-5, rtol=0)


def _word_level_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}, "[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


def test_a_tokenizer_that_is_not_wordpiece_is_refused(loaded) -> None:
    model, _ = loaded
    with pytest.raises(VocabularyError, match="supports WordPiece tokenizers .* uses a WordLevel model"):
        prune_vocabulary(model, _word_level_tokenizer(), SEEN)
    with pytest.raises(VocabularyError, match="not a fast tokenizer"):
        prune_vocabulary(model, object(), SEEN)


def test_distill_prunes_the_saved_student_and_reports_it(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    save_classifier(tmp_path / "teacher", num_layers=2, seed=1, id2label={0: "neg", 1: "pos"}, tokenizer_extra=EXTRA)
    # every word of the fixtures once, so the test sentences' words are all seen; none of EXTRA
    write_csv(tmp_path / "train.csv", [(" ".join(WORDS), "pos"), *sentences(64, seed=0, labels=("neg", "pos"))])
    test_rows = sentences(30, seed=1, labels=("neg", "pos"))
    test_rows[:3] = [("the scene twist was good", "pos"), ("plays never bad", "neg"), ("playing is dull", "neg")]
    write_csv(tmp_path / "test.csv", test_rows)
    config = write_run_config(tmp_path, output={"dir": str(tmp_path / "run")})
    succeeds(["distill", str(config), "--no-progress", "student.prune_vocabulary=true"])
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    pruning = metrics["vocabulary_pruning"]
    assert pruning["vocabulary"] == {"kept": 5 + len(WORDS), "total": 5 + len(WORDS) + len(EXTRA)}
    assert pruning["parameters"]["before"] == metrics["student"]["parameters"]
    assert pruning["parameters"]["before"] - pruning["parameters"]["after"] == len(EXTRA) * 32
    assert pruning["size_bytes"]["after"] < pruning["size_bytes"]["before"]
    assert pruning["evaluated_on"] == "test" and pruning["examples"] == 30
    assert pruning["with_unknown"] == pytest.approx(3 / 30) and pruning["changed"] == pytest.approx(3 / 30)
    # the same student on the same examples, batched in another order (a near tie may flip)
    assert abs(pruning["unpruned_student"]["accuracy"] - metrics["student"]["accuracy"]) <= 1 / 30 + 1e-9
    unchanged = pruning["unchanged"]
    assert unchanged["examples"] == 27 and unchanged["accuracy"] == unchanged["unpruned_accuracy"]
    assert "Vocabulary pruned after training: `student/` keeps the" in (run / "report.md").read_text()
    model = AutoModelForSequenceClassification.from_pretrained(run / "student").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "student")
    assert model.config.vocab_size == len(tokenizer) == pruning["vocabulary"]["kept"]
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert tokenizer.tokenize("the plays") == ["the", "[UNK]"]
    with torch.no_grad():
        assert model(**tokenizer(["a good movie"], return_tensors="pt")).logits.shape == (1, 2)
    # kdistill eval reads the pruned student with its own tokenizer (the teacher with its own)
    succeeds(["eval", str(run), "--no-progress"])
    evaluated = json.loads((run / "metrics.json").read_text())["eval"]["student"]
    assert abs(evaluated["accuracy"] - pruning["student"]["accuracy"]) <= 1 / 30 + 1e-9


def test_distill_refuses_to_prune_a_tokenizer_that_is_not_wordpiece_before_the_run(tmp_path: Path) -> None:
    folder = save_classifier(tmp_path / "teacher", num_layers=1, id2label={0: "neg", 1: "pos"})
    for stale in folder.glob("*"):
        if stale.name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
            stale.unlink()
    _word_level_tokenizer().save_pretrained(folder)
    write_csv(tmp_path / "train.csv", sentences(32, seed=0, labels=("neg", "pos")))
    write_csv(tmp_path / "test.csv", sentences(8, seed=1, labels=("neg", "pos")))
    config = write_run_config(tmp_path, output={"dir": str(tmp_path / "run")})
    line = one_line(["distill", str(config), "--no-progress", "student.prune_vocabulary=true"])
    assert "vocabulary pruning supports WordPiece tokenizers" in line and "WordLevel" in line
    assert not (tmp_path / "run").exists()
