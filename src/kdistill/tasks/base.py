"""What a task is: the one seam between kdistill's core and the ``kdistill`` command.

The core (losses, capture, the training paths, the teacher cache) serves any model. What a run
reads and measures depends on what the models do: text classification reads labelled tables and
reports accuracy, a causal language model reads text and reports perplexity. A :class:`Task`
holds all of that, behind the small interface below, so that a new task is one folder under
``kdistill/tasks/`` and one registration: the command (:mod:`kdistill.app`) runs every task
through the same flow::

    config ─► task.read ─► task.load_models ─► task.prepare ─► stages ─► train ─► task.evaluate ─► report

A task never imports :mod:`kdistill.app`; the sections it adds to the config are plain
:class:`~kdistill.schema.Section` classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdistill.losses.objective import Objective
from kdistill.schema import Section
from kdistill.train.on_policy import OnPolicy

__all__ = ["Models", "Task", "TaskData"]


@dataclass
class Models:
    """The models of a run, loaded and checked.

    Attributes:
        teacher: the teacher model.
        teacher_location: the folder or hub id it came from (for reports).
        student: the student, or None in a run that only fine-tunes the teacher.
        tokenizer: the student's tokenizer (or processor); saved with the student.
        teacher_tokenizer: the teacher's (the same object when they share one).
        student_note: one line on how the student was made, for the log and the report.
        teacher_new_weights: the teacher's weights that loading initialised (a new head,
            trained by ``teacher.finetune``).
        teachers: with several teachers, each one by name (``teacher`` is the one the student was
            built from); empty for one.
        teacher_locations: where each of several teachers came from, by name.
    """

    teacher: nn.Module
    teacher_location: str
    student: nn.Module | None
    tokenizer: Any
    teacher_tokenizer: Any
    student_note: str = ""
    teacher_new_weights: list[str] = field(default_factory=list)
    teachers: dict[str, nn.Module] = field(default_factory=dict)
    teacher_locations: dict[str, str] = field(default_factory=dict)


@dataclass
class TaskData:
    """A run's data, read and tokenised once.

    Attributes:
        train: what the teacher is fine-tuned on.
        validation: what the best student is chosen on.
        test: what the report measures, if any (else the validation split).
        distill: what the student is distilled on (``train``, and generated examples if any).
        collate: pads a list of examples into a batch.
        sizes: examples per split, for the log and the report.
        description: one line on the data for the log (labels, tokens ...).
        details: task-specific facts for ``metrics.json`` (label names ...).
        separate_teacher_tokens: the teacher reads its own ``teacher_*`` token ids.
        routes: with several teachers routed by the data (``combine: route``), the teacher each
            ``distill`` example names, in order; None otherwise.
    """

    train: Dataset
    validation: Dataset
    test: Dataset | None
    distill: Dataset
    collate: Callable[[list[Any]], Any]
    sizes: dict[str, int]
    description: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    separate_teacher_tokens: bool = False
    routes: list[str] | None = None


class Task(ABC):
    """A kind of model that kdistill distils from the command line.

    Subclasses set the class attributes and implement the methods; register them with
    :func:`kdistill.tasks.register_task`.
    """

    #: the name a config's ``task:`` gives
    name: ClassVar[str]
    #: the ``data:`` section of the config
    data_section: ClassVar[type[Section]]
    #: keys the task adds to ``teacher:`` (None for none)
    teacher_options: ClassVar[type[Section] | None] = None
    #: keys the task adds to ``objective:`` (a section class), or None
    objective_options: ClassVar[type[Section] | None] = None
    #: a run's ``evaluation:`` section, what :meth:`extra_measurements` reads (None: the task has none)
    evaluation_options: ClassVar[type[Section] | None] = None
    #: the metric the best student is chosen by, and whether higher is better
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    #: the task's columns of the comparison table: ``(metric key, header)``
    metric_columns: ClassVar[tuple[tuple[str, str], ...]]
    #: what the speed measurement times, for the report: ``{batch}``, ``{length}`` (tokens per example),
    #: ``{new_tokens}`` (tokens generated) and ``{threads}`` ("1 thread", "2 threads") are filled in
    speed_note: ClassVar[str] = "Latency is the median CPU time of one batch of {batch} examples ({threads})"
    #: the unit of the throughput column
    throughput_unit: ClassVar[str] = "examples/s"
    #: whether the task implements :meth:`prune_vocabulary` (``student.prune_vocabulary``)
    prunes_vocabulary: ClassVar[bool] = False

    @abstractmethod
    def read(self, data: Section) -> Any:
        """Read (and split) the data the ``data:`` section names; no model is needed yet.

        Raises:
            KdistillError: a missing file or column, an empty split ...
        """

    @abstractmethod
    def load_models(self, teacher: Any, student: Any | None, raw: Any, *, seed: int) -> Models:
        """Load the teacher and build or load the student (with their tokenizers), checked against each other.

        Args:
            teacher: the ``teacher:`` section (with the task's own keys).
            student: the ``student:`` section, or None for a teacher-only run.
            raw: what :meth:`read` returned.
            seed: the run's seed.
        """

    @abstractmethod
    def prepare(self, data: Section, raw: Any, models: Models, *, progress: bool) -> TaskData:
        """Tokenise the splits once and make the collator."""

    def preset_objective(self, preset: str, temperature: float, alpha: float) -> Objective | None:
        """The objective of an ``objective.preset`` for this task's models, or None for kdistill's own
        (``hinton``: soft labels and hard labels of a classifier's logits)."""
        return None

    def samples(self, models: Mapping[str, nn.Module], data: TaskData, tokenizer: Any) -> list[dict[str, str]]:
        """Examples of each model's output side by side for the report (none by default)."""
        return []

    def distill_data(
        self, objective: Section, models: Models, data: TaskData, *, seed: int, progress: bool
    ) -> TaskData:
        """The data the student is distilled on, once the teacher is final (after its fine-tuning):
        ``data`` as prepared by default; a task may add what the teacher writes (sequence-level KD)."""
        return data

    def check_objective(self, objective: Section, models: Models, data: TaskData) -> None:
        """Refuse, before any work, objective settings of the task's own (``objective_options``) that
        cannot run or cannot take effect with these models and data; nothing to check by default.

        Raises:
            KdistillError: one line that names the setting (a causal LM: generating past the
                models' positions).
        """
        return None

    def on_policy(self, objective: Section, models: Models, *, seed: int) -> OnPolicy | None:
        """What replaces some batches by the student's own samples during distillation (None: nothing)."""
        return None

    @abstractmethod
    def finetune_objective(self) -> Objective:
        """The loss the teacher is fine-tuned with (``teacher.finetune``)."""

    @abstractmethod
    def evaluate(
        self, models: Mapping[str, nn.Module], loader: DataLoader, *, progress: bool, desc: str = "evaluating"
    ) -> dict[str, dict[str, float]]:
        """Measure each model on the batches of ``loader``.

        Args:
            models: ``{"teacher": ..., "student": ...}`` or one of them, ready for the batches
                (routed to their own tokens where they differ).
            loader: the batches.
            progress: show a progress bar.
            desc: the progress bar's label.

        Returns:
            Metrics by model name; the task's primary metric among them. With both models, the
            student's metrics include its agreement with the teacher.
        """

    @abstractmethod
    def measure_speed(self, models: Mapping[str, nn.Module], batch: Any) -> dict[str, dict[str, float]]:
        """Time each model on ``batch`` the way the task is used (a classification, a generation),
        the models in alternating rounds (:func:`kdistill.models.speed.compare_speed`, or
        :func:`~kdistill.models.speed.time_rounds` and :func:`~kdistill.models.speed.summarise_rounds`
        for another workload).

        Returns:
            By model name: at least ``latency_ms`` and ``throughput``; for the student also
            ``speedup`` over the teacher; and where known ``latency_spread``, ``speedup_spread`` and the
            conditions of :func:`kdistill.models.speed.measuring_conditions` (batch size, sequence length ...).
        """

    def extra_measurements(
        self, models: Mapping[str, nn.Module], batch: Any, options: Section | None = None
    ) -> dict[str, dict[str, Any]]:
        """Measurements beyond :meth:`evaluate` and :meth:`measure_speed`, made on the same ``batch``
        (nothing by default; a causal LM measures the student as the teacher's draft model).

        Args:
            models: as :meth:`measure_speed` has them.
            batch: the batch :meth:`measure_speed` timed.
            options: the run's ``evaluation:`` section (:attr:`evaluation_options`); None for its defaults.

        Returns:
            By model name, records to merge into that model's metrics (``metrics.json``).
        """
        return {}

    def extra_lines(self, metrics: Mapping[str, Any]) -> list[str]:
        """Lines on what :meth:`extra_measurements` measured, for ``report.md`` and the console, read
        from a metrics record (a run's ``metrics.json``, or ``kdistill eval``'s); none by default."""
        return []

    @abstractmethod
    def load_trained(self, location: str, role: str) -> tuple[nn.Module, Any]:
        """A trained model and its tokenizer, for ``kdistill eval`` (refused when untrained)."""

    @abstractmethod
    def eval_data(
        self,
        data: Section,
        path: str,
        models: Mapping[str, tuple[nn.Module, Any]],
        *,
        max_length: int | None,
        max_examples: int | None,
        progress: bool,
    ) -> TaskData:
        """The file at ``path``, read with the ``data:`` section and tokenised for ``models``
        (``{"student": (model, tokenizer)[, "teacher": ...]}``), as the ``test`` split of the result.

        Args:
            data: the data section (a run's, or the defaults).
            path: the file.
            models: the models that will read it; a run of several teachers adds the others as
                ``teachers.<name>``, which read the student's tokens (only their length is checked).
            max_length: tokens per example; None for the section's, shortened to what the models read.
            max_examples: the first examples only.
            progress: show progress bars.
        """

    def prune_vocabulary(
        self, models: Models, data: TaskData, *, batch_size: int, progress: bool
    ) -> tuple[nn.Module, Any, dict[str, Any]]:
        """The trained student with only the vocabulary its distillation data uses, and its tokenizer
        (``student.prune_vocabulary``; only where :attr:`prunes_vocabulary`).

        Returns:
            ``(pruned student, pruned tokenizer, what pruning changed)``: sizes before and after, and
            both students' metrics on the evaluated split, re-tokenised for the pruned one (``metrics.json``).
        """
        raise NotImplementedError(f"the {self.name} task does not prune vocabularies")

    def save(self, model: nn.Module, tokenizer: Any, folder: Path) -> None:
        """Write a model and its tokenizer where plain ``transformers`` can load them."""
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    def read_weights(self, model: nn.Module, folder: Path) -> None:
        """Load into ``model`` the weights :meth:`save` wrote to ``folder`` (a resumed run's fine-tuned teacher)."""
        model.load_state_dict(type(model).from_pretrained(folder).state_dict())
