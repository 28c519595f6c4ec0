"""The library's shape, read from its source with ``ast`` (nothing is imported): four folders by layer (``base``,
loading and runtime; ``core``, the concepts; ``study``, the tools that measure and report; ``course``, the
machinery), each importing only from its own layer or the ones below; no import cycle between modules; no function
past 60 lines; the concept layer at most half of the library, as ``docs/architecture.md`` counts it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lib" / "layerfreeze"
LAYERS = ["base", "core", "study", "course", ""]  # bottom to top; "" is the package's own __init__ and __main__
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES = 60


def name_of(path: Path) -> str:
    """``core.freezing``, ``course`` (a folder's ``__init__``), ``__init__`` (the package's)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else len(LAYERS) - 1


def _resolve(path: Path, node: ast.ImportFrom) -> list[str]:
    """The package's modules an ``from ... import`` names, as ``layer.module`` (or a layer's package)."""
    if node.level == 0:
        if not (node.module or "").startswith("layerfreeze"):
            return []
        base = node.module.split(".")[1:]
    else:
        here = list(path.relative_to(PACKAGE).parent.parts)
        base = here[:len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
    if node.module is None or (node.level == 0 and len(base) < 2) or (node.level and len(base) < 2):
        candidates = [".".join(base + [alias.name]) for alias in node.names]
        return [c for c in candidates if (PACKAGE / (c.replace(".", "/") + ".py")).exists()] or [".".join(base)]
    return [".".join(base)]


def imported_modules(path: Path) -> set[str]:
    """The package's own modules that ``path`` imports, at the top or inside a function (``""``: the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            found.update(_resolve(path, node))
        elif isinstance(node, ast.Import):
            found.update(".".join(alias.name.split(".")[1:]) for alias in node.names
                         if alias.name.split(".")[0] == "layerfreeze")
    return found


def test_every_module_sits_in_a_layer_folder():
    loose = [name_of(p) for p in MODULES if p.parent == PACKAGE and p.stem not in ("__init__", "__main__")]
    assert not loose, f"put {loose} in base/, core/, study/ or course/ (and in docs/architecture.md)"


@pytest.mark.parametrize("path", MODULES, ids=name_of)
def test_no_module_imports_a_layer_above_its_own(path):
    mine = layer_of(name_of(path))
    above = sorted(m for m in imported_modules(path) if layer_of(m) > mine)
    assert not above, (f"{name_of(path)} ({LAYERS[mine] or 'package'}) imports {above} from a layer above it: move "
                       "the shared piece down, or the importing code up")


def test_no_module_imports_the_package_itself():
    """``import layerfreeze as lf`` inside the library runs back up through ``__init__``."""
    offenders = [name_of(p) for p in MODULES if p.parent != PACKAGE and "" in imported_modules(p)]
    assert not offenders


def test_no_import_cycle_between_modules():
    graph = {name_of(p): {m for m in imported_modules(p) if m} for p in MODULES if p.parent != PACKAGE}
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            raise AssertionError("import cycle: " + " -> ".join(trail + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt in graph and nxt != node.split(".")[0]:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        visit(node, [])


@pytest.mark.parametrize("path", MODULES, ids=name_of)
def test_no_function_is_longer_than_60_lines(path):
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if node.end_lineno - first + 1 > MAX_FUNCTION_LINES:
                long.append(f"{node.name} ({node.end_lineno - first + 1} lines)")
    assert not long, f"{path.name}: split {', '.join(long)} into named steps of at most {MAX_FUNCTION_LINES} lines"


def test_the_checks_read_imports():
    """The layering check itself: it sees relative imports in and across folders, and in-function imports."""
    assert {"base.runtime", "core.optim", "base.data"} <= imported_modules(PACKAGE / "core" / "training.py")
    assert {"core.training", "study.evidence"} <= imported_modules(PACKAGE / "study" / "sequential.py")
    assert "course.runner" in imported_modules(PACKAGE / "course" / "cli.py")  # inside a function
    assert layer_of("study.plots") > layer_of("core.layers") and layer_of("course.cli") > layer_of("study.plots")


def layer_lines() -> dict[str, int]:
    """Lines per layer folder, and ``""`` for the package's own two files."""
    counts: dict[str, int] = {}
    for path in MODULES:
        layer = name_of(path).split(".")[0] if path.parent != PACKAGE else ""
        counts[layer] = counts.get(layer, 0) + len(path.read_text().splitlines())
    return counts


def test_the_concept_layer_is_at_most_half_of_the_library():
    counts = layer_lines()
    assert counts["core"] <= sum(counts.values()) / 2, counts


def test_the_architecture_page_counts_each_layer_within_ten_percent():
    """docs/architecture.md's table (``| `core/` | ... | 3,671 |``) stays near the truth as the code grows."""
    import re

    page = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    stated = {m.group(1): int(m.group(2).replace(",", "")) for m in re.finditer(r"^\| `(\w+)/` \|.*\| ([\d,]+) \|$",
                                                                                  page, re.M)}
    actual = layer_lines()
    assert set(stated) == {"base", "core", "study", "course"}
    off = {layer: (stated[layer], actual[layer]) for layer in stated
           if abs(stated[layer] - actual[layer]) > 0.1 * actual[layer]}
    assert not off, f"update docs/architecture.md's line counts (stated, actual): {off}"
