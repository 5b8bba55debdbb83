"""Imports point one way (docs/architecture.md): each package of stemsplit imports only packages below
it in LAYERS, counting imports inside functions and under TYPE_CHECKING too, so there is no cycle."""

import ast
from pathlib import Path

import stemsplit

PACKAGE = Path(stemsplit.__file__).parent

# Lowest first; a package may import its own modules and those of any earlier line.
LAYERS = [
    {"errors", "version"},
    {"card", "files"},
    {"audio", "model"},
    {"datasets", "output", "report"},
    {"weights"},
    {"batch"},
    {"engine"},
    {"evaluate", "separate"},
    {"train"},
    {"cli"},
    {"__init__", "__main__"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def _part(module: str) -> str:
    """stemsplit.engine.separator -> engine; stemsplit -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, int]]:
    """(the stemsplit module imported, line) for every import in ``path``, wherever it is."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if path.name == "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from .. import weights` imports the module stemsplit.weights
                module_path = PACKAGE.parent.joinpath(*f"{target}.{alias.name}".split("."))
                is_module = module_path.is_dir() or module_path.with_suffix(".py").is_file()
                found.append((f"{target}.{alias.name}" if is_module else target, node.lineno))
    return [(target, line) for target, line in found if target.split(".")[0] == "stemsplit"]


def test_every_package_imports_only_packages_below_it():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 100
    wrong = []
    for path in files:
        own = _part(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        assert own in LEVEL, f"{path}: a new package: give it its place in LAYERS"
        for target, line in _imports(path):
            other = _part(target)
            if other != own and LEVEL[other] >= LEVEL[own]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({own}) imports {target} ({other})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)
