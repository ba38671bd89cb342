"""The package's shape, held in CI: imports point down, nothing imports in a
circle, no function is too long to read.

**Layers** (top to bottom). A *room* is a top-level module or subpackage of
`openmind_curate`; a module may import its own room and any room of a lower
layer, never a higher one, and never another room of its own layer::

    launcher   slurm                      starts the CLI in a child process
    cli        cli                        parses options, calls one function
    evaluation finetune                   fine-tunes a pre-trained model (nnU-Net)
    products   synth, train, report       a corpus, a model, the index report
    manifest   manifest                   index -> training manifest (reads IQS)
    quality    quality                    metrics, ratings, IQS (uses the masks)
    images     masks, dwi                 per-image stages
    bids       bids                       crawl and fetch BIDS datasets
    jobs       jobs                       the batch runner and the stage pattern
    core       the package root, errors, atomic, schema, paths, tables, index,
               index_input, ids, nifti_io, headmodel, preflight

Why this order: each stage reads what the one below it made (the crawl's
index, the masks, the metrics and ratings, the manifest), so a stage imports
the helpers of earlier stages and never of later ones. Fine-tuning reads what
training made (a checkpoint in either layout, `train.nnssl`). `synth` sits with the
products because it writes DWI series the `dwi` stage will read (the b-vector
convention of `dwi.gradients`); `report` reads the index and the IQS rule of
`quality`. Rooms in one layer are independent of each other: the DWI stage
and the masks never call each other, nor do training, synthesis and the
report. The core modules are one room: small files with no stage logic, which
import each other freely but, like everything else, without a cycle.

Every import counts: module level, inside functions (lazy imports that keep
`curate --help` fast) and under ``if TYPE_CHECKING``. A lazy import is still a
dependency, and a type a low module names is still knowledge of a higher one.

**Cycles.** The module graph (module -> module, lazy imports included) has no
cycle. Lazy imports count: Python tolerates a cycle closed by a function-level
import, but the two modules are then one unit that cannot be read, tested or
moved apart, and in this package a function-level import only ever defers a
heavy library (pandas, torch, SimpleITK), never breaks a cycle, so counting
them costs nothing and keeps it that way. A package's ``__init__`` that
re-exports a module is an edge from the package to it.

**Function length.** No function in `openmind_curate/` or `apps/` is over 80
lines, counted from the first statement of its body (docstring included), so
a Typer command's option declarations in its signature do not count.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "openmind_curate"

#: Top to bottom; each layer is a set of rooms (see the module docstring).
LAYERS: list[tuple[str, set[str]]] = [
    ("launcher", {"slurm"}),
    ("cli", {"cli"}),
    ("evaluation", {"finetune"}),
    ("products", {"synth", "train", "report"}),
    ("manifest", {"manifest"}),
    ("quality", {"quality"}),
    ("images", {"masks", "dwi"}),
    ("bids", {"bids"}),
    ("jobs", {"jobs"}),
    ("core", {"core"}),
]
#: The top-level modules that make up the core room ("" is the package root).
CORE = {
    "",
    "errors",
    "atomic",
    "schema",
    "paths",
    "tables",
    "index",
    "index_input",
    "ids",
    "nifti_io",
    "headmodel",
    "preflight",
}
MAX_LINES = 80


# ------------------------------------------------------------------ the graph


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module of the package
    line: int
    lazy: bool  # inside a function


def modules(package_dir: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _owner(name: str, known: dict[str, Path]) -> str | None:
    """The module of the package that `name` (a module or a name in one) is."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    here = module.split(".") if is_package else module.split(".")[:-1]
    here = here[: len(here) - node.level + 1]
    return ".".join([*here, node.module] if node.module else here)


def imports_of(module: str, source: str, known: dict[str, Path], is_package: bool = False):
    """Every import of a package module in `source`, wherever it stands."""
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = _base(child, module, is_package)
                # `from pkg import mod` imports the module; `from mod import name` the module
                names = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names
                ]
            for name in names:
                target = _owner(name, known)
                if target is not None and target != module:
                    found.append(Import(module, target, child.lineno, inner))
            visit(child, inner)

    visit(ast.parse(source), False)
    return found


def package_imports(package_dir: Path = ROOT / PACKAGE) -> list[Import]:
    known = modules(package_dir)
    edges = []
    for name, path in known.items():
        edges += imports_of(name, path.read_text(), known, path.name == "__init__.py")
    return edges


def room(module: str) -> str:
    parts = module.split(".")[1:]
    top = parts[0] if parts else ""
    return "core" if top in CORE else top


