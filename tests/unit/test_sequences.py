"""Accuracy by instance position: counting presentations and scoring each position."""

from __future__ import annotations

import pytest
import torch

from metactl.engine.sequences import (
    PAPER_POSITIONS,
    accuracy_at_positions,
    instance_numbers,
    parse_positions,
    presentation_orders,
)
from metactl.errors import UsageError


def test_instance_numbers_count_each_class_presentation():
    labels = torch.tensor([[0, 1, 0, 0, 2, 1]])
    assert instance_numbers(labels, 3).tolist() == [[1, 1, 2, 3, 1, 2]]


def test_accuracy_at_positions_scores_each_episode_separately():
    labels = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0]])
    correct = torch.tensor([[False, True, True, True], [False, True, True, False]])
    accuracies = accuracy_at_positions(correct, instance_numbers(labels, 2), (1, 2, 3))
    assert accuracies[:, :2].tolist() == [[0.5, 1.0], [0.5, 0.5]]
    assert accuracies[:, 2].isnan().all()  # no class is shown three times


def test_presentation_orders_are_fixed_permutations():
    orders = presentation_orders(4, 10, seed=3)
    assert torch.equal(orders, presentation_orders(4, 10, seed=3))
    assert torch.equal(orders.sort(dim=1).values, torch.arange(10).expand(4, 10))
    assert not torch.equal(orders, presentation_orders(4, 10, seed=4))


def test_positions_parse_and_reject_bad_lists():
    assert parse_positions("10,1,2") == (1, 2, 10)
    assert parse_positions("paper") == PAPER_POSITIONS == (1, 2, 3, 4, 5, 10)
    with pytest.raises(UsageError, match="start at 1"):
        parse_positions("0,1")
    with pytest.raises(UsageError, match="comma-separated"):
        parse_positions("first")
