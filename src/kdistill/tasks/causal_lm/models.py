"""Loading causal language models: from a folder, a hub name or a GGUF file, the student built from
the teacher (fewer layers copied, embeddings and head copied and tied where the teacher ties them)
or loaded, and their tokenizers checked to give the same tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from torch import nn

from kdistill.errors import ModelLoadError
from kdistill.models.gguf import split_gguf
from kdistill.models.loading import LoadedModel, load_pretrained, load_tokenizer
from kdistill.schema import Section
from kdistill.tasks.common import student_from_teacher

__all__ = ["LMModelOptions", "dequantized", "load_causal_lm", "load_lm_tokenizer", "student_lm"]


class LMModelOptions(Section):
    """Keys a causal-LM run adds to ``teacher:``."""

    gguf_file: str | None = Field(
        None, description="a GGUF file inside the folder (path: or package:), dequantised to float32 on loading"
    )

    @field_validator("gguf_file")
    @classmethod
    def _a_file_name(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or "\\" in value or not value.endswith(".gguf")):
            raise ValueError(f"must be the name of a .gguf file inside the model folder, got {value!r}")
        return value


def dequantized(model: nn.Module) -> nn.Module:
    """The model as a plain float model: a GGUF-loaded one keeps its quantizer, which refuses
    ``save_pretrained`` and would follow into a student built from its config."""
    if getattr(model, "hf_quantizer", None) is not None or hasattr(model.config, "quantization_config"):
        model.hf_quantizer = None
        model.is_quantized = False
        model.quantization_method = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def load_causal_lm(
    location: str,
    role: str,
    *,
    gguf_file: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load an ``AutoModelForCausalLM`` (a GGUF file dequantised), refused when some weights are untrained.

    ``location`` is a folder or hub id (with ``gguf_file``, the name of a GGUF file in it), or the
    path of a GGUF file itself.

    Raises:
        ModelLoadError: the folder or file cannot be loaded, or weights are missing from it.
    """
    from transformers import AutoModelForCausalLM

    location, gguf_file = _gguf_parts(location, gguf_file)
    _check_gguf_file(location, role, gguf_file)
    options: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    loaded = load_pretrained(
        AutoModelForCausalLM, location, role, revision=revision, trust_remote_code=trust_remote_code, **options
    )
    # a causal LM's output layer is part of the model: a weight missing from the files is a broken model
    loaded.trained(role, "give a causal language model with all its weights (a save_pretrained folder or a GGUF file)")
    dequantized(loaded.model)
    return loaded


def _gguf_parts(location: str, gguf_file: str | None) -> tuple[str, str | None]:
    """A GGUF file's path as transformers takes it: its folder and ``gguf_file=`` its name."""
    parts = split_gguf(location) if gguf_file is None else None
    return parts if parts is not None else (location, gguf_file)


def _check_gguf_file(location: str, role: str, gguf_file: str | None) -> None:
    # transformers would look for a missing file on the hub and answer with a hub address
    folder = Path(location)
    if gguf_file is None or not folder.is_dir() or (folder / gguf_file).is_file():
        return
    found = sorted(path.name for path in folder.glob("*.gguf"))
    raise ModelLoadError(
        f"{role} folder {location!r} has no file {gguf_file!r} ({role}.gguf_file); "
        + (f"its .gguf files: {', '.join(found)}" if found else "it holds no .gguf file")
    )


def load_lm_tokenizer(
    location: str,
    role: str,
    *,
    gguf_file: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """The tokenizer at ``location`` (read from the GGUF file when one is named, or when ``location`` is
    one); pads with its end token."""
    location, gguf_file = _gguf_parts(location, gguf_file)
    options: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    return load_tokenizer(location, role, revision=revision, trust_remote_code=trust_remote_code, **options)


def student_lm(spec: Any, teacher: nn.Module) -> tuple[nn.Module, str, Any | None]:
    """The student of a ``student:`` section: built from the teacher, or loaded (with its own tokenizer).

    Returns:
        ``(student, one line on how it was made, its tokenizer or None for the teacher's)``.
    """
    if spec.from_teacher is not None:
        student, report = student_from_teacher(teacher, spec.from_teacher)
        tied = getattr(teacher.config, "tie_word_embeddings", False)
        if tied and student.get_output_embeddings().weight is not student.get_input_embeddings().weight:
            raise ModelLoadError("the student built from the teacher lost the teacher's tied embeddings and head")
        return student, str(report) + ("; embeddings and head tied, as the teacher's" if tied else ""), None
    location = spec.location()
    loaded = load_causal_lm(location, "student", revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    tokenizer = load_lm_tokenizer(
        spec.tokenizer or location, "student", revision=spec.revision, trust_remote_code=spec.trust_remote_code
    )
    return loaded.model, f"student loaded from {location}", tokenizer
