"""The architecture, read from the sources: which package may import what, no import cycles, small modules.

Every import of labelaudit/** is parsed with `ast` (module level, inside functions, under `if TYPE_CHECKING`,
and `importlib.import_module("literal")`), so a lazy import cannot hide a heavy dependency. Each failure lists
the file, line and import that break the rule. The fresh-process checks (nothing heavy is loaded at start-up)
are in test_no_torch.py and test_cli_startup.py.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "labelaudit"
BENCH = PACKAGE.parent / "bench"

#: A module over this many lines does more than one thing: split it.
MAX_LINES = 420


@dataclass(frozen=True)
class Import:
    """One imported name as written in `file` (relative to the repository), resolved to an absolute module."""

    file: str
    line: int
    target: str  # absolute dotted name: "torch.nn", "labelaudit.score.pipeline"
    deferred: bool  # inside a function (imported when called, not when the module loads)

    @property
    def root(self) -> str:
        return self.target.split(".")[0]

    def where(self) -> str:
        return f"{self.file}:{self.line} imports {self.target}" + (" (inside a function)" if self.deferred else "")


@dataclass(frozen=True)
class Source:
    """One parsed module of the package."""

    name: str  # "labelaudit.score.pipeline"; a package's __init__.py is the package itself
    file: str  # "labelaudit/score/pipeline.py"
    is_package: bool
    lines: int
    tree: ast.Module | None
    error: str = ""  # why it could not be parsed


def module_name(path: Path, package: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def read_sources(package: Path = PACKAGE) -> list[Source]:
    sources = []
    for path in sorted(package.rglob("*.py")):
        name, is_package = module_name(path, package)
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(package.parent).as_posix()
        try:
            tree, error = ast.parse(text, filename=rel), ""
        except SyntaxError as exc:
            tree, error = None, f"{rel}:{exc.lineno}: {exc.msg}"
        sources.append(Source(name, rel, is_package, len(text.splitlines()), tree, error))
    return sources


def _absolute(source: Source, module: str | None, level: int) -> str:
    """The absolute name of `from <level dots><module> import ...` written in `source`."""
    if level == 0:
        return module or ""
    parts = source.name.split(".") if source.is_package else source.name.split(".")[:-1]
    base = parts[: len(parts) - (level - 1)] if level > 1 else parts
    return ".".join(base + ([module] if module else []))


class _Collector(ast.NodeVisitor):
    def __init__(self, source: Source, modules: set[str]):
        self.source, self.modules, self.depth, self.found = source, modules, 0, []

    def _add(self, node: ast.AST, target: str) -> None:
        self.found.append(Import(self.source.file, node.lineno, target, self.depth > 0))

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _absolute(self.source, node.module, node.level)
        for alias in node.names:
            full = f"{base}.{alias.name}"
            self._add(node, full if full in self.modules else base)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            literal = node.args[0].value
            level = len(literal) - len(literal.lstrip("."))
            self._add(node, _absolute(self.source, literal[level:] or None, level) if level else literal)
        self.generic_visit(node)


def collect_imports(sources: list[Source]) -> list[Import]:
    modules = {s.name for s in sources}
    found: list[Import] = []
    for source in sources:
        if source.tree is not None:
            collector = _Collector(source, modules)
            collector.visit(source.tree)
            found += collector.found
    return found


def module_graph(sources: list[Source], imports: list[Import]) -> dict[str, dict[str, list[Import]]]:
    """{module: {imported module of the package: [the imports that make the edge]}}."""
    modules = {s.name for s in sources}
    by_file = {s.file: s.name for s in sources}
    graph: dict[str, dict[str, list[Import]]] = {name: {} for name in modules}
    for imp in imports:
        target = imp.target
        while target and target not in modules:  # `import labelaudit.x.y as z`, or a name inside a module
            target = target.rpartition(".")[0]
        if target and target != by_file[imp.file]:
            graph[by_file[imp.file]].setdefault(target, []).append(imp)
    return graph


def find_cycles(graph: dict[str, dict[str, list[Import]]], limit: int = 50) -> list[list[str]]:
    """Every elementary cycle (up to `limit`), each starting at its smallest module, in a stable order."""
    cycles: list[list[str]] = []
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack and len(cycles) < limit:
            node, path = stack.pop()
            for nxt in sorted(graph[node], reverse=True):
                if nxt == start:
                    cycles.append(path)
                elif nxt > start and nxt not in path:
                    stack.append((nxt, path + [nxt]))
    return sorted(cycles, key=lambda c: (len(c), c))


def describe_cycle(cycle: list[str], graph: dict[str, dict[str, list[Import]]]) -> str:
    steps = [f"    {imp.where()}" for a, b in zip(cycle, cycle[1:] + cycle[:1]) for imp in graph[a][b][:1]]
    return " -> ".join(cycle + cycle[:1]) + "\n" + "\n".join(steps)


# ----------------------------------------------------------------------------- the rules

#: (third-party package, where it may be imported: folders end in "/", files are exact, why)
ALLOWED = [
    ("torch", ("labelaudit/train/",), "training is an install extra; score and check run without torch"),
    ("torchvision", ("labelaudit/train/",), "training only"),
    ("monai", ("labelaudit/train/",), "training only"),
    ("safetensors", ("labelaudit/train/",), "training only"),
    ("onnx", ("labelaudit/train/",), "building graphs is export's job"),
    ("onnxruntime", ("labelaudit/score/", "labelaudit/train/export.py"),
     "inference lives in score/; export only checks parity"),
    ("SimpleITK", ("labelaudit/io/",), "io/ is the one boundary to image files"),
]


def _allowed(file: str, places: tuple[str, ...]) -> bool:
    return any(file.startswith(p) if p.endswith("/") else file == p for p in places)


@pytest.fixture(scope="module")
def sources() -> list[Source]:
    return read_sources()


@pytest.fixture(scope="module")
def imports(sources) -> list[Import]:
    return collect_imports(sources)


def test_every_module_parses(sources):
    assert len(sources) > 20, f"found only {len(sources)} modules under {PACKAGE}"
    broken = [s.error for s in sources if s.tree is None]
    assert not broken, "cannot parse (the other rules skip these files):\n" + "\n".join(broken)


@pytest.mark.parametrize("package, places, why", ALLOWED, ids=[a[0] for a in ALLOWED])
def test_heavy_imports_stay_in_their_package(imports, package, places, why):
    bad = [imp.where() for imp in imports if imp.root == package and not _allowed(imp.file, places)]
    assert not bad, (f"{package} may be imported only in {', '.join(places)} ({why}); "
                     f"{len(bad)} import(s) elsewhere:\n" + "\n".join(bad))


def test_nothing_imports_the_cli(imports):
    bad = [imp.where() for imp in imports
           if (imp.target == "labelaudit.cli" or imp.target.startswith("labelaudit.cli."))
           and not (imp.file.startswith("labelaudit/cli/") or imp.file == "labelaudit/__main__.py")]
    assert not bad, "only labelaudit/__main__.py may import labelaudit.cli (the CLI is the outer shell):\n" + \
        "\n".join(bad)


def test_no_import_cycles(sources, imports):
    graph = module_graph(sources, imports)
    cycles = find_cycles(graph)
    assert not cycles, f"{len(cycles)} import cycle(s) between modules (first import of each step shown):\n" + \
        "\n".join(describe_cycle(c, graph) for c in cycles)


def test_modules_are_small(sources):
    big = [f"{s.file}: {s.lines} lines" for s in sorted(sources, key=lambda s: -s.lines) if s.lines > MAX_LINES]
    assert not big, f"modules over {MAX_LINES} lines (split each by concept):\n" + "\n".join(big)


def defined_names(tree: ast.Module) -> dict[str, str] | None:
    """{name: "import" or "def"} a module binds at top level (also under if/try/with), or None when a module
    `__getattr__` serves any name. A name listed in `__all__` counts as defined there."""
    names: dict[str, str] = {}
    exported: list[str] = []
    body = list(tree.body)
    while body:
        node = body.pop(0)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "__getattr__":
                return None
            names[node.name] = "def"
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for n in ast.walk(target):
                    if isinstance(n, ast.Name):
                        names[n.id] = "def"
                        if n.id == "__all__" and isinstance(node.value, (ast.List, ast.Tuple)):
                            exported += [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                names.setdefault((a.asname or a.name).split(".")[0], "import")
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            body += node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
            body += [n for h in getattr(node, "handlers", []) for n in h.body]
    return {**names, **{name: "def" for name in exported if name in names}}


def bench_import_problems(bench: Path = BENCH, sources: list[Source] | None = None) -> list[str]:
    """Each import of labelaudit (or of a sibling script) in bench/*.py that is private, names nothing, or takes
    a name from a module that merely imports it (a package's __init__ and `__all__` re-export on purpose)."""
    modules = {s.name: s for s in (sources if sources is not None else read_sources())}
    scripts = {p.stem: p for p in bench.glob("*.py")}
    found = []
    for path in sorted(scripts.values()):
        rel = path.relative_to(bench.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
            if isinstance(node, ast.Import):
                pairs = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                pairs = [(node.module, a.name) for a in node.names]
            else:
                continue
            for module, name in pairs:
                where = f"{rel}:{node.lineno} imports {module}" + (f".{name}" if name else "")
                if module in scripts:
                    script_names = defined_names(ast.parse(scripts[module].read_text(encoding="utf-8")))
                    if name and script_names is not None and name not in script_names:
                        found.append(f"{where}: bench/{module}.py defines no {name}")
                    continue
                if module.split(".")[0] != "labelaudit":
                    continue
                parts = module.split(".") + ([name] if name else [])
                if any(part.startswith("_") and not part.startswith("__") for part in parts):
                    found.append(f"{where}: a private name (bench scripts use the public API only)")
                elif module not in modules:
                    found.append(f"{where}: no module {module}")
                elif name and f"{module}.{name}" not in modules:
                    source = modules[module]
                    names = defined_names(source.tree) if source.tree else None
                    if names is not None and name not in names:
                        found.append(f"{where}: {source.file} defines no {name}")
                    elif names is not None and names[name] == "import" and not source.is_package:
                        found.append(f"{where}: {source.file} only imports {name}; import it from where it is "
                                     f"defined")
    return found


def test_bench_scripts_use_the_public_api(sources):
    found = bench_import_problems(sources=sources)
    assert not found, "bench scripts must import public labelaudit names that exist:\n" + "\n".join(found)


# ----------------------------------------------------------------------------- the checker itself

def _fake_package(root: Path, files: dict[str, str]) -> list[Source]:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return read_sources(root / "pkg")


def test_checker_sees_lazy_relative_and_dynamic_imports(tmp_path):
    sources = _fake_package(tmp_path, {
        "__init__.py": "",
        "a/__init__.py": "from .b import thing\n",
        "a/b.py": "def f():\n    import torch.nn as nn\n    from .. import c\n",
        "c.py": "import importlib\nimportlib.import_module('.a.b', 'pkg')\nfrom pkg.a import b as _\n",
        "d.py": "from . import a\nfrom pkg import nothing_here\n",
    })
    imports = collect_imports(sources)
    seen = {(i.file, i.target, i.deferred) for i in imports}
    assert ("pkg/a/b.py", "torch.nn", True) in seen
    assert ("pkg/a/b.py", "pkg.c", True) in seen  # `from .. import c`: c is a module
    assert ("pkg/a/__init__.py", "pkg.a.b", False) in seen  # `from .b import thing`: the module b
    assert ("pkg/c.py", "pkg.a.b", False) in seen  # both the literal import_module and `from pkg.a import b`
    assert ("pkg/d.py", "pkg", False) in seen  # `from pkg import nothing_here`: a name of the package
    graph = module_graph(sources, imports)
    assert find_cycles(graph) == [["pkg.a.b", "pkg.c"]]
    assert describe_cycle(["pkg.a.b", "pkg.c"], graph).startswith("pkg.a.b -> pkg.c -> pkg.a.b\n")


def test_checker_reports_unparsable_files(tmp_path):
    sources = _fake_package(tmp_path, {"__init__.py": "", "bad.py": "def (:\n"})
    assert [s.error.split(":")[0] for s in sources if s.tree is None] == ["pkg/bad.py"]


def test_bench_checker_flags_private_and_missing_names(tmp_path):
    sources = _fake_package(tmp_path, {"__init__.py": "", "m.py": "from os import sep\ndef public(): ...\n"
                                                                  "def _private(): ...\n"})
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "a.py").write_text("def helper(): ...\n")
    (bench / "b.py").write_text("from labelaudit.m import public, _private, gone, sep\nfrom a import helper, nope\n"
                                "import labelaudit.nothing\n")
    for s in sources:  # the fake package stands in for labelaudit
        object.__setattr__(s, "name", s.name.replace("pkg", "labelaudit", 1))
    found = [f.split(" imports ", 1)[1] for f in bench_import_problems(bench, sources)]
    assert found == ["labelaudit.m._private: a private name (bench scripts use the public API only)",
                     "labelaudit.m.gone: pkg/m.py defines no gone",
                     "labelaudit.m.sep: pkg/m.py only imports sep; import it from where it is defined",
                     "a.nope: bench/a.py defines no nope",
                     "labelaudit.nothing: no module labelaudit.nothing"]
