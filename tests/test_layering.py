"""The controller package's layering (docs/developing.md, "The controller package"): a lower
layer never imports a higher one. Checked on the source (every `import` / `from ... import`,
also inside functions), so a lazy import that breaks the rule is caught as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "controller" / "hbmon"

# folder -> packages it must never import (the API and the store sit on the interfaces in
# hbmon.interfaces / hbmon.model, not on each other's or the controller's modules)
FORBIDDEN = {
    "store": ("hbmon.api", "hbmon.controller", "hbmon.cli"),
    "api": ("hbmon.controller", "hbmon.cli"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_lower_layer_does_not_import_higher(folder: str) -> None:
    files = sorted((PKG / folder).glob("*.py"))
    assert files, f"no modules under {PKG / folder}"
    bad = [
        f"{path.relative_to(PKG)}:{line} imports {module}"
        for path in files
        for line, module in _imports(path)
        if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[folder])
    ]
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The scanner itself: a lazy `from hbmon.api.service import ...` is reported."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from hbmon.api.service import HbmonService\n")
    assert (2, "hbmon.api.service") in _imports(module)
