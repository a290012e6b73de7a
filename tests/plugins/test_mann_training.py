"""MANN learns to bind images to labels in its memory on real Omniglot in a short CPU run.

The paper's setting (5 classes, 10 images each, 100,000 episodes) takes far longer than a test,
so this run is smaller: sequences of 2 classes with 3 images each, a 16-slot memory, a
100-unit LSTM and Adam at 3e-3, for 1,500 steps of 16 episodes (about a minute on one core).
The check uses standard 2-way 1-shot episodes, where every class has been shown once before the
queries, so no label-counting strategy can beat chance: only reading the memory can.
"""

from __future__ import annotations

import pytest
from testsupport import train_briefly, untrained_run

from metactl.engine.evaluator import evaluate_run

SMALL = {"device": "cpu", "val_episodes": 0, "val_every": 100_000, "seed": 0, "way": 2,
         "train_shot": 3, "memory_slots": 16, "controller_size": 100, "optimizer": "adam",
         "lr": 3e-3, "meta_batch": 16, "episodes": 16 * 1500}


@pytest.mark.slow
def test_short_training_binds_images_to_labels(omniglot_root, tmp_path, record_property):
    untrained = evaluate(untrained_run("mann", SMALL, omniglot_root, tmp_path / "untrained").path,
                         omniglot_root)
    _, run, state = train_briefly("mann", SMALL, omniglot_root, tmp_path / "mann")
    assert state.step == 1500
    trained = evaluate(run.path, omniglot_root)
    record_property("untrained", round(untrained.mean, 4))
    record_property("trained", round(trained.mean, 4))
    assert trained.mean > untrained.mean + 0.06, (untrained, trained)
    assert trained.mean > 0.62, trained


def evaluate(run_path, root):
    result = evaluate_run(run_path, episodes=200, way=2, shot=1, root=str(root))
    assert (result.way, result.shot, result.episodes) == (2, 1, 200)
    return result
