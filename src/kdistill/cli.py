"""The ``kdistill`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kdistill._version import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``kdistill`` command."""
    parser = argparse.ArgumentParser(
        prog="kdistill",
        description="Knowledge distillation for PyTorch and Hugging Face Transformers: "
        "train a small, fast student model to imitate a large teacher.",
        epilog="Python API: from kdistill import DistillationLoss, DistillationTrainer, train_distillation",
    )
    parser.add_argument("--version", action="version", version=f"kdistill {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kdistill`` command; returns the exit status."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
