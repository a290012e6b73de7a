"""A short CPU training run of each metric-based method and baseline on real Omniglot beats the
untrained model of the same algorithm, measured on the same 100 fixed 5-way 1-shot test
episodes (5 queries per class; chance: 20%).

An untrained Conv-4 already scores far above chance where its random features are compared
directly (matching, nearest-neighbor, finetune: about 57%), so chance proves nothing. Each test
evaluates the model before training (same seed, same weights) on the same episodes, and asserts
that training gains ``MARGIN`` over it and clears an absolute threshold set several 95%
intervals (about 2.5 points each) above the untrained figure and below the trained one.

Measured on an AVX2 CPU with one thread, untrained -> trained, mean % on the 100 episodes
(95% interval about 2.5 points): matching 57.3 -> 71.3, relation 19.7 -> 52.7, siamese
19.4 -> 56.9; nearest-neighbor 57.3 -> 55.8 and finetune 56.8 -> 55.8, below the untrained
network (a bug of issue 10: their cases are strict xfails, with thresholds above untrained).
"""

from __future__ import annotations

import pytest
from testsupport import train_briefly, untrained_run

from metactl.engine.evaluator import evaluate_run

# A few dozen 5-way training tasks (5 queries per class); validation only at the last step.
QUICK = {"train_way": 5, "train_query": 5, "episodes": 60, "val_every": 1000,
         "val_episodes": 10, "lr_decay_every": 0}
EPISODES = {"siamese": 100}  # pair training needs a few more steps to get going
MARGIN = 0.08  # over the untrained model on the same episodes: about three 95% intervals

BASELINE_BUG = pytest.mark.xfail(
    strict=True, raises=AssertionError,
    reason="issue 10: baselines pre-trained briefly score below the untrained network")
RUNS = [
    # name, absolute threshold
    pytest.param("matching", 0.64, id="matching"),
    pytest.param("relation", 0.36, id="relation"),
    pytest.param("siamese", 0.38, id="siamese"),
    pytest.param("nearest-neighbor", 0.66, id="nearest-neighbor", marks=BASELINE_BUG),
    pytest.param("finetune", 0.66, id="finetune", marks=BASELINE_BUG),
]


def evaluate(run_path, root):
    result = evaluate_run(run_path, episodes=100, way=5, shot=1, query=5, root=str(root))
    assert (result.episodes, result.way, result.shot, result.query) == (100, 5, 1, 5)
    assert 0 < result.ci95 < 0.1
    return result


@pytest.mark.slow
@pytest.mark.parametrize(("name", "threshold"), RUNS)
def test_short_training_beats_the_untrained_model(name, threshold, omniglot_root, tmp_path,
                                                   record_property):
    values = {**QUICK, "episodes": EPISODES.get(name, QUICK["episodes"])}
    untrained = evaluate(untrained_run(name, values, omniglot_root, tmp_path / "untrained").path,
                         omniglot_root)
    _, run, state = train_briefly(name, values, omniglot_root, tmp_path / "run")
    assert state.step == values["episodes"] and run.best.is_file()
    trained = evaluate(run.path, omniglot_root)
    record_property("untrained", round(untrained.mean, 4))
    record_property("trained", round(trained.mean, 4))
    assert trained.mean > untrained.mean + MARGIN, (untrained, trained)
    assert trained.mean > threshold, trained
