"""Prototypical Networks' defining computations on hand-made inputs."""

from __future__ import annotations

import torch

from metactl.algorithm import LabelledImages, ModelSpec
from metactl.nn.metric import class_means
from metactl_plugins.prototypical import PrototypicalNetworks, squared_distances


def make_algorithm(**overrides) -> PrototypicalNetworks:
    return PrototypicalNetworks({**PrototypicalNetworks.defaults["*"], **overrides})


def test_prototype_is_the_class_mean():
    embeddings = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [10.0, 10.0], [0.0, 4.0]]])
    labels = torch.tensor([[0, 0, 1, 0]])
    prototypes = class_means(embeddings, labels, way=2)
    assert torch.allclose(prototypes, torch.tensor([[[4 / 3, 2.0], [10.0, 10.0]]]))


def test_squared_distances_match_cdist():
    queries, prototypes = torch.randn(3, 7, 5), torch.randn(3, 4, 5)
    expected = torch.cdist(queries, prototypes).pow(2)
    assert torch.allclose(squared_distances(queries, prototypes), expected, atol=1e-5)


def test_a_query_equal_to_a_support_image_is_classified_as_its_class():
    torch.manual_seed(0)
    algorithm = make_algorithm()
    model = algorithm.build_model(ModelSpec(1, 28, 28, way=3)).eval()
    images = torch.rand(2, 3, 1, 28, 28)
    support = LabelledImages(images, torch.arange(3).expand(2, 3), way=3)
    with torch.no_grad():
        probabilities = algorithm.predict(model, support, images.flip(1))
    assert probabilities.shape == (2, 3, 3)
    assert torch.allclose(probabilities.sum(-1), torch.ones(2, 3))
    assert torch.equal(probabilities.argmax(-1), torch.tensor([[2, 1, 0], [2, 1, 0]]))


def test_omniglot_defaults_follow_the_paper():
    omniglot = PrototypicalNetworks.defaults["omniglot"]
    assert omniglot["train_way"] == 60 and omniglot["train_query"] == 5
    assert PrototypicalNetworks.defaults["*"]["lr"] == 1e-3
