"""The package's layers: imports point down, no cycles, a few named parts (issue 10).

``pipelines/`` is nine layers, lowest first (``LAYERS``); a module may import
its own layer and those below, never one above. Nothing in the package imports
the entry-point folders (``lambdas/``, ``companions/``); the CLI is the top layer,
so nothing below it imports ``pipelines.cli``.

What counts as an import: every ``import``/``from ... import`` statement
(relative ones resolved) and every ``importlib.import_module``/``__import__``
call with a literal name, wherever it stands. Imports inside functions and
under ``if TYPE_CHECKING:`` count for the layer order (they still couple the
code upward) but not for cycles: they run after every module has finished
loading, which is how a cycle is broken on purpose. An edge goes to the module
named, not to its parent packages (Python initialises those first anyway).
Handler names the local event bus resolves at delivery
(``pipelines.core.events.DEFAULT_RULES``) are configuration, like the handler
names in ``infra/``, and are not imports.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "pipelines"
# Lowest first: a module may import only its own layer or one before it.
LAYERS: tuple[str, ...] = (
    "core", "compliance", "data", "model", "fraud", "serving", "analytics", "workflow", "cli",
)
# Thin entry points that call the package; the package never calls them.
ENTRY_POINT_PACKAGES = ("lambdas", "companions")
MAX_TOP_LEVEL_PARTS = 10
NOT_SOURCE = {"__pycache__", "_bundled"}  # caches; the wheel's copy of the container code


@dataclass(frozen=True)
class Import:
    """One import in one module: where it stands and what it names."""

    source: str  # the importing module, e.g. pipelines.core.events
    target: str  # the imported module (the longest prefix that is a module of ours)
    named: str  # what the code wrote, resolved to an absolute name
    path: Path
    line: int
    eager: bool  # runs while the importing module loads (not in a function or TYPE_CHECKING)

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root).as_posix()}:{self.line}"


def module_files(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``root/package`` by dotted name (packages by their ``__init__``)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        relative = path.relative_to(root).with_suffix("")
        if NOT_SOURCE.intersection(relative.parts):
            continue
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _named_imports(tree: ast.Module, module: str, is_package: bool, modules: dict[str, Path]
                   ) -> Iterator[tuple[str, int, bool]]:
    """(absolute module name, line, eager) for each module ``tree`` imports."""
    own_package = module if is_package else module.rpartition(".")[0]

    def absolute(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = own_package.split(".")
        base = base[: len(base) - (node.level - 1)]
        return ".".join([*base, *([node.module] if node.module else [])])

    def visit(node: ast.AST, eager: bool) -> Iterator[tuple[str, int, bool]]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, eager
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node)
            for alias in node.names:  # ``from a import b`` imports a.b when it is a module
                submodule = f"{base}.{alias.name}"
                yield (submodule if submodule in modules else base), node.lineno, eager
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "__import__"))):
            yield node.args[0].value, node.lineno, eager
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            eager = False
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, False)
            for child in node.orelse:
                yield from visit(child, eager)
            return
        for child in ast.iter_child_nodes(node):
            yield from visit(child, eager)

    yield from visit(tree, True)


def collect_imports(root: Path, package: str = PACKAGE) -> list[Import]:
    """Every import of our own top-level packages made by a module of ``package``."""
    modules = module_files(root, package)
    ours = (package, *ENTRY_POINT_PACKAGES)
    found = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for named, line, eager in _named_imports(tree, module, is_package, modules):
            if named.split(".")[0] in ours:
                target = _owning_module(named, modules)
                found.setdefault((module, target, line),
                                 Import(module, target, named, path, line, eager))
    return list(found.values())


def _owning_module(name: str, modules: dict[str, Path]) -> str:
    """``name`` itself if it is a module, else the closest package holding it."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return name


def layer_rank(module: str) -> int:
    """Position of ``module``'s layer in ``LAYERS`` (-1: the package root itself)."""
    parts = module.split(".")
    return -1 if len(parts) == 1 else LAYERS.index(parts[1])


def layer_violations(root: Path, package: str = PACKAGE) -> list[str]:
    """Imports of a higher layer, of an entry-point folder, or of a module that does not exist."""
    modules = module_files(root, package)
    order = " < ".join(LAYERS)
    problems = []
    for imp in collect_imports(root, package):
        top = imp.target.split(".")[0]
        if top in ENTRY_POINT_PACKAGES:
            problems.append(f"{imp.where(root)}: {imp.source} imports {imp.named}; the package "
                            f"never imports the entry points ({', '.join(ENTRY_POINT_PACKAGES)}),"
                            f" they import the package")
        elif imp.named not in modules:
            problems.append(f"{imp.where(root)}: {imp.source} imports {imp.named}, which is not "
                            f"a module of {package}/")
        elif imp.target in modules and layer_rank(imp.target) > layer_rank(imp.source):
            above, below = imp.target.split(".")[1], imp.source.split(".")[1]
            problems.append(f"{imp.where(root)}: {imp.source} (layer {below}) imports "
                            f"{imp.target} (layer {above}); a module may import only its own "
                            f"layer or lower ones: {order}")
    return problems


