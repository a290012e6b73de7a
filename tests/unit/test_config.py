"""Merging engine defaults, algorithm defaults, config files and CLI options."""

from __future__ import annotations

import pytest

from metactl.engine.config import parse_assignments, resolve_config
from metactl.errors import UsageError

DEFAULTS = {"*": {"hidden": 64, "lr": 0.01}, "omniglot": {"train_way": 60},
            "omniglot/5-shot": {"hidden": 32}, "omniglot/20-way/5-shot": {"lr": 0.5}}


def test_most_specific_default_wins_and_user_values_win_over_defaults():
    config = resolve_config("algo", DEFAULTS, {}, {"shot": 5, "way": 20}, {})
    assert (config["hidden"], config["lr"], config["train_way"]) == (32, 0.5, 60)
    config = resolve_config("algo", DEFAULTS, {"lr": 0.2}, {"lr": 0.3}, {"lr": 0.4})
    assert config["lr"] == 0.4 and config["train_shot"] == config["shot"] == 1


def test_unknown_setting_names_the_nearest_one():
    with pytest.raises(UsageError, match="no setting 'hiden'") as error:
        resolve_config("algo", DEFAULTS, {}, {}, {"hiden": 3})
    assert "hidden" in error.value.hint


@pytest.mark.parametrize("assignment", ["way=0", "lr=fast", "optimizer=lbfgs", "amp=fp8",
                                        "episodes=1.5"])
def test_bad_values_are_refused(assignment):
    with pytest.raises(UsageError):
        resolve_config("algo", DEFAULTS, {}, {}, parse_assignments([assignment]))


def test_assignments_are_read_as_yaml():
    assert parse_assignments(["lr=1e-3", "amp=bf16", "compile=true", "train-way=20"]) == {
        "lr": 1e-3, "amp": "bf16", "compile": True, "train_way": 20}
    with pytest.raises(UsageError, match="not key=value"):
        parse_assignments(["lr"])
