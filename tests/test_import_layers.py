"""The import contract: imports only go down the layers of :data:`easytune_lab.layers.LAYERS`.

Every module's syntax tree is walked (imports at module level, inside functions and classes, and
``importlib.import_module("easytune_lab....")`` with a literal name); relative imports are resolved against the
module's package. A failure names ``file:line`` and the two layers.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from easytune_lab.layers import LAYERS, PACKAGE, layer_of

ROOT = Path(__file__).resolve().parents[1]

# Imports inside functions are for these only: heavy modules (or optional extras) that most uses of the function's
# module never need. Everything else is imported at module level, so that the import graph is visible at the top.
HEAVY_OPTIONAL = {
    "papermill", "nbclient", "nbformat", "jupyter_client", "traitlets",   # notebook execution (dev extra)
    "matplotlib", "mpl_toolkits", "plotly", "ipywidgets", "anywidget", "IPython",   # plotting and widgets
    "tqdm.auto",          # the widget progress bar (imports ipywidgets)
    "tensorboard",        # the tb extra
    "scipy", "pandas",    # heavy numeric / table libraries needed by a few functions
    "transformers", "peft",   # pretrained text encoders, LoRA (extras)
    "bvhio",              # BVH cross-check (dev extra)
    "torch._dynamo",      # torch.compile support, only for --compile
    "torch.utils.tensorboard",              # needs the tensorboard package (the tb extra)
    "easytune_lab.finetune.lora_attention",  # imports peft at module level (the lora extra)
}


@dataclass(frozen=True)
class Import:
    path: Path          # the importing file
    line: int
    source: str         # the importing module, dotted
    target: str         # the imported module, dotted (resolved)
    in_function: bool


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str, root: Path) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


class _Collector(ast.NodeVisitor):
    def __init__(self, path: Path, root: Path):
        self.path, self.root = path, root
        self.source = module_name(path, root)
        self.package = self.source if path.name == "__init__.py" else self.source.rpartition(".")[0]
        self.depth = 0
        self.found: list[Import] = []

    def _add(self, node: ast.AST, target: str) -> None:
        imp = Import(self.path, node.lineno, self.source, target, self.depth > 0)
        if imp not in self.found:            # `from m import a, b`: one import of m
            self.found.append(imp)

    def _function(self, node) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            if node.level > 1:
                base = base[: len(base) - (node.level - 1)]
            base_name = ".".join(base + ([node.module] if node.module else []))
        else:
            base_name = node.module or ""
        for alias in node.names:        # `from pkg import submodule` imports the submodule
            candidate = f"{base_name}.{alias.name}"
            self._add(node, candidate if _is_module(candidate, self.root) else base_name)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if (name == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            self._add(node, node.args[0].value)
        self.generic_visit(node)


def collect_imports(root: Path, package: str = PACKAGE) -> list[Import]:
    """Every import in every module under ``root/package`` (``root`` is the directory holding the package)."""
    found: list[Import] = []
    for path in sorted((root / package).rglob("*.py")):
        collector = _Collector(path, root)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        found.extend(collector.found)
    return found


def _where(imp: Import, root: Path) -> str:
    return f"{imp.path.relative_to(root)}:{imp.line}"


def _layer_name(index: int) -> str:
    return "/".join(LAYERS[index])


def upward_imports(root: Path, package: str = PACKAGE) -> list[str]:
    """One line per import of a module from a higher layer than the importing module's."""
    problems = []
    for imp in collect_imports(root, package):
        source, target = layer_of(imp.source), layer_of(imp.target)
        if source is not None and target is not None and target > source:
            problems.append(f"{_where(imp, root)}: {imp.source} (layer {source}: {_layer_name(source)}) imports "
                            f"{imp.target} (layer {target}: {_layer_name(target)}), which is above it")
    return problems


def unlayered_modules(root: Path, package: str = PACKAGE) -> list[str]:
    """Modules of the package that no layer names."""
    names = {module_name(p, root) for p in (root / package).rglob("*.py")}
    return sorted(n for n in names if layer_of(n) is None)


