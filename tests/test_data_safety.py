"""kdistill never deletes or replaces what it did not write (issue 13, data loss 1-5).

Each scenario snapshots every file the user owns (path and SHA-256), runs the command that
used to destroy them, and checks that it was refused in one line and that every byte is still
there. The scenarios come from a hostile-input sweep: a cache folder pointed at the user's
folder, ``--overwrite`` of a folder that is not a run, of a run the new run reads from, or of a
run with another run nested inside it, ``kdistill eval --output`` over the user's notes, and
``--overwrite`` of a folder another kdistill process is training in.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_helpers import one_line, succeeds, write_run_config
from text_fixtures import save_classifier, sentences, write_csv

SCRIPTS = Path(__file__).parent / "scripts"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links too) with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("safety")
    save_classifier(root / "teacher", num_layers=2, hidden=32, heads=4, seed=1, id2label={0: "neg", 1: "pos"})
    write_csv(root / "train.csv", sentences(48, seed=0, labels=("neg", "pos")))
    write_csv(root / "test.csv", sentences(16, seed=1, labels=("neg", "pos")))
    write_run_config(root, "base.yaml")
    return root


def distill(workspace: Path, *overrides: str) -> list[str]:
    return ["distill", str(workspace / "base.yaml"), "--no-progress", *overrides]


def test_a_cache_pointed_at_the_users_folder_leaves_it_whole(workspace: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious\n", encoding="utf-8")
    (mine / "train.csv").write_bytes((workspace / "train.csv").read_bytes())
    before = snapshot(mine)
    line = one_line(distill(workspace, f"teacher.cache={mine}", f"output.dir={tmp_path / 'run'}"))
    assert "holds files that are not a kdistill teacher cache (thesis.tex, train.csv)" in line, line
    assert "never empties a folder it did not write" in line
    assert snapshot(mine) == before and not (tmp_path / "run").exists()
    # the Python API refuses the same folder, and a file given as the folder
    from conftest import tiny_bert
    from test_cache import _token_examples, pad_collate

    from kdistill.cache import CacheFolderError, TeacherCache

    teacher, dataset, collator = tiny_bert(num_layers=1, hidden=16, heads=2), _token_examples(8), pad_collate
    with pytest.raises(CacheFolderError, match="thesis.tex"):
        TeacherCache.build(teacher, dataset, mine, collate_fn=collator, progress=False)
    assert snapshot(mine) == before
    with pytest.raises(CacheFolderError, match="is a file, not a folder"):
        TeacherCache.build(teacher, dataset, mine / "thesis.tex", collate_fn=collator, progress=False)
    assert snapshot(mine) == before
    # an empty folder takes a cache, and a later build with other inputs replaces it (it is kdistill's)
    cache = tmp_path / "cache"
    cache.mkdir()
    TeacherCache.build(teacher, dataset, cache, collate_fn=collator, progress=False)
    TeacherCache.build(teacher, dataset, cache, collate_fn=collator, progress=False, tokenization={"max_length": 9})
    # but not once the user has put a file of their own into it
    (cache / "notes.txt").write_text("mine\n", encoding="utf-8")
    kept = snapshot(cache)
    with pytest.raises(CacheFolderError, match="notes.txt"):
        TeacherCache.build(
            teacher, dataset, cache, collate_fn=collator, progress=False, tokenization={"max_length": 7}
        )
    assert snapshot(cache) == kept


def test_overwrite_of_a_folder_that_is_not_a_run_deletes_nothing(workspace: Path, tmp_path: Path) -> None:
    project = tmp_path / "p"
    (project / "student").mkdir(parents=True)
    (project / "checkpoints").mkdir()
    (project / "config.yaml").write_text("services:\n web: {}\n", encoding="utf-8")
    (project / "metrics.json").write_text('{"my": 1}\n', encoding="utf-8")
    (project / "student" / "my_model.bin").write_text("w\n", encoding="utf-8")
    (project / "checkpoints" / "epoch1.pt").write_text("c\n", encoding="utf-8")
    before = snapshot(project)
    line = one_line(distill(workspace, f"output.dir={project}", "--overwrite"))
    assert "holds files that are not a kdistill run (checkpoints, config.yaml, metrics.json and 1 more)" in line, line
    assert snapshot(project) == before
    # a run of kdistill 0.1 (config.yaml and run.log, no marker) is refused too, and says why
    (project / "run.log").write_text("an old run\n", encoding="utf-8")
    before = snapshot(project)
    line = one_line(distill(workspace, f"output.dir={project}", "--overwrite"))
    assert "a run of kdistill 0.1 carries no .kdistill-run.json either" in line, line
    line = one_line(["distill", "--resume", str(project), "--no-progress"])
    assert "holds no run to resume" in line, line
    assert snapshot(project) == before


def test_overwrite_never_deletes_what_the_new_run_reads_or_a_run_nested_inside(
    workspace: Path, tmp_path: Path
) -> None:
    first = tmp_path / "A"
    succeeds(distill(workspace, f"output.dir={first}", "teacher.finetune.epochs=1", "training.max_steps=2"))
    assert (first / "teacher" / "model.safetensors").is_file()
    before = snapshot(first)
    line = one_line(distill(workspace, f"output.dir={first}", f"teacher.path={first / 'teacher'}", "--overwrite"))
    assert f"--overwrite would delete '{first / 'teacher'}', which this run reads (teacher.path:" in line, line
    assert snapshot(first) == before
    # data read from inside the run folder: the same
    line = one_line(
        distill(workspace, f"output.dir={first}", f"data.test={first / 'student' / 'vocab.txt'}", "--overwrite")
    )
    assert "which this run reads (data.test:" in line, line
    # a run made inside the first run's student/ is not the first run's to delete
    succeeds(distill(workspace, f"output.dir={first / 'student' / 'inner'}", "training.max_steps=1"))
    before = snapshot(first)
    line = one_line(distill(workspace, f"output.dir={first}", "--overwrite"))
    assert f"--overwrite would delete '{first / 'student' / 'inner'}" in line and "kdistill did not write" in line, (
        line
    )
    assert snapshot(first) == before
    # nor is a file the user put into its checkpoints/
    second = tmp_path / "B"
    succeeds(distill(workspace, f"output.dir={second}", "training.max_steps=2"))
    (second / "checkpoints" / "distill" / "my-notes.txt").write_text("mine\n", encoding="utf-8")
    before = snapshot(second)
    line = one_line(distill(workspace, f"output.dir={second}", "--overwrite"))
    assert "my-notes.txt" in line and "kdistill did not write" in line, line
    assert snapshot(second) == before
    # without those, --overwrite deletes the earlier run and keeps the user's own top-level files
    (second / "checkpoints" / "distill" / "my-notes.txt").unlink()
    (second / "notes.txt").write_text("mine\n", encoding="utf-8")
    succeeds(distill(workspace, f"output.dir={second}", "training.max_steps=1", "--overwrite"))
    assert (second / "notes.txt").read_text(encoding="utf-8") == "mine\n"


def test_eval_output_never_replaces_the_users_file(workspace: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    succeeds(distill(workspace, f"output.dir={run}", "training.max_steps=2"))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    (notes / "notes.txt").write_text("my notes\n", encoding="utf-8")
    (notes / "notes.json").write_text('{"mine": true}\n', encoding="utf-8")
    (notes / "broken.json").write_text('{"mine": tru', encoding="utf-8")
    before = snapshot(notes)
    for name in ("notes.csv", "notes.txt"):
        line = one_line(["eval", str(run), "--no-progress", "--output", str(notes / name)])
        assert "the metrics are JSON; give a file name ending in .json" in line, line
    for name in ("notes.json", "broken.json"):
        line = one_line(["eval", str(run), "--no-progress", "--output", str(notes / name)])
        assert "exists and is not a metrics file kdistill wrote" in line, line
    assert snapshot(notes) == before
    # a new file, then the same file again (it is kdistill's now): both fine
    succeeds(["eval", str(run), "--no-progress", "--output", str(notes / "eval.json")])
    succeeds(["eval", str(run), "--no-progress", "--output", str(notes / "eval.json")])
    assert json.loads((notes / "eval.json").read_text())["kdistill"]["version"]


def test_a_folder_another_kdistill_process_holds_is_refused(workspace: Path, tmp_path: Path) -> None:
    from kdistill.app.run_folder import LOCK
    from kdistill.files.locks import exclusive_lock

    run = tmp_path / "run"
    succeeds(distill(workspace, f"output.dir={run}", "training.max_steps=2"))
    (run / "report.md").unlink()  # so that --resume would otherwise continue it
    before = snapshot(run)
    with exclusive_lock(run / LOCK, wait=False):
        for extra in (["--overwrite"], []):
            line = one_line([*distill(workspace, f"output.dir={run}"), *extra])
            assert f"'{run}' is in use by kdistill process {os.getpid()}" in line, line
        line = one_line(["distill", "--resume", str(run), "--no-progress"])
        assert "is in use by kdistill process" in line, line
    after = snapshot(run)
    assert {name: digest for name, digest in after.items() if name != LOCK} == {
        name: digest for name, digest in before.items() if name != LOCK
    }


@pytest.mark.slow
def test_overwrite_while_a_live_run_trains_is_refused_and_the_live_run_finishes(
    workspace: Path, tmp_path: Path
) -> None:
    run = tmp_path / "live"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPTS / "slow_distill.py"),
            "0.5",
            *distill(workspace, f"output.dir={run}", "training.epochs=2", "output.save_every=1"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while not list(run.glob("checkpoints/distill/checkpoint-*")) and time.time() < deadline:
            assert process.poll() is None, process.stderr.read().decode()[-2000:] if process.stderr else ""
            time.sleep(0.1)
        present = set(snapshot(run))
        line = one_line(distill(workspace, f"output.dir={run}", "--overwrite", "training.lr=5.0e-3"))
        assert f"is in use by kdistill process {process.pid}" in line, line
        assert present <= set(snapshot(run)) | {name for name in present if "checkpoint-" in name}
    finally:
        _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["lr"] == 1.0e-3  # the live run's own
    assert (run / "report.md").is_file() and "overwrite: deleted" not in (run / "run.log").read_text()


#: every name in a run folder that a run, --resume, --overwrite or eval writes, appends to or
#: replaces (a folder's name links to a folder outside, a file's to a file outside)
LINKED_NAMES = [
    "run.log",
    "metrics.json",
    "config.yaml",
    "training_curves.png",
    ".kdistill-run.json",
    ".kdistill-run.lock",
    ".metrics.json.partial",
    ".run.log.partial",
    "checkpoints/distill/finished.json",
    "checkpoints/distill/.finished.json.partial",
    "checkpoints/best-student",
    "checkpoints/distill",
    "checkpoints",
    "student",
    "teacher",
]


def test_a_link_in_a_run_folder_is_refused_naming_it_and_nothing_outside_changes(
    workspace: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    succeeds(distill(workspace, f"output.dir={run}", "training.max_steps=2"))
    (run / "report.md").unlink()  # so that --resume would continue it
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "victim.txt").write_text("precious\n", encoding="utf-8")
    (outside / "folder" / "mine.txt").write_text("mine\n", encoding="utf-8")
    before = snapshot(outside)
    aside = tmp_path / "aside"
    for name in LINKED_NAMES:
        entry = run / name
        kept = entry.exists() or entry.is_symlink()
        if kept:
            entry.rename(aside)
        folder = name in ("checkpoints/best-student", "checkpoints/distill", "checkpoints", "student", "teacher")
        entry.symlink_to(outside / ("folder" if folder else "victim.txt"), target_is_directory=folder)
        refused = f"'{entry}' is a symbolic link to"
        line = one_line(["distill", "--resume", str(run), "--no-progress"])
        assert refused in line and "never writes through a link it did not create" in line, (name, line)
        line = one_line(distill(workspace, f"output.dir={run}", "--overwrite"))
        assert refused in line, (name, line)
        if "metrics" in name:
            line = one_line(["eval", str(run), "--no-progress"])
            assert refused in line, (name, line)
        assert snapshot(outside) == before, name
        entry.unlink()
        if kept:
            aside.rename(entry)
    # a hard link of run.log (a copy made with cp -l) would get the lines appended too
    (run / "run.log").rename(aside)
    os.link(outside / "victim.txt", run / "run.log")
    line = one_line(["distill", "--resume", str(run), "--no-progress"])
    assert f"'{run / 'run.log'}' is a hard link (one of 2 names of the same file)" in line, line
    assert snapshot(outside) == before
    (run / "run.log").unlink()
    aside.rename(run / "run.log")
    # a new run into a folder that holds only a linked lock file
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".kdistill-run.lock").symlink_to(outside / "victim.txt")
    line = one_line(distill(workspace, f"output.dir={fresh}"))
    assert f"'{fresh / '.kdistill-run.lock'}' is a symbolic link" in line, line
    assert snapshot(outside) == before
    # without the links, the run resumes and finishes, and eval writes into it
    succeeds(["distill", "--resume", str(run), "--no-progress"])
    succeeds(["eval", str(run), "--no-progress"])
    assert snapshot(outside) == before
