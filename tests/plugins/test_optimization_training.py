"""MAML, first-order MAML, Reptile and Meta-Learner LSTM learn on real Omniglot in a short CPU run.

Each trains for a few seconds, then is evaluated on 100 fixed 5-way 1-shot test episodes
(15 queries per class; chance: 20%), as is the same model before training (same seed, same
weights, same inner loop at test time): the untrained model already gains from adapting on the
support set, so each test asserts that training gains ``MARGIN`` over it and clears an absolute
threshold set several 95% intervals (about 2 points each) above the untrained figure and below
the trained one.

Measured on an AVX2 CPU with one thread, untrained -> trained (mean %, 100 episodes, 95%
interval about 2 points): MAML 36.8 -> 55.1, first-order MAML 36.8 -> 49.7, Reptile
41.7 -> 61.4, Meta-Learner LSTM 40.5 -> 56.9.
"""

from __future__ import annotations

import pytest
from testsupport import measure_training_gain

QUICK = {"device": "cpu", "val_episodes": 0, "val_every": 100_000, "seed": 0}
MARGIN = 0.06  # over the untrained model on the same episodes: about three 95% intervals

RUNS = [
    # name, settings, absolute threshold
    pytest.param("maml", {"episodes": 640, "meta_batch": 16}, 0.45, id="maml"),
    pytest.param("fomaml", {"episodes": 1280, "meta_batch": 16}, 0.43, id="fomaml"),
    pytest.param("reptile", {"episodes": 400, "test_inner_steps": 20}, 0.51, id="reptile"),
    pytest.param("meta-lstm", {"episodes": 30, "inner_epochs": 5, "lr": 3e-3}, 0.48,
                 id="meta-lstm"),
]
EVALUATION = {"episodes": 100, "way": 5, "shot": 1}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "settings", "threshold"), RUNS)
def test_short_training_beats_the_untrained_model(omniglot_root, tmp_path, name, settings,
                                                   threshold, record_property):
    gain = measure_training_gain(name, {**QUICK, **settings}, omniglot_root, tmp_path,
                                 EVALUATION, record_property)
    assert gain.steps == gain.config["episodes"] // gain.config["meta_batch"]
    assert gain.trained.mean > gain.untrained.mean + MARGIN, gain
    assert gain.trained.mean > threshold, gain.trained
