"""A short CPU training run of each metric-based method and baseline on real Omniglot beats
chance (20% in 5-way 1-shot) by a clear margin on fixed test episodes."""

from __future__ import annotations

import pytest

from metactl.engine.config import resolve_config
from metactl.engine.evaluator import evaluate_run
from metactl.engine.trainer import train
from metactl.plugins import get_registry

# A few dozen 5-way training tasks (5 queries per class); validation only at the last step.
QUICK = {"train_way": 5, "train_query": 5, "episodes": 60, "val_every": 1000,
         "val_episodes": 10, "lr_decay_every": 0}
EPISODES = {"siamese": 100}  # pair training needs a few more steps to get going


@pytest.mark.slow
@pytest.mark.parametrize("name", ["matching", "relation", "siamese", "nearest-neighbor",
                                  "finetune"])
def test_short_training_beats_chance(name, omniglot_root, tmp_path):
    algorithm = get_registry().get(name)
    values = {**QUICK, "episodes": EPISODES.get(name, QUICK["episodes"])}
    config = resolve_config(name, algorithm.defaults, {}, values, {})
    run, state = train(name, config, out=tmp_path / "run", root=str(omniglot_root),
                       report=lambda message: None, show_progress=False)
    assert state.step == values["episodes"] and run.best.is_file()
    result = evaluate_run(run.path, episodes=100, way=5, shot=1, query=5,
                          root=str(omniglot_root))
    assert (result.episodes, result.way, result.shot) == (100, 5, 1)
    assert result.mean > 0.4, result
    assert 0 < result.ci95 < 0.1
