"""A short CPU training run of each metric-based method and baseline on real Omniglot beats the
untrained model of the same algorithm, measured on the same 100 fixed 5-way 1-shot test
episodes (5 queries per class; chance: 20%).

An untrained Conv-4 already scores far above chance where its random features are compared
directly (matching, nearest-neighbor, finetune: about 57%), so chance proves nothing. Each test
evaluates the model before training (same seed, same weights) on the same episodes, and asserts
that training gains ``MARGIN`` over it and clears an absolute threshold set several 95%
intervals (about 2.5 points each) above the untrained figure and below the trained one.

The baselines pre-train a classifier over every training class; over Omniglot's 4,112 the loss
leaves ln 4112 only after about 300 steps of 360 images, longer than a test. Here they
pre-train on 100 of the classes (``train_classes``), the same code path at a test's scale.

Measured on an AVX2 CPU with one thread, untrained -> trained, mean % on the 100 episodes
(95% interval about 2.5 points): matching 57.3 -> 71.3, relation 19.7 -> 52.7, siamese
19.4 -> 56.9, nearest-neighbor 57.3 -> 82.7, finetune 56.8 -> 81.5.
"""

from __future__ import annotations

import pytest
from testsupport import measure_training_gain

from metactl.plugins import get_registry

# A few dozen 5-way training tasks (5 queries per class); validation only at the last step.
QUICK = {"train_way": 5, "train_query": 5, "episodes": 60, "val_every": 1000,
         "val_episodes": 10, "lr_decay_every": 0}
EPISODES = {"siamese": 100}  # pair training needs a few more steps to get going
PRETRAINING = {"train_classes": 100, "train_way": 20, "episodes": 100}
MARGIN = 0.08  # over the untrained model on the same episodes: about three 95% intervals

RUNS = [
    # name, absolute threshold
    pytest.param("matching", 0.64, id="matching"),
    pytest.param("relation", 0.36, id="relation"),
    pytest.param("siamese", 0.38, id="siamese"),
    pytest.param("nearest-neighbor", 0.72, id="nearest-neighbor"),
    pytest.param("finetune", 0.72, id="finetune"),
]
EVALUATION = {"episodes": 100, "way": 5, "shot": 1, "query": 5}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "threshold"), RUNS)
def test_short_training_beats_the_untrained_model(name, threshold, omniglot_root, tmp_path,
                                                   record_property):
    values = {**QUICK, "episodes": EPISODES.get(name, QUICK["episodes"])}
    if get_registry().get(name).family == "baseline":
        values.update(PRETRAINING)
    gain = measure_training_gain(name, values, omniglot_root, tmp_path, EVALUATION,
                                 record_property)
    assert gain.steps == values["episodes"] and gain.run.best.is_file()
    assert gain.trained.mean > gain.untrained.mean + MARGIN, gain
    assert gain.trained.mean > threshold, gain.trained
