"""The ``kdistill`` command: ``distill``, ``eval``, ``inspect`` and ``demo``.

A user error (a :class:`~kdistill.errors.KdistillError`: a bad config, a missing file, a model
that does not fit, a taken output folder; or a NaN loss, which the settings cause) is printed as
one line on stderr and the command exits with status 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from kdistill._version import __version__
from kdistill.app import export, predict
from kdistill.app.arguments import (
    add_data_flags,
    add_gguf_flag,
    as_eval_flags,
    data_flag_values,
    file_argument,
    model_argument,
    positive_int,
    resolve_model,
)
from kdistill.errors import ConfigError, KdistillError
from kdistill.schema import IMPORTANCE_RULES

__all__ = ["build_parser", "main"]

#: the exit status of a user error (as argparse uses for bad arguments)
USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_FORMATTER = argparse.RawDescriptionHelpFormatter

DISTILL_HELP = """\
Distil a teacher into a student as a YAML config says, into a new run folder.

The config names the teacher, the student, the data, the objective, the training settings and
the output folder; key.sub=value arguments override it. Everything is checked before any work
starts: an unknown key, a wrong type or an impossible value is one line and exit status 2.
The run folder gets config.yaml (resolved), run.log, checkpoints/, student/ (with its
tokenizer), metrics.json, report.md and training_curves.png.

An output folder that already holds a run is refused: --overwrite starts again (the old run's
files are deleted once the new run is prepared), --resume RUN_DIR continues a stopped run from
its checkpoints with the config it started with (RUN_DIR/config.yaml; CONFIG may be left out).
A run records a fingerprint of its data files, teacher and student when it starts; --resume
refuses inputs that changed since, naming the file (--allow-changed-data goes on knowingly).
A symbolic link where a run writes (run.log -> elsewhere) is refused, never written through.
"""

DISTILL_EXAMPLES = """\
examples:
  kdistill distill examples/sst2_hinton.yaml
  kdistill distill my_run.yaml training.epochs=1 training.lr=1.0e-4 output.dir=runs/try
  kdistill distill my_run.yaml objective.preset=tinybert student.from_teacher.num_layers=3
  kdistill distill my_run.yaml --overwrite        # output.dir holds a run: start it again
  kdistill distill --resume runs/first            # continue a run that was stopped or killed
  kdistill distill --resume runs/first --allow-changed-data   # ... although its data changed since

a minimal config:
  teacher: {path: models/my-finetuned-bert}
  student: {from_teacher: {num_layers: 2}}
  data: {train: data/train.csv, text_column: text, label_column: label}
  output: {dir: runs/first}
"""

EVAL_HELP = """\
Measure a model, or the student of a run folder, on labelled data: accuracy, macro-F1,
agreement with the teacher, parameters, weights on disk, CPU latency per batch, throughput
and speed-up against the teacher. Prints a table and writes metrics.json (a run's own, under
"eval"; else ./metrics.json or --output). A causal LM (--task causal_lm, or a GGUF file: the
.gguf path, or its folder and --gguf-file NAME) is measured on a text or JSONL file:
perplexity, next-token agreement and generation speed.
"""

EVAL_EXAMPLES = """\
examples:
  kdistill eval runs/sst2                      # the run's student, teacher and test file
  kdistill eval runs/sst2 --data ../shared/data/sst2/dev.csv
  kdistill eval models/student --teacher models/teacher --data test.csv --label-column sentiment
  kdistill eval models/smollm2 --gguf-file model.Q4_1.gguf --data test.txt --max-examples 8
  kdistill eval runs/lm/student --teacher models/smollm2/model.Q4_1.gguf --data test.txt
"""

INSPECT_HELP = """\
Show each model's layers, widths, heads and parameter counts, and the layer map kdistill would
propose between them. Without a STUDENT, kdistill proposes one (half the teacher's layers, or
--num-layers) and shows how much smaller it would be.
"""

INSPECT_EXAMPLES = """\
examples:
  kdistill inspect models/teacher
  kdistill inspect models/teacher --num-layers 3 --hidden-size 256
  kdistill inspect models/teacher runs/sst2/student --layer-map last-2
  kdistill inspect models/smollm2 --gguf-file model.Q4_1.gguf     # a GGUF model, dequantised
  kdistill inspect models/smollm2 --importance --data train.txt --num-layers 6   # which layers to keep
