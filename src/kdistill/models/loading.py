"""Loading teachers, students and tokenizers from folders or the hub, with one-line errors."""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.errors import ModelLoadError
from kdistill.models.gguf import gguf_files, gguf_problem
from kdistill.models.hub import hub_offline_reason, is_cached, offline_model_hint

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "LoadedModel",
    "count_parameters",
    "load_any_model",
    "load_pretrained",
    "load_tokenizer",
    "looks_local",
    "quiet_transformers",
    "read_model_config",
]

logger = logging.getLogger(__name__)


def looks_local(location: str) -> bool:
    """Whether ``location`` is meant as a local path rather than a hub id (``org/name``).

    An existing path, an absolute path, or one starting with ``.`` or ``~`` is local.
    """
    return (
        os.path.exists(location)
        or os.path.isabs(location)
        or location.startswith((".", "~"))
        or location.count("/") > 1
        or "\\" in location
    )


#: what loading a model or tokenizer from the user's files raises when the files are wrong (missing,
#: damaged, a pickle, weights that do not fit the config, a tokenizer file of another format): the
#: libraries use many kinds, plain ``Exception`` included, and each means "these files cannot be
#: loaded". Running out of memory is not one of them (see :data:`NOT_LOAD_ERRORS`).
LOAD_ERRORS = (Exception,)
NOT_LOAD_ERRORS = (MemoryError,)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_problem(error: BaseException, location: str, role: str) -> str:
    """Why loading ``location`` failed, in one line, with the way out where kdistill knows it."""
    text = str(error)
    if "custom code" in text or "trust_remote_code" in text:
        return (
            f"it ships its own Python code, which kdistill runs only when trust_remote_code is on "
            f"({role}.trust_remote_code: true in a config; read that code first)"
        )
    if isinstance(error, pickle.UnpicklingError) or "Weights only load failed" in text:
        # torch's own message suggests weights_only=False, which would run the pickle's code: never say that
        refused = next((line.strip() for line in text.splitlines() if "GLOBAL" in line), "a Python object")
        return (
            f"its weights file (pytorch_model.bin) holds Python objects that cannot be loaded safely ({refused}); "
            "kdistill loads weights as safetensors or plain tensors only and never runs code from a pickle: "
            "use a copy of the model saved as model.safetensors"
        )
    if type(error).__name__ == "SafetensorError" or "deserializing header" in text:
        return (
            f"its weights file (model.safetensors) is damaged or truncated ({_first_line(error)}); save or "
            "download the model again"
        )
    problem = _first_line(error)
    if not looks_local(location):
        problem += f" (nor is there a folder {location!r} here)"
    return problem


