"""Text classification: a classifier of sentences (or sentence pairs) distilled into a smaller one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from kdistill.data.datasets import TEACHER_PREFIX, PaddingCollator, TokenizedDataset
from kdistill.errors import ConfigError, DataError, KdistillError, ModelLoadError
from kdistill.losses import HardCE, Objective
from kdistill.models.loading import load_tokenizer
from kdistill.models.preflight import check_max_length, check_token_ids, usable_positions
from kdistill.models.speed import compare_speed
from kdistill.tasks import register_task
from kdistill.tasks.base import Models, Task, TaskData
from kdistill.tasks.text_classification.augment import Augmenter, embedding_neighbours
from kdistill.tasks.text_classification.config import ClassifierOptions, DataConfig
from kdistill.tasks.text_classification.data import (
    TextTaskData,
    describe_tokenizer_difference,
    prepare_data,
    tokenize,
)
from kdistill.tasks.text_classification.labels import LogitLabels, build_label_names, logit_labels, model_label_ids
from kdistill.tasks.text_classification.metrics import agreement, classification_metrics, predict
from kdistill.tasks.text_classification.models import build_student, load_classifier
from kdistill.tasks.text_classification.pruning import prune_student
from kdistill.tasks.text_classification.reading import TableSplit, load_splits, load_table
from kdistill.tasks.text_classification.vocab_pruning import check_prunable

__all__ = ["TextClassification"]


@dataclass
class _Tables:
    """The raw splits, the names ``data.label_names`` gives, and the class names once the teacher is known."""

    splits: dict[str, TableSplit]
    given_names: list[str] | None = None
    label_names: list[str] | None = None


class TextClassification(Task):
    """Sentence (or sentence-pair) classification with ``AutoModelForSequenceClassification``."""

    name = "text_classification"
    data_section = DataConfig
    teacher_options = ClassifierOptions
    primary_metric = "accuracy"
    higher_is_better = True
    metric_columns = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("agreement", "agreement"))
    prunes_vocabulary = True
    speed_note = "Latency is the median CPU time of one batch of {batch} examples of {length} tokens ({threads})"

    def read(self, data: DataConfig) -> _Tables:
        return _Tables(load_splits(data), data.label_names)

    def load_models(self, teacher: Any, student: Any | None, raw: _Tables, *, seed: int) -> Models:
        train_labels = raw.splits["train"].labels
        distinct = sorted({str(label) for label in train_labels})
        num_labels = teacher.num_labels
        if num_labels is not None and num_labels != len(distinct):
            # a new head of the wrong size would be trained, then fail to fit the student's
            raise DataError(
                f"teacher.num_labels is {num_labels} but the training data has {len(distinct)} labels "
                f"({', '.join(distinct[:10])}); set teacher.num_labels: {len(distinct)}, or leave it out "
                "to count the data's labels"
            )
        if num_labels is None and teacher.finetune is not None:
            num_labels = len(distinct)
        location = teacher.location()
        loaded = load_classifier(
            location,
            "teacher",
            num_labels=num_labels,
            revision=teacher.revision,
            trust_remote_code=teacher.trust_remote_code,
        )
        if teacher.finetune is None:
            loaded.trained(
                "teacher",
                "add teacher.finetune: {epochs: 1} to train it on the data first, or give a "
                "teacher fine-tuned for this task",
            )
        model = loaded.model
        teacher_tokenizer = load_tokenizer(
            teacher.tokenizer or location,
            "teacher",
            revision=teacher.revision,
            trust_remote_code=teacher.trust_remote_code,
        )
        new_head = loaded.has_new_head
        teacher_classes = None
        if not new_head:
            # its logits are its classes as transformers reads them (logit j is id2label[j]); a config
            # that does not say which logit is which class would be distilled into the wrong classes
            teacher_classes = logit_labels(
                model.config, f"the teacher's config.json ({location})", read_file=True, distinct=False
            )
            if (problem := teacher_classes.refusal()) is not None:
                raise ModelLoadError(problem)
            teacher_classes.warn()
        raw.label_names = build_label_names(
            train_labels,
            None if teacher_classes is None else dict(enumerate(teacher_classes.names)),
            None if teacher_classes is None else teacher_classes.count,
            given=raw.given_names,
        )
        id2label = dict(enumerate(raw.label_names))
        if new_head:
            model.config.id2label, model.config.label2id = id2label, {n: i for i, n in id2label.items()}
        built, note, tokenizer = None, "", teacher_tokenizer
        if student is not None:
            built, note = build_student(student, model, id2label)
            if student.from_teacher is None:
                tokenizer = load_tokenizer(
                    student.tokenizer or student.location(),
                    "student",
                    revision=student.revision,
                    trust_remote_code=student.trust_remote_code,
                )
            if student.prune_vocabulary:
                check_prunable(tokenizer)  # refused before training, not after
        return Models(
            teacher=model,
            teacher_location=location,
            student=built,
            tokenizer=tokenizer,
            teacher_tokenizer=teacher_tokenizer,
            student_note=note,
            teacher_new_weights=loaded.new_weights,
        )

    def prepare(self, data: DataConfig, raw: _Tables, models: Models, *, progress: bool) -> TaskData:
        assert raw.label_names is not None, "load_models() names the classes"
        # every teacher of several reads the same token ids as the one the student was built from
        teachers = [(f"teacher {name}", model) for name, model in models.teachers.items()]
        teachers = teachers or [("teacher", models.teacher)]
        readers = teachers + ([("student", models.student)] if models.student is not None else [])
        check_max_length(data.max_length, readers)
        prepared = prepare_data(
            data,
            models.tokenizer,
            models.teacher_tokenizer,
            splits=raw.splits,
            augmenter=self._augmenter(data, models, raw),
            label_names=raw.label_names,
            progress=progress,
        )
        splits = [prepared.train, prepared.validation, *([prepared.test] if prepared.test is not None else [])]
        for split in splits:
            if models.student is not None:
                check_token_ids(split.columns["input_ids"], models.student, "student", "the student's tokenizer")
            teacher_ids = split.columns.get(f"{TEACHER_PREFIX}input_ids", split.columns["input_ids"])
            for role, model in teachers:
                check_token_ids(teacher_ids, model, role, "the teacher's tokenizer")
        collator = PaddingCollator(
            pad_token_id=models.tokenizer.pad_token_id or 0,
            teacher_pad_token_id=getattr(models.teacher.config, "pad_token_id", None) or 0,
        )
        return TextTaskData(
            train=prepared.train,
            validation=prepared.validation,
            test=prepared.test,
            distill=prepared.distillation_set(),
            collate=collator,
            sizes=prepared.sizes(),
            description=f"labels {', '.join(prepared.label_names)}",
            details={"labels": prepared.label_names},
            separate_teacher_tokens=prepared.separate_teacher_tokens,
            routes=_routes(data, prepared),
            prepared=prepared,
            max_length=data.max_length,
        )

    @staticmethod
    def _augmenter(data: DataConfig, models: Models, raw: _Tables) -> Any:
        """The :class:`Augmenter` of ``data.augment``, with word neighbours from the teacher's embeddings."""
        settings = data.augment
        if settings is None:
            return None
        teacher = models.teacher
        embeddings = teacher.get_input_embeddings() if hasattr(teacher, "get_input_embeddings") else None
        neighbours: dict[str, list[str]] = {}
        if settings.replace_prob > 0:
            if embeddings is None:
                raise ConfigError("data.augment.replace_prob needs a teacher with input embeddings; set it to 0")
            words = sorted({word for text in raw.splits["train"].texts for word in text.split()})
            neighbours = embedding_neighbours(
                embeddings.weight, models.teacher_tokenizer, words, k=settings.neighbours
            )
        return Augmenter(
            copies=settings.copies,
            mask_prob=settings.mask_prob,
            replace_prob=settings.replace_prob,
            ngram_prob=settings.ngram_prob,
            max_ngram=settings.max_ngram,
            mask_token=getattr(models.tokenizer, "mask_token", None),
            neighbours=neighbours,
            seed=settings.seed,
        )

    def prune_vocabulary(
        self, models: Models, data: TaskData, *, batch_size: int, progress: bool
    ) -> tuple[nn.Module, Any, dict[str, Any]]:
        return prune_student(models, data, batch_size=batch_size, progress=progress)

    def load_trained(self, location: str, role: str) -> tuple[nn.Module, Any]:
        fix = (
            "evaluate a classifier trained for this task (a run's student/), not a model without a trained head"
            if role == "model"
            else "compare with a teacher trained for this task (--teacher), or leave --teacher out"
        )
        return load_classifier(location, role).trained(role, fix), load_tokenizer(location, role)

    def eval_data(
        self,
        data: DataConfig,
        path: str,
        models: Mapping[str, tuple[nn.Module, Any]],
        *,
        max_length: int | None,
        max_examples: int | None,
        progress: bool,
    ) -> TaskData:
        table = load_table(path, data)
        if max_examples is not None and len(table) > max_examples:
            table = table.subset(range(max_examples), f"{table.source} (first {max_examples})")
        model, tokenizer = models["student"]
        teacher = models.get("teacher")
        classes = _classes(model, "model")
        if teacher is not None:
            teacher_classes = _classes(teacher[0], "teacher", distinct=False)
            _check_same_classes(classes, teacher_classes)
        readers = [(name, pair[0]) for name, pair in models.items()]
        length = max_length or min([data.max_length, *(usable_positions(m) or data.max_length for _, m in readers)])
        check_max_length(length, [("model" if name == "student" else name, m) for name, m in readers], "--max-length")
        columns = tokenize(tokenizer, table, length, desc="tokenising", progress=progress)
        check_token_ids(columns["input_ids"], model, "model", "the model's folder")
        separate = (
            teacher is not None and describe_tokenizer_difference(teacher[1], tokenizer, table.texts[:100]) is not None
        )
        if separate:
            columns.update(
                tokenize(
                    teacher[1], table, length, prefix=TEACHER_PREFIX, desc="tokenising (teacher)", progress=progress
                )
            )
        if teacher is not None:
            check_token_ids(
                columns.get(f"{TEACHER_PREFIX}input_ids", columns["input_ids"]), teacher[0], "teacher", "--teacher"
            )
        dataset = TokenizedDataset(columns, model_label_ids(table, classes), table.source)
        # what the configs say that transformers reads otherwise: told once the data is known to fit
        classes.warn()
        if teacher is not None:
            teacher_classes.warn()
        pad = getattr(teacher[0].config, "pad_token_id", None) if teacher is not None else None
        collator = PaddingCollator(tokenizer.pad_token_id or 0, pad or 0)
        return TaskData(
            train=dataset,
            validation=dataset,
            test=dataset,
            distill=dataset,
            collate=collator,
            sizes={"test": len(dataset)},
            separate_teacher_tokens=separate,
        )

    def finetune_objective(self) -> Objective:
        return Objective({"ce": HardCE()})

    def evaluate(
        self, models: Mapping[str, nn.Module], loader: DataLoader, *, progress: bool, desc: str = "evaluating"
    ) -> dict[str, dict[str, float]]:
        results: dict[str, dict[str, float]] = {}
        logits = {}
        for name, model in models.items():
            logits[name], gold = predict(model, loader, desc=f"{name} on {desc}", progress=progress)
            assert gold is not None, "evaluation batches carry their labels"
            results[name] = classification_metrics(logits[name], gold, logits[name].shape[-1])
        if "student" in logits and "teacher" in logits:
            results["student"]["agreement"] = agreement(logits["student"], logits["teacher"])
        return results

    def measure_speed(self, models: Mapping[str, nn.Module], batch: Any) -> dict[str, dict[str, float]]:
        inputs = {key: value for key, value in batch.items() if key not in ("labels", "kd_index")}
        return compare_speed(models, inputs)


