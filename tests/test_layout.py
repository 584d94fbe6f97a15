"""The wings' import rules, read from the code itself: ``broker/`` never imports ``client/`` or
``term/``, ``client/`` never imports ``broker/`` or ``term/``, ``term/`` never imports ``broker/``,
and the shared ground (``protocol``, ``errors``, ``transport``, ``keys``) imports no wing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "zchat"
WINGS = ("broker", "client", "term")
GROUND = ("protocol", "errors", "transport", "keys")
#: What each part of the package must not import.
FORBIDDEN = {
    "broker": {"client", "term"},
    "client": {"broker", "term"},
    "term": {"broker"},
    **{module: set(WINGS) for module in GROUND},
}


def imported_wings(source: str, package: str) -> set[str]:
    """The zchat wings that ``source`` (a module of ``package``, e.g. ``zchat.broker``) imports,
    absolute or relative, at any depth (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names = [f"{base}.{alias.name}" for alias in node.names] if base == "zchat" else [base]
        for name in names:
            parts = name.split(".")
            if parts[0] == "zchat" and len(parts) > 1 and parts[1] in WINGS:
                found.add(parts[1])
    return found


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_import_rules(path: Path) -> None:
    part = part_of(path)
    package = "zchat." + ".".join(path.relative_to(PACKAGE).parts[:-1]) if part in WINGS else "zchat"
    bad = imported_wings(path.read_text(encoding="utf-8"), package.rstrip(".")) & FORBIDDEN.get(part, set())
    assert not bad, f"{path.relative_to(PACKAGE)} ({part}) imports {sorted(bad)}: see zchat/{part}/__init__.py"


@pytest.mark.parametrize(
    ("source", "package", "wings"),
    [
        ("from zchat.broker.core import BrokerCore", "zchat.client", {"broker"}),
        ("import zchat.term.render", "zchat.client", {"term"}),
        ("from zchat import client", "zchat", {"client"}),
        ("from ..broker import store", "zchat.term", {"broker"}),
        ("def f():\n    from zchat.term import ui", "zchat.client", {"term"}),
        ("from zchat import protocol\nfrom . import sequencer", "zchat.client", {"client"}),
    ],
)
def test_the_rule_sees_every_form_of_import(source: str, package: str, wings: set[str]) -> None:
    assert imported_wings(source, package) == wings
