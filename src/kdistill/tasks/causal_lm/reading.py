"""Reading a causal-LM data file into documents: plain text, prompt/completion pairs or conversations.

A text file (``.txt``, ``.text``, ``.md``) is ONE document: a play or a book is long, and
packing cuts it into blocks later (:mod:`kdistill.tasks.causal_lm.data`). A JSONL file holds one
JSON object a line (a ``.json`` file may hold one array of objects instead); the keys of its
FIRST record decide what every record is:

==========================================  ================================  =====================
the first record has                        every record is                   ``Documents.kind``
==========================================  ================================  =====================
``data.messages_field`` (``messages``)      a conversation of role/content    ``messages``
``data.prompt_field`` and                   a prompt and the completion to    ``prompt_completion``
``data.completion_field``                   learn
``data.text_field`` (``text``)              a document                        ``text``
==========================================  ================================  =====================

Nothing is turned into text that is not text (a number or a list where a string belongs is an
error), a key given twice in one object is an error, and every problem names its file and line
in one :class:`~kdistill.errors.DataError`.

Under ``objective.teachers.combine: route`` each training record also names its teacher
(``data.teacher_field``, :attr:`Documents.routes`). Only records that become one example each
can route (prompt/completion and conversations): text is packed into blocks across records, so
a block has no one teacher, and routed text is refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kdistill.errors import DataError
from kdistill.tasks.causal_lm.config import LMDataConfig
from kdistill.tasks.common import decode_text

__all__ = ["DocumentKind", "Documents", "read_documents"]

DocumentKind = Literal["text", "prompt_completion", "messages"]


@dataclass
class Documents:
    """The documents of one file, as read.

    Attributes:
        kind: ``"text"`` (each record a string), ``"prompt_completion"`` (each a
            ``(prompt, completion)`` pair of strings) or ``"messages"`` (each a list of
            ``{"role": str, "content": str, ...}`` dicts with at least one assistant turn).
        records: one entry per document, as ``kind`` says.
        source: the file, for messages.
        places: where each record is in the file (``"line 7"``, ``"record 3"``, ``"the file"``),
            for messages about one record.
        routes: under ``combine: route``, the teacher each record names (``data.teacher_field``),
            one per record; None otherwise.
    """

    kind: DocumentKind
    records: list[Any]
    source: str
    places: list[str] = field(default_factory=list)
    routes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def where(self, index: int) -> str:
        """The file and place of record ``index``, for a message: ``'chat.jsonl' line 7``."""
        place = self.places[index] if index < len(self.places) else f"record {index + 1}"
        return f"{self.source!r} {place}"


def _describe(value: Any) -> str:
    """What a JSON value is, for a message: ``a list``, ``a number`` ..."""
    if value is None:
        return "null"
    names = ((bool, "a boolean"), (int, "a number"), (float, "a number"), (list, "a list"), (dict, "an object"))
    for kind, name in names:
        if isinstance(value, kind):
            return name
    return "a string" if isinstance(value, str) else f"a {type(value).__name__}"


class _DuplicateKey(ValueError):
    """A JSON object names one key twice (json.loads keeps the last without a word)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def _parse(text: str, source: str, line: int | None) -> Any:
    """One JSON value, keys unique; a problem is a DataError naming the ``line`` (None: the whole file)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as error:
        where = f"{source!r} line {line}" if line is not None else f"{source!r}"
        raise DataError(
            f"{where} gives the key {str(error)!r} twice in one object; keep one (JSON readers would silently "
            "keep the last)"
        ) from None
    except json.JSONDecodeError as error:
        if line is None:  # a .json file holding one array: the decoder knows the line
            hint = "a .json file holds one array of objects, or one object a line"
            line = error.lineno
        else:
            hint = "each line of a JSONL file is one JSON object"
        raise DataError(
            f"{source!r} line {line} is not valid JSON ({error.msg}, column {error.colno}); {hint}"
        ) from None


def _json_records(text: str, source: str) -> tuple[list[Any], list[str]]:
    """The records of a JSONL file (one object a line), or of a JSON file holding one array."""
    if text.lstrip().startswith("["):
        array = _parse(text, source, None)
        if not isinstance(array, list):  # pragma: no cover - a "[" always starts a list
            raise DataError(f"{source!r} must hold JSON objects, one a line, or one array of them")
        return array, [f"record {number}" for number in range(1, len(array) + 1)]
    records, places = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            records.append(_parse(line, source, number))
            places.append(f"line {number}")
    return records, places


def _kind_of(first: dict[str, Any], config: LMDataConfig, where: str) -> DocumentKind:
    """The kind every record is, from the keys of the first one."""
    if config.messages_field in first:
        return "messages"
    has_prompt, has_completion = config.prompt_field in first, config.completion_field in first
    if has_prompt and has_completion:
        return "prompt_completion"
    if config.text_field in first:
        return "text"
    if has_prompt != has_completion:
        present, missing = (
            (("prompt", config.prompt_field), ("completion", config.completion_field))
            if has_prompt
            else (("completion", config.completion_field), ("prompt", config.prompt_field))
        )
        raise DataError(
            f"{where} has a {present[0]} ({present[1]!r}) but no {missing[1]!r} (data.{missing[0]}_field); a "
            f"record needs both, or set data.{missing[0]}_field to the key it uses"
        )
    keys = ", ".join(repr(key) for key in list(first)[:10]) or "none"
    raise DataError(
        f"{where} has the keys {keys} and none kdistill reads: set data.text_field (a document, now "
        f"{config.text_field!r}), data.prompt_field and data.completion_field (now {config.prompt_field!r}, "
        f"{config.completion_field!r}) or data.messages_field (a conversation, now {config.messages_field!r}) "
        "to the keys your records use"
    )


def _string(record: dict[str, Any], key: str, option: str, where: str, *, empty_ok: bool = False) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise DataError(
            f"{where}: {key!r} (data.{option}) is {_describe(value)}, not a string; give it as a string "
            "(kdistill never turns other values into text)"
        )
    if not empty_ok and not value.strip():
        raise DataError(f"{where}: {key!r} (data.{option}) is empty; give it a text or remove the record")
    return value


def _conversation(record: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = record[key]
    if not isinstance(value, list) or not value:
        what = "an empty list" if isinstance(value, list) else _describe(value)
        raise DataError(
            f"{where}: {key!r} (data.messages_field) is {what}; a conversation is a list of "
            '{"role": ..., "content": ...} objects'
        )
    for number, message in enumerate(value, 1):
        if not isinstance(message, dict):
            raise DataError(
                f"{where}: message {number} of {key!r} is {_describe(message)}, not an object; every message is "
                '{"role": ..., "content": ...}'
            )
        for part in ("role", "content"):
            if part not in message:
                raise DataError(
                    f"{where}: message {number} of {key!r} has no {part!r}; every message is "
                    '{"role": ..., "content": ...}'
                )
            if not isinstance(message[part], str):
                raise DataError(
                    f"{where}: the {part} of message {number} of {key!r} is {_describe(message[part])}, not a "
                    "string; give it as a string"
                )
    if not any(message["role"] == "assistant" for message in value):
        roles = ", ".join(sorted({message["role"] for message in value}))
        raise DataError(
            f"{where}: the conversation has no 'assistant' turn (roles: {roles}); only assistant turns are "
            "learned: add one or remove the record"
        )
    return [dict(message) for message in value]


def _route(record: dict[str, Any], key: str, teachers: Sequence[str], where: str) -> str:
    """The teacher a record names (``data.teacher_field``), one of ``teachers``."""
    if key not in record:
        raise DataError(
            f"{where} has no {key!r} (data.teacher_field): under combine: route every training record names its "
            f"teacher (one of {', '.join(teachers)})"
        )
    value = record[key]
    if not isinstance(value, str):
        raise DataError(
            f"{where}: {key!r} (data.teacher_field) is {_describe(value)}, not a string; give the name of its "
            f"teacher (one of {', '.join(teachers)})"
        )
    if value not in teachers:
        raise DataError(
            f"{where}: {key!r} (data.teacher_field) names teacher {value!r}, but the teachers are "
            f"{', '.join(teachers)}: fix the record, or add that teacher"
        )
    return value


def _refuse_packed_routes(source: str) -> DataError:
    return DataError(
        f"data.teacher_field routes each record to a teacher, but {source!r} holds text, which is packed into "
        "blocks of data.max_length tokens across documents (a block may hold several records' tokens, so no "
        "block has one teacher): give prompt/completion or chat records (one example each), or combine the "
        "teachers another way (objective.teachers.combine: mixture, logit_mean, confidence or entropy) without "
        "data.teacher_field"
    )


def read_documents(
    path: str | Path, config: LMDataConfig, *, role: str = "train", teachers: Sequence[str] | None = None
) -> Documents:
    """Read one data file into documents, as its format and its first record say.

    Args:
        path: a text file (one document) or a JSONL file (a ``.json`` array of objects too).
        config: the ``data:`` section (format, encoding, the keys of the records).
        role: the option that named the file (``train``, ``validation``, ``test``), for messages.
        teachers: under ``combine: route``, the names of the teachers: each record's teacher
            (``data.teacher_field``) is read into :attr:`Documents.routes` and must be one of
            them. None (or no ``data.teacher_field``): no routes are read.

    Raises:
        DataError: the file is missing, empty or not in ``data.encoding``; a line is not a JSON
            object (or names a key twice); the first record has none of the keys kdistill reads;
            a later record lacks the first one's keys, or a value is not a string; with
            ``teachers``: text to be packed, a record without its teacher, a teacher that is not
            a string or not one of ``teachers``.
    """
    route_key = config.teacher_field if teachers is not None else None  # the key of each record's teacher
    names = list(teachers or ())
    path = Path(path)
    source = str(path)
    if not path.is_file():
        what = "not found" if not path.exists() else "not a file"
        raise DataError(f"data.{role} {source!r}: {what}; give the path of a text or JSONL file")
    kind = config.format_of(path)
    text = decode_text(path.read_bytes(), source, config.encoding)
    if not text.strip():
        raise DataError(f"data.{role} {source!r} is empty (or only whitespace); give a file with text in it")
    if kind == "text":
        if route_key is not None:
            raise _refuse_packed_routes(source)
        return Documents("text", [text], source, ["the file"])

    records, places = _json_records(text, source)
    for record, place in zip(records, places):
        if not isinstance(record, dict):
            raise DataError(
                f"{source!r} {place} is {_describe(record)}, not a JSON object; every record is an object such as "
                f'{{"{config.text_field}": "..."}}'
            )
    if not records:
        raise DataError(f"data.{role} {source!r} holds no records (an empty JSON array); give one object per document")
    first_where = f"{source!r} {places[0]}"
    document_kind = _kind_of(records[0], config, first_where)
    if route_key is not None and document_kind == "text":
        raise _refuse_packed_routes(source)
    documents: list[Any] = []
    routes: list[str] = []
    for record, place in zip(records, places):
        where = f"{source!r} {place}"
        if route_key is not None:
            routes.append(_route(record, route_key, names, where))
        if document_kind == "messages":
            if config.messages_field not in record:
                raise DataError(
                    f"{where} has no {config.messages_field!r} (data.messages_field); every record needs a "
                    f"conversation, as {places[0]} has"
                )
            documents.append(_conversation(record, config.messages_field, where))
        elif document_kind == "prompt_completion":
            for key, option in ((config.prompt_field, "prompt_field"), (config.completion_field, "completion_field")):
                if key not in record:
                    raise DataError(
                        f"{where} has no {key!r} (data.{option}); every record needs a prompt and a completion "
                        f"({config.prompt_field!r}, {config.completion_field!r}), as {places[0]} has"
                    )
            prompt = _string(record, config.prompt_field, "prompt_field", where, empty_ok=True)
            completion = _string(record, config.completion_field, "completion_field", where)
            documents.append((prompt, completion))
        else:
            if config.text_field not in record:
                raise DataError(
                    f"{where} has no {config.text_field!r} (data.text_field); every record needs a text, as "
                    f"{places[0]} has"
                )
            documents.append(_string(record, config.text_field, "text_field", where))
    return Documents(document_kind, documents, source, places, routes if route_key is not None else None)
