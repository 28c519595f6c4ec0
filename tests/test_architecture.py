"""The library's shape, read from its source with ``ast`` (nothing is imported): each module imports only from its
own layer or the layers below it (``docs/architecture.md`` draws them), and no function grows past 60 lines."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lib" / "layerfreeze"
MODULES = sorted(PACKAGE.glob("*.py"))

# Bottom to top. A module may import from its own layer and the ones below, never from one above.
LAYERS = [
    ("runtime", {"runtime", "checks"}),
    ("models and layers", {"models", "layers", "data", "schedules", "evidence"}),
    ("freezing, memory, inspection", {"freezing", "memory", "inspection", "plans", "cache", "timing", "optim",
                                      "adapters"}),
    ("training", {"training", "trainer"}),
    ("strategies, forgetting, widgets", {"strategies", "forgetting", "widgets", "signals", "plots"}),
    ("course", {"course", "publish", "gpu_run", "takeaways", "colab", "cli", "__init__", "__main__"}),
]
LAYER_OF = {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}
MAX_FUNCTION_LINES = 60


def imported_modules(path: Path) -> set[str]:
    """The package's own modules that ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [alias.name for alias in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "layerfreeze":
            found.add(node.module.split(".")[1] if "." in node.module else "__init__")
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] if "." in alias.name else "__init__"
                         for alias in node.names if alias.name.split(".")[0] == "layerfreeze")
    return found


def test_every_module_has_a_layer():
    unplaced = [path.stem for path in MODULES if path.stem not in LAYER_OF]
    assert not unplaced, f"place {unplaced} in a layer of LAYERS (and in docs/architecture.md)"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_no_module_imports_a_layer_above_its_own(path):
    layer = LAYER_OF[path.stem]
    above = sorted(m for m in imported_modules(path) if LAYER_OF.get(m, -1) > layer)
    assert not above, (f"{path.stem} ({LAYERS[layer][0]}) imports {above} from a layer above it: move the shared "
                       "piece down, or the importing code up")


def test_the_core_never_imports_the_course_layer():
    course = LAYERS[-1][1]
    core = [path for path in MODULES if LAYER_OF.get(path.stem, len(LAYERS)) <= LAYER_OF["training"]]
    assert core and not {path.stem: imported_modules(path) & course for path in core
                         if imported_modules(path) & course}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_no_function_is_longer_than_60_lines(path):
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if node.end_lineno - first + 1 > MAX_FUNCTION_LINES:
                long.append(f"{node.name} ({node.end_lineno - first + 1} lines)")
    assert not long, f"{path.name}: split {', '.join(long)} into named steps of at most {MAX_FUNCTION_LINES} lines"


def test_the_checks_read_imports():
    """The layering check itself: it sees relative, absolute and in-function imports."""
    assert {"runtime", "optim", "data"} <= imported_modules(PACKAGE / "training.py")
    assert "__init__" in imported_modules(PACKAGE / "cli.py")  # `import layerfreeze as lf`, inside a function
