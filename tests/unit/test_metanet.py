"""MetaNet's mechanics: memory read by attention, layer augmentation, the fast-weight generators
and the meta information they read, on tiny networks and random images."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as functional

import metactl.nn.metanet as metanet
from metactl.algorithm import LabelledImages, ModelSpec
from metactl.data.episodes import TaskBatch
from metactl.engine.config import resolve_config
from metactl.errors import UsageError
from metactl_plugins.metanet import MetaNet

SIDE = 12
SMALL = {"hidden": 4, "blocks": 2, "augmented_layers": 3, "generator_hidden": 5,
         "representation_samples": 3}


def make_algorithm(**overrides):
    values = {**SMALL, **overrides}
    return MetaNet(resolve_config("metanet", MetaNet.defaults, {}, values, {}))


def build(algorithm, way=3, seed=0):
    torch.manual_seed(seed)
    return algorithm.build_model(ModelSpec(1, SIDE, SIDE, way=way)).double()


def task_batch(tasks=2, way=3, shot=1, query=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    support = torch.rand(tasks, way * shot, 1, SIDE, SIDE, generator=generator,
                         dtype=torch.float64)
    queries = torch.rand(tasks, way * query, 1, SIDE, SIDE, generator=generator,
                         dtype=torch.float64)
    labels = torch.arange(way)
    return TaskBatch(support, labels.repeat_interleave(shot).repeat(tasks, 1), queries,
                     labels.repeat_interleave(query).repeat(tasks, 1),
                     torch.zeros(tasks, way, dtype=torch.long), way, shot, query)


def support_of(batch):
    return LabelledImages(batch.support_images, batch.support_labels, batch.way)


def randomise_generators(model, scale=0.3, seed=1):
    """Give m's and d's output units random weights, so fast weights depend on the gradients
    (they start constant)."""
    generator = torch.Generator().manual_seed(seed)
    layers = [m.net[-1] for m in model.example_generators.values()]
    layers += [d.output for d in model.task_generators.values()]
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(scale * torch.randn(layer.weight.shape, generator=generator))


# --- memory and attention ---------------------------------------------------------------------

def test_attention_weights_sum_to_one_per_query():
    queries, keys = torch.randn(2, 5, 7), torch.randn(2, 4, 7)
    weights = metanet.attention(queries, keys)
    assert weights.shape == (2, 5, 4)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 5))
    assert bool((weights > 0).all())


def test_attention_is_softmax_of_cosine_similarity():
    queries, keys = torch.randn(1, 3, 6), torch.randn(1, 4, 6)
    cosine = functional.cosine_similarity(queries[0, :, None], keys[0, None], dim=-1)
    assert torch.allclose(metanet.attention(queries, keys)[0], cosine.softmax(-1), atol=1e-6)


def test_a_single_memory_entry_is_read_back_exactly():
    weights = metanet.attention(torch.randn(1, 3, 6), torch.randn(1, 1, 6))[0]  # (Q, 1)
    assert torch.equal(weights, torch.ones(3, 1))
    memory = {"fc.weight": torch.randn(1, 4, 5), "convs.1.weight": torch.randn(1, 4, 2, 3, 3)}
    read = metanet.read_memory(weights, memory)
    for name, entry in memory.items():
        assert read[name].shape == (3, *entry.shape[1:])
        assert torch.equal(read[name], entry.expand_as(read[name]))


def test_memory_read_is_the_attention_weighted_sum_of_entries():
    weights = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    memory = {"fc.weight": torch.stack([torch.ones(2, 2), 3 * torch.ones(2, 2)])}
    read = metanet.read_memory(weights, memory)["fc.weight"]
    assert torch.allclose(read[0], 2.5 * torch.ones(2, 2))
    assert torch.allclose(read[1], torch.ones(2, 2))


# --- layer augmentation -----------------------------------------------------------------------

def test_augmentation_adds_the_rectified_slow_and_fast_branches():
    slow, fast = torch.randn(3, 8), torch.randn(3, 8)
    assert torch.equal(metanet.augment(slow, fast), slow.relu() + fast.relu())
    assert torch.equal(metanet.augment(slow, None), slow.relu())


def test_zero_fast_weights_leave_each_layer_the_slow_layer_followed_by_relu():
    slow = torch.randn(4, 6)
    zero_fast = functional.linear(torch.randn(4, 5), torch.zeros(6, 5))
    assert torch.equal(metanet.augment(slow, zero_fast), slow.relu() + torch.zeros(4, 6).relu())
    network = metanet.FastWeightCNN(1, (SIDE, SIDE), hidden=4, blocks=2, augmented=3,
                                    outputs=3, augment_head=True).double()
    params = network.slow_weights()
    zeros = {name: torch.zeros_like(params[name]) for name in network.augmented}
    images = torch.rand(5, 1, SIDE, SIDE, dtype=torch.float64)
    assert torch.allclose(metanet.class_scores(params, images, zeros),
                          metanet.class_scores(params, images), atol=1e-12)
    assert torch.allclose(metanet.representation(params, images, zeros),
                          metanet.representation(params, images), atol=1e-12)


def test_u_output_adds_the_slow_and_fast_transforms_before_any_non_linearity():
    network = metanet.FastWeightCNN(1, (SIDE, SIDE), hidden=4, blocks=2, augmented=1).double()
    params = network.slow_weights()
    images = torch.rand(3, 1, SIDE, SIDE, dtype=torch.float64)
    fast = {"fc.weight": torch.randn_like(params["fc.weight"])}
    features = metanet.conv_features(params, images, {}, blocks=2)
    expected = features @ params["fc.weight"].T + features @ fast["fc.weight"].T
    assert network.augmented == ("fc.weight",)
    assert torch.allclose(metanet.representation(params, images, fast), expected)


def test_augmented_layers_counts_from_the_last_hidden_layer():
    network = metanet.FastWeightCNN(1, (SIDE, SIDE), hidden=4, blocks=2, augmented=2,
                                    outputs=3, augment_head=True)
    assert network.augmented == ("convs.1.weight", "fc.weight", "head.weight")
    everything = metanet.FastWeightCNN(1, (28, 28), hidden=4, blocks=5, augmented=6)
    assert everything.augmented == tuple(f"convs.{i}.weight" for i in range(5)) + ("fc.weight",)
    assert everything.fc.in_features == 4  # 28 -> 14 -> 7 -> 4 -> 2 -> 1
    with pytest.raises(UsageError):
        metanet.FastWeightCNN(1, (SIDE, SIDE), hidden=4, blocks=2, augmented=4)


# --- fast-weight generators -------------------------------------------------------------------

def test_m_gives_each_parameter_fast_weights_of_its_shape_coordinate_by_coordinate():
    torch.manual_seed(0)
    generators = torch.nn.ModuleDict({kind: metanet.ExampleWeightGenerator(hidden=5)
                                      for kind in metanet.KINDS})
    gradients = {"convs.1.weight": torch.randn(2, 3, 4, 4, 3, 3) * 1e-3,
                 "fc.weight": torch.randn(2, 3, 4, 16) * 1e-3,
                 "head.weight": torch.randn(2, 3, 5, 4) * 1e-3}
    fast = metanet.generate(generators, gradients, lead=2)
    assert {name: value.shape for name, value in fast.items()} == {
        name: value.shape for name, value in gradients.items()}
    # One MLP shared by every coordinate of a kind: each output depends on its own gradient.
    conv = generators["conv"]
    coordinate = gradients["convs.1.weight"][1, 2, 3, 0, 2, 1]
    assert torch.allclose(fast["convs.1.weight"][1, 2, 3, 0, 2, 1], conv(coordinate[None])[0])
    linear = generators["linear"]
    assert torch.allclose(fast["head.weight"][0, 1], linear(gradients["head.weight"][0, 1]))


def test_d_reads_the_s_gradients_in_turn_into_one_fast_weight_per_coordinate():
    torch.manual_seed(0)
    d = metanet.TaskWeightGenerator(hidden=5)
    with torch.no_grad():
        d.output.weight.normal_()
    gradients = torch.randn(2, 4, 7) * 1e-2  # (T, S, P)
    fast = d(gradients)
    assert fast.shape == (2, 7)
    changed = gradients.clone()
    changed[:, 0, 3] *= -1  # the first of the S gradients, one coordinate
    difference = (d(changed) - fast).abs()
    assert bool((difference[:, 3] > 0).all())
    assert torch.equal(difference[:, [0, 1, 2, 4, 5, 6]], torch.zeros(2, 6))


def test_fast_weights_start_at_fast_init_whatever_the_gradients():
    algorithm = make_algorithm(fast_init=0.01, fast_init_range=0.0)
    model = build(algorithm)
    state = algorithm.adapt(model, support_of(task_batch()))
    for value in [*state.memory.values(), *state.task_weights.values()]:
        assert torch.allclose(value, torch.full_like(value, 0.01))


# --- meta information -------------------------------------------------------------------------

def test_per_example_gradients_are_those_of_each_example_and_constant():
    network = metanet.FastWeightCNN(1, (SIDE, SIDE), hidden=4, blocks=2, augmented=2,
                                    outputs=3, augment_head=True).double()
    images = torch.rand(4, 1, 1, SIDE, SIDE, dtype=torch.float64)
    labels = torch.tensor([[0], [2], [1], [2]])
    params = network.slow_weights()
    gradients = metanet.example_gradients(params, network.augmented,
                                          metanet.cross_entropy_item, images, labels)
    for index in range(4):
        loss = functional.cross_entropy(network(images[index]), labels[index])
        expected = torch.autograd.grad(loss, [params[name] for name in network.augmented])
        for name, value in zip(network.augmented, expected, strict=True):
            assert torch.allclose(gradients[name][index], value, atol=1e-12), name
    assert not any(value.requires_grad for value in gradients.values())


def test_meta_information_gradients_enter_m_and_d_as_constants():
    """The meta-gradient of every slow weight equals that of a query pass whose task state was
    built from a copy of the model: the generators' inputs carry no graph."""
    algorithm = make_algorithm()
    model = build(algorithm).train()
    randomise_generators(model)
    batch = task_batch()
    captured = []
    for generator in [*model.example_generators.values(), *model.task_generators.values()]:
        generator.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
    algorithm.loss(model, batch).loss.backward()
    assert len(captured) == 4
    assert not any(inputs.requires_grad for inputs in captured)
    assert all(parameter.grad is not None for parameter in model.example_generators.parameters())
    assert all(parameter.grad is not None for parameter in model.task_generators.parameters())


