"""The layout rules of ``src/kdistill``, read statically from the imports (docs/design.md):

* no import cycles among its modules, counting imports inside functions and under TYPE_CHECKING,
  and the package ``__init__`` each import runs first;
* the core's packages import only the ones below them in docs/design.md's picture;
* a leading underscore means "this module only": no module imports another's underscore name or
  reads one off an imported module;
* the package's own modules never import the public facade (``from kdistill import x``);
* every name ``kdistill`` exports, and every ``kdistill.x.y`` the docs name, imports;
* docs/design.md's table names every module and package there is, and nothing that is not.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOCS = [ROOT / "README.md", ROOT / "examples" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _module_names() -> dict[str, Path]:
    names = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


MODULES = _module_names()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    package = module if _is_package(module) else module.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, list[str], int]]:
    """``(imported module, names taken from it, line)`` for every import in ``module``'s file."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((_resolve(module, node), [alias.name for alias in node.names], node.lineno))
    return found


def _edges(module: str) -> set[str]:
    """The kdistill modules that importing ``module`` runs: each one it imports (``from pkg import
    sub`` imports the submodule) and the packages above them, but not ``module``'s own packages
    (they are running already when it is imported)."""
    own = {module.rsplit(".", depth)[0] for depth in range(module.count(".") + 1)}
    targets: set[str] = set()
    for imported, names, _ in _imports(module):
        if not imported.startswith("kdistill"):
            continue
        hits = [f"{imported}.{name}" for name in names if f"{imported}.{name}" in MODULES]
        for target in hits or [imported]:
            parts = target.split(".")
            targets |= {".".join(parts[:depth]) for depth in range(1, len(parts) + 1)}
    return {target for target in targets if target in MODULES and target not in own}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle_and_passes_a_chain() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles_among_the_modules_of_src_kdistill() -> None:
    graph = {module: _edges(module) for module in MODULES}
    assert sum(len(targets) for targets in graph.values()) > 150  # the reading sees the imports
    assert _cycles(graph) == []


#: the core's packages from the bottom up (docs/design.md); each may import only those before it
CORE_ORDER = [
    ("errors", "_version"),
    ("schema",),
    ("models", "data", "files"),
    ("capture",),
    ("losses",),
    ("cache",),
    ("train",),
    ("recipes",),
]


def test_the_core_packages_import_only_the_ones_below_them() -> None:
    rank = {package: level for level, packages in enumerate(CORE_ORDER) for package in packages}
    core = [module for module in MODULES if module.count(".") and module.split(".")[1] in rank]
    assert {module.split(".")[1] for module in core} == set(rank)  # every core package is placed
    broken = []
    for module in core:
        own = rank[module.split(".")[1]]
        for target in _edges(module):
            package = target.split(".")[1] if target.count(".") else "kdistill"
            if package != module.split(".")[1] and rank.get(package, len(CORE_ORDER)) >= own:
                broken.append(f"{module} imports {target}")
    assert not broken, broken


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_imports_or_reads_another_modules_underscore_names() -> None:
    broken = []
    for module, path in sorted(MODULES.items()):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}  # local name -> kdistill module it stands for
        for imported, names, line in _imports(module):
            if not imported.startswith("kdistill"):
                continue
            for name in names:
                if _private(name):
                    broken.append(f"{path.relative_to(SRC)}:{line} imports {name} from {imported}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("kdistill") and alias.asname:
                        aliases[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, node)
                for alias in node.names:
                    if f"{base}.{alias.name}" in MODULES:
                        aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _private(node.attr)
            ):
                broken.append(f"{path.relative_to(SRC)}:{node.lineno} reads {aliases[node.value.id]}.{node.attr}")
    assert not broken, broken


def test_the_package_never_imports_its_own_facade() -> None:
    """``kdistill/__init__.py`` imports everything; a module that imported names from it would
    depend on the whole package."""
    broken = [
        f"{MODULES[module].relative_to(SRC)}:{line} imports {names} from kdistill"
        for module in MODULES
        if module != "kdistill"
        for imported, names, line in _imports(module)
        if imported == "kdistill" and any(f"kdistill.{name}" not in MODULES for name in names)
    ]
    assert not broken, broken


def test_every_name_kdistill_exports_imports() -> None:
    import kdistill

    for name in kdistill.__all__:
        assert getattr(kdistill, name) is not None, name
    assert set(kdistill._PUBLIC) | {"__version__"} == set(kdistill.__all__)  # the lazy table and the list agree
    for name in (
        "distill",
        "DistillationTrainer",
        "Objective",
        "TeacherCache",
        "make_student",
        "export_onnx",
        "prune_vocabulary",
        "run_distill",
    ):
        assert name in kdistill.__all__


def _documented_paths() -> set[str]:
    found = set()
    for document in DOCS:
        for match in re.finditer(r"(?<![\w/.])kdistill(?:\.[A-Za-z_]\w*)+", document.read_text(encoding="utf-8")):
            found.add(match.group(0).rstrip("."))
    return found


def _resolves(path: str) -> bool:
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def test_every_kdistill_path_the_docs_name_imports() -> None:
    paths = _documented_paths()
    assert "kdistill.losses.functional" in paths
    missing = sorted(path for path in paths if not _resolves(path))
    assert not missing, missing


def test_the_design_table_names_every_module_and_only_modules_that_exist() -> None:
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    named: set[Path] = set()
    for row in re.findall(r"^\| (.+?) \|", design, re.MULTILINE):
        folder: Path | None = None
        for cell in re.findall(r"`([^`]+)`", row):
            if cell.startswith("src/kdistill"):
                path = ROOT / cell
                folder = path if cell.endswith("/") else path.parent
            elif folder is not None and not cell.startswith(("tests", "benchmarks", "examples")):
                path = folder / cell
            else:
                continue
            assert path.exists(), f"docs/design.md names {cell}, which does not exist"
            named.add(path)
    unnamed = []
    for module in MODULES.values():
        if module.name == "__init__.py":
            continue  # a package is named by its folder or its modules
        if not any(module == path or path in module.parents for path in named):
            unnamed.append(str(module.relative_to(ROOT)))
    assert not unnamed, f"docs/design.md's table does not name: {unnamed}"


@pytest.mark.parametrize("module", ["kdistill.models", "kdistill.capture", "kdistill.data", "kdistill.files"])
def test_each_core_package_says_what_it_holds(module: str) -> None:
    doc = importlib.import_module(module).__doc__
    assert doc and len(doc.split()) >= 20, module
