"""Teacher and student vocabularies: the same token ids, or one clear error; heads padded to
different sizes compared on the ids both have."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kdistill.errors import ModelLoadError

__all__ = ["check_tokenizers", "shared_vocab_size"]


def _difference(student: Any, teacher: Any, sample_texts: Sequence[str]) -> str | None:
    """How the two tokenizers differ, or None when they give the same ids."""
    if len(student) != len(teacher):
        return f"vocabularies of {len(student):,} and {len(teacher):,} tokens"
    if student.eos_token_id != teacher.eos_token_id:
        return f"end-of-text ids {student.eos_token_id} and {teacher.eos_token_id}"
    if hasattr(student, "get_vocab") and hasattr(teacher, "get_vocab"):
        ours, theirs = student.get_vocab(), teacher.get_vocab()
        if ours != theirs:
            token = next((t for t, i in ours.items() if theirs.get(t) != i), None)
            if token is not None:
                return f"the token {token!r} has id {ours[token]} and {theirs.get(token)}"
    for text in sample_texts:
        text = text[:4000]  # the start of a long document shows a difference as well as the whole
        a = student(text, add_special_tokens=False, verbose=False)["input_ids"]
        b = teacher(text, add_special_tokens=False, verbose=False)["input_ids"]
        if a != b:
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            return (
                f"different ids for {text[:30]!r}: {a[first : first + 4]} and {b[first : first + 4]} at token {first}"
            )
    return None


def check_tokenizers(student_tokenizer: Any, teacher_tokenizer: Any, sample_texts: Sequence[str]) -> None:
    """Refuse a student and a teacher whose tokenizers give different token ids.

    Token-level distillation compares the two models' predictions position by position and id
    by id: both must read the same ids. Compared: the vocabulary size, the EOS id, the vocabulary
    itself and the ids of each sample text (its first 4,000 characters).

    Raises:
        ModelLoadError: the tokenizers differ (one line: how, and the fix).
    """
    if student_tokenizer is teacher_tokenizer:
        return
    difference = _difference(student_tokenizer, teacher_tokenizer, sample_texts)
    if difference is not None:
        raise ModelLoadError(
            f"the student's and the teacher's tokenizers give different token ids ({difference}); distillation "
            "across tokenizers is not supported yet: give the student the teacher's tokenizer (student.tokenizer: "
            "the teacher's folder), or a student made from the teacher"
        )


def shared_vocab_size(student_model_vocab: int, teacher_model_vocab: int, tokenizer: Any) -> int | None:
    """The logit columns the two models share when their output sizes differ, or None when they are equal.

    Models are often saved with padded embedding and output rows (49,152 tokens in a head of
    49,216): two such models share their first ``min(...)`` columns, which is safe to compare
    when every id the tokenizer can give (``len(tokenizer)``) is below it.

    Raises:
        ModelLoadError: the sizes differ and the tokenizer can give ids beyond the smaller one.
    """
    if student_model_vocab == teacher_model_vocab:
        return None
    shared = min(student_model_vocab, teacher_model_vocab)
    tokens = len(tokenizer)
    if tokens > shared:
        raise ModelLoadError(
            f"the student's and the teacher's outputs have {student_model_vocab:,} and {teacher_model_vocab:,} "
            f"rows, and the tokenizer can give {tokens:,} token ids, more than the {shared:,} they share; give "
            "models whose embeddings cover the tokenizer (model.resize_token_embeddings(len(tokenizer))), or the "
            "tokenizer the models were trained with"
        )
    return shared
