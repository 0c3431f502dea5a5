"""The package's layers: a lower layer never imports a higher one (ops < nn < models < ...)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "inverseflow"

# Subpackage or top-level module → layer (backends: process-wide settings the ops read). Equal layers may import each other only where
# listed in ALLOWED_SIDEWAYS.
LAYERS = {"backends": -1, "ops": 0, "data": 1, "nn": 1, "models": 2, "transforms": 2, "deblur": 2, "jit": 1,
          "integrations": 3, "train": 3, "experiments": 4, "info": 4, "export": 4, "bench": 5,
          "cli": 6, "__main__": 7}
ALLOWED_SIDEWAYS = set()


def _unit(module: str) -> str:
    return module.split(".")[0]


def _imports(path: Path):
    """The inverseflow units that ``path`` imports (absolute or relative)."""
    own = path.relative_to(PACKAGE).with_suffix("").parts
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(own[:len(own) - node.level])
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # "from . import x" at the top
                    yield from (alias.name for alias in node.names)
                else:
                    yield target[0] if len(target) > 0 else ""
            elif node.module and node.module.startswith("inverseflow."):
                yield node.module.split(".")[1]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("inverseflow."):
                    yield alias.name.split(".")[1]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts == ("__init__.py",):
            continue  # the public API gathers every layer on purpose
        yield path


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_upward(path):
    unit = _unit(str(path.relative_to(PACKAGE).with_suffix("")).replace("/", "."))
    assert unit in LAYERS, f"{unit} has no layer in tests/test_layout.py; add it"
    for target in _imports(path):
        target = _unit(target)
        if target == unit or target not in LAYERS:
            continue
        assert LAYERS[target] < LAYERS[unit] or (unit, target) in ALLOWED_SIDEWAYS, (
            f"{path.relative_to(PACKAGE)} (layer {unit}) imports {target}, which is not below it")
