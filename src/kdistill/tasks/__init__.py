"""The tasks the ``kdistill`` command distils, each one folder behind :class:`~kdistill.tasks.base.Task`.

Built-in tasks are imported when a config first names them; a task of your own is one class and
one call to :func:`register_task` (``docs/adding_a_task.md`` walks through one).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kdistill.errors import ConfigError

if TYPE_CHECKING:
    from kdistill.tasks.base import Models, Task, TaskData

__all__ = ["BUILTIN_TASKS", "Models", "Task", "TaskData", "get_task", "register_task", "task_names"]

#: tasks that ship with kdistill: name -> the module that registers it
BUILTIN_TASKS = {
    "text_classification": "kdistill.tasks.text_classification.task",
    "causal_lm": "kdistill.tasks.causal_lm.task",
}

_TASKS: dict[str, Task] = {}


def register_task(task: type[Task] | Task) -> Task:
    """Make a task reachable by its ``name`` (a config's ``task:``); returns its instance.

    Raises:
        ValueError: another task holds the name already.
    """
    instance = task() if isinstance(task, type) else task
    holder = _TASKS.get(instance.name)
    if holder is not None and type(holder).__qualname__ != type(instance).__qualname__:
        raise ValueError(f"a task named {instance.name!r} is registered already ({type(holder).__name__})")
    _TASKS[instance.name] = instance
    return instance


def task_names() -> list[str]:
    """Every task a config can name: the registered ones and the built-in ones."""
    return sorted(set(_TASKS) | set(BUILTIN_TASKS))


def get_task(name: str) -> Task:
    """The task registered as ``name`` (a built-in one is imported on first use).

    Raises:
        ConfigError: no task has that name.
    """
    if name not in _TASKS and name in BUILTIN_TASKS:
        importlib.import_module(BUILTIN_TASKS[name])
    if name not in _TASKS:
        raise ConfigError(f"task: unknown task {name!r}; the tasks are {', '.join(task_names())}")
    return _TASKS[name]


def __getattr__(name: str) -> Any:
    # the interface's names are imported on first use: it needs torch, and the command's start-up
    # (``kdistill --help``, a config error) reads this package's registry without running a task
    if name in ("Models", "Task", "TaskData"):
        from kdistill.tasks import base

        return getattr(base, name)
    raise AttributeError(f"module 'kdistill.tasks' has no attribute {name!r}")
