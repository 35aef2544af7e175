"""The package's layers: every import points down (or within a layer), no module imports itself back
through others, and production code never runs the naive twin."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "iopo_fast"

# Lowest first; a module may import its own layer and those below it. Top-level modules are layers of
# their own name, sub-packages by the folder.
LAYERS = [
    {"utils", "compat", "loss", "distributed"},
    {"kernels"},
    {"data"},
    {"model"},
    {"endpoints"},
    {"generation"},
    {"evaluation"},
    {"pairs"},
    {"instructions"},
    {"config"},
    {"training"},
    {"cli", "__init__"},
]
NAIVE = "iopo_fast.model.naive"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """The iopo_fast modules `path` imports, at module level or inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("iopo_fast"):
                # `from .model import naive` imports the module iopo_fast.model.naive.
                found |= {f"{target}.{alias.name}" if _is_module(f"{target}.{alias.name}") else target
                          for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("iopo_fast")}
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    return next(number for number, names in enumerate(LAYERS) if key in names)


MODULES = {module_name(path): imported_modules(path) for path in PACKAGE.rglob("*.py")}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)


def test_imports_point_down():
    upward = [f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
              for module, targets in MODULES.items() for target in targets if layer(target) > layer(module)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(MODULES[module]):
            assert target not in path, "import cycle: " + " -> ".join(path[path.index(target):] + [target])
            if target not in done:
                visit(target, path + [target])
        done.add(module)

    for module in MODULES:
        visit(module, [module])


def test_production_code_does_not_run_the_naive_twin():
    # The public API re-exports it for tests and users; nothing else may call it.
    importers = sorted(module for module, targets in MODULES.items() if NAIVE in targets and module != "iopo_fast")
    assert not importers, importers
