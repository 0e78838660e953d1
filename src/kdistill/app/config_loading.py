"""Reading a run config: YAML in (safely), overrides applied, every problem as one line.

A config is read with a :class:`yaml.SafeLoader` that also refuses a key given twice and alias
bombs (no tag can build an object or run code), merged with ``key.sub=value`` overrides from
the command line, and validated in full before any work starts. Every problem becomes one
:class:`~kdistill.errors.ConfigError` line:

* an unknown key names its place and the closest known key (``training.epoch: unknown key;
  did you mean 'epochs'?``);
* a wrong type or an impossible value names the key, what it must be and what was given.

Relative paths are read from the current working directory, as for any command-line path.
"""

from __future__ import annotations

import difflib
import reprlib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from kdistill.app.config import RunConfig, run_config_class
from kdistill.errors import ConfigError
from kdistill.losses.registry import term_types

__all__ = ["apply_overrides", "dump_config", "load_config", "parse_config", "parse_overrides", "read_yaml"]


def _arms(annotation: Any) -> list[Any]:
    """The alternatives of an annotation, without ``Annotated`` wrappers and ``None``."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _arms(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [arm for arg in typing.get_args(annotation) if arg is not type(None) for arm in _arms(arg)]
    return [annotation]


def _model_for(annotation: Any, value: Any) -> type[BaseModel] | None:
    """The config section class that holds ``value``; a tagged union is resolved by ``type``."""
    models = [arm for arm in _arms(annotation) if isinstance(arm, type) and issubclass(arm, BaseModel)]
    if len(models) > 1 and isinstance(value, Mapping):
        models = [m for m in models if value.get("type") in typing.get_args(m.model_fields["type"].annotation)]
    return models[0] if len(models) == 1 else None


def _mapping_values(annotation: Any) -> Any:
    """``X`` for a ``dict[str, X]`` annotation (possibly optional), else None."""
    for arm in _arms(annotation):
        if typing.get_origin(arm) in (dict, Mapping):
            return typing.get_args(arm)[1]
    return None


def _check_keys(data: Any, model: type[BaseModel], where: str) -> None:
    """Raise a ConfigError for the first key of ``data`` that ``model`` does not know."""
    if not isinstance(data, Mapping):
        return
    fields = model.model_fields
    for key, value in data.items():
        place = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the keys here are {', '.join(fields)}"
            raise ConfigError(f"{place}: unknown key{hint}")
        annotation = fields[key].annotation
        section = _model_for(annotation, value)
        if section is not None:
            _check_keys(value, section, place)
            continue
        inner = _mapping_values(annotation)
        if inner is not None and isinstance(value, Mapping):
            for name, item in value.items():
                item_section = _model_for(inner, item)
                if item_section is not None:
                    _check_keys(item, item_section, f"{place}.{name}")


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 6, 6, 50, 50


def _describe(value: Any) -> str:
    # reprlib: a value built from YAML aliases can be huge; its repr must stay short and quick
    text = _SHORT.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _place(location: Sequence[Any], data: Any) -> str:
    """The dotted key of an error, as the user wrote it.

    Pydantic adds the tag of a tagged union and the arm of a plain union to an error's
    location; those are dropped by walking the location through the raw data.
    """
    kept: list[str] = []
    node = data
    for part in location:
        in_mapping = isinstance(node, Mapping) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        added_by_pydantic = (isinstance(node, Mapping) and node.get("type") == part) or (
            isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool"))
        )
        if in_mapping or in_list:
            kept.append(str(part))
            node = node[part]
        elif added_by_pydantic:
            continue
        else:
            kept.append(str(part))
            node = None
    return ".".join(kept) or "config"


def _format_validation_error(error: ValidationError, data: Any) -> str:
    """One line for the first problem pydantic found (and how many more there are)."""
    problems = []
    for item in error.errors(include_url=False):
        place = _place(item["loc"], data)
        message = item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if item["type"] == "missing":
            problems.append(f"{place}: missing (required)")
        elif item["type"] == "union_tag_not_found":
            problems.append(f"{place}: needs a type: ({', '.join(term_types())})")
        elif item["type"] in ("model_type", "model_attributes_type", "dict_type"):
            problems.append(f"{place}: must be a mapping of keys, got {_describe(item.get('input'))}")
        elif item["loc"] and item["type"] not in ("value_error", "assertion_error", "union_tag_invalid"):
            problems.append(f"{place}: {message}, got {_describe(item.get('input'))}")
        else:
            problems.append(f"{place}: {message}")
    # a value that fits no arm of a union is reported once per arm: keep the first per place
    unique: dict[str, str] = {}
    for problem in problems:
        unique.setdefault(problem.split(":", 1)[0], problem)
    lines = list(unique.values())
    more = len(lines) - 1
    return lines[0] if not more else f"{lines[0]} (and {more} more problem{'s' if more > 1 else ''})"


def parse_config(data: Any) -> RunConfig:
    """Validate raw config data (as ``yaml.safe_load`` returns it).

    Raises:
        ConfigError: the first unknown key (with the closest known one), wrong type or impossible value.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping of keys (teacher:, student:, data: ...), got {_describe(data)}")
    task = data.get("task", RunConfig.model_fields["task"].default)
    if not isinstance(task, str):
        raise ConfigError(f"task: must be the name of a task, got {_describe(task)}")
    config_class = run_config_class(task)
    _check_keys(data, config_class, "")
    try:
        return config_class.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, data)) from None


