"""A GGUF model written out as a plain ``save_pretrained`` folder (``kdistill export --format hf``).

transformers reads a GGUF file by dequantising it to float32; the folder written here is that
model and its tokenizer, loadable by plain ``from_pretrained`` without the ``gguf`` package and
without re-reading the quantised file. The folder is written whole, under a staging name, and
holds :data:`~kdistill.files.ownership.FILES_MANIFEST`; an existing output folder is replaced only
when it is such a folder and holds nothing else.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from kdistill.errors import OutputFileError
from kdistill.files.ownership import (
    swap_in_folder,
    unreplaceable_files,
    write_files_manifest,
)
from kdistill.tasks.causal_lm.models import load_causal_lm, load_lm_tokenizer

__all__ = ["PLAIN_KIND", "check_plain_output", "write_plain_folder"]

#: the ``kdistill`` value of the manifest of a folder written by :func:`write_plain_folder`
PLAIN_KIND = "dequantised-gguf"


def check_plain_output(out: Path) -> None:
    """Refuse, before any loading, an output that is a file, a link, or a folder holding anything but
    an earlier :func:`write_plain_folder` folder.

    Raises:
        OutputFileError: naming the output and, for a folder, the first files kdistill did not write.
    """
    if out.is_symlink() or out.is_file():
        raise OutputFileError(f"--output {str(out)!r} is a file or a link; give a new or empty folder")
    shown = unreplaceable_files(out, PLAIN_KIND)
    if shown:
        raise OutputFileError(
            f"--output {str(out)!r} holds files kdistill did not write there ({', '.join(shown)}): kdistill never "
            "replaces what it did not write; give a new or empty folder"
        )


def write_plain_folder(location: str, out: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the GGUF model at ``location`` (dequantised to float32) and write it, with its tokenizer,
    as a ``save_pretrained`` folder ``out``.

    Args:
        location: the GGUF file's path (see :func:`kdistill.models.loading.split_gguf`).
        out: the folder to write: new, empty, or an earlier one of these (which is replaced).

    Returns:
        What was written: ``architecture``, ``parameters``, ``dtype`` and ``files``.

    Raises:
        ModelLoadError: the file cannot be loaded.
        OutputFileError: ``out`` holds files kdistill did not write.
    """
    out = Path(out)
    check_plain_output(out)
    model = load_causal_lm(location, "model").model
    tokenizer = load_lm_tokenizer(location, "model")
    built = out.parent / f".{out.name}.building-{os.getpid()}"
    built.mkdir(parents=True)
    try:
        model.save_pretrained(built)
        tokenizer.save_pretrained(built)
        write_files_manifest(built, PLAIN_KIND)
        files = sorted(path.name for path in built.iterdir())
        swap_in_folder(built, out)
    finally:
        if built.exists():
            shutil.rmtree(built)
    return {
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "files": files,
    }
