"""What the ONNX export and its timing share: the check that the ONNX packages are installed, an
ONNX Runtime CPU session, and the sample texts both run."""

from __future__ import annotations

import os
from typing import Any

from kdistill.errors import KdistillError

__all__ = ["MISSING_ONNX", "SAMPLE_TEXTS", "onnx_session", "require_onnx"]

MISSING_ONNX = 'exporting to ONNX needs the onnx, onnxruntime and onnxscript packages: pip install "kdistill[onnx]"'

#: texts of varied length and tone: the export sample and the checks (tokenised, so any tokenizer reads them)
SAMPLE_TEXTS = (
    "A lovely, moving film.",
    "Dull and far too long.",
    "The cast is great, but the story never comes together and the ending falls flat.",
    "I would watch it again tomorrow.",
    "Not bad at all",
    "What a waste of two hours; the dialogue is wooden and the plot makes no sense whatsoever.",
    "Quietly brilliant.",
    "It was fine, I guess, though I expected more from this director after her last three pictures.",
    "Terrible.",
    "Funny, warm and surprisingly sad in places.",
    "The music is the best part of an otherwise forgettable evening at the cinema.",
    "ok",
    "An ambitious mess: too many ideas, too little time, and a running joke that never lands.",
    "Five stars.",
    "Bright, sharp and full of life from the first scene to the last.",
    "Boring plot, weak acting, cold ending.",
)


def require_onnx() -> None:
    """Check that the ONNX packages are installed.

    Raises:
        KdistillError: one of onnx, onnxruntime, onnxscript is missing; says how to install them.
    """
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            raise KdistillError(f"{MISSING_ONNX} ({name} is not installed)") from None


def onnx_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session on the graph at ``path``.

    Args:
        path: a ``.onnx`` file.
        threads: intra-op threads (the ones that share a matrix product); default ONNX Runtime's
            own choice. Inter-op parallelism is off, as in PyTorch's eager forward pass.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: kdistill reports what matters
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
