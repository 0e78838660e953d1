"""Causal-LM data: the data: section and reading text and JSONL files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kdistill.errors import DataError
from kdistill.tasks.causal_lm.config import LMDataConfig
from kdistill.tasks.causal_lm.reading import read_documents


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
