"""Class labels: their names in id order (the teacher's order where it names them), ids by name,
and the refusal of labels that are not classes (measurements, ids, free text)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from kdistill.errors import DataError
from kdistill.tasks.text_classification.reading import TableSplit

logger = logging.getLogger("kdistill.data")

__all__ = ["build_label_names", "encode_labels", "is_default_names", "model_label_ids"]


def is_default_names(id2label: Mapping[int, str] | None) -> bool:
    return not id2label or all(str(name) == f"LABEL_{i}" for i, name in id2label.items())


def _sort_key(label: Any) -> tuple[int, Any]:
    return (0, label) if isinstance(label, int) else (1, str(label))


def _check_class_labels(names: Sequence[str], count: int) -> None:
    """Refuse labels that are not classes: measurements (0.37, 1.25) or a column of ids or texts.

    Either would silently become a classifier with a class per value.
    """
    fractional = []
    for name in names:
        try:
            fractional.append(not float(name).is_integer())
        except ValueError:
            fractional = []
            break
    if fractional and any(fractional):
        example = next(name for name, frac in zip(names, fractional) if frac)
        raise DataError(
            f"the labels are numbers with fractions ({example} among {len(names):,} values): kdistill "
            "distils classifiers, which need class labels; check data.label_column"
        )
    if count >= 20 and len(names) > count / 2:
        raise DataError(
            f"data.label_column has {len(names):,} different values in {count:,} training examples: it "
            f"looks like ids or texts, not class labels ({', '.join(names[:3])} ...); check "
            "data.label_column"
        )


def build_label_names(
    labels: Sequence[Any], teacher_id2label: Mapping[int, str] | None = None, teacher_num_labels: int | None = None
) -> list[str]:
    """The class names in id order.

    The teacher's own order is kept where its ``id2label`` names exactly the data's labels;
    otherwise the labels are sorted (integers numerically, strings alphabetically).

    Raises:
        DataError: the data has a different number of classes than the teacher.
    """
    distinct = sorted({label for label in labels}, key=_sort_key)
    names = [str(label) for label in distinct]
    _check_class_labels(names, len(labels))
    if len(names) < 2:
        raise DataError(
            f"the training data has {len(names)} distinct label(s) ({', '.join(names)}): at least 2 are needed"
        )
    if teacher_num_labels is not None and teacher_num_labels != len(names):
        raise DataError(
            f"the teacher predicts {teacher_num_labels} classes but the training data has {len(names)} labels "
            f"({', '.join(names[:10])}); give a teacher trained for these labels, or teacher.num_labels for a new head"
        )
    if not is_default_names(teacher_id2label):
        assert teacher_id2label is not None
        teacher_names = [str(teacher_id2label[i]) for i in sorted(teacher_id2label)]
        if set(teacher_names) == set(names):
            return teacher_names
        lowered = {n.lower(): n for n in names}
        if set(lowered) == {n.lower() for n in teacher_names}:
            return [lowered[n.lower()] for n in teacher_names]
        logger.warning(
            "the teacher's classes (%s) do not name the data's labels (%s): data label i is taken as teacher class i",
            ", ".join(teacher_names),
            ", ".join(names),
        )
    return names


def encode_labels(table: TableSplit, label_names: Sequence[str]) -> list[int]:
    """Map ``table``'s raw labels to ids by name.

    Raises:
        DataError: a label the training data (and so the student) does not know.
    """
    index = {name: i for i, name in enumerate(label_names)}
    ids = []
    for row, label in enumerate(table.labels):
        key = str(label)
        if key not in index:
            raise DataError(
                f"{table.source}: label {key!r} (data row {row + 1}) is not among the known labels "
                f"{', '.join(label_names[:10])}"
            )
        ids.append(index[key])
    return ids


def model_label_ids(table: TableSplit, id2label: Mapping[Any, Any]) -> list[int]:
    """The data's labels as a trained model's class ids: by name, or by number where the model's
    classes are unnamed (``LABEL_0``, ``LABEL_1`` ...) and the labels are those numbers.

    Raises:
        DataError: a label the model does not know.
    """
    names = [str(id2label[key]) for key in sorted(id2label, key=int)]
    if is_default_names(dict(enumerate(names))) and all(
        isinstance(label, int) and 0 <= label < len(names) for label in table.labels
    ):
        return list(table.labels)
    return encode_labels(table, names)
