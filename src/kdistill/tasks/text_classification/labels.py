"""Class labels: their names in id order (the teacher's order where it names them), ids by name,
the refusal of labels that are not classes (measurements, ids, free text), and the class of each
logit of a trained classifier, read from its config as transformers reads it."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kdistill.errors import ConfigError, DataError, ModelLoadError
from kdistill.tasks.text_classification.reading import TableSplit

logger = logging.getLogger("kdistill.data")

__all__ = [
    "LogitLabels",
    "build_label_names",
    "encode_labels",
    "is_default_names",
    "logit_labels",
    "model_label_ids",
]


def is_default_names(id2label: Mapping[int, str] | None) -> bool:
    return not id2label or all(str(name) == f"LABEL_{i}" for i, name in id2label.items())


def _shown(pairs: Mapping[Any, Any], limit: int = 6) -> str:
    """A mapping as a config shows it, the first ``limit`` entries: ``{1: neg, 2: pos}``."""
    items = [f"{key}: {value}" for key, value in pairs.items()]
    return "{" + ", ".join(items[:limit] + (["..."] if len(items) > limit else [])) + "}"


def _listed(items: Sequence[str], limit: int = 4) -> str:
    shown = list(items[:limit]) + ([f"{len(items) - limit} more"] if len(items) > limit else [])
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def _as_id(key: Any) -> int | None:
    """An id2label key as the logit number it stands for (JSON keys are strings), or None."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    if isinstance(key, float) and key.is_integer():
        return int(key)
    if isinstance(key, str):
        try:
            return int(key.strip())
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class LogitLabels:
    """The class of each logit of a classifier, read from its config as transformers reads it:
    logit j is ``id2label[j]`` (``pipeline("text-classification")`` names its scores so).

    Attributes:
        names: one name per logit, in logit order; a logit that id2label does not name is called
            ``LABEL_j``, transformers' name for an unnamed class.
        where: whose config it is, for messages (``"the model's config.json"``).
        id2label: the config's id2label, its keys as numbers, in the config's order.
        unnamed: the logits that id2label does not name.
        orphans: the entries of id2label that name no logit (``(id, name)``): never predicted.
        dropped: where the config file names classes that transformers did not keep (its
            ``num_labels`` disagrees with its ``id2label``): ``(num_labels, id2label)`` as the file
            says them; else None.
        label2id: the config's label2id where it does not map each name back to its id in
            id2label (transformers, and so kdistill, read id2label alone); else None.
    """

    names: list[str]
    where: str
    id2label: dict[int, str]
    unnamed: tuple[int, ...] = ()
    orphans: tuple[tuple[int, str], ...] = ()
    dropped: tuple[Any, dict[str, Any]] | None = None
    label2id: dict[str, Any] | None = None

    @property
    def count(self) -> int:
        """The number of logits."""
        return len(self.names)

    def numbering_fix(self) -> str:
        return f"number id2label 0 to {self.count - 1} in the order of the logits (and label2id alike)"

    def misnumbered(self) -> str | None:
        """One line on an id2label whose ids are not the logits 0 to C-1 (a gap, ids not starting at
        0), saying what each logit is read as; None when they are."""
        if not self.unnamed and not self.orphans:
            return None
        parts = []
        if self.unnamed:
            read = _listed([f"LABEL_{j}" for j in self.unnamed])
            one = len(self.unnamed) == 1
            parts.append(
                f"logit{'' if one else 's'} {_listed([str(j) for j in self.unnamed])} "
                f"ha{'s' if one else 've'} no label (read as {read})"
            )
        if self.orphans:
            one = len(self.orphans) == 1
            parts.append(
                f"{_listed([f'{name} ({i})' for i, name in self.orphans])} name{'s' if one else ''} no logit "
                f"and {'is' if one else 'are'} never predicted"
            )
        return (
            f"{self.where} has id2label {_shown(self.id2label)}, but there are {self.count} logits, 0 to "
            f"{self.count - 1}, and transformers reads logit j as id2label[j]: {'; '.join(parts)}"
        )

    def dropped_names(self) -> str | None:
        """One line on the class names transformers dropped (``num_labels`` disagreeing with ``id2label``)."""
        if self.dropped is None:
            return None
        num_labels, names = self.dropped
        said = f"says num_labels {num_labels}" if num_labels is not None else "has no name for some of them"
        return (
            f"{self.where} names {len(names)} classes in id2label ({_shown(names)}) but {said}: transformers "
            f"reads its {self.count} logits as LABEL_0 to LABEL_{self.count - 1} and drops those names"
        )

    def refusal(self) -> str | None:
        """Why the classes cannot be told apart from this config (misnumbered or dropped), with the
        fix, in one line; None when id2label names logits 0 to C-1 as transformers keeps them."""
        if (problem := self.misnumbered()) is not None:
            return f"{problem}; {self.numbering_fix()}"
        if (dropped := self.dropped_names()) is not None:
            return (
                f"{dropped}; give id2label one name for each of the {self.count} logits, 0 to {self.count - 1}, "
                "and leave num_labels out"
            )
        return None

    def warnings(self) -> list[str]:
        """What the config says that transformers (and so kdistill) reads otherwise: one line each."""
        lines = []
        if (problem := self.misnumbered()) is not None:
            lines.append(
                f"{problem}; kdistill reads it as transformers does (if its classes are meant in the order of "
                f"the logits, number id2label 0 to {self.count - 1}, and label2id alike)"
            )
        if (dropped := self.dropped_names()) is not None:
            lines.append(f"{dropped}; kdistill reads it as transformers does")
        if self.label2id is not None:
            lines.append(
                f"{self.where} has label2id {_shown(self.label2id)}, which disagrees with its id2label "
                f"{_shown(self.id2label)}: transformers reads the classes by id2label alone, and so does kdistill"
            )
        return lines

    def warn(self) -> None:
        """Log :meth:`warnings` (the commands show them on stderr)."""
        for line in self.warnings():
            logger.warning("%s", line)

    def unknown_label(self, label: str) -> str:
        """Why a data label names no logit, for a message: the config's own word where it has one."""
        ids = [i for i, name in self.orphans if name == label]
        if ids:
            return (
                f"{self.where} gives it id {ids[0]} in id2label, but there are {self.count} logits, 0 to "
                f"{self.count - 1}, and transformers reads logit j as id2label[j]; {self.numbering_fix()}"
            )
        if self.dropped is not None and label in {str(name) for name in self.dropped[1].values()}:
            return f"{self.dropped_names()}; give id2label one name for each logit and leave num_labels out"
        return ""


