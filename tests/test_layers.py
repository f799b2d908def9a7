"""The layers of ../shared/DESIGN.md ("Layers"), read from the source with `ast` (nothing is imported).

Units, bottom up: infra-shared; training.models; the jobs pipelines, captioning, training (its
models aside); infra-top (infra/cli*, demo*, submit, summary). Each imports only the units below it
and itself, at module level or inside functions, and Ray is started or joined only in
infra/runtime.py. bench/ may import anything but must not call `ray.init` either.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("pipelines", "captioning", "training", "infra", "bench")
JOBS = ("pipelines", "captioning", "training")
ALLOWED = {
    "infra-shared": {"infra-shared"},
    "training.models": {"infra-shared", "training.models"},
    **{job: {"infra-shared", "training.models", job} for job in JOBS},
    "infra-top": {"infra-shared", "training.models", *JOBS, "infra-top"},
}
RUNTIME = "infra/runtime.py"


class Import(NamedTuple):
    file: str  # relative to the scanned root
    line: int
    source: str  # importing module, dotted
    target: str  # imported module (or module.name for `from m import name`), dotted

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.source} imports {self.target}"


def module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str | None:
    """The layering unit of a dotted module name; None for third-party and stdlib modules."""
    parts = module.split(".")
    if parts[0] == "training":
        return "training.models" if parts[1:2] == ["models"] else "training"
    if parts[0] in ("pipelines", "captioning", "bench"):
        return parts[0]
    if parts[0] == "infra":
        leaf = parts[1] if len(parts) > 1 else ""
        top = leaf.startswith(("cli", "demo")) or leaf in ("submit", "summary")
        return "infra-top" if top else "infra-shared"
    return None


def python_files(root: Path) -> list[Path]:
    return sorted(p for d in SCANNED if (root / d).is_dir() for p in (root / d).rglob("*.py"))


def imports_of(tree: ast.AST, rel: Path) -> list[Import]:
    """Every import in the module, nested ones included, relative ones resolved to absolute names."""
    source, file = module_name(rel), rel.as_posix()
    package = source if rel.name == "__init__.py" else source.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(file, node.lineno, source, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            found += [Import(file, node.lineno, source, base if a.name == "*" else f"{base}.{a.name}")
                      for a in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            found.append(Import(file, node.lineno, source, node.args[0].value))  # importlib by name
    return found


def ray_init_calls(tree: ast.AST, rel: Path) -> list[str]:
    """`ray.init(...)` call sites (and `from ray import init`) as "file:line"."""
    hits = [n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "init"
            and isinstance(n.func.value, ast.Name) and n.func.value.id == "ray"]
    hits += [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "ray"
             and any(a.name == "init" for a in n.names)]
    return [f"{rel.as_posix()}:{line}" for line in sorted(hits)]


def scan(root: Path) -> tuple[list[Import], list[str]]:
    """All imports and all ray.init call sites under the scanned packages of `root`."""
    imports, inits = [], []
    for path in python_files(root):
        rel = path.relative_to(root)
        tree = ast.parse(path.read_text(), filename=str(rel))
        imports += imports_of(tree, rel)
        inits += ray_init_calls(tree, rel)
    return imports, inits


@functools.cache
def real_tree() -> tuple[list[Import], list[str]]:
    return scan(ROOT)


def unit_edges(imports: list[Import]) -> dict[tuple[str, str], Import]:
    """(from unit, to unit) -> the first import that makes the edge; bench is outside the graph."""
    edges: dict[tuple[str, str], Import] = {}
    for imp in imports:
        src, dst = unit_of(imp.source), unit_of(imp.target)
        if src and dst and src != dst and "bench" not in (src, dst):
            edges.setdefault((src, dst), imp)
    return edges


def layer_violations(imports: list[Import]) -> list[str]:
    bad = []
    for imp in imports:
        src, dst = unit_of(imp.source), unit_of(imp.target)
        if src in ALLOWED and dst is not None and dst not in ALLOWED[src]:
            bad.append(f"{imp}  ({src} may not import {dst})")
    return bad


def unit_cycles(imports: list[Import]) -> list[str]:
    """Each cycle between units once, with the import behind every edge on it."""
    edges = unit_edges(imports)
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)

    def path(start: str, goal: str) -> list[str] | None:  # depth-first, shortest not needed
        stack, seen = [[start]], {start}
        while stack:
            route = stack.pop()
            if route[-1] == goal:
                return route
            for nxt in graph.get(route[-1], []):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(route + [nxt])
        return None

    cycles, reported = [], set()
    for a, b in sorted(edges):
        back = path(b, a)
        if back is None:
            continue
        ring = [a, *back]  # a -> b -> ... -> a
        key = frozenset(zip(ring, ring[1:]))
        if key in reported:
            continue
        reported.add(key)
        steps = "\n    ".join(str(edges[e]) for e in zip(ring, ring[1:]))
        cycles.append(f"cycle {' -> '.join(ring)}:\n    {steps}")
    return cycles


# ----------------------------------------------------------------------------- the real tree


def test_units_have_no_import_cycle():
    imports = real_tree()[0]
    assert len(imports) > 100, "the scan found almost no imports: wrong root?"
    cycles = unit_cycles(imports)
    assert not cycles, "import cycles between units:\n" + "\n".join(cycles)


def test_every_import_respects_the_layers():
    bad = layer_violations(real_tree()[0])
    assert not bad, "imports across the layers (see DESIGN.md, Layers):\n" + "\n".join(bad)


def test_ray_is_started_only_in_infra_runtime():
    inits = real_tree()[1]
    elsewhere = [site for site in inits if not site.startswith(RUNTIME + ":")]
    assert not elsewhere, "ray.init outside infra/runtime.py (use infra.runtime.init_ray):\n" + "\n".join(elsewhere)
    assert len(inits) == 1, f"expected exactly one ray.init call site, in {RUNTIME}; found {inits}"


# ----------------------------------------------------------------------------- the checker itself


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_checker_reports_cycles_violations_and_stray_ray_init(tmp_path):
    root = _tree(tmp_path, {
        "infra/__init__.py": "",
        "infra/runtime.py": "import ray\ndef up():\n    ray.init(address='local')\n",
        "infra/tables.py": "from . import storage\ndef f():\n    from infra.cli import app\n",
        "infra/cli.py": "from pipelines import runner\n",
        "pipelines/runner.py": "from infra import tables\nfrom .measures import frames\n",
        "pipelines/measures/frames.py": "from .. import split\n",
        "captioning/runner.py": "class C:\n    def m(self):\n        from training.train import run_train\n",
        "training/models/dit.py": "import importlib\nimportlib.import_module('training.flow')\n",
        "training/flow.py": "from training.models.dit import DiT\n",
        "bench/b.py": "import ray\nfrom pipelines import runner\nray.init()\n",
    })
    imports, inits = scan(root)
    targets = {(i.file, i.line, i.target) for i in imports}
    assert ("pipelines/measures/frames.py", 1, "pipelines.split") in targets  # `..` resolved
    assert ("infra/tables.py", 3, "infra.cli.app") in targets  # found inside a function
    bad = layer_violations(imports)
    assert sorted(b.split("  (")[0] for b in bad) == [
        "captioning/runner.py:3: captioning.runner imports training.train.run_train",
        "infra/tables.py:3: infra.tables imports infra.cli.app",
        "training/models/dit.py:2: training.models.dit imports training.flow"]
    cycles = unit_cycles(imports)
    assert any("infra-shared -> infra-top -> pipelines -> infra-shared" in c for c in cycles), cycles
    assert any("training -> training.models -> training" in c for c in cycles), cycles
    assert "infra/tables.py:3: infra.tables imports infra.cli.app" in "\n".join(cycles)
    assert inits == ["bench/b.py:3", "infra/runtime.py:3"]


def test_checker_passes_a_clean_tree(tmp_path):
    root = _tree(tmp_path, {
        "infra/config/__init__.py": "from .model import Cfg\n",
        "infra/config/model.py": "import pydantic\n",
        "infra/demo.py": "from pipelines import runner\nfrom captioning import runner as c\n",
        "pipelines/runner.py": "from infra.config import Cfg\nfrom training.models import dit\n",
        "training/models/dit.py": "from infra import storage\nimport torch\n",
    })
    imports, inits = scan(root)
    assert ("infra/config/__init__.py", 1, "infra.config.model.Cfg") in {(i.file, i.line, i.target) for i in imports}
    assert layer_violations(imports) == [] and unit_cycles(imports) == [] and inits == []
