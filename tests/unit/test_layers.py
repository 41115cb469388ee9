"""The layout's rules, checked on the source: where SQL may be, who imports whom.

README's "Where things are" and each module's docstring state these rules;
this test makes them hold.  It reads the source with :mod:`ast` (nothing is
imported), so a violation names the file and line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "eventbus"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
#: Longest module we accept; a longer one holds more than one idea.
MAX_MODULE_LINES = 400

#: A string that reads like SQL: a statement keyword followed by what it acts on.
SQL = re.compile(
    r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX|FUNCTION)"
    r"|ALTER\s+TABLE|LISTEN\s+\w|pg_notify\(|SELECT\s+1\b)",
    re.S,
)

#: What each layer may import of ours (by package path prefix), from README's map.
BOTTOM = ("eventbus.model", "eventbus.errors", "eventbus.retry", "eventbus.metrics", "eventbus")
LAYERS: dict[str, tuple[str, ...]] = {
    "eventbus.errors": (),
    # What is counted: plain numbers every layer may update, handed in by tap.
    "eventbus.metrics": ("eventbus.metrics", "eventbus.errors"),
    "eventbus.model": ("eventbus.errors",),
    "eventbus.retry": ("eventbus.errors",),
    "eventbus.logs": (),
    "eventbus.storage": ("eventbus.storage", *BOTTOM),
    # the domain modules
    "eventbus.tail": ("eventbus.storage", *BOTTOM),
    "eventbus.waking": ("eventbus.storage", *BOTTOM),
    "eventbus.notifier": ("eventbus.tail", "eventbus.waking", "eventbus.storage", *BOTTOM),
    "eventbus.retention": ("eventbus.storage", *BOTTOM),
    "eventbus.consumers": ("eventbus.notifier", "eventbus.waking", "eventbus.storage", *BOTTOM),
    "eventbus.auth": BOTTOM,
    "eventbus.tokens": ("eventbus.auth", "eventbus.storage", *BOTTOM),
    "eventbus.webhooks": ("eventbus.webhooks", "eventbus.notifier", "eventbus.waking", "eventbus.storage", *BOTTOM),
    "eventbus.http": (
        "eventbus.http",
        "eventbus.notifier",
        "eventbus.waking",
        "eventbus.retention",
        "eventbus.consumers",
        "eventbus.webhooks",
        "eventbus.auth",
        "eventbus.tokens",
        "eventbus.storage",
        "eventbus.logs",
        *BOTTOM,
    ),
    "eventbus.__main__": ("eventbus.service", "eventbus.cli"),
    # A library for other programs: nothing of the server's, not even its
    # model or errors (a client may talk to a server of another version).
    "eventbus.client": ("eventbus.client",),
    # The command line: an entry point.  The client commands go through the
    # client library; only `token` (which needs no server) and `serve` reach
    # into the server's modules.
    "eventbus.cli": (
        "eventbus.cli",
        "eventbus.client",
        "eventbus.__main__",
        "eventbus.config",
        "eventbus.errors",
        "eventbus.model",
        "eventbus.storage",
        "eventbus.tokens",
        "eventbus.http.tokens",
    ),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> str | None:
    for layer in sorted(LAYERS, key=len, reverse=True):
        if name == layer or name.startswith(layer + "."):
            return layer
    return None


def our_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "eventbus"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "eventbus":
            found.append((node.lineno, node.module))
    return found


def allowed(imported: str, prefixes: tuple[str, ...]) -> bool:
    return any(imported == p or imported.startswith(p + ".") for p in prefixes if p != "eventbus") or (
        imported == "eventbus"
    )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_every_module_imports_only_from_the_layers_below_it(path):
    name = module_name(path)
    layer = layer_of(name)
    if layer is None:  # config, tap, service: may import everything
        return
    wrong = [
        f"line {line}: {imported}"
        for line, imported in our_imports(ast.parse(path.read_text()))
        if not allowed(imported, LAYERS[layer])
    ]
    assert not wrong, f"{name} ({layer}) imports across its layer: {wrong}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_sql_is_written_only_in_storage(path):
    """Docstrings may talk about SQL; no other string outside storage holds any."""
    name = module_name(path)
    if name.startswith("eventbus.storage"):
        return
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    strings = [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]
    sql = [f"line {line}: {text[:60]!r}" for line, text in strings if SQL.search(text)]
    assert not sql, f"{name} holds SQL: {sql}"


def test_the_sql_pattern_finds_sql():
    """The check above must be able to fail."""
    assert SQL.search("SELECT id FROM events WHERE x")
    assert SQL.search("INSERT INTO consumers (a) VALUES (1)")
    assert SQL.search("f\"pg_notify('eventbus', ...)\"")
    assert SQL.search("LISTEN eventbus")
    assert not SQL.search("select the lowest id from the backlog")


def test_every_storage_module_only_imports_the_bottom_tier_outside_storage():
    for path in (PACKAGE / "storage").glob("*.py"):
        for line, imported in our_imports(ast.parse(path.read_text())):
            assert imported.startswith(
                ("eventbus.storage", "eventbus.model", "eventbus.errors", "eventbus.retry", "eventbus.metrics")
            ), (
                f"{path.name}:{line} imports {imported}"
            )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_module_is_over_400_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module_name(path)} has {lines} lines"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_every_module_states_its_layer_rule(path):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert doc, f"{module_name(path)} has no docstring"
    if path.name != "__init__.py" or path.parent != PACKAGE:
        assert "Layer rule" in doc or "layer rule" in doc.lower(), f"{module_name(path)} states no layer rule"


#: The third-party packages the client library may load: its HTTP clients.
CLIENT_THIRD_PARTY = {"httpx", "treq", "twisted"}


@pytest.mark.parametrize("path", sorted((PACKAGE / "client").glob("*.py")), ids=lambda p: module_name(p))
def test_the_client_library_uses_only_the_standard_library_and_its_http_clients(path):
    import sys

    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    foreign = sorted(r for r in roots - {"eventbus", "__future__"} if r not in sys.stdlib_module_names)
    assert set(foreign) <= CLIENT_THIRD_PARTY, f"{module_name(path)} imports {foreign}"
    if path.name in ("sync.py", "sync_parts.py", "__init__.py"):
        # A blocking program loads no Twisted (TxClient is imported lazily).
        assert not {"twisted", "treq"} & roots, f"{module_name(path)} imports Twisted"
