"""The loss terms a config can name: one class and one registration each.

A term is a :class:`~kdistill.losses.base.Term` subclass with a nested ``Settings`` section
(its YAML keys; ``weight`` comes with every term) and, where building it needs the two models
(layer maps, projections), a ``from_settings`` class method. Registering it makes it reachable
by name from Python (:func:`build_term`) and from YAML (``objective.terms.<name>.type``)::

    @register_term("cosine_logits")
    class CosineLogits(Term):
        class Settings(TermSettings):
            scale: float = Field(1.0, gt=0)

        def __init__(self, scale: float = 1.0) -> None: ...

The config reads the registry when it is validated, so a term registered before
``load_config`` is a term a config can use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import Field, create_model
from torch import nn

from kdistill.losses.base import Term, TermSettings

__all__ = ["TermSettings", "build_term", "register_term", "settings_union", "term_class", "term_types"]

T = TypeVar("T", bound="type[Term]")


_TERMS: dict[str, type[Term]] = {}
_SETTINGS: dict[str, type[TermSettings]] = {}


def register_term(name: str) -> Callable[[T], T]:
    """Register a :class:`~kdistill.losses.base.Term` subclass under ``name`` (a class decorator).

    Raises:
        ValueError: another class holds ``name`` already.
    """

    def register(cls: T) -> T:
        holder = _TERMS.get(name)
        if holder is not None and holder.__qualname__ != cls.__qualname__:
            raise ValueError(f"a loss term named {name!r} is registered already ({holder.__name__})")
        settings = create_model(  # type: ignore[call-overload]
            f"{cls.__name__}Settings",
            __base__=cls.Settings,
            type=(Literal[name], ...),  # type: ignore[attr-defined]
        )
        settings.__doc__ = cls.Settings.__doc__ or f"The settings of the {name} term."  # type: ignore[attr-defined]
        _TERMS[name], _SETTINGS[name] = cls, settings
        cls.term_type = name  # type: ignore[attr-defined]
        return cls

    return register


def term_types() -> tuple[str, ...]:
    """The names a config's ``objective.terms.<x>.type`` can take, in registration order."""
    return tuple(_TERMS)


def term_class(name: str) -> type[Term]:
    """The term class registered under ``name``.

    Raises:
        ValueError: no term has that name.
    """
    if name not in _TERMS:
        raise ValueError(f"unknown loss term {name!r}; the terms are {', '.join(_TERMS)}")
    return _TERMS[name]


def settings_union() -> Any:
    """The settings of every registered term as one pydantic type, told apart by ``type``."""
    arms = tuple(_SETTINGS.values())
    return Annotated[Union[arms], Field(discriminator="type")]  # noqa: UP007 - built from a tuple


def build_term(settings: TermSettings, student: nn.Module | None = None, teacher: nn.Module | None = None) -> Term:
    """The term ``settings`` describe, built against the two models where it needs them."""
    return term_class(settings.type).from_settings(settings, student, teacher)  # type: ignore[attr-defined]
