"""Matching Networks' defining computations on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch

from metactl.algorithm import LabelledImages, ModelSpec
from metactl.engine.config import resolve_config
from metactl.nn.metric import EmbeddedSupport
from metactl_plugins.matching import MatchingNetworks, attention, class_log_probabilities


def make_algorithm(**overrides) -> MatchingNetworks:
    return MatchingNetworks({**MatchingNetworks.defaults["*"], **overrides})


def test_attention_is_the_softmax_of_cosine_similarities_and_sums_to_one():
    queries = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # (1, 2, 2)
    supports = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]])  # (1, 3, 2)
    half = 1 / math.sqrt(2)
    cosines = torch.tensor([[[1.0, 0.0, -1.0], [half, half, -half]]])
    weights = attention(queries, supports)
    assert torch.allclose(weights, cosines.softmax(-1))
    assert torch.allclose(weights.sum(-1), torch.ones(1, 2))
    # Cosine, not dot product: scaling a support embedding changes nothing.
    assert torch.allclose(attention(queries, supports * torch.tensor([[[5.0], [0.1], [7.0]]])),
                          weights)


def test_output_is_the_attention_summed_per_class():
    torch.manual_seed(0)
    queries, supports = torch.randn(2, 4, 8), torch.randn(2, 5, 8)
    labels = torch.tensor([[0, 1, 0, 2, 1], [2, 2, 0, 1, 0]])
    log_probabilities = class_log_probabilities(queries, EmbeddedSupport(supports, labels, 3))
    weights = attention(queries, supports)  # (2, 4, 5)
    for task in range(2):
        for label in range(3):
            members = (labels[task] == label).nonzero().flatten()
            expected = weights[task][:, members].sum(-1)
            assert torch.allclose(log_probabilities[task, :, label].exp(), expected, atol=1e-6)
    assert torch.allclose(log_probabilities.exp().sum(-1), torch.ones(2, 4))


def test_predict_returns_the_attention_mass_and_a_copied_support_image_wins():
    torch.manual_seed(0)
    algorithm = make_algorithm()
    model = algorithm.build_model(ModelSpec(1, 28, 28, way=3)).eval()
    images = torch.rand(2, 3, 1, 28, 28)
    support = LabelledImages(images, torch.arange(3).expand(2, 3), way=3)
    with torch.no_grad():
        probabilities = algorithm.predict(model, support, images.flip(1))
        embedded = model.embed_support(images)
        expected = attention(model.embed_queries(images.flip(1), embedded), embedded)
    assert probabilities.shape == (2, 3, 3)
    assert torch.allclose(probabilities, expected, atol=1e-6)  # one shot: attention = P
    assert torch.equal(probabilities.argmax(-1), torch.tensor([[2, 1, 0], [2, 1, 0]]))


def test_the_default_loss_is_the_negative_log_likelihood_of_the_attention():
    torch.manual_seed(0)
    algorithm = make_algorithm()
    model = algorithm.build_model(ModelSpec(1, 28, 28, way=2)).eval()
    from metactl.data.episodes import TaskBatch

    batch = TaskBatch(torch.rand(1, 2, 1, 28, 28), torch.tensor([[0, 1]]),
                      torch.rand(1, 2, 1, 28, 28), torch.tensor([[1, 0]]),
                      torch.tensor([[7, 9]]), way=2, shot=1, query=1)
    with torch.no_grad():
        loss = algorithm.loss(model, batch).loss
        probabilities = algorithm.predict(model, LabelledImages(batch.support_images,
                                                                batch.support_labels, 2),
                                          batch.query_images)
    expected = -probabilities[0, [0, 1], [1, 0]].log().mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_full_context_embeddings_depend_on_the_whole_support_set():
    torch.manual_seed(0)
    images = torch.rand(1, 4, 1, 28, 28)
    changed = images.clone()
    changed[0, 3] = torch.rand(1, 28, 28)
    plain = make_algorithm().build_model(ModelSpec(1, 28, 28, way=4)).eval()
    fce = make_algorithm(fce=True, fce_steps=3).build_model(ModelSpec(1, 28, 28, way=4)).eval()
    with torch.no_grad():
        assert torch.allclose(plain.embed_support(images)[0, 0], plain.embed_support(changed)[0, 0])
        assert not torch.allclose(fce.embed_support(images)[0, 0], fce.embed_support(changed)[0, 0])
        queries = torch.rand(1, 2, 1, 28, 28)
        contextual = fce.embed_queries(queries, fce.embed_support(images))
        assert contextual.shape == (1, 2, 64)
        in_other_context = fce.embed_queries(queries, fce.embed_support(changed))
        assert not torch.allclose(contextual, in_other_context)
        fce.steps = 0  # no read: f(x, S) is the plain embedding f'(x)
        assert torch.allclose(fce.embed_queries(queries, fce.embed_support(images)),
                              fce.encoder(queries[0]).unsqueeze(0))


@pytest.mark.parametrize("fce", [False, True])
def test_unbalanced_support_sets_are_accepted(fce):
    torch.manual_seed(0)
    algorithm = make_algorithm(fce=fce)
    model = algorithm.build_model(ModelSpec(1, 28, 28, way=2)).eval()
    support = LabelledImages(torch.rand(1, 5, 1, 28, 28), torch.tensor([[0, 0, 0, 0, 1]]), way=2)
    with torch.no_grad():
        probabilities = algorithm.predict(model, support, torch.rand(1, 3, 1, 28, 28))
    assert torch.allclose(probabilities.sum(-1), torch.ones(1, 3))


def test_defaults_follow_the_paper():
    config = resolve_config("matching", MatchingNetworks.defaults, {}, {}, {})
    assert config["fce"] is False  # the paper uses FCE on mini-ImageNet, not on Omniglot
    assert set(MatchingNetworks.hyperparameter_help) == {"backbone", "hidden", "dropblock", "fce",
                                                         "fce_steps"}
    mini = resolve_config("matching", MatchingNetworks.defaults, {},
                          {"dataset": "mini-imagenet"}, {})
    assert mini["fce"] is True


@pytest.mark.parametrize("fce", [False, True])
def test_training_embeds_support_and_queries_in_one_forward(fce):
    """Batch norm in training sees each task's support and queries together, as one batch."""
    from metactl.data.episodes import TaskBatch

    torch.manual_seed(0)
    algorithm = make_algorithm(fce=fce)
    model = algorithm.build_model(ModelSpec(1, 28, 28, way=3)).train()
    support, queries = torch.rand(2, 3, 1, 28, 28), torch.rand(2, 6, 1, 28, 28)
    support_labels, query_labels = torch.arange(3).repeat(2, 1), torch.arange(3).repeat(2, 2)
    batch = TaskBatch(support, support_labels, queries, query_labels,
                      torch.zeros(2, 3, dtype=torch.long), way=3, shot=1, query=2)
    loss = algorithm.loss(model, batch).loss
    together = torch.stack([model.encoder(torch.cat([support[task], queries[task]]))
                            for task in range(2)])
    g = model.support_context(together[:, :3])
    state = EmbeddedSupport(g, support_labels, 3)
    expected = torch.nn.functional.nll_loss(
        class_log_probabilities(model.query_context(together[:, 3:], g), state).flatten(0, 1),
        query_labels.flatten())
    separately = model.embed_queries(queries, model.embed_support(support))
    assert torch.allclose(loss, expected, atol=1e-6)
    # Separate forwards would normalise each set with its own batch-norm statistics.
    assert not torch.allclose(model.query_context(together[:, 3:], g), separately, atol=1e-3)
