"""The defining mechanics of MANN on small tensors: least-recently-used writes, content reads,
the one-step label offset, wiped memories and independent queries."""

from __future__ import annotations

import torch

from metactl.algorithm import LabelledImages
from metactl.nn.mann import (
    BLANK,
    MemoryAugmentedNetwork,
    content_weights,
    least_used,
    read,
    updated_usage,
    write,
    write_weights,
)
from metactl_plugins.mann import MemoryAugmentedNetworks


def small_network(**options) -> MemoryAugmentedNetwork:
    torch.manual_seed(0)
    settings = {"controller_size": 16, "slots": 8, "width": 6, "heads": 2, **options}
    return MemoryAugmentedNetwork(inputs=10, label_slots=3, **settings)


def test_least_used_marks_the_smallest_usages_and_breaks_ties_by_slot():
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.1, 0.3]])
    assert least_used(usage, 1).tolist() == [[0, 1, 0, 0, 0]]
    assert least_used(usage, 2).tolist() == [[0, 1, 0, 1, 0]]
    assert least_used(usage, 3).tolist() == [[0, 1, 0, 1, 1]]


def test_a_closed_write_gate_writes_the_key_into_the_least_used_slot_only():
    memory = torch.arange(12.0).view(1, 4, 3)
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.3]])
    previous_read = torch.tensor([[[0.0, 0.0, 1.0, 0.0]]])
    key = torch.tensor([[[7.0, -2.0, 0.5]]])
    weights = write_weights(torch.tensor([[-40.0]]), previous_read, least_used(usage, 1))
    assert torch.allclose(weights, torch.tensor([[[0.0, 1.0, 0.0, 0.0]]]))
    written = write(memory, usage, weights, key)
    assert torch.allclose(written[0, 1], key[0, 0])  # erased first, then written
    untouched = [0, 2, 3]
    assert torch.equal(written[0, untouched], memory[0, untouched])


def test_an_open_write_gate_adds_the_key_where_the_head_last_read():
    memory = torch.arange(12.0).view(1, 4, 3)
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.3]])
    previous_read = torch.tensor([[[0.0, 0.0, 1.0, 0.0]]])
    key = torch.tensor([[[7.0, -2.0, 0.5]]])
    weights = write_weights(torch.tensor([[40.0]]), previous_read, least_used(usage, 1))
    written = write(memory, usage, weights, key)
    assert torch.allclose(written[0, 2], memory[0, 2] + key[0, 0])
    assert torch.equal(written[0, 1], torch.zeros(3))  # the least used slot is still erased


def test_reading_with_a_stored_row_as_key_returns_that_row():
    memory = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, -3.0, 0.0],
                            [0.0, 0.0, 0.0, 0.5]]])
    key = memory[:, 2:3]
    paper_weights = content_weights(key, memory)
    assert torch.allclose(paper_weights.sum(-1), torch.ones(1, 1))
    assert int(paper_weights.argmax()) == 2
    sharp = content_weights(key, memory, strength=50.0)
    assert torch.allclose(read(sharp, memory), key, atol=1e-6)


def test_usage_decays_and_adds_this_steps_reads_and_writes():
    usage = torch.tensor([[1.0, 0.5]])
    reads = torch.tensor([[[0.2, 0.8], [0.4, 0.6]]])
    writes = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert torch.allclose(updated_usage(usage, reads, writes, decay=0.9),
                          torch.tensor([[0.9 + 0.6 + 1.0, 0.45 + 1.4 + 1.0]]))


def test_each_label_is_shown_one_step_after_its_image():
    network = small_network()
    images = torch.rand(2, 5, 10)
    labels = torch.tensor([[0, 1, 2, 0, 1], [2, 2, 1, 0, 0]])
    scores, _ = network.run_sequence(images, labels)
    changed = labels.clone()
    changed[:, 2] = (labels[:, 2] + 1) % 3
    other, _ = network.run_sequence(images, changed)
    assert torch.equal(scores[:, :3], other[:, :3])  # step 2 is scored before its label
    assert not torch.allclose(scores[:, 3:], other[:, 3:])


def test_every_sequence_starts_from_a_wiped_memory_and_sequences_do_not_interact():
    network = small_network()
    state = network.initial_state(3)
    assert torch.equal(state.memory, torch.full((3, 8, 6), BLANK))
    assert not state.usage.any() and not state.last_label.any()
    images, labels = torch.rand(3, 4, 10), torch.tensor([[0, 1, 0, 2]] * 3)
    together, _ = network.run_sequence(images, labels)
    alone, _ = network.run_sequence(images[1:2], labels[1:2])
    assert torch.allclose(together[1:2], alone, atol=1e-6)


def test_queries_are_answered_independently_after_the_support_sequence():
    network = small_network(controller="feedforward")
    _, state = network.run_sequence(torch.rand(1, 6, 10), torch.tensor([[0, 1, 2, 0, 1, 2]]))
    queries = torch.rand(1, 3, 10)
    answers = network.answer(state, queries)
    queries[0, 1:] = torch.rand(2, 10)
    assert torch.allclose(network.answer(state, queries)[0, 0], answers[0, 0], atol=1e-6)


def test_adapt_presents_the_support_set_in_a_fixed_order_outside_training():
    algorithm = MemoryAugmentedNetworks({**MemoryAugmentedNetworks.defaults["*"],
                                         "controller_size": 16, "memory_slots": 8,
                                         "memory_width": 6, "read_heads": 2})
    model = small_network().eval()
    support = LabelledImages(torch.rand(2, 6, 1, 2, 5), torch.tensor([[0, 0, 1, 1, 2, 2]] * 2), 3)
    first, second = algorithm.adapt(model, support), algorithm.adapt(model, support)
    assert torch.equal(first.state.memory, second.state.memory)
    order = torch.tensor([[5, 4, 3, 2, 1, 0]] * 2)
    reordered = support.reordered(order)
    assert torch.equal(reordered.labels[0], torch.tensor([2, 2, 1, 1, 0, 0]))
    assert torch.equal(reordered.images[1, 0], support.images[1, 5])
