"""kdistill never writes through a link it did not create (kdistill.files.writing), and a run's
inputs are fingerprinted so a resume can tell they changed (kdistill.files.fingerprints).

Each write is pointed at a symbolic or hard link to a file outside the folder: it must be
refused naming the link, and the file outside must keep every byte."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from kdistill.errors import OutputFileError, RunFolderError
from kdistill.files import fingerprints as fp
from kdistill.files.locks import exclusive_lock
from kdistill.files.writing import atomic_writer, open_append, write_atomic


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    path = outside / "victim.txt"
    path.write_text("precious\n", encoding="utf-8")
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_whole_file_write_refuses_a_link_at_its_name_or_its_staging_name(tmp_path: Path, victim: Path) -> None:
    before = digest(victim)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").symlink_to(victim)
    with pytest.raises(OutputFileError, match=r"metrics.json' is a symbolic link to .*victim.txt'"):
        write_atomic(folder / "metrics.json", "{}\n")
    (folder / "metrics.json").unlink()
    # the staging name was a fixed name written with write_text: a link there got the content
    (folder / ".report.md.partial").symlink_to(victim)
    with pytest.raises(OutputFileError, match=r"\.report\.md\.partial' is a symbolic link"):
        write_atomic(folder / "report.md", "# report\n")
    assert digest(victim) == before and not (folder / "report.md").exists()
    # a leftover staging file of a killed write is replaced; a regular file is replaced, not written into
    (folder / ".report.md.partial").unlink()
    (folder / ".report.md.partial").write_text("half", encoding="utf-8")
    os.link(victim, folder / "report.md")  # a hard link: replaced by rename, the other name keeps its bytes
    write_atomic(folder / "report.md", "# report\n")
    assert (folder / "report.md").read_text(encoding="utf-8") == "# report\n" and digest(victim) == before
    assert not (folder / ".report.md.partial").exists()
    # a failed write leaves the file as it was and no staging file
    with pytest.raises(RuntimeError), atomic_writer(folder / "report.md") as handle:
        handle.write("half a report")
        raise RuntimeError("killed")
    assert (folder / "report.md").read_text(encoding="utf-8") == "# report\n"
    assert not (folder / ".report.md.partial").exists()


def test_appending_and_locking_refuse_symbolic_and_hard_links(tmp_path: Path, victim: Path) -> None:
    before = digest(victim)
    (tmp_path / "run.log").symlink_to(victim)
    with pytest.raises(OutputFileError, match=r"run.log' is a symbolic link"):
        open_append(tmp_path / "run.log")
    os.link(victim, tmp_path / "other.log")
    with pytest.raises(OutputFileError, match=r"other.log' is a hard link \(one of 2 names"):
        open_append(tmp_path / "other.log")
    (tmp_path / ".lock").symlink_to(victim)
    with (
        pytest.raises(OutputFileError, match=r"\.lock' is a symbolic link"),
        exclusive_lock(tmp_path / ".lock", wait=False),
    ):
        pass
    assert digest(victim) == before
    with open_append(tmp_path / "new.log") as handle:
        handle.write("a line\n")
    with open_append(tmp_path / "new.log") as handle:
        handle.write("another\n")
    assert (tmp_path / "new.log").read_text(encoding="utf-8") == "a line\nanother\n"


def test_a_run_folder_refuses_a_link_made_after_it_was_claimed(tmp_path: Path, victim: Path) -> None:
    from kdistill.app.run_folder import RunFolder

    outside = victim.parent
    folder = RunFolder(tmp_path / "run")
    with folder.claimed("new"):
        folder.write_text("config.yaml", "task: x\n")
        (folder.path / "checkpoints").symlink_to(outside, target_is_directory=True)
        with pytest.raises(RunFolderError, match=r"checkpoints' is a symbolic link"):
            folder.record("checkpoints/distill")
        (folder.path / "training_curves.png").symlink_to(victim)
        with pytest.raises(RunFolderError, match=r"training_curves.png' is a symbolic link"):
            folder.record("training_curves.png")
        (folder.path / ".student.partial").symlink_to(outside, target_is_directory=True)
        with pytest.raises(RunFolderError, match=r"\.student\.partial' is a symbolic link"):
            folder.write_folder("student", lambda target: (target / "weights.bin").write_text("w"))
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert victim.read_text(encoding="utf-8") == "precious\n"


def test_fingerprints_tell_an_edited_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "train.csv"
    data.write_text("text,label\na,pos\nb,neg\n", encoding="utf-8")
    model = tmp_path / "teacher"
    model.mkdir()
    (model / "config.json").write_text("{}", encoding="utf-8")
    (model / ".cache").mkdir()
    paths = {"data.train": str(data), "teacher.path": str(model)}
    recorded = fp.fingerprints(paths)
    assert fp.changes(recorded, fp.fingerprints(paths)) == []
    (model / ".cache" / "download.lock").write_text("x", encoding="utf-8")  # hidden names are left out
    os.utime(data, ns=(1, 1))  # touched: a file hashed whole is compared by its content
    assert fp.changes(recorded, fp.fingerprints(paths)) == []
    data.write_text("text,label\na,neg\nb,pos\n", encoding="utf-8")  # labels flipped, same size
    (model / "extra.bin").write_bytes(b"w")
    assert fp.changes(recorded, fp.fingerprints(paths)) == [
        f"data.train {str(data)!r} changed since the run started (the same size, other content)",
        f"teacher.path {str(model / 'extra.bin')!r} is new since the run started",
    ]
    data.unlink()
    assert fp.changes(recorded, fp.fingerprints(paths))[0] == f"data.train {str(data)!r} is gone since the run started"
    # a large file is hashed by its ends: an edit in the middle shows in its modification time
    monkeypatch.setattr(fp, "WHOLE_HASH_BYTES", 64)
    monkeypatch.setattr(fp, "END_BYTES", 16)
    data.write_bytes(b"x" * 200)
    os.utime(data, ns=(10**18, 10**18))
    recorded = fp.fingerprints(paths)
    with data.open("r+b") as handle:
        handle.seek(100)
        handle.write(b"y")
    os.utime(data, ns=(2 * 10**18, 2 * 10**18))
    assert fp.changes(recorded, fp.fingerprints(paths)) == [
        f"data.train {str(data)!r} changed since the run started (the same size and ends, but modified since)"
    ]


def test_an_output_file_whose_staging_name_is_a_link_is_refused_before_any_work(tmp_path: Path, victim: Path) -> None:
    from kdistill.app.predict import check_predictions_output, write_predictions
    from kdistill.app.report import check_metrics_file

    before = digest(victim)
    (tmp_path / ".predictions.csv.partial").symlink_to(victim)
    with pytest.raises(OutputFileError, match=r"\.predictions\.csv\.partial' is a symbolic link"):
        check_predictions_output(tmp_path / "predictions.csv")
    with pytest.raises(OutputFileError, match=r"\.predictions\.csv\.partial' is a symbolic link"):
        write_predictions(tmp_path / "predictions.csv", None)  # type: ignore[arg-type]
    (tmp_path / ".eval.json.partial").symlink_to(victim)
    with pytest.raises(OutputFileError, match=r"\.eval\.json\.partial' is a symbolic link"):
        check_metrics_file(tmp_path / "eval.json")
    (tmp_path / "linked.json").symlink_to(victim)
    with pytest.raises(OutputFileError, match=r"linked\.json' is a symbolic link"):
        check_metrics_file(tmp_path / "linked.json")
    assert digest(victim) == before
