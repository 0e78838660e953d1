"""The README's test command passes on a user's machine, which has no ``../shared``: every test that
reads the workspace's data goes through ``conftest.shared_data`` (which skips where it is absent)
and carries the ``shared_data`` marker, so that ``.ci/run``'s second pass
(``KDISTILL_SHARED_DATA`` pointed at an empty folder, ``-m shared_data``) exercises every one."""

from __future__ import annotations

import ast
from pathlib import Path

import conftest
import pytest

TESTS = Path(__file__).resolve().parent


def _test_files() -> list[Path]:
    """Every test and helper module but conftest (which locates the data) and this one (which names it)."""
    return sorted(path for path in TESTS.rglob("*.py") if path.name not in ("conftest.py", Path(__file__).name))


def _names_the_shared_folder(node: ast.AST) -> bool:
    """A string that is a path into the workspace's shared folder (not a message that mentions it)."""
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and (node.value == "shared" or node.value.startswith(("../shared", "shared/")))
    )


def test_no_test_builds_a_path_to_the_shared_folder_itself() -> None:
    found = [
        f"{path.relative_to(TESTS)}:{node.lineno}"
        for path in _test_files()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if _names_the_shared_folder(node)
    ]
    assert not found, f"reach ../shared/data through conftest.shared_data(...), which skips without it: {found}"


def _marked(function: ast.FunctionDef) -> bool:
    return any(
        isinstance(decorator, ast.Attribute) and decorator.attr == "shared_data"
        for decorator in function.decorator_list
    )


def test_every_test_that_reads_the_shared_data_carries_the_marker() -> None:
    calls, unmarked = 0, []
    for path in _test_files():
        for function in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(function, ast.FunctionDef):
                continue
            uses = any(
                isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "shared_data"
                for node in ast.walk(function)
            )
            calls += uses
            if uses and not _marked(function):
                unmarked.append(f"{path.relative_to(TESTS)}::{function.name}")
    assert calls >= 3  # the reading finds the tests that use the data
    assert not unmarked, f"add @pytest.mark.shared_data to: {unmarked}"


def test_shared_data_skips_where_the_folder_is_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "absent")
    with pytest.raises(pytest.skip.Exception, match=r"needs \.\./shared/data/sst2"):
        conftest.shared_data("sst2")
    (tmp_path / "absent" / "sst2").mkdir(parents=True)
    assert conftest.shared_data("sst2") == tmp_path / "absent" / "sst2"
