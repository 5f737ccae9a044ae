"""The README's app command installs requirements.txt alone: that must cover every module the
app and the `cnet` package (training included) import, not only what the test set-up adds."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def third_party_modules(files: list[Path]) -> dict[str, str]:
    """Top-level module name -> one file importing it, for imports outside the standard library."""
    found: dict[str, str] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "cnet":
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def installed_closure(requirements_file: Path) -> set[str]:
    """The distributions `pip install -r requirements_file` brings: the listed ones and, through
    their metadata, everything they require (extras left out)."""
    pending = []
    for line in requirements_file.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            pending.append(Requirement(line))
    closure: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        wanted = requirement.marker is None or requirement.marker.evaluate({"extra": ""})
        if name in closure or not wanted:
            continue
        closure.add(name)
        pending.extend(Requirement(text) for text in metadata.requires(requirement.name) or [])
    return closure


def test_requirements_txt_covers_every_import_of_the_app_and_the_package():
    modules = third_party_modules([ROOT / "app.py", *sorted((ROOT / "cnet").rglob("*.py"))])
    assert {"torch", "gradio", "diffusers"} <= set(modules)  # the scan sees the imports
    providers = metadata.packages_distributions()
    closure = installed_closure(ROOT / "requirements.txt")
    missing = {
        module: where
        for module, where in modules.items()
        if not {canonicalize_name(dist) for dist in providers.get(module, [module])} & closure
    }
    assert not missing, f"add to requirements.txt what these imports need: {missing}"


def test_the_package_builds_with_requirements_txt_as_its_dependencies_and_a_cnet_command(tmp_path):
    """`pip install -e .` must install what requirements.txt lists and put `cnet` on the PATH."""
    import shutil
    import subprocess
    import zipfile

    pytest.importorskip("setuptools", minversion="77", reason="building needs setuptools>=77")
    for name in ("pyproject.toml", "requirements.txt"):
        shutil.copy(ROOT / name, tmp_path)  # a copy: the build leaves build/ in its source folder
    shutil.copytree(ROOT / "cnet", tmp_path / "cnet", ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run([*command, "-q", "-w", "wheel", "."], cwd=tmp_path, check=True)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(name for name in names if name.endswith(".dist-info/METADATA"))
        lines = archive.read(info).decode().splitlines()
        points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    listed = {
        canonicalize_name(Requirement(line.split("#")[0]).name)
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    }
    requires = {
        canonicalize_name(Requirement(line.removeprefix("Requires-Dist:")).name)
        for line in lines
        if line.startswith("Requires-Dist:")
    }
    assert requires == listed
    assert "cnet = cnet.__main__:main" in points
    sources = {path.relative_to(ROOT).as_posix() for path in (ROOT / "cnet").rglob("*.py")}
    assert sources <= set(names)  # every subpackage, the training and UI code included
