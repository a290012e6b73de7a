"""The built-in plugins are declared exactly like third-party ones: the entry points listed in
pyproject.toml, the modules under ``plugins/`` (algorithms) and ``datasets/`` (datasets) and the
installed metadata must all agree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from metactl import hookspecs

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "metactl_plugins"
PACKAGES = {"metactl_plugins": "plugins", "metactl_datasets": "datasets"}
REINSTALL_HINT = "run `pip install -e .` again so the installed entry points are refreshed"


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def declared_entry_points() -> dict[str, str]:
    return dict(pyproject()["project"].get("entry-points", {}).get(hookspecs.ENTRY_POINT_GROUP, {}))


def plugin_modules() -> set[str]:
    """``metactl_plugins.<name>`` for every module or package under ``plugins/``, and
    ``metactl_datasets.<name>`` for every module under ``datasets/``."""
    found = set()
    for package, folder_name in PACKAGES.items():
        folder = ROOT / folder_name
        modules = {path.stem for path in folder.glob("*.py") if path.stem != "__init__"}
        packages = {path.parent.name for path in folder.glob("*/__init__.py")}
        found |= {f"{package}.{name}" for name in modules | packages}
    return found


def test_plugin_folders_are_mapped_to_the_importable_packages():
    setuptools = pyproject()["tool"]["setuptools"]
    for package, folder in PACKAGES.items():
        assert setuptools["package-dir"][package] == folder
        assert package in setuptools["packages"]


def test_every_plugin_module_is_declared_and_every_declaration_has_a_module():
    declared = {value.partition(":")[0] for value in declared_entry_points().values()}
    assert plugin_modules() - declared == set(), (
        "modules under plugins/ or datasets/ with no [project.entry-points.metactl] line")
    assert declared - plugin_modules() == set(), (
        "entry points in pyproject.toml whose module is not under plugins/ or datasets/")


def test_plugin_packages_are_listed_for_the_wheel():
    """A package under plugins/ that [tool.setuptools] packages omits is missing from wheels
    although an editable install finds it."""
    packages = set(pyproject()["tool"]["setuptools"]["packages"])
    nested = {f"{PACKAGE}.{path.parent.relative_to(ROOT / 'plugins').as_posix().replace('/', '.')}"
              for path in (ROOT / "plugins").glob("*/**/__init__.py")}
    assert nested - packages == set()


def test_the_installed_metadata_matches_pyproject():
    try:
        installed = metadata.distribution("metactl").entry_points
    except metadata.PackageNotFoundError:
        pytest.skip("metactl is not installed in this interpreter")
    group = {e.name: e.value for e in installed if e.group == hookspecs.ENTRY_POINT_GROUP}
    assert group == declared_entry_points(), REINSTALL_HINT


@pytest.mark.slow
def test_a_wheel_ships_the_plugins_and_their_entry_points(tmp_path, offline_builds):
    """Build a wheel from a copy of the project (so no build/ folder lands in the checkout)."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs",
        "tests", "examples", "benchmarks"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "--disable-pip-version-check", "--quiet", "--wheel-dir",
                    str(tmp_path / "wheels"), str(source)], check=True, capture_output=True)
    wheel, = (tmp_path / "wheels").glob("metactl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points_file, = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(entry_points_file).decode()
    for module in plugin_modules():
        path = module.replace(".", "/")
        assert f"{path}.py" in names or f"{path}/__init__.py" in names, module
    for name, value in declared_entry_points().items():
        assert f"{name} = {value}" in entry_points