def import_cycles(root: Path, package: str = PACKAGE) -> list[str]:
    """One cycle per strongly connected group of modules, each edge as file:line."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in collect_imports(root, package):
        if imp.eager and imp.target.startswith(f"{package}."):
            edges.setdefault(imp.source, {}).setdefault(imp.target, imp)
    cycles = []
    for group in _strongly_connected(edges):
        if len(group) == 1 and group[0] not in edges.get(group[0], {}):
            continue
        path = _cycle_through(group[0], set(group), edges)
        steps = [edges[a][b] for a, b in zip(path, path[1:], strict=False)]
        cycles.append("import cycle: " + " -> ".join(path) + "\n" + "\n".join(
            f"    {step.where(root)}: {step.source} imports {step.target}" for step in steps))
    return cycles


def _strongly_connected(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph is a few hundred modules)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                groups.append(sorted(group))
    return groups


def _cycle_through(start: str, group: set[str], edges: dict[str, dict[str, Import]]) -> list[str]:
    """A path start -> ... -> start inside ``group`` (breadth first, so a shortest one)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges.get(node, {})):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child in group and child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is in a strongly connected group but on no cycle")


def layout_problems(root: Path, package: str = PACKAGE) -> list[str]:
    """Too many top-level parts in ``package``, or a part that is not a layer."""
    parts = sorted(entry.name for entry in (root / package).iterdir()
                   if entry.name not in {"__init__.py", *NOT_SOURCE})
    problems = [f"{package}/{part} is not a layer; move it into one of {', '.join(LAYERS)}, or "
                f"add it to LAYERS in tests/test_layers.py at its place in the order"
                for part in parts if part not in LAYERS]
    if len(parts) > MAX_TOP_LEVEL_PARTS:
        problems.append(f"{package}/ has {len(parts)} top-level entries besides __init__.py, "
                        f"at most {MAX_TOP_LEVEL_PARTS}: {', '.join(parts)}")
    return problems


# --- the package --------------------------------------------------------------------


def test_pipelines_has_at_most_ten_top_level_parts_each_a_layer():
    problems = layout_problems(REPO_ROOT)
    assert not problems, "\n".join(problems)


def test_imports_point_down_and_never_at_the_entry_points():
    problems = layer_violations(REPO_ROOT)
    assert not problems, f"{len(problems)} import(s) against the layers:\n" + "\n".join(problems)


def test_no_import_cycles():
    cycles = import_cycles(REPO_ROOT)
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_the_package():
    imports = collect_imports(REPO_ROOT)
    assert len(module_files(REPO_ROOT)) > 100
    assert any(imp.source == "pipelines.cli.main" and imp.target.startswith("pipelines.cli.")
               for imp in imports)


# --- the checker itself, on small made-up packages -----------------------------------


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for directory in {p.parent for p in root.rglob("*.py")}:
        (directory / "__init__.py").touch()
    return root


def test_an_upward_import_is_named_with_file_and_line(tmp_path):
    root = _package(tmp_path, {
        "pipelines/core/low.py": "import os\n\n\ndef f():\n    from pipelines.cli import main\n",
        "pipelines/cli/main.py": "from pipelines.core import low\n",
    })
    (problem,) = layer_violations(root)
    assert problem.startswith("pipelines/core/low.py:5: pipelines.core.low (layer core) imports "
                              "pipelines.cli.main (layer cli)")


def test_entry_points_relative_and_missing_modules_are_caught(tmp_path):
    root = _package(tmp_path, {
        "pipelines/data/a.py": "import lambdas.alert.handler\nfrom ..serving import b\n",
        "pipelines/data/c.py": "from pipelines.data.gone import x\n",
        "pipelines/serving/b.py": "",
    })
    problems = "\n".join(layer_violations(root))
    assert "pipelines/data/a.py:1: pipelines.data.a imports lambdas.alert.handler" in problems
    assert "pipelines/data/a.py:2: pipelines.data.a (layer data) imports pipelines.serving.b" \
        in problems
    assert "pipelines/data/c.py:1: pipelines.data.c imports pipelines.data.gone, which is not" \
        in problems


def test_a_cycle_is_reported_edge_by_edge_but_not_through_a_lazy_import(tmp_path):
    root = _package(tmp_path, {
        "pipelines/core/a.py": "from pipelines.core import b\n",
        "pipelines/core/b.py": "import os\nimport pipelines.core.a\n",
        "pipelines/core/c.py": "from pipelines.core.d import x\n",
        "pipelines/core/d.py": "def x():\n    from pipelines.core import c\n",
    })
    (cycle,) = import_cycles(root)
    assert cycle.splitlines() == [
        "import cycle: pipelines.core.a -> pipelines.core.b -> pipelines.core.a",
        "    pipelines/core/a.py:1: pipelines.core.a imports pipelines.core.b",
        "    pipelines/core/b.py:2: pipelines.core.b imports pipelines.core.a",
    ]


def test_a_part_outside_the_layers_and_an_eleventh_part_are_refused(tmp_path):
    root = _package(tmp_path, {f"pipelines/{layer}/a.py": "" for layer in LAYERS})
    assert layout_problems(root) == []
    (root / "pipelines" / "utils.py").touch()
    assert layout_problems(root) == [
        "pipelines/utils.py is not a layer; move it into one of " + ", ".join(LAYERS)
        + ", or add it to LAYERS in tests/test_layers.py at its place in the order"]
    (root / "pipelines" / "reports").mkdir()
    assert layout_problems(root)[-1].startswith(
        "pipelines/ has 11 top-level entries besides __init__.py, at most 10: ")
