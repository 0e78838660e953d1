"""Causal-LM data: the data: section, reading text and JSONL files, packing, prompt/completion and
chat masks, held-out splits, token budgets and the teacher/student tokenizer checks.

Tokenizers are built here (a byte-level BPE trained on a few sentences, ChatML template), never
downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from lm_fixtures import CORPUS, make_tokenizer
from pydantic import ValidationError

from kdistill.data.datasets import IGNORE_INDEX, PaddingCollator, make_loader
from kdistill.errors import DataError, KdistillError, ModelLoadError
from kdistill.tasks.causal_lm.config import LMDataConfig
from kdistill.tasks.causal_lm.data import prepare_splits, tokenize_documents
from kdistill.tasks.causal_lm.reading import Documents, read_documents
from kdistill.tasks.causal_lm.vocab import check_tokenizers, shared_vocab_size


@pytest.fixture(scope="module")
def tok() -> Any:
    return make_tokenizer()


def ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def one_line(error: pytest.ExceptionInfo, *needles: str) -> str:
    """The error's message, checked to be one line that holds each of ``needles``."""
    message = str(error.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def config(path: Path | str, **overrides: Any) -> LMDataConfig:
    return LMDataConfig(train=str(path), **overrides)


# ---------------------------------------------------------------------------
# the data: section
# ---------------------------------------------------------------------------


def test_the_format_comes_from_the_suffix_or_data_format(tmp_path: Path) -> None:
    for name, expected in (("a.txt", "text"), ("a.TEXT", "text"), ("a.md", "text"), ("a.jsonl", "jsonl")):
        assert config(name).format_of(name) == expected
    assert config("a.json").format_of("b.ndjson") == "jsonl"
    with pytest.raises(ValidationError, match="data.format"):
        LMDataConfig(train="corpus.csv")
    with pytest.raises(ValidationError, match="data.format"):
        LMDataConfig(train="a.txt", validation="held.out")
    assert LMDataConfig(train="corpus.csv", format="text").format_of("corpus.csv") == "text"
    with pytest.raises(DataError) as error:  # a file named later (kdistill eval) is checked when read
        config("a.txt").format_of("b.data")
    one_line(error, "set data.format")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"encoding": "rot13"}, "not a text encoding"),
        ({"encoding": "utf-9"}, "unknown text encoding"),
        ({"max_length": 4}, "greater than or equal to 8"),
        ({"validation_fraction": 1.0}, "less than 1"),
        ({"test_fraction": 0}, "greater than 0"),
        ({"max_train_tokens": 0}, "greater than or equal to 1"),
        ({"split_seed": -1}, "greater than or equal to 0"),
        ({"prompt_field": "text"}, "name the same key 'text'"),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_impossible_settings_are_refused(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        LMDataConfig(train="a.txt", **overrides)


def test_defaults() -> None:
    data = LMDataConfig(train="a.jsonl")
    assert (data.format, data.encoding, data.max_length, data.validation_fraction) == (None, "utf-8", 512, 0.05)
    assert (data.test_fraction, data.split_seed, data.max_train_tokens, data.max_eval_tokens) == (None, 42, None, None)
    assert (data.text_field, data.prompt_field, data.completion_field, data.messages_field) == (
        "text",
        "prompt",
        "completion",
        "messages",
    )


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def test_a_text_file_is_one_document(tmp_path: Path) -> None:
    text = "ACT I\n\nSCENE I. A room.\n\nEnter HAMLET.\n"
    path = tmp_path / "play.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # a byte-order mark is not text
    documents = read_documents(path, config(path))
    assert (documents.kind, documents.records, documents.source) == ("text", [text], str(path))


@pytest.mark.parametrize("content", ["", "  \n\n\t\n"])
def test_an_empty_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_documents(path, config(path))
    one_line(error, "empty", "data.train")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.txt"
    with pytest.raises(DataError) as error:
        read_documents(path, config(path), role="validation")
    one_line(error, "data.validation", "not found")


def test_a_file_in_another_encoding_names_the_line_and_data_encoding(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("first line\nsecond line\ncafé crème\n".encode("latin-1"))
    with pytest.raises(DataError) as error:
        read_documents(path, config(path))
    one_line(error, "not valid utf-8", "line 3", "data.encoding")
    assert read_documents(path, config(path, encoding="latin-1")).records == ["first line\nsecond line\ncafé crème\n"]


def test_jsonl_kinds_come_from_the_first_record(tmp_path: Path) -> None:
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "one", "id": 1}, {"text": "two"}])
    assert read_documents(text, config(text)).records == ["one", "two"]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "completion": "a", "text": "ignored"}])
    documents = read_documents(pairs, config(pairs))
    assert (documents.kind, documents.records) == ("prompt_completion", [("q", "a")])
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    conversations = write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat, "prompt": "x", "completion": "y"}])
    documents = read_documents(conversations, config(conversations))
    assert (documents.kind, documents.records) == ("messages", [chat])
    renamed = write_jsonl(tmp_path / "renamed.jsonl", [{"body": "one"}, {"body": "two"}])
    assert read_documents(renamed, config(renamed, text_field="body")).records == ["one", "two"]


