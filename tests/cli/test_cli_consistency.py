"""Options that mean the same everywhere, python -m metactl, --print-config, --steps,
completion: through the real command, without training."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml
from testsupport import REPOSITORY, metactl_executable, run_metactl

from metactl import __version__


def test_python_m_metactl_is_the_command():
    result = subprocess.run([sys.executable, "-m", "metactl", "--version"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"metactl {__version__}"


def test_the_version_lives_in_one_place():
    pyproject = (REPOSITORY / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject and '\nversion = "' not in pyproject
    assert 'attr = "metactl.__version__"' in pyproject
    assert (REPOSITORY / "LICENSE").read_text().startswith("MIT License")


def test_print_config_resolves_steps_into_episodes():
    result = run_metactl("train", "maml", "--steps", "10", "--print-config", "--set", "lr=0.01")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["meta_batch"] == 32 and config["episodes"] == 320  # MAML's Omniglot setting
    assert config["lr"] == 0.01 and config["algorithm"] == "maml"


def test_steps_and_episodes_together_are_refused():
    result = run_metactl("train", "prototypical", "--steps", "10", "--episodes", "10",
                         "--print-config")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("Error: --steps and --episodes both set the length of "
                                     "training. Give one of them (episodes = steps x meta_batch).")


def test_split_means_train_val_or_test_in_every_command():
    for command in (["evaluate"], ["data", "split"], ["data", "show"]):
        help_text = run_metactl(*command, "--help").stdout
        assert "--split" in help_text and "train, val or test" in " ".join(help_text.split())
    for command in (["data", "preprocess"], ["data", "info"], ["data", "split"]):
        help_text = run_metactl(*command, "--help").stdout
        assert "--scheme" in help_text and "vinyals" in help_text


def complete(words: str) -> list[str]:
    environment = {**os.environ, "_METACTL_COMPLETE": "complete_bash", "COMP_WORDS": words,
                   "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
    result = subprocess.run([metactl_executable()], capture_output=True, text=True,
                            env=environment, timeout=120)
    return result.stdout.split()


def test_completion_offers_algorithm_and_dataset_names():
    assert complete("metactl train prot") == ["prototypical"]
    assert complete("metactl train prototypical --dataset om") == ["omniglot"]
    assert "sinusoid" in complete("metactl train maml --dataset ")
    assert complete("metactl runs list --algorithm rep") == ["reptile"]
