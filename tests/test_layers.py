"""Imports flow one way: keys/records -> store/locks/upstream -> services -> api/admin/commands.

A module may import only from its own layer or below; this reads every module's imports (also
those inside functions) and fails on one that reaches up, so a cycle cannot creep back in.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import respcache

ROOT = pathlib.Path(respcache.__file__).parent

#: Layer of each module or package (by dotted prefix under respcache); lower numbers are lower.
LAYERS: dict[str, int] = {
    "conf": 0,
    "exceptions": 0,
    "keys": 0,
    "store.records": 0,
    "sealing": 0,
    "store.fields": 0,
    "breaker": 0,
    "singleflight": 0,
    "pubsub": 0,
    "sse": 0,
    "store": 1,
    "locks": 1,
    "upstream": 1,
    "stats": 1,
    "tally": 1,
    "drift": 1,
    "models": 1,
    "selectors": 2,
    "services": 3,
    "telemetry": 3,
    "charts": 3,
    "health": 4,
    "metrics": 4,
    "checks": 4,
    "api": 4,
    "admin": 4,
    "management": 4,
}


def layer_of(module: str) -> int | None:
    """The layer of ``respcache.<module>`` by its longest known prefix (None: not layered)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        found = LAYERS.get(".".join(parts[:n]))
        if found is not None:
            return found
    return None


def imports_of(path: pathlib.Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("respcache"):
            base = node.module.removeprefix("respcache").lstrip(".")
            if base:
                found.add(base)
            found.update(f"{base}.{a.name}".lstrip(".") for a in node.names if not base)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("respcache.") for a in node.names if a.name.startswith("respcache."))
    return found


MODULES = sorted(
    p
    for p in ROOT.rglob("*.py")
    if "migrations" not in p.parts and p.name != "__init__.py" or p.parent == ROOT / "store"
)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_from_a_layer_above_its_own(path: pathlib.Path) -> None:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    own = layer_of(name)
    if own is None:
        pytest.skip(f"{name} is not layered (apps, urls)")
    upward = sorted(m for m in imports_of(path) if (layer_of(m) or 0) > own)
    assert upward == [], f"{name} (layer {own}) imports from above: {upward}"


def test_the_check_sees_an_upward_import(tmp_path: pathlib.Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("from respcache.services import calls\nfrom respcache import locks\n")
    assert {m for m in imports_of(module) if (layer_of(m) or 0) > LAYERS["store"]} == {"services"}