def test_a_json_file_may_hold_one_array(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"prompt": "", "completion": "a"}, {"prompt": "p", "completion": "b"}], indent=2))
    documents = read_documents(path, config(path))
    assert documents.records == [("", "a"), ("p", "b")]  # an empty prompt is allowed: generation from nothing
    assert documents.where(1) == f"{str(path)!r} record 2"


def test_blank_lines_are_skipped_and_places_are_lines(tmp_path: Path) -> None:
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"text": "a"}\n\n   \n{"text": "b"}\n', encoding="utf-8")
    documents = read_documents(path, config(path))
    assert documents.places == ["line 1", "line 4"]


def test_a_record_without_the_first_ones_keys_names_its_line(tmp_path: Path) -> None:
    records = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(6)] + [{"prompt": "q6"}]
    path = write_jsonl(tmp_path / "data.jsonl", records)
    with pytest.raises(DataError) as error:
        read_documents(path, config(path))
    one_line(error, "data.jsonl' line 7 has no 'completion' (data.completion_field)", "prompt and a completion")


def test_a_first_record_with_no_known_key_lists_the_keys_and_the_options(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"body": "x", "title": "y"}])
    with pytest.raises(DataError) as error:
        read_documents(path, config(path))
    one_line(error, "'body', 'title'", "data.text_field", "data.prompt_field", "data.completion_field")
    one_line(error, "data.messages_field")


