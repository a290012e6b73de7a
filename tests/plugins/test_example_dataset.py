"""The example third-party dataset package, pip-installed, its archive fetched from a local
mirror, and trained on through the real ``metactl`` command; and the GPU mini-ImageNet script in
its tiny mode, run on the same dataset on the CPU.

The package goes into a temporary folder seen only by the subprocesses (through PYTHONPATH),
as in ``test_example_plugin.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from testsupport import (
    REPOSITORY,
    install_example,
    metactl_executable,
    run_metactl,
    with_pythonpath,
)

pytestmark = pytest.mark.slow

DISTRIBUTION = "metactl-example-dataset 0.1.0"


@pytest.fixture(scope="module")
def example(tmp_path_factory, offline_builds) -> dict[str, str]:
    """The environment of a machine with the package installed, an empty data root and a
    mirror holding the archive as its publisher made it."""
    work = tmp_path_factory.mktemp("example-dataset")
    environment = {**with_pythonpath(install_example("metactl-example-dataset", work)),
                   "METACTL_HOME": str(work / "home"), "METACTL_MIRROR": str(work / "mirror")}
    made = subprocess.run([sys.executable, "-m", "metactl_example_dataset.make_archive",
                           str(work / "mirror")], capture_output=True, text=True,
                          env={**os.environ, **environment}, timeout=120)
    assert made.returncode == 0, made.stderr
    return environment


def test_the_dataset_is_listed_with_its_package_and_fetched_from_the_mirror(example):
    listed = json.loads(run_metactl("data", "list", "--json", env=example).stdout)
    entry, = (item for item in listed if item["name"] == "example-shapes")
    assert (entry["package"], entry["state"]) == (DISTRIBUTION, "absent")
    fetched = run_metactl("data", "fetch", "example-shapes", env=example)
    assert fetched.returncode == 0, fetched.stderr
    assert "shapes.zip: fetched 500,282 bytes, matches the official checksum" in fetched.stderr
    info = json.loads(run_metactl("data", "info", "example-shapes", "--json", env=example).stdout)
    assert {s["name"]: (s["classes"], s["images"]) for s in info["splits"]} == {
        "train": (10, 100), "val": (5, 50), "test": (5, 50)}
    assert info["splits"][0]["image_shape"] == [28, 28, 3]
    assert len(info["provenance"]["normalisation"]["std"]) == 3


def test_training_on_it_beats_the_untrained_model(example, tmp_path):
    def trained_and_evaluated(episodes: str, name: str) -> float:
        run = tmp_path / name
        trained = run_metactl("train", "prototypical", "--dataset", "example-shapes",
                              "--train-way", "5", "--query", "5", "--episodes", episodes,
                              "--lr", lr(episodes),
                              "--set", "val_episodes=0", "--device", "cpu", "--out", str(run),
                              env=example)
        assert trained.returncode == 0, trained.stderr
        evaluated = run_metactl("evaluate", str(run), "--episodes", "300", "--json", env=example)
        assert evaluated.returncode == 0, evaluated.stderr
        return json.loads(evaluated.stdout)["mean"]

    def lr(episodes: str) -> str:
        return "0" if episodes == "1" else "0.001"  # one step at rate 0: the untrained model

    untrained, trained = trained_and_evaluated("1", "untrained"), trained_and_evaluated("60",
                                                                                        "run")
    # Measured when written: 0.61 untrained and 0.93 after 60 episodes (5-way, chance 0.2).
    assert trained > untrained + 0.15 and trained > 0.8, (untrained, trained)


def test_the_gpu_script_runs_end_to_end_in_its_tiny_mode(example, tmp_path):
    out = tmp_path / "out"
    script = REPOSITORY / "benchmarks" / "gpu_mini_imagenet.sh"
    result = subprocess.run([str(script), str(out)], capture_output=True, text=True,
                            timeout=3600, env={**os.environ, **example,
                                              "DATASET": "example-shapes", "TINY": "1",
                                              "DEVICE": "cpu",
                                              "MINI_IMAGENET_MIRROR": example["METACTL_MIRROR"],
                                              "METACTL": metactl_executable()})
    assert result.returncode == 0, result.stderr[-3000:]
    names = ["maml-5way-1shot", "maml-5way-5shot", "prototypical-5way-1shot",
             "prototypical-5way-5shot"]
    for name in names:
        evaluation = json.loads((out / f"evaluation-{name}.json").read_text())
        assert (evaluation["way"], evaluation["shot"], evaluation["episodes"]) == (
            5, int(name[-5]), 20)
    summary = (out / "summary.md").read_text()
    assert all(f"| {name} | 2 |" in summary for name in names), summary  # 4 tasks, 2 per step
