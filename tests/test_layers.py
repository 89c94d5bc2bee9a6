"""The package's import graph keeps its layers: front ends on top, the engine in the middle, slides, encoders,
model and features below; no module imports another's private names (ARCHITECTURE.md, "Layers")."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "antoni_bridge"
FRONT_ENDS = {
    "cli",
    "commands",
    "daemon",
    "desk",
    "batch",
    "client",
    "demo",
    "train",
    "model_sources",
    "qupath_install",
    "cohort",
}
ENGINE = {"engine"}
BELOW = {
    "slides",
    "encoders",
    "model",
    "features",
    "files",
    "platforms",
    "errors",
    "paths",
    "gpu",
    "conversations",
    "demo_assets",
    "demo_task",
    "maps",
}


def _imports(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, imported module, names) for every import of the package in `path`, lazy ones included."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("antoni_bridge"):
            yield node.lineno, node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("antoni_bridge"):
                    yield node.lineno, alias.name, []


def _part(module: str) -> str:
    """The package part a module belongs to: `antoni_bridge.slides.reader` -> `slides`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _edges() -> Iterator[tuple[str, int, str, list[str]]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE.parent)
        for line, module, names in _imports(path):
            yield f"{where}:{line}", _part(".".join(where.with_suffix("").parts)), module, names


def test_lower_layers_never_import_the_engine_or_a_front_end() -> None:
    wrong = [
        f"{where} imports {module}"
        for where, part, module, _ in _edges()
        if part in BELOW and _part(module) in FRONT_ENDS | ENGINE
    ]
    assert not wrong, "\n".join(wrong)


def test_the_engine_never_imports_a_front_end() -> None:
    wrong = [
        f"{where} imports {module}"
        for where, part, module, _ in _edges()
        if part in ENGINE and _part(module) in FRONT_ENDS
    ]
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_another_modules_private_names() -> None:
    wrong = [
        f"{where} imports {name} from {module}"
        for where, _, module, names in _edges()
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not wrong, "\n".join(wrong)


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {_part(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)) for p in PACKAGE.rglob("*.py")}
    assert parts - {"", "__init__", "__main__"} <= FRONT_ENDS | ENGINE | BELOW
