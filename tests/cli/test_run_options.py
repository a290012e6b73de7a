"""Options of train / evaluate / predict that had no test: ``--config``, the resume safeguards,
the NaN-loss error, ``evaluate --episode-file / --split / --seed``, ``predict`` with a
gradient-based run. All on the tiny real Omniglot stores, through the real entry point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from testsupport import invoke_metactl

QUICK = ("--train-way", "5", "--set", "train_query=5", "--set", "val_every=2",
         "--set", "val_episodes=2", "--set", "eval_episodes=10", "--device", "cpu")


@pytest.fixture
def env(tiny_omniglot_root) -> dict[str, str]:
    return {"METACTL_HOME": str(tiny_omniglot_root)}


@pytest.fixture(scope="module")
def run(tiny_omniglot_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "prototypical"
    outcome = invoke_metactl("train", "prototypical", "--out", str(out), "--episodes", "4",
                             *QUICK, env={"METACTL_HOME": str(tiny_omniglot_root)})
    assert outcome.exit_code == 0, outcome.stderr
    return out


def evaluate_json(run: Path, *options: str, env: dict[str, str]) -> dict:
    outcome = invoke_metactl("evaluate", str(run), "--json", *options, env=env)
    assert outcome.exit_code == 0, outcome.stderr
    return json.loads(outcome.stdout)


def test_a_config_file_sets_values_and_options_override_it(env, tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text("way: 3\ntrain-way: 4\nlr: 0.01\ntrain-query: 2\noptimizer: sgd\n")
    out = tmp_path / "run"
    outcome = invoke_metactl("train", "prototypical", "--config", str(settings), "--lr", "0.02",
                             "--episodes", "2", "--out", str(out), "--device", "cpu",
                             "--set", "val_episodes=2", env=env)
    assert outcome.exit_code == 0, outcome.stderr
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["way"], config["train_way"], config["lr"], config["train_query"],
            config["optimizer"]) == (3, 4, 0.02, 2, "sgd")
    assert config["shot"] == config["train_shot"] == 1  # what neither gives keeps its default


def test_resume_safeguards_leave_the_run_untouched(run, env, tmp_path):
    copy = shutil.copytree(run, tmp_path / "run")
    config = (copy / "config.yaml").read_bytes()
    refusals = {
        ("train", "--resume", str(copy), "--set", "train_query=3"): "train_query differ",
        ("train", "maml", "--resume", str(copy)): "is a prototypical run, not maml",
        ("train", "prototypical", "--out", str(copy)): "already holds a run",
        ("train", "--resume", str(copy), "--episodes", "2"): "already trained 4 steps",
    }
    for arguments, message in refusals.items():
        outcome = invoke_metactl(*arguments, env=env)
        assert outcome.exit_code == 2 and message in outcome.stderr, outcome.stderr
    assert (copy / "config.yaml").read_bytes() == config
    outcome = invoke_metactl("train", "--resume", str(copy), "--episodes", "6", env=env)
    assert outcome.exit_code == 0, outcome.stderr
    assert yaml.safe_load((copy / "config.yaml").read_text())["episodes"] == 6


def test_a_diverging_loss_stops_with_one_line(env, tmp_path):
    outcome = invoke_metactl("train", "prototypical", "--out", str(tmp_path / "run"),
                             "--episodes", "10", *QUICK, "--set", "val_every=1",
                             "--set", "optimizer=sgd", "--lr", "1e30", env=env)
    assert outcome.exit_code == 2
    (line,) = [line for line in outcome.stderr.splitlines() if line.startswith("Error: ")]
    assert "the training loss became" in line and "Lower the learning rate" in line
    assert "the last checkpoint is from step 1" in line


def test_an_episode_file_gives_the_episodes_of_its_seed(run, env, tmp_path):
    run = shutil.copytree(run, tmp_path / "run")
    episodes = tmp_path / "episodes.json"
    drawn = invoke_metactl("data", "split", "omniglot", "--way", "5", "--shot", "1", "--query",
                           "15", "--episodes", "12", "--seed", "3", "-o", str(episodes), env=env)
    assert drawn.exit_code == 0, drawn.stderr
    from_file = evaluate_json(run, "--episode-file", str(episodes), env=env)
    seeded = evaluate_json(run, "--episodes", "12", "--seed", "3", env=env)
    assert from_file == seeded and from_file["episodes"] == 12


def test_evaluate_on_the_validation_split_records_it(run, env, tmp_path):
    copy = shutil.copytree(run, tmp_path / "run")
    result = evaluate_json(copy, "--split", "val", "--way", "4", "--episodes", "8", env=env)
    assert (result["split"], result["way"], result["episodes"]) == ("val", 4, 8)
    saved = json.loads((copy / "evaluation-val-4way-1shot.json").read_text())
    assert saved == result
    assert not (copy / "evaluation-test-5way-1shot.json").exists()


def test_predict_with_a_gradient_based_run(env, tiny_omniglot_root, tmp_path):
    out = tmp_path / "maml"
    trained = invoke_metactl("train", "maml", "--out", str(out), "--episodes", "4",
                             "--meta-batch", "2", "--set", "hidden=8", "--set", "train_query=1",
                             "--set", "val_episodes=2", "--device", "cpu", env=env)
    assert trained.exit_code == 0, trained.stderr
    drawings = sorted((tiny_omniglot_root / "omniglot" / "extracted").rglob("*.png"))
    support, queries = tmp_path / "support", tmp_path / "queries"
    for label, first in (("alpha", 0), ("beta", 20), ("gamma", 40)):
        (support / label).mkdir(parents=True)
        shutil.copy(drawings[first], support / label / "one.png")
    queries.mkdir()
    for index in (1, 21, 41, 42):
        shutil.copy(drawings[index], queries / f"{index:02d}.png")
    output = tmp_path / "predictions.json"
    outcome = invoke_metactl("predict", str(out), "--support", str(support), "--query",
                             str(queries), "-o", str(output), env=env)
    assert outcome.exit_code == 0, outcome.stderr
    predictions = json.loads(output.read_text())
    assert [Path(p["query"]).name for p in predictions] == ["01.png", "21.png", "41.png",
                                                            "42.png"]
    for prediction in predictions:
        assert set(prediction["probabilities"]) == {"alpha", "beta", "gamma"}
        assert sum(prediction["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert prediction["predicted_class"] == max(prediction["probabilities"],
                                                    key=prediction["probabilities"].get)