def layer_of(room_name: str) -> int | None:
    for depth, (_, rooms) in enumerate(LAYERS):
        if room_name in rooms:
            return depth
    return None


def layer_violations(edges: Iterable[Import]) -> list[str]:
    """One line per import that points up, or sideways into a sibling room."""
    bad = []
    for e in edges:
        src, dst = room(e.source), room(e.target)
        if src == dst:
            continue
        a, b = layer_of(src), layer_of(dst)
        if a is None or b is None:
            continue  # reported by the placement test
        where = f"{e.source} (line {e.line}{', in a function' if e.lazy else ''})"
        if b < a:
            bad.append(f"{where} imports {e.target}: {LAYERS[b][0]} is above {LAYERS[a][0]}")
        elif a == b:
            bad.append(f"{where} imports {e.target}: {src} and {dst} are siblings")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def long_functions(folders: Iterable[Path], limit: int = MAX_LINES) -> Iterator[str]:
    """`file:line name (N lines)` for every function whose body is over `limit`."""
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.body[0].lineno + 1
                    if n > limit:
                        rel = path.relative_to(folder.parent)
                        yield f"{rel}:{node.lineno} {node.name} ({n} lines)"


# ------------------------------------------------------------------ the rules


def test_every_room_is_placed_in_a_layer():
    rooms = {room(m) for m in modules(ROOT / PACKAGE)}
    unplaced = sorted(r for r in rooms if layer_of(r) is None)
    assert not unplaced, f"not in LAYERS (place each, and say why in the docstring): {unplaced}"


def test_imports_point_down_the_layers():
    bad = layer_violations(package_imports())
    assert not bad, f"{len(bad)} imports against the layers:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for e in package_imports():
        graph.setdefault(e.source, set()).add(e.target)
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_function_over_80_lines():
    offenders = list(long_functions([ROOT / PACKAGE, ROOT / "apps"]))
    assert not offenders, (
        f"{len(offenders)} functions over {MAX_LINES} lines (from the first body line); "
        "split them into named steps:\n" + "\n".join(offenders)
    )


def test_the_io_module_loads_neither_the_batch_runner_nor_rich():
    code = (
        "import sys, openmind_curate.atomic\n"
        "print(sorted(m for m in sys.modules if m == 'rich' or m.startswith(('rich.', "
        "'openmind_curate.jobs'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------- the checks, on known input


def test_the_import_walker_sees_lazy_relative_and_type_checking_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "low").mkdir(parents=True)
    for name in ("__init__.py", "errors.py", "cli.py", "low/__init__.py", "low/a.py", "low/b.py"):
        (pkg / name).write_text("")
    (pkg / "low" / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import numpy\n"
        "from . import b\n"
        "if TYPE_CHECKING:\n"
        "    from openmind_curate.errors import CurateError\n"
        "def f():\n"
        "    from openmind_curate.cli import app\n"
    )
    known = modules(pkg)
    path = pkg / "low" / "a.py"
    found = imports_of("openmind_curate.low.a", path.read_text(), known)
    assert [(e.target, e.line, e.lazy) for e in found] == [
        ("openmind_curate.low.b", 3, False),
        ("openmind_curate.errors", 5, False),
        ("openmind_curate.cli", 7, True),
    ]


def test_the_rules_catch_an_upward_import_a_sibling_import_and_a_cycle():
    up = Import("openmind_curate.jobs.runner", "openmind_curate.cli.app", 9, True)
    side = Import("openmind_curate.dwi.run", "openmind_curate.masks.run", 3, False)
    down = Import("openmind_curate.cli.app", "openmind_curate.index", 1, False)
    bad = layer_violations([up, side, down])
    assert bad == [
        "openmind_curate.jobs.runner (line 9, in a function) imports openmind_curate.cli.app: "
        "cli is above jobs",
        "openmind_curate.dwi.run (line 3) imports openmind_curate.masks.run: "
        "dwi and masks are siblings",
    ]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_length_rule_counts_from_the_first_body_line(tmp_path):
    signature = "".join(f"    opt{i}: int = 0,\n" for i in range(30))
    body = "".join(f"    x{i} = {i}\n" for i in range(79))
    (tmp_path / "ok.py").write_text(f'def ok(\n{signature}):\n    """Doc."""\n{body}')
    (tmp_path / "long.py").write_text(f"def long():\n    y = 0\n{body}    return y\n")
    assert [s.split(" ", 1)[1] for s in long_functions([tmp_path])] == ["long (81 lines)"]