def _check_gguf(source: str, location: str, role: str, options: dict[str, Any], what: str) -> None:
    """Refuse a damaged ``gguf_file`` of ``options`` in one line that says what is wrong with it."""
    name = options.get("gguf_file")
    if not name or not looks_local(location):
        return
    problem = gguf_problem(Path(source) / name)
    if problem is None:
        return
    fix = (
        f"give the model's .gguf file ({role}.gguf_file)"
        if problem.startswith("is not a GGUF file")
        else "download or convert the model again"
    )
    raise ModelLoadError(f"cannot load {what} {location!r}: its GGUF file {name!r} {problem}; {fix}")


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings for the block: its load report (kdistill reports new or resized
    weights itself), or notes it makes about calls of its own (assisted generation's drafting calls)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _check_location(location: str, role: str, what: str = "a model", revision: str | None = None) -> str:
    if looks_local(location):
        path = Path(location).expanduser()
        if not path.exists():
            raise ModelLoadError(f"{role} {location!r}: no such folder")
        if not path.is_dir():
            raise ModelLoadError(f"{role} {location!r} is a file; give the folder that save_pretrained wrote")
        return str(path)
    offline = hub_offline_reason()
    if offline is not None and not is_cached(location, revision):
        # fail now, not after the hub library's retries, and say what works without a network
        raise ModelLoadError(
            f"cannot load {role} {location!r}: there is no folder {location!r} here, and as a hub id it needs the "
            f"hub, which cannot be used ({offline}), or the local Hugging Face cache, which does not hold it; "
            f"{offline_model_hint(role)}"
        )
    return location


@dataclass
class LoadedModel:
    """A model and what loading it revealed.

    Attributes:
        model: the model, in eval mode.
        location: the folder or hub id it came from.
        new_weights: names of weights that were not in the checkpoint (a new head).
        resized: the weights whose shape in the checkpoint is not the model's, as
            ``(name, shape in the checkpoint, shape in the model)`` (loaded with ``ignore_mismatched_sizes``).
    """

    model: nn.Module
    location: str
    new_weights: list[str] = field(default_factory=list)
    resized: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def has_new_head(self) -> bool:
        """True when some weights were newly initialised rather than loaded."""
        return bool(self.new_weights)

    def trained(self, role: str, fix: str) -> nn.Module:
        """The model, refused when some of its weights are untrained (its predictions would be noise).

        Raises:
            ModelLoadError: naming the untrained weights and ``fix``.
        """
        if self.has_new_head:
            raise ModelLoadError(
                f"the {role} {self.location!r} has untrained weights ({', '.join(self.new_weights[:3])}): its "
                f"predictions would be noise; {fix}"
            )
        return self.model


def load_pretrained(
    auto_class: Any,
    location: str,
    role: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> LoadedModel:
    """Load a model with a transformers ``Auto*`` class, with what loading revealed.

    Args:
        auto_class: ``AutoModelForSequenceClassification``, ``AutoModelForCausalLM`` ...
        location: a folder written by ``save_pretrained`` or a hub id.
        role: ``"teacher"`` or ``"student"``, for messages.
        revision: a hub revision.
        trust_remote_code: let a hub model run its own code.
        **kwargs: passed on to ``from_pretrained`` (``num_labels``, ``gguf_file`` ...).

    Raises:
        ModelLoadError: the folder is missing or holds no model, its files are damaged or
            unsafe, or the hub is unreachable.
    """
    source = _check_location(location, role, revision=revision)
    _check_gguf(source, location, role, kwargs, role)
    if looks_local(location) and "gguf_file" not in kwargs and not (Path(source) / "config.json").is_file():
        found = gguf_files(source)
        # a folder of GGUF files (a package's, a *-GGUF download) is a model once its file is named
        hint = (
            f"; it holds GGUF files ({', '.join(found)}): name one (--gguf-file {found[0]} on the command "
            f"line, teacher.gguf_file: {found[0]} in a config)"
            if found
            else ""
        )
        raise ModelLoadError(
            f"{role} folder {location!r} holds no config.json: it is not a model saved with save_pretrained{hint}"
        )
    try:
        with quiet_transformers():
            model, info = auto_class.from_pretrained(
                source, output_loading_info=True, revision=revision, trust_remote_code=trust_remote_code, **kwargs
            )
    except NOT_LOAD_ERRORS:
        raise
    except LOAD_ERRORS as error:
        raise ModelLoadError(f"cannot load {role} {location!r}: {_load_problem(error, location, role)}") from None
    mismatched = {str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", [])}
    resized = sorted(
        (str(k[0]), tuple(k[1]), tuple(k[2]))
        for k in info.get("mismatched_keys", [])
        if isinstance(k, tuple) and len(k) == 3
    )
    model.eval()
    return LoadedModel(
        model=model,
        location=location,
        new_weights=sorted(set(info.get("missing_keys", [])) | mismatched),
        resized=resized,
    )


def read_model_config(
    location: str, role: str, *, revision: str | None = None, trust_remote_code: bool = False
) -> Any:
    """The ``config.json`` of the model at ``location`` (no weights read), or None where it cannot be read
    (loading the model then says why, in one line)."""
    from transformers import AutoConfig

    source = _check_location(location, role, revision=revision)
    try:
        return AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except NOT_LOAD_ERRORS:
        raise
    except LOAD_ERRORS:
        return None


def load_any_model(location: str, role: str = "model", *, trust_remote_code: bool = False) -> nn.Module:
    """Load a model with the class its checkpoint names (``config.architectures``), else ``AutoModel``."""
    import transformers
    from transformers import AutoConfig, AutoModel

    source = _check_location(location, role)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        architectures = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, architectures[0], None) if architectures else None
        if model_class is None:
            model_class = AutoModel
        return model_class.from_pretrained(source, trust_remote_code=trust_remote_code).eval()
    except NOT_LOAD_ERRORS:
        raise
    except LOAD_ERRORS as error:
        raise ModelLoadError(f"cannot load {role} {location!r}: {_load_problem(error, location, role)}") from None


def load_tokenizer(
    location: str, role: str, *, revision: str | None = None, trust_remote_code: bool = False, **options: Any
) -> Any:
    """Load a tokenizer (``AutoTokenizer``); ``options`` go to ``from_pretrained`` (``gguf_file``).

    Raises:
        ModelLoadError: there is no tokenizer at ``location``.
    """
    from transformers import AutoTokenizer

    source = _check_location(location, role, "a tokenizer", revision)
    _check_gguf(source, location, role, options, f"the {role}'s tokenizer from")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code, **options
        )
    except NOT_LOAD_ERRORS:
        raise
    except LOAD_ERRORS as error:
        raise ModelLoadError(
            f"cannot load the {role}'s tokenizer from {location!r}: {_load_problem(error, location, role)} "
            f"(set {role}.tokenizer: to a folder or hub id that has one)"
        ) from None
    if isinstance(tokenizer, bool) or not callable(tokenizer):
        raise ModelLoadError(f"{location!r} holds no tokenizer (set {role}.tokenizer:)")
    if tokenizer.pad_token_id is None:
        # batches are padded: a tokenizer without a padding token pads with its end token
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"the {role}'s tokenizer at {location!r} has neither a padding nor an end token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def count_parameters(model: nn.Module) -> int:
    """The number of parameters of ``model`` (shared weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
