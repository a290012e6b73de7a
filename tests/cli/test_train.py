"""metactl train / evaluate on the real Omniglot store, through the library and the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import torch
import yaml
from testsupport import metactl_executable, run_metactl, untrained_run

from metactl.engine.checkpoint import load_checkpoint
from metactl.engine.config import resolve_config
from metactl.engine.trainer import train
from metactl_plugins.prototypical import PrototypicalNetworks

QUICK = ["--train-way", "5", "--set", "train_query=5", "--set", "val_every=20",
         "--set", "val_episodes=20"]


def quick_config(**overrides):
    values = {"train_way": 5, "train_query": 5, "query": 5, "val_every": 2, "val_episodes": 4,
              "episodes": 6, **overrides}
    return resolve_config("prototypical", PrototypicalNetworks.defaults, {}, values, {})


@pytest.mark.slow
def test_resumed_run_equals_an_uninterrupted_one(omniglot_root, tmp_path):
    straight, _ = train("prototypical", quick_config(), out=tmp_path / "straight",
                        root=str(omniglot_root), report=lambda message: None)
    first, state = train("prototypical", quick_config(episodes=3), out=tmp_path / "split",
                         root=str(omniglot_root), report=lambda message: None)
    assert state.step == 3
    resumed, state = train("prototypical", quick_config(), resume=first.path,
                           root=str(omniglot_root), report=lambda message: None)
    assert state.step == 6
    expected = load_checkpoint(straight.last)
    actual = load_checkpoint(resumed.last)
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, actual["model"][name]), name
    steps = [json.loads(line)["step"] for line in resumed.metrics.read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 6


@pytest.mark.slow
def test_train_then_evaluate_beats_the_untrained_model(omniglot_root, tmp_path, record_property):
    """Untrained, the Conv-4's random features already score 56.3% (+- 1.6) on these 200
    episodes (chance: 20%); 60 training episodes reach 71.6% / 71.9% with 1 / 2 threads (AVX2).
    The threshold, 64%, sits about four 95% intervals from both."""
    env = {"METACTL_HOME": str(omniglot_root)}
    run = tmp_path / "run"
    trained = run_metactl("train", "prototypical", "--episodes", "60", *QUICK, "--out", str(run),
                          env=env)
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.strip() == str(run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["algorithm"] == "prototypical" and config["train_way"] == 5
    assert (run / "checkpoints" / "best.pt").is_file()
    result = evaluate_on_200_episodes(run, env)
    assert result["episodes"] == 200 and result["way"] == 5 and result["shot"] == 1
    assert 0 < result["ci95"] < 0.05
    assert json.loads((run / "evaluation-test-5way-1shot.json").read_text()) == result
    untrained = untrained_run("prototypical", {"train_way": 5, "train_query": 5, "episodes": 60},
                              omniglot_root, tmp_path / "untrained")
    baseline = evaluate_on_200_episodes(untrained.path, env)
    record_property("untrained", round(baseline["mean"], 4))
    record_property("trained", round(result["mean"], 4))
    assert result["mean"] > baseline["mean"] + 0.06, (baseline, result)
    assert result["mean"] > 0.64, result


def evaluate_on_200_episodes(run, env) -> dict:
    evaluated = run_metactl("evaluate", str(run), "--episodes", "200", "--json", env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    return json.loads(evaluated.stdout)


@pytest.mark.slow
def test_ctrl_c_saves_and_the_run_resumes(omniglot_root, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(
        [metactl_executable(), "train", "prototypical", "--episodes", "100000", *QUICK,
         "--out", str(run)], stderr=subprocess.PIPE, text=True,
        env={**__import__("os").environ, "METACTL_HOME": str(omniglot_root)})
    deadline = time.monotonic() + 120
    metrics = run / "metrics.jsonl"  # created before training starts; a line once it runs
    while not (metrics.is_file() and metrics.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "stopped at step" in stderr and "Traceback" not in stderr
    step = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "interrupted" and record["steps"]["done"] == step
    resumed = run_metactl("train", "--resume", str(run), "--episodes", str(step + 2),
                          env={"METACTL_HOME": str(omniglot_root)})
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == step + 2
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and len(record["resumed"]) == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["train", "protoypical"], "unknown algorithm 'protoypical'. Did you mean 'prototypical'"),
        (["train", "prototypical", "--set", "hiden=3"], "no setting 'hiden'"),
        (["train", "prototypical", "--way", "5000"], "way 5000 is larger"),
        (["train", "prototypical", "--shot", "15", "--query", "10"], "shot + query = 25"),
        (["evaluate", "/nonexistent/run"], "does not exist"),
    ],
)
def test_bad_input_gives_one_line_errors(omniglot_root, tmp_path, arguments, message):
    result = run_metactl(*arguments, env={"METACTL_HOME": str(omniglot_root)}, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 or result.stderr.startswith("training")


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    result = run_metactl("evaluate", str(tmp_path))
    assert result.returncode != 0 and "is not a metactl run" in result.stderr


def test_corrupt_checkpoint_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.yaml").write_text("algorithm: prototypical\n")
    (tmp_path / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    result = run_metactl("evaluate", str(tmp_path))
    assert result.returncode != 0 and "corrupt or not a metactl checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
