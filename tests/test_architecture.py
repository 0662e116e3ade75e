"""The package's shape holds: wings import only downwards, the wiring needs no import tricks,
and Redis scripts live in `.lua` files (`tests/architecture.py` reads the imports)."""

from __future__ import annotations

import ast
import re

from tests.architecture import PACKAGE, RANKS, imports, upward, wing

LAZY_IMPORTS_ALLOWED = 3


def test_no_module_imports_a_wing_ranked_above_its_own() -> None:
    bad = [f"{i.importer}:{i.line}: {i.text.strip()}" for i in upward(imports())]

    assert bad == []


def test_every_module_belongs_to_a_ranked_wing() -> None:
    assert {wing(i.importer) for i in imports()} <= set(RANKS)


def test_only_a_few_function_local_imports_remain_each_saying_why() -> None:
    local = [i for i in imports() if i.local]

    assert len(local) <= LAZY_IMPORTS_ALLOWED, [i.text for i in local]
    assert all("# lazy:" in i.text for i in local), [i.text for i in local]


def test_no_runtime_import_hides_under_type_checking() -> None:
    """A wing that needs another's name at run time imports it plainly: TYPE_CHECKING is for
    annotations only, never a way around an import rule."""
    hidden = [
        i for i in imports() if i.type_only and RANKS[wing(i.imported)] > RANKS[wing(i.importer)]
    ]

    assert hidden == []


def test_every_wing_says_what_lives_there_and_what_it_may_import() -> None:
    for package in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
        assert "May import" in doc, package.name


def test_no_python_module_holds_a_redis_script() -> None:
    inline = [
        path.name
        for path in PACKAGE.rglob("*.py")
        if re.search(r"redis\.call\(|redis\.pcall\(", path.read_text(encoding="utf-8"))
    ]

    assert inline == []