def _config_file(config: Any) -> dict[str, Any] | None:
    """The ``config.json`` a config was loaded from (a local folder), as the file says it; else None."""
    location = getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
    if not location:
        return None
    path = Path(str(location)) / "config.json"
    try:
        if not path.is_file():
            return None
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) else None


def logit_labels(
    config: Any, where: str | None = None, *, read_file: bool = False, distinct: bool = True
) -> LogitLabels:
    """The class of each logit of a classifier with ``config``, as transformers reads it (logit j is ``id2label[j]``).

    Args:
        config: the model's config (``model.config``).
        where: whose config it is, for messages; default the model's, with its folder.
        read_file: also read the ``config.json`` it was loaded from (a local folder) for class
            names that transformers dropped; only for a model whose head is as it was saved.
        distinct: refuse two logits of the same name (a model whose labels are read by name).

    Raises:
        ModelLoadError: id2label has a key that is no number, or names a logit twice; with
            ``distinct``, it gives two logits the same name (their predictions could not be told apart).
    """
    if where is None:
        location = getattr(config, "name_or_path", None)
        where = f"the model's config.json ({location})" if location else "the model's config"
    given = dict(getattr(config, "id2label", None) or {})
    count = getattr(config, "num_labels", None)
    count = int(count) if count is not None else len(given)
    by_id: dict[int, str] = {}
    for key, name in given.items():
        number = _as_id(key)
        if number is None:
            raise ModelLoadError(
                f"{where} has id2label {_shown(given)}: its key {key!r} is not a logit number, and transformers "
                f"reads logit j as id2label[j]; number id2label 0 to {count - 1} in the order of the logits"
            )
        if number in by_id and by_id[number] != str(name):
            raise ModelLoadError(
                f"{where} has id2label {_shown(given)}: it names logit {number} twice ({by_id[number]}, {name}); "
                "give each logit one name"
            )
        by_id[number] = str(name)
    names = [by_id.get(j, f"LABEL_{j}") for j in range(count)]
    if distinct and len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise ModelLoadError(
            f"{where} names two classes {twice!r} (id2label {_shown(by_id)}): their predictions cannot be told "
            "apart; give each class its own name in config.json"
        )
    unnamed = tuple(j for j in range(count) if j not in by_id)
    orphans = tuple((i, name) for i, name in sorted(by_id.items()) if not 0 <= i < count)
    return LogitLabels(
        names=names,
        where=where,
        id2label=by_id,
        unnamed=unnamed,
        orphans=orphans,
        dropped=_dropped(config, by_id) if read_file else None,
        label2id=_disagreeing_label2id(getattr(config, "label2id", None), by_id),
    )


def _dropped(config: Any, by_id: Mapping[int, str]) -> tuple[Any, dict[str, Any]] | None:
    """What the config file says where its id2label is not the one transformers kept."""
    values = _config_file(config)
    written = values.get("id2label") if values is not None else None
    if not isinstance(written, dict) or not written:
        return None
    as_read = {_as_id(key): str(name) for key, name in written.items()}
    if as_read == dict(by_id) or (None not in as_read and is_default_names(as_read)):  # type: ignore[arg-type]
        return None  # kept as written, or only transformers' own names LABEL_0, LABEL_1 ... dropped
    return values.get("num_labels"), dict(written)


