"""``metactl plugins`` through the installed command, as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def metactl_command() -> str:
    """The ``metactl`` script installed beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / ("metactl.exe" if os.name == "nt" else "metactl")
    found = str(beside) if beside.is_file() else shutil.which("metactl")
    if found is None:
        pytest.skip("the metactl command is not installed (pip install -e .)")
    return found


def run_metactl(*arguments: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    environment = dict(os.environ)
    if extra_path is not None:
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(extra_path), environment.get("PYTHONPATH")]))
    return subprocess.run([metactl_command(), *arguments], capture_output=True, text=True,
                          env=environment, timeout=120)


@pytest.fixture
def broken_plugin(tmp_path) -> Path:
    """A folder that, on PYTHONPATH, installs a distribution whose plugin fails at import."""
    dist_info = tmp_path / "broken_metactl_plugin-2.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-metactl-plugin\nVersion: 2.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[metactl]\nbroken-plugin = broken_metactl_plugin\n")
    (tmp_path / "broken_metactl_plugin.py").write_text(
        "raise ImportError('needs the package frobnicate')\n")
    return tmp_path


def test_list_shows_each_algorithm_with_its_family_summary_and_package():
    result = run_metactl("plugins", "list")
    assert result.returncode == 0, result.stderr
    line, = (line for line in result.stdout.splitlines() if line.startswith("prototypical "))
    assert " metric " in line and "class-mean embeddings" in line and "[metactl 0.1" in line
    assert "Broken" not in result.stdout


def test_list_as_json():
    result = run_metactl("plugins", "list", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    entry, = (e for e in listing["algorithms"] if e["name"] == "prototypical")
    assert entry["family"] == "metric" and entry["plugin"] == "prototypical"
    assert entry["distribution"].startswith("metactl ")
    assert listing["failures"] == []


def test_a_broken_plugin_is_listed_apart_and_the_others_still_work(broken_plugin):
    result = run_metactl("plugins", "list", extra_path=broken_plugin)
    assert result.returncode == 0, result.stderr
    working, _, broken = result.stdout.partition("Broken plugins")
    assert "prototypical" in working
    assert ("broken-plugin [broken-metactl-plugin 2.0]: ImportError: needs the package "
            "frobnicate") in broken
    listing = json.loads(run_metactl("plugins", "list", "--json", extra_path=broken_plugin).stdout)
    assert listing["failures"] == [{"plugin": "broken-plugin",
                                    "distribution": "broken-metactl-plugin 2.0",
                                    "error": "ImportError: needs the package frobnicate"}]


def test_info_shows_paper_device_hyperparameters_and_engine_settings():
    result = run_metactl("plugins", "info", "prototypical")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("prototypical (metric): ")
    assert "Snell, Swersky & Zemel (2017)" in text
    assert "package:  metactl 0.1" in text and "prefers cuda, cpu" in text
    assert "results:  omniglot (Table 1): 5w1s 98.8, 5w5s 99.7, 20w1s 96.0, 20w5s 98.9" in text
    hyperparameters, _, engine = text.partition("Engine settings")
    assert "backbone" in hyperparameters and "conv4" in hyperparameters
    assert "lr " not in hyperparameters, "engine settings are listed apart"
    train_way, = (line for line in engine.splitlines() if line.split()[:1] == ["train_way"])
    assert "omniglot: 60" in train_way, "a per-dataset override of an engine setting is shown"


def test_info_as_json_keeps_the_defaults_per_setting():
    details = json.loads(run_metactl("plugins", "info", "prototypical", "--json").stdout)
    assert details["hyperparameters"]["hidden"] == {"defaults": {"*": 64},
                                                    "help": "channels of each conv block"}
    assert details["engine_settings"]["train_way"]["defaults"] == {
        "engine": None, "omniglot": 60, "mini-imagenet/1-shot": 30, "mini-imagenet/5-shot": 20}
    assert details["device"]["preferred"] == ["cuda", "cpu"]
    first = details["paper_results"][0]
    assert (first["dataset"], first["way"], first["shot"], first["accuracy"]) == (
        "omniglot", 5, 1, 98.8)


def test_info_of_an_unknown_name_suggests_the_nearest():
    result = run_metactl("plugins", "info", "prototypicl")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == ("Error: unknown algorithm 'prototypicl'. "
                             "Did you mean 'prototypical'?\n")


NO_TORCH_PROBE = textwrap.dedent("""
    import sys
    sys.argv = ["metactl", *sys.argv[1:]]
    from metactl.cli.main import main
    try:
        main()
    except SystemExit:
        pass
    sys.stdout.flush()
    sys.stderr.write("torch imported: %s" % ("torch" in sys.modules))
""")


@pytest.mark.parametrize("arguments", [["--help"], ["plugins", "list"], ["plugins", "info",
                                                                          "prototypical"]])
def test_listing_plugins_does_not_import_torch(arguments):
    """Plugin modules and CLI modules import torch only inside the code that runs a network."""
    result = subprocess.run([sys.executable, "-c", NO_TORCH_PROBE, *arguments],
                            capture_output=True, text=True, timeout=120)
    assert result.stderr.endswith("torch imported: False"), result.stderr
