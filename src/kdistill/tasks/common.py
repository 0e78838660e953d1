"""What every task does alike: a student built from the teacher's own configuration, checked
to fit the machine before it is allocated, and a data file's bytes decoded with a message that
names the line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from kdistill.errors import ConfigError, DataError
from kdistill.models.anatomy import model_dims
from kdistill.models.layer_maps import every_kth_map, last_k_map, uniform_map
from kdistill.models.preflight import check_memory, estimate_parameters
from kdistill.models.student import StudentReport, make_student
from kdistill.models.width import WidthImportance

__all__ = ["copy_map", "decode_text", "student_from_teacher"]


def decode_text(raw: bytes, source: str, encoding: str) -> str:
    """``raw`` as text in ``encoding``, a UTF-8 byte-order mark dropped.

    Raises:
        DataError: bytes that do not decode, with the line and byte where they are.
    """
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"{source!r} is not valid {encoding} text (line {line}, byte {error.start}): set data.encoding to the "
            "file's encoding (kdistill eval: --encoding), e.g. latin-1 or cp1252"
        ) from None
    return text.removeprefix("\ufeff")


_FFN_NAMES = ("intermediate_size", "hidden_dim", "ffn_dim", "n_inner")


def copy_map(spec: str | Mapping[int, int] | None, student_layers: int, teacher: nn.Module) -> dict[int, int] | None:
    """The teacher layers a student copies: an explicit map, or a named one (``uniform``,
    ``every-K``, ``last-K``) sized to the two depths; None for the default (uniform)."""
    if spec is None or isinstance(spec, Mapping):
        return dict(spec) if spec is not None else None
    if spec == "importance":
        return None  # measured once the data is prepared (kdistill.tasks.calibration); uniform until then
    teacher_layers = model_dims(teacher).num_layers
    kind, _, number = spec.partition("-")
    if kind == "every":
        return every_kth_map(student_layers, teacher_layers, int(number))
    if kind == "last":
        return last_k_map(student_layers, teacher_layers, int(number))
    return uniform_map(student_layers, teacher_layers)


def _check_student_memory(teacher: nn.Module, options: Any) -> None:
    """A student of absurd sizes is refused before it is allocated."""
    try:
        dims = model_dims(teacher)
    except TypeError:
        return
    hidden = options.hidden_size or dims.hidden_size
    teacher_ffn = next(
        (getattr(teacher.config, name) for name in _FFN_NAMES if isinstance(getattr(teacher.config, name, None), int)),
        4 * dims.hidden_size,
    )
    ffn = options.intermediate_size or round(teacher_ffn * hidden / dims.hidden_size)
    parameters = estimate_parameters(
        options.num_layers, hidden, ffn, int(getattr(teacher.config, "vocab_size", 0) or 0)
    )
    # float32 weights, gradients and AdamW's two moments: 16 bytes a parameter
    check_memory(
        f"a student of {options.num_layers} layers and width {hidden} ({parameters:,} parameters) with its "
        "gradients and optimizer state",
        16 * parameters,
        "lower student.from_teacher.num_layers, hidden_size or intermediate_size",
    )


def student_from_teacher(
    teacher: nn.Module, options: Any, *, width_importance: WidthImportance | None = None
) -> tuple[nn.Module, StudentReport]:
    """The student a config's ``student.from_teacher`` describes (:func:`kdistill.models.student.make_student`).

    Args:
        teacher: the teacher model.
        options: the ``from_teacher`` section (``num_layers``, ``hidden_size``, ``num_heads``,
            ``intermediate_size``, ``layer_map``, ``init``, ``seed``).
        width_importance: the teacher's measured activations, for ``prune: activation``
            (:mod:`kdistill.tasks.calibration` measures them); without them a narrower student is random.

    Raises:
        ConfigError: the options do not fit the teacher, or the student would not fit in memory.
    """
    _check_student_memory(teacher, options)
    try:
        return make_student(
            teacher,
            num_layers=options.num_layers,
            hidden_size=options.hidden_size,
            num_heads=options.num_heads,
            num_key_value_heads=options.num_key_value_heads,
            intermediate_size=options.intermediate_size,
            layer_map=copy_map(options.layer_map, options.num_layers, teacher),
            init=options.init,
            seed=options.seed,
            width_importance=width_importance,
        )
    except (ValueError, TypeError) as error:
        raise ConfigError(f"student.from_teacher: {error}") from None