def _classes(model: nn.Module, role: str, *, distinct: bool = True) -> LogitLabels:
    """The classes of a trained model's logits, as transformers reads its config."""
    location = getattr(model.config, "name_or_path", None)
    where = f"the {role}'s config.json ({location})" if location else f"the {role}'s config"
    return logit_labels(model.config, where, read_file=True, distinct=distinct)


def _check_same_classes(classes: LogitLabels, teacher_classes: LogitLabels) -> None:
    """Refuse a teacher whose logits are not the model's classes in the model's order.

    Raises:
        KdistillError: another number of classes, or a class that the two name at different logits.
    """
    if teacher_classes.count != classes.count:
        raise KdistillError(
            f"the teacher predicts {teacher_classes.count} classes and the model "
            f"{classes.count}: they were not trained for the same task"
        )
    # logit j of the one is compared with logit j of the other (the labels are the model's logits),
    # which names that do not match allow (a run's teacher may name its classes otherwise), but a
    # class that both name at different logits would be counted as another
    moved = [
        n
        for n in classes.names
        if n in teacher_classes.names and teacher_classes.names.index(n) != classes.names.index(n)
    ]
    if moved:
        raise KdistillError(
            f"the teacher's logits are the classes {', '.join(teacher_classes.names[:10])} and the model's "
            f"{', '.join(classes.names[:10])} (id2label in their config.json): {moved[0]} is another logit "
            "in each, so the teacher's accuracy and the agreement would compare different classes; give a "
            "teacher whose id2label names the model's classes at the same logits"
        )


register_task(TextClassification)


def _routes(data: DataConfig, prepared: Any) -> list[str] | None:
    """The teacher each training example names (``data.teacher_column``), or None without one."""
    if data.teacher_column is None:
        return None
    train = prepared.tables["train"]
    if train.routes is None:
        raise DataError(
            f"{train.source} has no column {data.teacher_column!r} (data.teacher_column): every training example "
            "must name its teacher"
        )
    return list(train.routes)
