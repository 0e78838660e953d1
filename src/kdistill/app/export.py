"""``kdistill export``: a run's student (or a model folder) as an ONNX folder, checked and timed;
or a GGUF model as a plain ``save_pretrained`` folder (``--format hf``).

The work is :func:`kdistill.tasks.text_classification.onnx.export.export_onnx` (and
:func:`kdistill.tasks.causal_lm.gguf.write_plain_folder`); this module picks the model
(:mod:`kdistill.app.model_folder`), names the output folder and prints what was checked and the
latency table.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kdistill.app.arguments import (
    add_gguf_flag,
    file_argument,
    model_argument,
    positive_float,
    positive_int,
    resolve_model,
)
from kdistill.errors import KdistillError

__all__ = ["add_parser", "default_output", "latency_warning", "run"]

HELP = """\
Export a text classifier to ONNX: a run folder's student (or its teacher, in a run without a
student) or a model folder. The output folder holds model.onnx (inputs input_ids, attention_mask
and token_type_ids where the model takes them, batch and sequence axes dynamic; output logits),
the config and the tokenizer, and export.json. ONNX Runtime's logits are checked against
PyTorch's on sample texts (two batch sizes and lengths) before anything is written; --int8 adds
model_int8.onnx (dynamic quantisation) and reports how often it agrees with PyTorch. Then
PyTorch and ONNX Runtime are timed side by side at batch 1 and 32. Needs pip install "kdistill[onnx]".