def sibling_cycles(root: Path, package: str = PACKAGE) -> list[str]:
    """Pairs of top-level parts in one layer that import each other (directly or through others of that layer)."""
    edges: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for imp in collect_imports(root, package):
        a, b = imp.source.split("."), imp.target.split(".")
        if len(a) < 2 or len(b) < 2 or b[0] != package or a[1] == b[1]:
            continue
        if layer_of(imp.source) == layer_of(imp.target):
            edges.setdefault(a[1], set()).add(b[1])
            where.setdefault((a[1], b[1]), _where(imp, root))

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(edges.get(node, ()))
        return False

    return sorted(f"{where[(a, b)]}: {a} imports {b}, and {b} reaches back to {a} (same layer)"
                  for a, targets in edges.items() for b in targets if reaches(b, a))


def function_level_imports(root: Path, package: str = PACKAGE) -> list[str]:
    """Imports inside functions of anything but :data:`HEAVY_OPTIONAL` modules."""
    def heavy(target: str) -> bool:
        return any(target == m or target.startswith(m + ".") for m in HEAVY_OPTIONAL)

    return [f"{_where(imp, root)}: {imp.target} imported inside a function"
            for imp in collect_imports(root, package) if imp.in_function and not heavy(imp.target)]


# ----------------------------------------------------------------------------------------------------- the contract


def test_every_module_has_a_layer():
    assert unlayered_modules(ROOT) == [], "add these to easytune_lab.layers.LAYERS"


def test_imports_only_go_down_the_layers():
    problems = upward_imports(ROOT)
    assert problems == [], "upward imports:\n" + "\n".join(problems)


def test_sibling_packages_do_not_import_each_other_both_ways():
    problems = sibling_cycles(ROOT)
    assert problems == [], "\n".join(problems)


def test_imports_inside_functions_only_for_heavy_optional_modules():
    problems = function_level_imports(ROOT)
    assert problems == [], f"{len(problems)} imports to move to module level:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------- the checker catches what it should


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"__init__.py": "", "motion/__init__.py": "", "viz/__init__.py": "",
                       "viz/playback.py": "def f():\n    return 1\n", **files}.items():
        path = tmp_path / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return tmp_path


def test_checker_catches_an_upward_import_inside_a_function(tmp_path):
    root = _package(tmp_path, {"motion/bad.py": """\
        import numpy as np

        def joints(x):
            from ..viz.playback import f
            return f()
        """})
    problems = upward_imports(root)
    assert len(problems) == 1
    assert problems[0].startswith(f"{Path(PACKAGE, 'motion', 'bad.py')}:4: ")
    assert "(layer 1: motion)" in problems[0] and "easytune_lab.viz.playback (layer 5: analysis/viz)" in problems[0]
    assert function_level_imports(root) == [f"{Path(PACKAGE, 'motion', 'bad.py')}:4: easytune_lab.viz.playback "
                                             "imported inside a function"]


def test_checker_resolves_absolute_package_and_dynamic_imports(tmp_path):
    root = _package(tmp_path, {
        "motion/a.py": "import easytune_lab.viz.playback\n",
        "motion/b.py": "from easytune_lab import viz\n",
        "motion/c.py": "import importlib\nM = importlib.import_module('easytune_lab.viz')\n",
        "viz/ok.py": "from ..motion import a\nfrom .. import motion\n",       # downward: fine
    })
    problems = upward_imports(root)
    assert [p.split(": ")[0] for p in problems] == [
        str(Path(PACKAGE, "motion", "a.py")) + ":1", str(Path(PACKAGE, "motion", "b.py")) + ":1",
        str(Path(PACKAGE, "motion", "c.py")) + ":2"]


def test_checker_catches_siblings_importing_each_other(tmp_path):
    root = _package(tmp_path, {"analysis/__init__.py": "from ..viz import playback\n",
                               "viz/plots.py": "def g():\n    from ..analysis import x\n"})
    problems = sibling_cycles(root)
    assert len(problems) == 2 and all("(same layer)" in p for p in problems)
    assert unlayered_modules(_package(tmp_path, {"extra.py": ""})) == ["easytune_lab.extra"]