def test_a_prompt_without_its_completion_is_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "x", "answer": "y"}])
    with pytest.raises(DataError) as error:
        read_documents(path, config(path))
    one_line(error, "no 'completion' (data.completion_field)")
    assert read_documents(path, config(path, completion_field="answer")).records == [("x", "y")]


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"text": ["a", "list"]}, "'text' (data.text_field) is a list, not a string"),
        ({"text": 3}, "'text' (data.text_field) is a number, not a string"),
        ({"text": None}, "is null, not a string"),
        ({"text": "   "}, "is empty"),
        ({"prompt": 1, "completion": "b"}, "'prompt' (data.prompt_field) is a number"),
        ({"prompt": "a", "completion": ""}, "'completion' (data.completion_field) is empty"),
        ({"messages": "hi"}, "'messages' (data.messages_field) is a string"),
        ({"messages": []}, "is an empty list"),
        ({"messages": [["user", "hi"]]}, "message 1 of 'messages' is a list, not an object"),
        ({"messages": [{"role": "user"}]}, "message 1 of 'messages' has no 'content'"),
        ({"messages": [{"role": "assistant", "content": 5}]}, "the content of message 1 of 'messages' is a number"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no 'assistant' turn"),
    ],
)
def test_values_must_be_what_the_kind_needs(tmp_path: Path, record: dict[str, Any], expected: str) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [record])
    with pytest.raises(DataError) as error:
        read_documents(path, config(path))
    one_line(error, "line 1", expected)


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b", "text": "c"}\n', encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_documents(path, config(path))
    one_line(error, "line 2", "the key 'text' twice", "keep one")


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b",}\n', encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_documents(path, config(path))
    one_line(error, "line 2 is not valid JSON")
    array = tmp_path / "data.json"
    array.write_text('[\n{"text": "a"},\n{"text" "b"}\n]', encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_documents(array, config(array))
    one_line(error, "line 3 is not valid JSON")


def test_an_empty_json_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_documents(path, config(path), role="test")
    one_line(error, "data.test", "holds no records")


def test_a_line_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\n"just text"\n', encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_documents(path, config(path))
    one_line(error, "line 2 is a string, not a JSON object")


# ---------------------------------------------------------------------------
# text: packing
# ---------------------------------------------------------------------------


def text_documents(*texts: str) -> Documents:
    return Documents("text", list(texts), "docs.jsonl", [f"line {i + 1}" for i in range(len(texts))])


def test_documents_are_joined_by_eos_and_cut_into_blocks(tok: Any) -> None:
    texts = ["the cat sat on the mat", "to be or not to be", "hello world, how are you today?"]
    stream = []
    for text in texts:
        stream += ids(tok, text) + [tok.eos_token_id]
    length = 8
    split = tokenize_documents(text_documents(*texts), tok, config("a.jsonl", max_length=length), progress=False)
    blocks = split.dataset.columns["input_ids"]
    assert len(stream) % length, "the test needs a partial last block"
    assert len(blocks) == len(stream) // length
    assert [token for block in blocks for token in block] == stream[: len(blocks) * length]
    assert all(len(block) == length for block in blocks)
    assert tok.bos_token_id not in stream  # no special token added (the tokenizer would add <s>)
    assert stream.count(tok.eos_token_id) == 3
    for index in range(len(split)):
        item = split.dataset[index]
        assert item["labels"] == item["input_ids"]  # never shifted here: the loss shifts
        assert item["attention_mask"] == [1] * length
    assert split.stats == {
        "documents": 3,
        "examples": len(blocks),
        "tokens": len(blocks) * length,
        "target_tokens": len(blocks) * length,
        "dropped": 1,
        "dropped_tokens": len(stream) % length,
        "cut": 0,
        "cut_tokens": 0,
        "left_out": 0,
    }
    assert split.dataset.labels is None
    assert split.describe() == (
        f"3 documents packed into {len(blocks)} blocks of 8 tokens ({len(blocks) * 8} tokens); "
        f"the last {len(stream) % length} tokens (a partial block) dropped"
    )
    assert split.document_spans[0] == (0, 0)


def test_a_text_shorter_than_one_block_is_kept_whole(tok: Any, tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("to be or not to be", encoding="utf-8")
    data = config(path, max_length=512)
    split = tokenize_documents(read_documents(path, data), tok, data, progress=False)
    expected = ids(tok, "to be or not to be") + [tok.eos_token_id]
    assert split.dataset.columns["input_ids"] == [expected]
    assert split.stats["dropped"] == 0
    assert split.describe() == f"1 document packed into 1 block of {len(expected)} tokens (fewer than data.max_length)"


def test_text_blocks_batch_through_the_core_collator(tok: Any) -> None:
    split = tokenize_documents(text_documents(*CORPUS), tok, config("a.jsonl", max_length=8), progress=False)
    batch = next(iter(make_loader(split.dataset, 4, PaddingCollator(tok.pad_token_id))))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (4, 8)
    assert batch["labels"].tolist() == batch["input_ids"].tolist()


def test_a_tokenizer_without_eos_is_refused(tmp_path: Path) -> None:
    tokenizer = make_tokenizer(eos=False)
    with pytest.raises(ModelLoadError) as error:
        tokenize_documents(text_documents("a b"), tokenizer, config("a.txt"), progress=False)
    one_line(error, "end-of-text token", "separate documents", "eos_token")


# ---------------------------------------------------------------------------
# prompt / completion
# ---------------------------------------------------------------------------


def pairs(*records: tuple[str, str]) -> Documents:
    return Documents("prompt_completion", list(records), "pairs.jsonl")


def test_prompt_tokens_are_masked_and_completion_and_eos_learned(tok: Any) -> None:
    prompt, completion = "the user asks a question", " and the assistant answers it"
    p, c, eos = ids(tok, prompt), ids(tok, completion), tok.eos_token_id
    split = tokenize_documents(pairs((prompt, completion), ("", "hello")), tok, config("a.jsonl"), progress=False)
    first = split.dataset[0]
    assert first["input_ids"] == p + c + [eos]
    assert first["labels"] == [IGNORE_INDEX] * len(p) + c + [eos]
    assert first["attention_mask"] == [1] * (len(p) + len(c) + 1)
    assert split.dataset[1]["labels"] == ids(tok, "hello") + [eos]  # an empty prompt: everything learned
    assert split.stats["target_tokens"] == len(c) + 1 + len(ids(tok, "hello")) + 1
    assert split.stats["examples"] == split.stats["documents"] == 2


def test_long_examples_are_cut_and_long_prompts_dropped(tok: Any) -> None:
    length = 8
    short_prompt, long_completion = "to be", " or not to be, that is the question"
    long_prompt = "the cat sat on the mat and the dog sat on the log"
    p, c = ids(tok, short_prompt), ids(tok, long_completion)
    assert len(ids(tok, long_prompt)) >= length and len(p) + len(c) + 1 > length
    assert len(ids(tok, "to")) + len(ids(tok, " be")) + 1 <= length
    documents = pairs((short_prompt, long_completion), (long_prompt, " yes"), ("to", " be"))
    split = tokenize_documents(documents, tok, config("a.jsonl", max_length=length), progress=False)
    assert len(split) == 2
    cut = split.dataset[0]
    assert cut["input_ids"] == (p + c)[:length]  # the cut completion loses its EOS
    assert cut["labels"] == [IGNORE_INDEX] * len(p) + c[: length - len(p)]
    assert split.stats["cut"] == 1 and split.stats["cut_tokens"] == len(p) + len(c) + 1 - length
    assert split.stats["dropped"] == 1 and split.stats["documents"] == 3
    assert split.document_spans == [(0, 0), (2, 2)]
    line = split.describe()
    assert "1 dropped (a prompt of data.max_length tokens or more)" in line and "1 cut to 8 tokens" in line


def test_when_every_prompt_is_too_long_the_error_says_how_long(tok: Any) -> None:
    long_prompt = "the cat sat on the mat and the dog sat on the log"
    documents = pairs((long_prompt, " a"), ("to be or not to be", " b"))
    with pytest.raises(DataError) as error:
        tokenize_documents(documents, tok, config("a.jsonl", max_length=8), progress=False)
    one_line(
        error,
        "every prompt/completion example of 'pairs.jsonl' (2)",
        "data.max_length (8)",
        f"{len(ids(tok, long_prompt))} tokens",
    )


# ---------------------------------------------------------------------------
# messages
# ---------------------------------------------------------------------------


def conversations(*records: list[dict[str, str]]) -> Documents:
    return Documents("messages", list(records), "chat.jsonl", [f"line {i + 1}" for i in range(len(records))])


def turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def test_only_assistant_turns_and_their_end_token_are_learned(tok: Any) -> None:
    chat = [
        turn("system", "be fine"),
        turn("user", "hello world"),
        turn("assistant", "fine, thank you"),
        turn("user", "how are you today?"),
        turn("assistant", "the cat sat on the mat"),
    ]
    split = tokenize_documents(conversations(chat), tok, config("a.jsonl"), progress=False)
    start, end, newline = (
        tok.convert_tokens_to_ids("<|im_start|>"),
        tok.convert_tokens_to_ids("<|im_end|>"),
        ids(tok, "\n"),
    )

    def header(role: str) -> list[int]:
        return [start] + ids(tok, f"{role}\n")

    expected_ids, expected_labels = [], []
    for message in chat:
        head, body = header(message["role"]), ids(tok, message["content"])
        expected_ids += head + body + [end] + newline
        learned = message["role"] == "assistant"
        expected_labels += [IGNORE_INDEX] * len(head)
        expected_labels += body + [end] if learned else [IGNORE_INDEX] * (len(body) + 1)
        expected_labels += [IGNORE_INDEX] * len(newline)  # the template's newline after the turn is not learned
    assert tok.apply_chat_template(chat, tokenize=False).count("<|im_start|>") == 5
    item = split.dataset[0]
    assert item["input_ids"] == expected_ids
    assert item["labels"] == expected_labels
    assert tok.bos_token_id not in item["input_ids"]  # the template's tokens only, none added
    both = len(ids(tok, "fine, thank you")) + len(ids(tok, "the cat sat on the mat")) + 2
    assert split.stats["target_tokens"] == both
    assert split.describe() == f"1 conversation ({len(expected_ids)} tokens, {both} assistant tokens learned)"


def test_long_conversations_are_cut_and_those_without_an_assistant_token_dropped(tok: Any) -> None:
    short = [turn("user", "hi"), turn("assistant", "the cat sat on the mat and the dog sat on the log")]
    late = [turn("user", "to be or not to be, that is the question " * 3), turn("assistant", "yes")]

    def before_the_answer(chat: list[dict[str, str]]) -> int:
        return len(ids(tok, tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)))

    length = before_the_answer(short) + 3
    assert before_the_answer(late) >= length
    split = tokenize_documents(conversations(short, late), tok, config("a.jsonl", max_length=length), progress=False)
    assert len(split) == 1 and split.stats["dropped"] == 1 and split.stats["cut"] == 1
    item = split.dataset[0]
    assert len(item["input_ids"]) == len(item["labels"]) == length
    assert item["labels"][-4:] == [IGNORE_INDEX] + item["input_ids"][-3:]  # the first 3 answer tokens are learned
    assert split.document_spans == [(0, 0)]
    with pytest.raises(DataError) as error:
        tokenize_documents(conversations(late), tok, config("a.jsonl", max_length=length), progress=False)
    one_line(
        error,
        "every conversation of 'chat.jsonl' (1) was dropped",
        "none has an assistant token",
        f"data.max_length ({length} tokens)",
    )


def test_chat_data_needs_a_chat_template(tok: Any) -> None:
    tokenizer = make_tokenizer(chat_template=None)
    documents = conversations([turn("user", "hi"), turn("assistant", "hello")])
    with pytest.raises(KdistillError) as error:
        tokenize_documents(documents, tokenizer, config("a.jsonl"), progress=False)
    one_line(error, "no chat template", "teacher.tokenizer:", "prompt/completion records")


def test_a_conversation_that_starts_with_the_assistant_is_refused(tok: Any) -> None:
    documents = conversations([turn("user", "hi"), turn("assistant", "a")], [turn("assistant", "hello")])
    with pytest.raises(DataError) as error:
        tokenize_documents(documents, tok, config("a.jsonl"), progress=False)
    one_line(error, "'chat.jsonl' line 2", "starts with an assistant turn", "user turn first")


def test_a_template_that_rewrites_earlier_turns_is_refused() -> None:
    # a template that renders the last assistant turn differently from earlier ones (as some drop reasoning)
    template = (
        "{% for m in messages %}{% if loop.last and m['role'] == 'assistant' %}[final]{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer = make_tokenizer(chat_template=template)
    chat = [turn("user", "hi"), turn("assistant", "a"), turn("user", "b"), turn("assistant", "c")]
    with pytest.raises(DataError) as error:
        tokenize_documents(conversations(chat), tokenizer, config("a.jsonl"), progress=False)
    one_line(error, "renders the conversation differently", "prompt/completion records")


def test_a_template_that_refuses_a_conversation_names_its_line(tok: Any) -> None:
    template = "{{ raise_exception('roles must alternate') }}"
    tokenizer = make_tokenizer(chat_template=template)
    with pytest.raises(DataError) as error:
        tokenize_documents(
            conversations([turn("user", "hi"), turn("assistant", "a")]), tokenizer, config("a.jsonl"), progress=False
        )
    one_line(error, "'chat.jsonl' line 1", "roles must alternate")


def test_examples_of_different_lengths_batch_through_the_core_collator(tok: Any) -> None:
    split = tokenize_documents(pairs(("to be", " or not"), ("hello", " world, how are you")), tok, config("a.jsonl"))
    batch = next(iter(make_loader(split.dataset, 2, PaddingCollator(tok.pad_token_id))))
    assert batch["labels"].shape == batch["input_ids"].shape
    assert batch["labels"][0, -1].item() == IGNORE_INDEX


# ---------------------------------------------------------------------------
# splits and budgets
# ---------------------------------------------------------------------------


def numbered_pairs(path: Path, count: int) -> Path:
    return write_jsonl(path, [{"prompt": f"q{i}", "completion": " the cat sat on the mat"} for i in range(count)])


def held(split: Any) -> list[int]:
    return [first for first, _ in split.document_spans]


def test_missing_splits_are_held_out_of_train_test_first(tok: Any, tmp_path: Path) -> None:
    path = numbered_pairs(tmp_path / "data.jsonl", 100)
    data = config(path, test_fraction=0.2, validation_fraction=0.1)
    splits = prepare_splits(data, tok, progress=False)
    assert list(splits) == ["train", "validation", "test"]
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (72, 8, 20)  # 10% of the 80 left
    every = held(splits["train"]) + held(splits["validation"]) + held(splits["test"])
    assert sorted(every) == list(range(100))
    assert splits["validation"].stats["documents"] == 8
    again = prepare_splits(data, tok, progress=False)
    assert held(again["test"]) == held(splits["test"]) and held(again["validation"]) == held(splits["validation"])
    other = prepare_splits(config(path, test_fraction=0.2, validation_fraction=0.1, split_seed=7), tok, progress=False)
    assert held(other["test"]) != held(splits["test"])
    assert "test split" in splits["test"].source and "seed 42" in splits["test"].source


def test_files_give_their_splits_and_no_test_by_default(tok: Any, tmp_path: Path) -> None:
    train = numbered_pairs(tmp_path / "train.jsonl", 10)
    validation = numbered_pairs(tmp_path / "validation.jsonl", 3)
    splits = prepare_splits(config(train, validation=str(validation)), tok, progress=False)
    assert list(splits) == ["train", "validation"] and (len(splits["train"]), len(splits["validation"])) == (10, 3)
    with pytest.raises(DataError) as error:
        prepare_splits(config(train, validation=str(train)), tok, progress=False)
    one_line(error, "data.validation is the training file")


def test_too_little_text_to_hold_out_a_split(tok: Any, tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("to be or not to be", encoding="utf-8")
    with pytest.raises(DataError) as error:
        prepare_splits(config(path), tok, progress=False)
    one_line(error, "1 block", "too few to hold out a validation split", "data.validation", "data.max_length")


def test_max_train_tokens_keeps_whole_blocks_in_a_seeded_order(tok: Any, tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(CORPUS * 20), encoding="utf-8")
    full = prepare_splits(config(path, max_length=16), tok, progress=False)
    budget = 16 * 10 + 5
    cut = prepare_splits(config(path, max_length=16, max_train_tokens=budget), tok, progress=False)
    assert len(full["train"]) > 10 and len(cut["train"]) == 10 and cut["train"].tokens == 160
    assert cut["validation"].dataset.columns == full["validation"].dataset.columns  # the budget is train's only
    train_blocks = {tuple(block) for block in full["train"].dataset.columns["input_ids"]}
    assert all(tuple(block) in train_blocks for block in cut["train"].dataset.columns["input_ids"])
    assert cut["train"].stats["left_out"] == len(full["train"]) - 10
    assert "10 blocks of" in cut["train"].source and "left out by the token budget" in cut["train"].describe()
    again = prepare_splits(config(path, max_length=16, max_train_tokens=budget), tok, progress=False)
    assert again["train"].dataset.columns == cut["train"].dataset.columns
    evaluation = prepare_splits(config(path, max_length=16, max_eval_tokens=32), tok, progress=False)
    assert evaluation["validation"].tokens == 32 and len(evaluation["train"]) == len(full["train"])


def test_a_budget_smaller_than_one_example_is_refused(tok: Any, tmp_path: Path) -> None:
    path = numbered_pairs(tmp_path / "data.jsonl", 20)
    with pytest.raises(DataError) as error:
        prepare_splits(config(path, max_train_tokens=2), tok, progress=False)
    one_line(error, "data.max_train_tokens (2)", "raise data.max_train_tokens")


# ---------------------------------------------------------------------------
# teacher and student tokenizers
# ---------------------------------------------------------------------------


def test_the_same_tokenizer_passes(tok: Any) -> None:
    check_tokenizers(tok, tok, CORPUS)
    check_tokenizers(tok, make_tokenizer(), CORPUS)  # another object built the same way gives the same ids


def test_different_vocabularies_are_one_line(tok: Any) -> None:
    other = make_tokenizer(vocab_size=280)
    with pytest.raises(ModelLoadError) as error:
        check_tokenizers(other, tok, CORPUS)
    one_line(error, "different token ids", "not supported yet", "give the student the teacher's tokenizer")
    reordered = make_tokenizer(corpus=list(reversed(CORPUS)) + ["zebra zebra zebra"])
    with pytest.raises(ModelLoadError) as error:
        check_tokenizers(reordered, tok, CORPUS)
    one_line(error, "student.tokenizer")


def test_shared_vocab_size(tok: Any) -> None:
    assert shared_vocab_size(320, 320, tok) is None
    assert shared_vocab_size(len(tok), len(tok) + 64, tok) == len(tok)  # a padded head: the real rows are shared
    assert shared_vocab_size(len(tok) + 64, len(tok) + 8, tok) == len(tok) + 8
    with pytest.raises(ModelLoadError) as error:
        shared_vocab_size(len(tok) - 1, len(tok) + 64, tok)
    one_line(error, f"{len(tok)} token ids", f"the {len(tok) - 1} they share", "resize_token_embeddings")