--format hf (the default for a GGUF model: a .gguf file, or its folder and --gguf-file NAME) writes
the model dequantised to float32, with its tokenizer, as a plain save_pretrained folder that
from_pretrained, kdistill eval and a run's teacher.path load without the gguf package.
"""

EXAMPLES = """\
examples:
  kdistill export runs/sst2 --format onnx                       # into ./sst2-onnx/
  kdistill export runs/sst2 --int8 --output models/sst2-onnx
  kdistill export models/student --threads 1 --rounds 20 --length 64
  kdistill export models/smollm2 --gguf-file model.Q4_1.gguf --format hf --output models/smollm2-hf
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``export`` command: the model or run, the format, int8, the output folder and the timing."""
    export = commands.add_parser(
        "export",
        help="export a run's student or a classifier folder to ONNX, checked and timed; a GGUF model as a folder",
        description=HELP,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument(
        "model", metavar="RUN_OR_MODEL", type=model_argument, help="a run folder, a model folder or a hub id"
    )
    export.add_argument(
        "--format",
        choices=("onnx", "hf"),
        help="onnx (the default), or hf: a GGUF model as a plain save_pretrained folder (the default for one)",
    )
    add_gguf_flag(export, "RUN_OR_MODEL")
    export.add_argument("--int8", action="store_true", help="also write model_int8.onnx (dynamic int8 quantisation)")
    export.add_argument(
        "--output",
        metavar="DIR",
        type=file_argument,
        help="the export folder (default: ./<run or model name>-onnx, or -hf)",
    )
    export.add_argument(
        "--atol", type=positive_float, default=1e-4, help="largest logit difference allowed (default 1e-4)"
    )
    export.add_argument(
        "--threads", type=positive_int, help="CPU threads of both runtimes for the timing (default: torch's)"
    )
    export.add_argument("--rounds", type=positive_int, default=10, help="alternating timing rounds (default 10)")
    export.add_argument(
        "--length", type=positive_int, help="tokens per text in the timed batches (default: a run's, else 128)"
    )
    export.add_argument("--no-latency", action="store_true", help="check the export but do not time it")


def default_output(target: str, suffix: str = "onnx") -> Path:
    """``./<name>-onnx``: the run's or model's folder name (a GGUF file's name without ``.gguf``), in the
    current folder (never inside the run or model folder, which may be another program's or an
    installed package's)."""
    name = Path(target.rstrip("/\\")).name or "model"
    return Path(f"{name.removesuffix('.gguf')}-{suffix}")


def run(args: argparse.Namespace) -> int:
    """Run ``kdistill export``; returns the exit status (errors are raised as :class:`KdistillError`)."""
    from kdistill.app.model_folder import choose_model
    from kdistill.models.gguf import split_gguf
    from kdistill.tasks.text_classification.onnx.export import export_onnx, require_onnx

    location = resolve_model(args.model, args.gguf_file, "RUN_OR_MODEL")
    gguf = split_gguf(location) is not None
    if args.format == "hf" or (gguf and args.format is None):
        return _plain_folder(args, location, gguf)
    if gguf:
        raise KdistillError(
            f"{location!r} is a GGUF model, a causal language model: --format onnx exports text classifiers; "
            "--format hf writes it as a plain model folder"
        )
    chosen = choose_model(location, "export")  # a folder of GGUF files is refused with what to use
    require_onnx()  # before any loading: the one line says how to install what is missing
    output = Path(args.output) if args.output else default_output(args.model)
    length = args.length or (chosen.data.max_length if chosen.data is not None else 128)
    report = export_onnx(
        chosen.location,
        output,
        int8=args.int8,
        atol=args.atol,
        latency=not args.no_latency,
        threads=args.threads,
        rounds=args.rounds,
        length=length,
    )
    # the folder in full: without --output it is made in the current folder, which may surprise
    print(f"exported {chosen.description} to {output.resolve()}/")
    for line in describe(report):
        print(line)
    return 0


def _plain_folder(args: argparse.Namespace, location: str, gguf: bool) -> int:
    """``--format hf``: the GGUF model at ``location`` written as a plain ``save_pretrained`` folder."""
    from kdistill.tasks.causal_lm.gguf import write_plain_folder

    if not gguf:
        raise KdistillError(
            f"--format hf writes a GGUF model as a plain model folder, and {args.model!r} is not one: give a "
            ".gguf file, or its folder and --gguf-file NAME (--format onnx exports a text classifier)"
        )
    if args.int8:
        raise KdistillError("--int8 quantises an ONNX export (--format onnx); --format hf writes float32 weights")
    output = Path(args.output) if args.output else default_output(location, "hf")
    written = write_plain_folder(location, output)
    print(
        f"wrote {location} dequantised ({written['architecture']}, {written['parameters']:,} parameters, "
        f"{written['dtype']}) with its tokenizer to {output.resolve()}/"
    )
    print(f"  files: {', '.join(written['files'])}")
    print(f"  load it with from_pretrained, or: kdistill eval {output} --task causal_lm --data FILE.txt")
    return 0


def describe(report: dict[str, Any]) -> list[str]:
    """What an export wrote and checked, and its latency table, as printed lines."""
    from kdistill.app.report import format_bytes
    from kdistill.tasks.text_classification.onnx.latency import format_latency_table

    inputs = ", ".join(report["inputs"])
    lines = [f"  inputs {inputs} [batch, sequence] -> logits [batch, {len(report['labels'])}]"]
    for (graph, size), (backend, check) in zip(report["files"].items(), report["checks"].items()):
        shapes = " and ".join("x".join(str(n) for n in shape) for shape in check["batches"])
        agree = f"the same class for {check['argmax_agreement']:.0%} of the {check['texts']} rows"
        if backend == "onnxruntime":
            verdict = f"max |logit difference| {check['max_abs_diff']:.1e} <= {report['atol']:g}"
        else:
            verdict = f"max |logit difference| {check['max_abs_diff']:.1e} (int8 weights: not exact by design)"
        lines.append(f"  {graph} ({format_bytes(size)}): {backend} vs PyTorch on batches {shapes}: {verdict}; {agree}")
        if check.get("flagged"):
            lines.append(
                f"  warning: {graph} picks another class than PyTorch for {1 - check['argmax_agreement']:.0%} of "
                "the sample rows; measure it on your data (kdistill eval) before using it"
            )
    if "latency" in report:
        lines += ["", format_latency_table(report["latency"])]
        warning = latency_warning(report["latency"])
        if warning:
            lines.append(f"warning: {warning}")
    return lines


def latency_warning(latency: dict[str, Any]) -> str | None:
    """Why the latency table is not to be trusted (a wide spread of a speed-up, a busy machine), as
    :func:`kdistill.models.speed.speed_warning` says it for the other commands; None when it is."""
    from kdistill.models.speed import speed_warning

    speeds = {
        f"{row['backend']} batch {row['batch_size']}": {"speedup_spread": row["speedup_spread"]}
        for row in latency.get("rows", [])
        if row.get("speedup_spread") is not None
    }
    return speed_warning(speeds, latency)