def _disagreeing_label2id(label2id: Any, by_id: Mapping[int, str]) -> dict[str, Any] | None:
    """``label2id`` where it does not map id2label's names back to their ids; None where it does (or is absent)."""
    if not isinstance(label2id, Mapping) or not label2id:
        return None
    back = {str(name): _as_id(number) for name, number in label2id.items()}
    if back == {name: i for i, name in by_id.items()}:
        return None
    return dict(label2id)


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
    labels: Sequence[Any],
    teacher_id2label: Mapping[int, str] | None = None,
    teacher_num_labels: int | None = None,
    *,
    given: Sequence[str] | None = None,
) -> list[str]:
    """The class names in id order.

    The teacher's own order is kept where its ``id2label`` names exactly the data's labels;
    otherwise the labels are sorted (integers numerically, strings alphabetically), or in the
    order of ``given`` names.

    Args:
        labels: the training labels (with ``given``, already read as those names).
        teacher_id2label: the teacher's class names by logit, if it has a trained head.
        teacher_num_labels: the teacher's number of logits.
        given: ``data.label_names``: the names of label values 0 to n-1, in that order.

    Raises:
        DataError: the data has a different number of classes than the teacher, or than ``given``.
        ConfigError: ``given`` names other classes than the teacher's ``id2label``.
    """
    distinct = sorted({label for label in labels}, key=_sort_key)
    names = [str(label) for label in distinct]
    if given is not None:
        names = _given_names(names, given)
    else:
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
        # the teacher's names in the order of its logits (logit j is id2label[j])
        teacher = SimpleNamespace(id2label=teacher_id2label, num_labels=teacher_num_labels, label2id=None)
        classes = logit_labels(teacher, "the teacher's config", distinct=False)
        if (problem := classes.refusal()) is not None:
            raise DataError(problem)
        teacher_names = classes.names
        if given is not None:
            return _against_teacher(names, teacher_names)
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


def _given_names(present: Sequence[str], given: Sequence[str]) -> list[str]:
    """``data.label_names`` as the class names, where the training data has each of its values
    (a value without an example would be a class the student never learns)."""
    absent = [i for i, name in enumerate(given) if name not in present]
    if absent:
        have = [str(i) for i, name in enumerate(given) if name in present]
        raise DataError(
            f"data.label_names gives {len(given)} names ({_listed(list(given))}), for the labels 0 to "
            f"{len(given) - 1}, but the training data has {len(have)} labels ({_listed(have)}), no "
            f"{_listed([str(i) for i in absent])}; give one name per label of the data"
        )
    return list(given)


def _against_teacher(names: list[str], teacher_names: Sequence[str]) -> list[str]:
    """``data.label_names`` in the teacher's order (its logit j is ``id2label[j]``), where they are
    the teacher's names (case aside); a teacher that names other classes is refused."""
    if set(teacher_names) == set(names):
        return list(teacher_names)
    lowered = {n.lower(): n for n in names}
    if set(lowered) == {n.lower() for n in teacher_names}:
        return [lowered[n.lower()] for n in teacher_names]
    raise ConfigError(
        f"data.label_names names the classes {_listed(names)}, but the teacher's config.json names its logits "
        f"{_listed(list(teacher_names))} (id2label): give data.label_names the teacher's names (label 0's "
        "name first), or a teacher trained for these classes"
    )


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


def model_label_ids(table: TableSplit, classes: LogitLabels | Mapping[Any, Any]) -> list[int]:
    """The data's labels as a trained model's logits: by name (logit j is ``id2label[j]``, as
    transformers reads it), or by number where the model's classes are unnamed (``LABEL_0``,
    ``LABEL_1`` ...) and the labels are those numbers.

    Args:
        table: the labelled data.
        classes: the model's :func:`logit_labels` (or its ``id2label``, ids 0 to C-1).

    Raises:
        DataError: a label the model does not know (with the config's word on it where it has one).
    """
    if not isinstance(classes, LogitLabels):
        classes = logit_labels(SimpleNamespace(id2label=dict(classes), num_labels=len(classes), label2id=None))
    names = classes.names
    if is_default_names(dict(enumerate(names))) and all(
        isinstance(label, int) and 0 <= label < len(names) for label in table.labels
    ):
        return list(table.labels)
    index = {name: i for i, name in enumerate(names)}
    numbers = table.labels and all(isinstance(label, int) for label in table.labels)
    if numbers and not index.keys() & {str(label) for label in table.labels}:
        # numbers beside named classes: a run read them through data.label_names, which a bare file lacks
        first = table.labels[0]
        raise DataError(
            f"{table.source}: label {first} (data row 1) is a number, but the model's classes are named "
            f"{', '.join(names[:10])} (id2label): evaluate the run folder, whose data.label_names names the "
            "numbers, or label the file with the class names"
        )
    for row, label in enumerate(table.labels):
        if str(label) not in index and (why := classes.unknown_label(str(label))):
            raise DataError(
                f"{table.source}: label {str(label)!r} (data row {row + 1}) is not among the model's classes "
                f"{', '.join(names[:10])}: {why}"
            )
    return encode_labels(table, names)