def test_u_softmax_layer_only_produces_meta_information_and_gets_no_gradient():
    algorithm = make_algorithm()
    model = build(algorithm).train()
    randomise_generators(model)
    algorithm.loss(model, task_batch()).loss.backward()
    assert model.representation.head.weight.grad is None
    assert model.representation.fc.weight.grad.abs().sum() > 0
    assert model.base.head.weight.grad.abs().sum() > 0


def test_d_reads_representation_samples_gradients():
    algorithm = make_algorithm(representation_samples=3)
    model = build(algorithm, way=5)
    shapes = []
    model.task_generators["conv"].register_forward_pre_hook(
        lambda module, inputs: shapes.append(tuple(inputs[0].shape)))
    algorithm.adapt(model, support_of(task_batch(tasks=2, way=5)))
    coordinates = sum(model.representation.slow_weights()[name].numel()
                      for name in model.representation.augmented if "convs" in name)
    assert shapes == [(2, 3, coordinates)]


def test_one_shot_training_uses_cross_entropy_and_k_shot_the_contrastive_loss(monkeypatch):
    one_shot = make_algorithm(shot=1)
    five_shot = make_algorithm(shot=5)
    assert one_shot.representation_loss == "cross-entropy"
    assert five_shot.representation_loss == "contrastive"
    assert build(one_shot).representation.head is not None
    assert build(five_shot).representation.head is None
    calls = []
    original = metanet.contrastive_loss

    def spy(*args, **kwargs):
        calls.append(args[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(metanet, "contrastive_loss", spy)
    five_shot.adapt(build(five_shot), support_of(task_batch(shot=5)))
    assert len(calls) == 1  # one vmapped call for every pair of every task
    one_shot.adapt(build(one_shot), support_of(task_batch(shot=1)))
    assert len(calls) == 1


def test_contrastive_loss_pulls_same_class_pairs_and_pushes_others_to_the_margin():
    first, second = torch.zeros(3, 2), torch.tensor([[0.6, 0.8], [0.3, 0.4], [3.0, 4.0]])
    same = torch.tensor([1.0, 0.0, 0.0])
    losses = metanet.contrastive_loss(first, second, same, margin=1.0)
    assert torch.allclose(losses, torch.tensor([0.5, 0.5 * 0.25, 0.0]))


def test_pairs_are_half_same_class_when_the_support_allows():
    labels = torch.arange(5).repeat_interleave(5).repeat(2, 1)
    pairs = metanet.balanced_pairs(labels, 6, torch.Generator().manual_seed(0))
    assert pairs.first.shape == (2, 6)
    assert torch.equal(pairs.same.sum(1), torch.tensor([3.0, 3.0]))
    rows = torch.arange(2).unsqueeze(1)
    same_label = labels[rows, pairs.first] == labels[rows, pairs.second]
    assert torch.equal(same_label.float(), pairs.same)
    lonely = torch.arange(4).repeat(1, 1)  # one image per class: only different-class pairs
    assert metanet.balanced_pairs(lonely, 4).same.sum() == 0


def test_groups_cover_the_support_set_once_when_they_divide_it():
    groups = metanet.sample_groups(tasks=3, size=20, steps=5,
                                   generator=torch.Generator().manual_seed(0))
    assert groups.shape == (3, 5, 4)
    assert torch.equal(groups.flatten(1).sort(1).values, torch.arange(20).repeat(3, 1))
    assert metanet.sample_groups(tasks=1, size=3, steps=5).shape == (1, 3, 1)


# --- the query pass and the API ---------------------------------------------------------------

def test_each_query_is_classified_with_the_fast_weights_it_reads():
    algorithm = make_algorithm()
    model = build(algorithm)
    randomise_generators(model)
    batch = task_batch()
    state = algorithm.adapt(model, support_of(batch))
    logits = algorithm.logits(model, state, batch.query_images)
    assert logits.shape == (2, 6, 3)
    base = model.base.slow_weights(3)
    queries = metanet.task_representations(model.representation.slow_weights(),
                                           batch.query_images, state.task_weights)
    weights = metanet.attention(queries, state.keys)
    task, query = 1, 4
    fast = {name: torch.einsum("n,n...->...", weights[task, query], value[task])
            for name, value in state.memory.items()}
    expected = metanet.class_scores(base, batch.query_images[task, query:query + 1], fast)
    assert torch.allclose(logits[task, query], expected[0], atol=1e-10)


def test_predictions_do_not_depend_on_the_other_queries():
    algorithm = make_algorithm()
    model = build(algorithm).eval()
    randomise_generators(model)
    batch = task_batch()
    with torch.no_grad():
        everything = algorithm.predict(model, support_of(batch), batch.query_images)
        alone = algorithm.predict(model, support_of(batch), batch.query_images[:, 2:3])
    assert torch.allclose(everything[:, 2:3], alone, atol=1e-10)


def test_fewer_classes_than_trained_use_the_first_outputs_and_more_are_refused():
    algorithm = make_algorithm()
    model = build(algorithm, way=3).eval()
    with torch.no_grad():
        small = task_batch(way=2)
        assert algorithm.predict(model, support_of(small), small.query_images).shape == (2, 4, 2)
        large = task_batch(way=4)
        with pytest.raises(UsageError, match="3 outputs, the tasks have 4 classes") as error:
            algorithm.predict(model, support_of(large), large.query_images)
    assert "--way 3" in error.value.hint


def test_without_task_fast_weights_there_is_no_d():
    algorithm = make_algorithm(task_fast_weights=False)
    model = build(algorithm)
    assert len(model.task_generators) == 0
    state = algorithm.adapt(model, support_of(task_batch()))
    assert state.task_weights == {}
    assert state.keys.shape == (2, 3, 4)


def test_unknown_representation_loss_is_a_usage_error():
    with pytest.raises(UsageError, match="representation_loss"):
        make_algorithm(representation_loss="triplet")
