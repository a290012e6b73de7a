"""Relation Networks' defining computations on hand-made inputs."""

from __future__ import annotations

import torch

from metactl.algorithm import LabelledImages, ModelSpec
from metactl.data.episodes import TaskBatch
from metactl.engine.config import resolve_config
from metactl.nn.metric import class_sums
from metactl_plugins.relation import RelationNetworks, relation_loss


def make_algorithm(**overrides) -> RelationNetworks:
    return RelationNetworks({**RelationNetworks.defaults["*"], **overrides})


def test_class_features_are_summed_over_shots():
    maps = torch.arange(5 * 2 * 2, dtype=torch.float32).view(1, 5, 1, 2, 2)  # (T, S, C, h, w)
    labels = torch.tensor([[1, 0, 1, 1, 0]])
    sums = class_sums(maps, labels, way=2)
    assert sums.shape == (1, 2, 1, 2, 2)
    assert torch.equal(sums[0, 0], maps[0, 1] + maps[0, 4])
    assert torch.equal(sums[0, 1], maps[0, 0] + maps[0, 2] + maps[0, 3])


def test_the_task_state_is_the_sum_of_each_class_s_feature_maps():
    torch.manual_seed(0)
    algorithm = make_algorithm()
    model = algorithm.build_model(ModelSpec(1, 28, 28, way=2)).eval()
    images = torch.rand(1, 6, 1, 28, 28)
    labels = torch.tensor([[0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        state = algorithm.task_state(model, LabelledImages(images, labels, way=2))
        maps = model.embedding(images[0])
    assert maps.shape == (6, 64, 5, 5)  # two pooled blocks, two unpooled: 28 -> 5
    assert torch.allclose(state[0, 0], maps[:3].sum(0), atol=1e-5)
    assert torch.allclose(state[0, 1], maps[3:].sum(0), atol=1e-5)


def test_scores_are_in_the_unit_interval_and_pair_each_query_with_each_class():
    torch.manual_seed(0)
    algorithm = make_algorithm()
    model = algorithm.build_model(ModelSpec(1, 28, 28, way=3)).eval()
    classes, queries = torch.randn(2, 3, 64, 5, 5), torch.randn(2, 4, 64, 5, 5)
    with torch.no_grad():
        scores = model.scores(queries, classes)
        single = model.relation(torch.cat([classes[1, 2], queries[1, 3]]).unsqueeze(0))
    assert scores.shape == (2, 4, 3)
    assert bool(((scores >= 0) & (scores <= 1)).all())
    assert torch.allclose(scores[1, 3, 2], single[0], atol=1e-6)  # class maps first, then query


def test_the_loss_is_the_mean_squared_error_against_one_hot_labels():
    scores = torch.tensor([[[0.9, 0.2], [0.4, 0.5]]])
    labels = torch.tensor([[0, 0]])
    expected = ((0.9 - 1) ** 2 + 0.2 ** 2 + (0.4 - 1) ** 2 + 0.5 ** 2) / 4
    assert torch.isclose(relation_loss(scores, labels), torch.tensor(expected))


def test_a_training_step_reaches_every_parameter_and_predict_sums_to_one():
    torch.manual_seed(0)
    algorithm = make_algorithm()
    model = algorithm.build_model(ModelSpec(1, 28, 28, way=2))
    batch = TaskBatch(torch.rand(2, 4, 1, 28, 28), torch.tensor([[0, 0, 1, 1]] * 2),
                      torch.rand(2, 2, 1, 28, 28), torch.tensor([[0, 1]] * 2),
                      torch.tensor([[3, 8]] * 2), way=2, shot=2, query=1)
    result = algorithm.meta_gradient(model, batch)
    assert torch.isfinite(result.loss)
    assert all(parameter.grad is not None for parameter in model.parameters())
    model.eval()
    with torch.no_grad():
        probabilities = algorithm.predict(model, LabelledImages(batch.support_images,
                                                                batch.support_labels, 2),
                                          batch.query_images)
        scores = algorithm.logits(model, algorithm.adapt(model, LabelledImages(
            batch.support_images, batch.support_labels, 2)), batch.query_images)
    assert torch.allclose(probabilities.sum(-1), torch.ones(2, 2))
    assert torch.equal(probabilities.argmax(-1), scores.argmax(-1))


def test_omniglot_defaults_follow_the_paper():
    def resolved(way: int, shot: int) -> dict:
        return resolve_config("relation", RelationNetworks.defaults, {},
                              {"way": way, "shot": shot}, {})

    assert resolved(5, 1)["train_query"] == 19 and resolved(5, 5)["train_query"] == 15
    assert resolved(20, 1)["train_query"] == 10 and resolved(20, 5)["train_query"] == 5
    config = resolved(5, 1)
    assert (config["lr"], config["lr_decay"], config["lr_decay_every"]) == (1e-3, 0.5, 100000)
    assert config["relation_hidden"] == 8
    # The authors' code: their initialisation, each module's gradient norm clipped to 0.5.
    assert (config["init"], config["module_grad_clip"]) == ("authors", 0.5)
    assert config["transductive_batch_norm"] is False and config["grad_clip"] == 0


def test_the_authors_initialisation_is_the_default():
    torch.manual_seed(0)
    model = make_algorithm().build_model(ModelSpec(1, 28, 28, way=5))
    convolution = model.embedding.blocks[1][0]  # 64 -> 64, 3x3: std sqrt(2 / (9 * 64))
    assert abs(float(convolution.weight.detach().std()) - (2 / (9 * 64)) ** 0.5) < 0.005
    assert not bool(convolution.bias.any())
    first, last = model.relation.fc[0], model.relation.fc[2]
    assert abs(float(first.weight.detach().std()) - 0.01) < 0.002
    assert torch.equal(first.bias, torch.ones(8)) and torch.equal(last.bias, torch.ones(1))
    pytorch = make_algorithm(init="pytorch").build_model(ModelSpec(1, 28, 28, way=5))
    assert not torch.equal(pytorch.relation.fc[0].bias, torch.ones(8))


def relation_batch(tasks: int = 2, way: int = 3, query: int = 2, seed: int = 0) -> TaskBatch:
    generator = torch.Generator().manual_seed(seed)
    return TaskBatch(torch.rand(tasks, way, 1, 28, 28, generator=generator),
                     torch.arange(way).repeat(tasks, 1),
                     torch.rand(tasks, way * query, 1, 28, 28, generator=generator),
                     torch.arange(way).repeat_interleave(query).repeat(tasks, 1),
                     torch.zeros(tasks, way, dtype=torch.long), way=way, shot=1, query=query)


def module_gradient_norms(model) -> list[float]:
    return [float(torch.linalg.vector_norm(torch.stack([
        torch.linalg.vector_norm(p.grad) for p in module.parameters()])))
        for module in (model.embedding, model.relation)]


def test_each_module_s_gradient_norm_is_clipped_on_its_own():
    batch = relation_batch()
    norms = {}
    for limit in (0.0, 0.1):
        torch.manual_seed(0)
        algorithm = make_algorithm(module_grad_clip=limit, init="pytorch")
        model = algorithm.build_model(ModelSpec(1, 28, 28, way=3))
        algorithm.meta_gradient(model, batch)
        norms[limit] = module_gradient_norms(model)
    assert all(norm > 0.2 for norm in norms[0.0]), norms  # so the clipping has work to do
    assert all(abs(norm - 0.1) < 1e-5 for norm in norms[0.1]), norms


def test_transductive_batch_norm_normalises_each_task_and_set_on_its_own():
    torch.manual_seed(0)
    algorithm = make_algorithm(transductive_batch_norm=True)
    model = algorithm.build_model(ModelSpec(1, 28, 28, way=3)).eval()
    batch = relation_batch(tasks=2)
    support = LabelledImages(batch.support_images, batch.support_labels, 3)
    with torch.no_grad():
        together = algorithm.logits(model, algorithm.adapt(model, support), batch.query_images)
        alone = algorithm.logits(model, algorithm.adapt(model, LabelledImages(
            batch.support_images[1:], batch.support_labels[1:], 3)), batch.query_images[1:])
        # The authors' test pass, by hand: each forward in training mode on one task's batch.
        reference = model.train()
        classes = reference.embedding(batch.support_images[1])
        queries = reference.embedding(batch.query_images[1])
        pairs = torch.cat([classes.unsqueeze(0).expand(6, *classes.shape),
                           queries.unsqueeze(1).expand(6, 3, *queries.shape[1:])], dim=2)
        by_hand = reference.relation(pairs.flatten(0, 1)).view(6, 3)
        model.eval()
        fewer_queries = algorithm.logits(model, algorithm.adapt(model, support),
                                         batch.query_images[:, :3])
    assert torch.allclose(together[1], alone[0], atol=1e-6)
    assert torch.allclose(together[1], by_hand, atol=1e-5)
    assert not torch.allclose(fewer_queries, together[:, :3], atol=1e-4)  # transductive
    assert not any(name.endswith("running_mean") for name in model.state_dict())