def parse_overrides(overrides: Sequence[str]) -> list[tuple[list[str], Any]]:
    """Parse ``key.sub=value`` overrides; values are read as YAML (``3``, ``1.0e-4``, ``true``, ``[1, 2]``).

    Raises:
        ConfigError: an override without ``=`` or with an empty key.
    """
    parsed = []
    for override in overrides:
        key, sep, raw = override.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(part.strip() for part in parts):
            raise ConfigError(f"override {override!r} must look like key.sub=value (e.g. training.epochs=3)")
        try:
            value = read_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"override {override!r}: the value is not valid YAML ({_yaml_problem(error)})") from None
        parsed.append(([part.strip() for part in parts], value))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of raw config ``data`` with ``key.sub=value`` overrides applied.

    A key on the path that does not exist yet is created; an override through a value that is
    not a mapping is an error.
    """
    import copy

    result = copy.deepcopy(data)
    for parts, value in parse_overrides(overrides):
        node: dict[str, Any] = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {'.'.join(parts)}: {where} is {_describe(child)}, not a mapping of keys")
            node = child
        node[parts[-1]] = value
    return result


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


#: a config is a page of settings; a larger file is a mistake (a data file given as the config)
MAX_CONFIG_BYTES = 1 << 20
#: YAML aliases allowed in one document: anchors are handy, but nested aliases can expand
#: exponentially ("billion laughs") and would hang validation
MAX_ALIASES = 100


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping and too many aliases.

    PyYAML keeps the last of two equal keys without a word: two ``training:`` blocks would
    silently drop the first.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"more than {MAX_ALIASES} aliases (*name)", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged in with << may be overridden: that is what merging means
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {key!r} is given twice (first at line {first.line + 1}); keep one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep)


def read_yaml(text: str) -> Any:
    """Parse YAML as :func:`yaml.safe_load` does, refusing repeated keys and alias bombs."""
    return yaml.load(text, Loader=_StrictLoader)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config file, apply overrides and validate everything.

    Args:
        path: the YAML file.
        overrides: ``key.sub=value`` strings (from the command line).

    Raises:
        ConfigError: the file is missing or not YAML, or the config is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} not found" if not path.exists() else f"{str(path)!r} is not a file"
        )
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {str(path)!r} is {path.stat().st_size:,} bytes: a config is a short YAML file "
            f"(at most {MAX_CONFIG_BYTES:,} bytes); is it the right file?"
        )
    try:
        data = read_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {_yaml_problem(error)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys (teacher:, student:, data: ...)")
    return parse_config(apply_overrides(data, overrides))


def dump_config(config: RunConfig) -> str:
    """The resolved config (every default filled in) as YAML that :func:`load_config` reads back."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
