"""The controller package's layering (docs/developing.md, "The controller package"): a lower
layer never imports a higher one. Checked on the source (every `import` / `from ... import`,
also inside functions), so a lazy import that breaks the rule is caught as well.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "controller" / "hbmon"
RESPONDER = ROOT / "responder"  # the hbmon-responder distribution: click and stdlib only

# The import order of docs/developing.md ("The controller package"): a module imports from its
# own layer and those before it. "" is the top-level modules (protocol, model, config, ...).
ORDER = ("", "p4", "dataplane", "store", "controller", "api", "cli")
# and beyond the order: the API reaches the controller only through api.service's interface
EXTRA = {"api": ("hbmon.controller",)}


def _layer(module: str) -> str | None:
    """The layer of an hbmon module name (None: not hbmon's)."""
    parts = module.split(".")
    if parts[0] != "hbmon":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else ""


def _layer_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("layer", ORDER)
def test_no_module_imports_a_later_layer(layer: str) -> None:
    files = [p for p in sorted(PKG.rglob("*.py")) if _layer_of(p) == layer]
    assert files, f"no modules in layer {layer or 'top level'!r}"
    rank = ORDER.index(layer)
    bad = [
        f"{path.relative_to(PKG)}:{line} imports {module}"
        for path in files
        for line, module in _imports(path)
        if ((found := _layer(module)) is not None and ORDER.index(found) > rank)
        or any(module == f or module.startswith(f + ".") for f in EXTRA.get(layer, ()))
    ]
    assert not bad, "\n".join(bad)


def test_the_responder_distribution_imports_nothing_of_the_controller() -> None:
    """A peer installs hbmon-responder alone (docs/operations.md): its packages may import
    each other, click and the standard library, nothing else (tests/lab/
    test_responder_install.py runs it in such a venv; this covers every module)."""
    files = sorted(RESPONDER.glob("*/*.py"))
    assert {f.parent.name for f in files} == {"hbmon_responder", "hbmon_wire"}
    ours = ("hbmon_responder", "hbmon_wire", "click")
    bad = [
        f"{path.relative_to(RESPONDER)}:{line} imports {module}"
        for path in files
        for line, module in _imports(path)
        if module.split(".")[0] not in sys.stdlib_module_names
        and module.split(".")[0] not in ours
    ]
    assert not bad, "\n".join(bad)


def test_the_controller_names_for_the_wire_modules_are_the_same_objects() -> None:
    """`hbmon.protocol` / `hbmon.sdnotify` re-export `hbmon_wire`'s: every public name, the
    very same objects (one implementation; `except ValidationError` catches either)."""
    import hbmon.protocol
    import hbmon.sdnotify
    import hbmon_wire.protocol
    import hbmon_wire.sdnotify

    public = [n for n in vars(hbmon_wire.protocol) if not n.startswith("_")]
    assert "Heartbeat" in public and "Reason" in public
    assert all(getattr(hbmon.protocol, n) is getattr(hbmon_wire.protocol, n) for n in public)
    assert hbmon.sdnotify.notify is hbmon_wire.sdnotify.notify


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The scanner itself: a lazy `from hbmon.api.service import ...` is reported."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from hbmon.api.service import HbmonService\n")
    assert (2, "hbmon.api.service") in _imports(module)
