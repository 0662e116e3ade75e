"""The package's wings and the imports between them, read from the source with `ast`.

    .venv/bin/python -m tests.architecture          # the wing-level import graph
    .venv/bin/python -m tests.architecture --modules  # every module's imports of the package

`tests/test_architecture.py` holds the rules to it: arrows point down the ranks below, and
only a few function-local imports of the package remain, each with its reason on the line.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tagging_worker"

RANKS: dict[str, int] = {
    "contract": 0,
    "alibaba": 1,
    "settings": 2,
    "state": 3,
    "ops": 4,
    "produce": 4,
    "worker": 5,
    "cli": 6,
    "root": 7,
}
"""Lowest first: a module may import its own wing and the wings ranked below it. `ops` and
`produce` share a rank and may not import each other."""

CONTRACT = {"errors", "reasons", "plain_json", "event", "messages"}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    local: bool
    """Inside a function: loaded when it first runs, not with the module."""
    type_only: bool
    """Under `if TYPE_CHECKING:`: never loaded at run time."""
    text: str


def wing(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__init__", "__main__"):
        return "root"
    if parts[1] in CONTRACT:
        return "contract"
    if parts[1] == "settings":
        return "settings"
    return parts[1]


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        yield name.removesuffix(".__init__"), path


def imports() -> list[Import]:
    found: list[Import] = []
    for name, path in modules():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        found += _imports_of(name, ast.parse(source), lines)
    return found


def _imports_of(name: str, tree: ast.Module, lines: list[str]) -> Iterator[Import]:
    def visit(node: ast.AST, local: bool, type_only: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                targets = dict.fromkeys(_module_of(child.module, a.name) for a in child.names)
                for target in targets:
                    if target.startswith("tagging_worker"):
                        yield Import(
                            name, target, child.lineno, local, type_only, lines[child.lineno - 1]
                        )
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("tagging_worker"):
                        yield Import(
                            name,
                            alias.name,
                            child.lineno,
                            local,
                            type_only,
                            lines[child.lineno - 1],
                        )
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from visit(child, True, type_only)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                yield from visit(child, local, True)
            else:
                yield from visit(child, local, type_only)

    yield from visit(tree, False, False)


def _module_of(module: str, name: str) -> str:
    """`from package import module` names the module; `from module import name`, the module."""
    path = PACKAGE.parent.joinpath(*module.split("."), name)
    return f"{module}.{name}" if path.with_suffix(".py").exists() or path.is_dir() else module


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def upward(found: list[Import]) -> list[Import]:
    """Imports of a wing ranked above the importer's, or of a peer of the same rank."""
    bad = []
    for imp in found:
        mine, theirs = wing(imp.importer), wing(imp.imported)
        if mine == theirs:
            continue
        if RANKS[theirs] >= RANKS[mine]:
            bad.append(imp)
    return bad


def main(argv: list[str]) -> int:
    found = imports()
    if "--modules" in argv:
        by_module: dict[str, set[str]] = defaultdict(set)
        for imp in found:
            if imp.importer != imp.imported:
                by_module[imp.importer].add(imp.imported.removeprefix("tagging_worker."))
        for module, targets in sorted(by_module.items()):
            print(f"{module.removeprefix('tagging_worker.')} -> {', '.join(sorted(targets))}")
        return 0
    edges: dict[tuple[str, str], int] = defaultdict(int)
    for imp in found:
        a, b = wing(imp.importer), wing(imp.imported)
        if a != b:
            edges[(a, b)] += 1
    for wing_name in sorted(RANKS, key=lambda w: (-RANKS[w], w)):
        targets = sorted(
            ((b, n) for (a, b), n in edges.items() if a == wing_name),
            key=lambda t: (-RANKS[t[0]], t[0]),
        )
        shown = ", ".join(f"{b} ({n})" for b, n in targets) or "-"
        print(f"{wing_name:>9} [{RANKS[wing_name]}] -> {shown}")
    bad = upward(found)
    local = [imp for imp in found if imp.local]
    print(f"upward imports: {len(bad)}; function-local imports of the package: {len(local)}")
    for imp in bad + local:
        where = imp.importer.removeprefix("tagging_worker.")
        print(f"  {where}:{imp.line}: {imp.text.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
