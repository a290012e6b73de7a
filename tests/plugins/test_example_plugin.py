"""The example third-party plugin, pip-installed and driven through the real ``metactl`` command.

The package is installed with ``pip install --target`` into a temporary folder that only the
subprocesses of these tests see (through ``PYTHONPATH``), never into the shared environment: a
test that installs into the running interpreter leaks the plugin into every other test of the
session (and into concurrent sessions in the same virtual environment), and leaves it behind
when the process is killed before its ``finally`` runs. The package is copied first so that
pip's in-tree build leaves no ``build/`` folder in the checkout.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from testsupport import SHARED_DATASETS, install_example

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "metactl-example-plugin"
ALGORITHM = "example-cosine-centroid"
DISTRIBUTION = "metactl-example-plugin 0.1.0"


pytestmark = pytest.mark.slow


def metactl_command() -> str:
    beside = Path(sys.executable).parent / ("metactl.exe" if os.name == "nt" else "metactl")
    found = str(beside) if beside.is_file() else shutil.which("metactl")
    if found is None:
        pytest.skip("the metactl command is not installed (pip install -e .)")
    return found


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory, offline_builds) -> Path:
    """A folder holding the installed example package and its dist-info."""
    return install_example(EXAMPLE.name, tmp_path_factory.mktemp("example-plugin"))


def run(arguments: list[str], plugin_path: Path, **environment: str
        ) -> subprocess.CompletedProcess:
    env = {**os.environ, **environment}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_path), env.get("PYTHONPATH")]))
    return subprocess.run(arguments, capture_output=True, text=True, env=env, timeout=600)


def metactl(plugin_path: Path, *arguments: str, **environment: str) -> str:
    result = run([metactl_command(), *arguments], plugin_path, **environment)
    assert result.returncode == 0, f"metactl {' '.join(arguments)} failed:\n{result.stderr}"
    return result.stdout


def test_plugins_list_shows_the_installed_plugin_with_its_distribution(plugin_path):
    listing = json.loads(metactl(plugin_path, "plugins", "list", "--json"))
    entry, = (e for e in listing["algorithms"] if e["name"] == ALGORITHM)
    assert entry == {"name": ALGORITHM, "family": "metric", "plugin": "metactl-example-plugin",
                     "distribution": DISTRIBUTION,
                     "summary": "example plugin: nearest class centroid by scaled cosine "
                                "similarity"}
    assert listing["failures"] == []
    assert f"[{DISTRIBUTION}]" in metactl(plugin_path, "plugins", "list")


def test_plugins_info_shows_its_hyperparameters(plugin_path):
    details = json.loads(metactl(plugin_path, "plugins", "info", ALGORITHM, "--json"))
    assert details["hyperparameters"]["scale"]["defaults"] == {"*": 10.0}
    assert details["engine_settings"]["train_way"]["defaults"] == {"engine": None, "omniglot": 20}


def test_the_example_passes_its_own_tests(plugin_path):
    tests = EXAMPLE / "tests"
    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                  "--rootdir", str(tests), str(tests)], plugin_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def data_environment(tmp_path_factory) -> dict[str, str]:
    """Where training finds Omniglot: the session's $METACTL_HOME (CI shares one across the
    tests) or a fresh folder, filled from the offline mirror."""
    environment = {}
    if not os.environ.get("METACTL_HOME"):
        environment["METACTL_HOME"] = str(tmp_path_factory.mktemp("metactl-home"))
    if not os.environ.get("METACTL_MIRROR"):
        if not (SHARED_DATASETS / "omniglot").is_dir():
            pytest.skip("no offline Omniglot mirror (set METACTL_MIRROR)")
        environment["METACTL_MIRROR"] = str(SHARED_DATASETS)
    return environment


def _has_train_command(plugin_path: Path) -> bool:
    return run([metactl_command(), "train", "--help"], plugin_path).returncode == 0


def _support_and_queries(folder: Path) -> tuple[Path, Path]:
    """Three real characters: one drawing each as support, two each as queries."""
    archive_path = SHARED_DATASETS / "omniglot" / "images_background_small1.zip"
    if not archive_path.is_file():
        pytest.skip(f"{archive_path} is not here")
    with zipfile.ZipFile(archive_path) as archive:
        for index in (1, 2, 3):
            prefix = f"images_background_small1/Balinese/character0{index}/"
            members = sorted(n for n in archive.namelist() if n.startswith(prefix)
                             and n.endswith(".png"))[:3]
            for role, chosen in (("support", members[:1]), ("queries", members[1:])):
                for member in chosen:
                    target = folder / role / f"character{index}" / Path(member).name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(member))
    return folder / "support", folder / "queries"


# The model the run below starts from (same settings, same seed), saved untrained.
UNTRAINED = ("import sys; from pathlib import Path; from testsupport import untrained_run; "
             "untrained_run(sys.argv[1], {'train_way': 5, 'episodes': 20, 'device': 'cpu'}, "
             "None, Path(sys.argv[2]))")


def test_train_evaluate_and_predict_with_the_plugin(plugin_path, data_environment, tmp_path,
                                                   record_property):
    """Untrained, the plugin's Conv-4 already scores 56.8% (+- 2.1) on these 100 episodes
    (chance: 20%); 20 training episodes bring it to 70.0% / 70.6% with 1 / 2 threads (AVX2)."""
    if not _has_train_command(plugin_path):
        pytest.skip("`metactl train` is not available in this build")
    run_folder = tmp_path / "run"
    # Small tasks and few validation episodes keep this at seconds of training on a CPU.
    printed = metactl(plugin_path, "train", ALGORITHM, "--dataset", "omniglot", "--episodes",
                      "20", "--train-way", "5", "--set", "val_episodes=10", "--device", "cpu",
                      "--out", str(run_folder), **data_environment)
    assert printed.strip() == str(run_folder)
    assert (run_folder / "checkpoints" / "last.pt").is_file()

    evaluation = evaluate_on_100_episodes(plugin_path, run_folder, data_environment)
    untrained_folder = tmp_path / "untrained"
    made = run([sys.executable, "-c", UNTRAINED, ALGORITHM, str(untrained_folder)], plugin_path,
               **data_environment, PYTHONPATH=str(ROOT / "tests"))
    assert made.returncode == 0, made.stderr
    untrained = evaluate_on_100_episodes(plugin_path, untrained_folder, data_environment)
    record_property("untrained", round(untrained["mean"], 4))
    record_property("trained", round(evaluation["mean"], 4))
    assert evaluation["mean"] > untrained["mean"] + 0.06, (untrained, evaluation)
    assert evaluation["mean"] > 0.63, evaluation

    support, queries = _support_and_queries(tmp_path / "images")
    output = tmp_path / "predictions.csv"
    metactl(plugin_path, "predict", str(run_folder), "--support", str(support), "--query",
            str(queries), "-o", str(output), **data_environment)
    with output.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 6
    assert {row["predicted_class"] for row in rows} <= {"character1", "character2",
                                                        "character3"}


def evaluate_on_100_episodes(plugin_path: Path, run_folder: Path, environment: dict) -> dict:
    evaluation = json.loads(metactl(plugin_path, "evaluate", str(run_folder), "--episodes",
                                    "100", "--json", **environment))
    assert evaluation["episodes"] == 100
    return evaluation