"""

DEMO_HELP = """\
Distil a small transformer offline on real data that ships with scikit-learn (1,797 handwritten
8x8 digits): train a ViT-style teacher, distil a student several times smaller, train the same
student without the teacher, and print one table. No configuration, no network, 35 s
on a quiet 2-core machine.
"""

DEMO_EXAMPLES = """\
examples:
  kdistill demo
  kdistill demo --quick          # a shorter run (a smoke test)
  kdistill demo --seed 3
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``kdistill`` command."""
    parser = _Parser(
        prog="kdistill",
        description="Knowledge distillation for PyTorch and Hugging Face Transformers: "
        "train a small, fast student model to imitate a large teacher.",
        epilog="start with:  kdistill demo\n"
        "Python API: from kdistill import DistillationLoss, DistillationTrainer, train_distillation",
        formatter_class=_FORMATTER,
    )
    parser.add_argument("--version", action="version", version=f"kdistill {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_distill(commands)
    _add_eval(commands)
    _add_inspect(commands)
    _add_demo(commands)
    predict.add_parser(commands)
    export.add_parser(commands)
    return parser


def _add_distill(commands: argparse._SubParsersAction) -> None:
    """Add the ``distill`` command: a config, its overrides, and how to treat a taken output folder."""
    distill = commands.add_parser(
        "distill",
        help="distil a teacher into a student from a YAML config",
        description=DISTILL_HELP,
        epilog=DISTILL_EXAMPLES,
        formatter_class=_FORMATTER,
    )
    distill.add_argument(
        "config",
        metavar="CONFIG.yaml",
        nargs="?",
        type=file_argument,
        help="the run's YAML config (with --resume: optional, and it must agree with the run's)",
    )
    distill.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="key.sub=value",
        help="override a config value (read as YAML), e.g. training.epochs=2",
    )
    distill.add_argument(
        "--check",
        action="store_true",
        help="validate the config, load the data and the models, and stop before training",
    )
    distill.add_argument("--no-progress", action="store_true", help="no progress bars")
    again = distill.add_mutually_exclusive_group()
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="output.dir holds a run: start again (its files are deleted once this run is prepared)",
    )
    again.add_argument(
        "--resume",
        metavar="RUN_DIR",
        type=file_argument,
        help="continue the run in RUN_DIR from its checkpoints, with its config.yaml",
    )
    distill.add_argument(
        "--allow-changed-data",
        action="store_true",
        help="with --resume: go on although a data file, the teacher or the student changed since the run "
        "started (refused otherwise)",
    )


def _add_eval(commands: argparse._SubParsersAction) -> None:
    """Add the ``eval`` command: the model or run, the data file and how to read it."""
    evaluate = commands.add_parser(
        "eval",
        help="measure a model or a run's student against its teacher",
        description=EVAL_HELP,
        epilog=EVAL_EXAMPLES,
        formatter_class=_FORMATTER,
    )
    evaluate.add_argument(
        "model", metavar="MODEL_OR_RUN", type=model_argument, help="a run folder, a model folder or a hub id"
    )
    evaluate.add_argument(
        "--data",
        metavar="FILE",
        type=file_argument,
        help="labelled CSV/TSV/JSON/JSONL/Parquet (default: a run's test file)",
    )
    evaluate.add_argument(
        "--teacher",
        metavar="MODEL",
        type=model_argument,
        help="the teacher to compare with (default: a run's teacher)",
    )
    evaluate.add_argument(
        "--task",
        help="the model's task, for a model folder (default text_classification, causal_lm for a GGUF model; "
        "a run folder knows its own)",
    )
    add_gguf_flag(evaluate)
    add_data_flags(evaluate, labels=True)
    evaluate.add_argument(
        "--batch-size", type=positive_int, default=32, help="examples per batch, and the batch timed (default 32)"
    )
    evaluate.add_argument("--max-length", type=positive_int, help="tokens per text (default: a run's, else 128)")
    evaluate.add_argument("--max-examples", type=positive_int, help="measure on the first N examples only")
    evaluate.add_argument(
        "--output",
        metavar="FILE",
        type=file_argument,
        help="the metrics file (default: the run's metrics.json, else ./metrics.json)",
    )
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_inspect(commands: argparse._SubParsersAction) -> None:
    """Add the ``inspect`` command: the models, and the shape of a proposed student."""
    inspect = commands.add_parser(
        "inspect",
        help="show models' shapes and the proposed layer map",
        description=INSPECT_HELP,
        epilog=INSPECT_EXAMPLES,
        formatter_class=_FORMATTER,
    )
    inspect.add_argument(
        "teacher", metavar="TEACHER", type=model_argument, help="a model folder, a hub id or a .gguf file"
    )
    inspect.add_argument(
        "student",
        metavar="STUDENT",
        nargs="?",
        type=model_argument,
        help="a model folder, a hub id or a .gguf file (optional)",
    )
    add_gguf_flag(inspect, "TEACHER")
    inspect.add_argument("--num-layers", type=positive_int, help="depth of the proposed student (default: half)")
    inspect.add_argument(
        "--hidden-size", type=positive_int, help="width of the proposed student (default: the teacher's)"
    )
    inspect.add_argument("--layer-map", default=None, help="uniform (default), every-K, last-K")
    inspect.add_argument(
        "--importance",
        action="store_true",
        help="measure each teacher layer's importance on --data and the layers each rule keeps",
    )
    inspect.add_argument("--data", type=file_argument, help="with --importance: the calibration text (a data file)")
    inspect.add_argument(
        "--calibration-tokens", type=positive_int, default=2048, help="with --importance: tokens measured (2048)"
    )
    inspect.add_argument(
        "--rules",
        default=",".join(IMPORTANCE_RULES),
        help="with --importance: block_influence, perplexity (slow: N^2/2 passes) or both (default)",
    )


def _add_demo(commands: argparse._SubParsersAction) -> None:
    """Add the ``demo`` command."""
    demo = commands.add_parser(
        "demo",
        help="an offline distillation on handwritten digits, 35 s on 2 cores",
        description=DEMO_HELP,
        epilog=DEMO_EXAMPLES,
        formatter_class=_FORMATTER,
    )
    demo.add_argument("--quick", action="store_true", help="fewer epochs: a smoke test of a few seconds")
    demo.add_argument("--seed", type=int, default=0, help="the random seed (default 0)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")


def _distill(args: argparse.Namespace) -> int:
    from kdistill.app.config_loading import load_config
    from kdistill.app.run import check_run_folder, prepare_run, resume_config, run_distill
    from kdistill.app.teachers import teacher_mix

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # every process would write the same run folder and fine-tune its own teacher: refuse it
        # before anything is loaded or written
        raise KdistillError(
            "kdistill distill runs in one process, but it was launched as one of several (WORLD_SIZE="
            f"{os.environ['WORLD_SIZE']}); run it without torchrun / accelerate launch, or train on several "
            "GPUs with the Python API (distill() or DistillationTrainer, see docs/distributed.md)"
        )
    if args.allow_changed_data and args.resume is None:
        raise KdistillError("--allow-changed-data goes with --resume RUN_DIR: a new run reads its inputs as they are")
    if args.resume is not None:
        config_file, overrides = args.config, list(args.overrides)
        if config_file is not None and "=" in config_file and not os.path.exists(config_file):
            config_file, overrides = None, [config_file, *overrides]  # no CONFIG: the first override took its place
        config = resume_config(args.resume, config_file, overrides)
    elif args.config is None:
        raise KdistillError("give the run's CONFIG.yaml, or --resume RUN_DIR to continue a run")
    else:
        config = load_config(args.config, args.overrides)
    progress = not args.no_progress
    # a taken output folder is refused before the (slow) loading of data and models
    resume = args.resume is not None
    check_run_folder(config, overwrite=args.overwrite, resume=resume, allow_changed_data=args.allow_changed_data)
    prepared = prepare_run(config, progress=progress)
    if args.check:
        sizes = ", ".join(f"{k} {v:,}" for k, v in prepared.data.sizes.items())
        note = prepared.models.student_note or "no student: the teacher is fine-tuned alone"
        print(f"config OK: {sizes}; {prepared.data.description}; {note}")
        for name, section in config.teacher_sections.items():
            finetune = section.finetune
            if finetune is None:
                continue
            # the first stage of the run, often its longest
            steps = f", at most {finetune.max_steps} steps" if finetune.max_steps else ""
            objective = prepared.task.finetune_objective().formula()
            which = f"teacher {name}" if config.several_teachers else "teacher"
            print(
                f"stage {which} fine-tuning: loss = {objective}, {finetune.epochs} epoch(s), lr {finetune.lr:g}{steps}"
            )
        mix = teacher_mix(config)
        if mix is not None:
            print(f"teachers: {mix.describe()}")
        for warning in prepared.warnings:
            print(f"warning: {warning}")
        for stage in prepared.stages:
            print(f"stage {stage.name}: loss = {stage.objective.formula()}, {stage.epochs} epoch(s), lr {stage.lr:g}")
        return 0
    result = run_distill(
        config,
        progress=progress,
        prepared=prepared,
        overwrite=args.overwrite,
        resume=resume,
        allow_changed_data=args.allow_changed_data,
    )
    print()
    print(result.table())
    for line in result.notes():
        print(f"\n{line}")
    print(f"\nrun folder: {result.folder}  (report.md, metrics.json, student/)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from kdistill.app.evaluate import evaluate, resolve_target

    model = resolve_model(args.model, args.gguf_file)
    teacher = resolve_model(args.teacher, None, "--teacher") if args.teacher else None
    target = resolve_target(model, teacher, args.output, args.task)
    updates = data_flag_values(args)
    if updates:
        from pydantic import ValidationError

        try:
            given = {"train": args.data} if args.data else {}
            target.data = type(target.data).model_validate({**target.data.model_dump(), **given, **updates})
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            flag = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "the data options"
            raise KdistillError(f"{flag}: {first['msg'].removeprefix('Value error, ')}") from None
    try:
        result = evaluate(
            target,
            args.data,
            batch_size=args.batch_size,
            max_length=args.max_length,
            max_examples=args.max_examples,
            progress=not args.no_progress,
        )
    except KdistillError as error:
        raise type(error)(as_eval_flags(str(error))) from None
    data = result.metrics["data"]
    print(f"{data['file']}: {data['examples']:,} examples; {result.speed_note()}")
    print(result.table())
    for line in result.notes():
        print(f"\n{line}")
    for line in result.teachers_lines():
        print(line)
    print(f"\nwritten to {result.metrics_file}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from kdistill.app.inspection import describe_importance, describe_models

    if args.importance or args.data is not None:
        if not (args.importance and args.data is not None):
            raise ConfigError("--importance measures the teacher on --data FILE; give both")
        if args.student is not None or args.hidden_size is not None or args.layer_map is not None:
            raise ConfigError("--importance ranks the TEACHER's layers; drop STUDENT, --hidden-size and --layer-map")
        rules = tuple(rule for rule in args.rules.split(",") if rule)
        unknown = sorted(set(rules) - set(IMPORTANCE_RULES))
        if unknown or not rules:
            raise ConfigError(f"--rules {args.rules}: use {', '.join(IMPORTANCE_RULES)}")
        print(
            describe_importance(
                resolve_model(args.teacher, args.gguf_file, "TEACHER"),
                args.data,
                num_layers=args.num_layers,
                calibration_tokens=args.calibration_tokens,
                rules=rules,
            )
        )
        return 0
    print(
        describe_models(
            resolve_model(args.teacher, args.gguf_file, "TEACHER"),
            resolve_model(args.student, None, "STUDENT") if args.student else None,
            num_layers=args.num_layers,
            hidden_size=args.hidden_size,
            layer_map=args.layer_map,
        )
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from kdistill.app.demo import run_demo

    result = run_demo(quick=args.quick, seed=args.seed, progress=not args.no_progress)
    print(result.table())
    return 0


COMMANDS = {"distill": _distill, "eval": _eval, "inspect": _inspect, "demo": _demo}
COMMANDS.update(predict=predict.run, export=export.run)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kdistill`` command; returns the exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    # overrides may come after options (distill run.yaml --no-progress training.epochs=1)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command == "distill" and all("=" in item and not item.startswith("-") for item in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            prog = f"kdistill {args.command}" if args.command else "kdistill"
            parser.exit(USAGE_ERROR, f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see {prog} --help)\n")
    if args.command is None:
        parser.print_help()
        return 0
    from transformers.utils import logging as hf_logging

    # kdistill draws its own bars; the library's per-file bars (loading, saving weights) are noise here
    hf_logging.disable_progress_bar()
    prog = f"kdistill {args.command}"
    try:
        return COMMANDS[args.command](args)
    except KdistillError as error:
        # one line, whatever a message quotes from the user's files
        print(f"{prog}: error: " + " ".join(str(error).splitlines()), file=sys.stderr)
        return USAGE_ERROR
    except OSError as error:
        # a path that cannot be read or written, a full disk: the user's to fix, in one line
        where = f": {error.filename}" if error.filename else ""
        print(f"{prog}: error: {error.strerror or error}{where}", file=sys.stderr)
        return USAGE_ERROR
    except (MemoryError, _out_of_memory()) as error:
        print(
            f"{prog}: error: out of memory ({_first_line(error)}): lower the batch size (training.batch_size, "
            "--batch-size) or the text length (data.max_length, --max-length)",
            file=sys.stderr,
        )
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        report = _crash_report(args, error)
        print(
            f"{prog}: internal error (a bug in kdistill, not in your input): {type(error).__name__}: "
            f"{_first_line(error)}; the full traceback is in {report}",
            file=sys.stderr,
        )
        return 1


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _out_of_memory() -> type[BaseException]:
    import torch

    return getattr(torch, "OutOfMemoryError", MemoryError)


def _crash_report(args: argparse.Namespace, error: BaseException) -> str:
    """Write the traceback of an unexpected error to a crash file under kdistill's cache folder; its path."""
    import time
    import traceback

    from kdistill.files.locations import cache_root

    text = (
        f"kdistill {__version__}, {time.strftime('%Y-%m-%d %H:%M:%S')}\ncommand: {' '.join(sys.argv)}\n"
        f"arguments: {vars(args)}\n\n" + "".join(traceback.format_exception(error))
    )
    try:
        folder = cache_root() / "crashes"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(text, encoding="utf-8")
        return str(path)
    except (OSError, KdistillError):  # KdistillError: $KDISTILL_CACHE is a file
        sys.stderr.write(text)  # nowhere to write it: the traceback itself is better than nothing
        return "the lines above"


if __name__ == "__main__":
    sys.exit(main())
