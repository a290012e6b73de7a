"""A short CPU training run of each metric-based method and baseline on real Omniglot beats
chance (20% in 5-way 1-shot) by a clear margin on fixed test episodes."""

from __future__ import annotations

import pytest
from testsupport import train_briefly

from metactl.engine.evaluator import evaluate_run

# A few dozen 5-way training tasks (5 queries per class); validation only at the last step.
QUICK = {"train_way": 5, "train_query": 5, "episodes": 60, "val_every": 1000,
         "val_episodes": 10, "lr_decay_every": 0}
EPISODES = {"siamese": 100}  # pair training needs a few more steps to get going


@pytest.mark.slow
@pytest.mark.parametrize("name", ["matching", "relation", "siamese", "nearest-neighbor",
                                  "finetune"])
def test_short_training_beats_chance(name, omniglot_root, tmp_path):
    values = {**QUICK, "episodes": EPISODES.get(name, QUICK["episodes"])}
    _, run, state = train_briefly(name, values, omniglot_root, tmp_path / "run")
    assert state.step == values["episodes"] and run.best.is_file()
    result = evaluate_run(run.path, episodes=100, way=5, shot=1, query=5,
                          root=str(omniglot_root))
    assert (result.episodes, result.way, result.shot) == (100, 5, 1)
    assert result.mean > 0.4, result
    assert 0 < result.ci95 < 0.1
