"""MANN learns to bind images to labels in its memory on real Omniglot in a short CPU run.

The paper's setting (5 classes, 10 images each, 100,000 episodes) takes far longer than a test,
so this run is smaller: sequences of 2 classes with 3 images each, a 16-slot memory, a
100-unit LSTM and Adam at 3e-3, for 1,500 steps of 16 episodes (about a minute on one core).
The check uses standard 2-way 1-shot episodes, where every class has been shown once before the
queries, so no label-counting strategy can beat chance: only reading the memory can.
"""

from __future__ import annotations

import pytest
from testsupport import measure_training_gain

SMALL = {"device": "cpu", "val_episodes": 0, "val_every": 100_000, "seed": 0, "way": 2,
         "train_shot": 3, "memory_slots": 16, "controller_size": 100, "optimizer": "adam",
         "lr": 3e-3, "meta_batch": 16, "episodes": 16 * 1500}


@pytest.mark.slow
def test_short_training_binds_images_to_labels(omniglot_root, tmp_path, record_property):
    gain = measure_training_gain("mann", SMALL, omniglot_root, tmp_path,
                                 {"episodes": 200, "way": 2, "shot": 1}, record_property)
    assert gain.steps == 1500
    assert gain.trained.mean > gain.untrained.mean + 0.06, gain
    assert gain.trained.mean > 0.62, gain.trained
