"""The layers point one way: contract -> engine -> front ends, and app/ never reaches into training/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"

FORBIDDEN = {
    # layer: top-level names (or app sub-packages) it must not import, even inside a function
    "app": {"training", "torch", "timm", "torchvision"},
    "app.contract": {"app.engine", "app.api", "app.core", "app.main", "app.score", "fastapi", "starlette", "onnxruntime", "pydantic"},
    "app.engine": {"app.api", "app.main", "app.score", "fastapi", "starlette", "uvicorn"},
}


def imported_names(path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names (absolute and relative, at any depth)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = ".".join(["app", *path.relative_to(APP).parent.parts][: None if node.level == 1 else 1 - node.level])
                names.add(f"{package}.{node.module}" if node.module else package)
            elif node.module:
                names.add(node.module)
    return names


def violations(layer: str, forbidden: set[str]) -> list[str]:
    root = APP.joinpath(*layer.split(".")[1:])
    found = []
    for path in sorted(root.rglob("*.py")):
        for name in imported_names(path):
            if any(name == banned or name.startswith(banned + ".") for banned in forbidden):
                found.append(f"{path.relative_to(APP.parent)} imports {name}")
    return found


@pytest.mark.parametrize("layer", FORBIDDEN)
def test_layers_import_only_downwards(layer: str) -> None:
    assert violations(layer, FORBIDDEN[layer]) == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text("def f():\n    from training.data import build_splits\n    import torch.nn\n")
    assert {"training.data", "torch.nn"} <= imported_names(source)
