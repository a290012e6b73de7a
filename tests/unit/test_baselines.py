"""The baselines: supervised pre-training over all training classes, then 1-NN by cosine or a
softmax layer fitted to each support set."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as functional
from torch import nn

from metactl.algorithm import LabelledImages, ModelSpec
from metactl.data.episodes import TaskBatch
from metactl.errors import UsageError
from metactl.nn.metric import EmbeddedSupport
from metactl.nn.pretraining import finetune_heads, finetuned_logits, global_labels
from metactl_plugins.finetune import FineTuningBaseline
from metactl_plugins.nearest_neighbor import NearestNeighborBaseline, nearest_support_scores

SPEC = ModelSpec(1, 28, 28, way=2, num_train_classes=10)


def make(algorithm_class, **overrides):
    return algorithm_class({**algorithm_class.defaults["*"], **overrides})


def small_batch() -> TaskBatch:
    torch.manual_seed(0)
    return TaskBatch(torch.rand(2, 2, 1, 28, 28), torch.tensor([[0, 1], [0, 1]]),
                     torch.rand(2, 4, 1, 28, 28), torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]]),
                     torch.tensor([[7, 2], [4, 9]]), way=2, shot=1, query=2)


def test_task_labels_map_to_training_classes():
    support, query = global_labels(small_batch())
    assert torch.equal(support, torch.tensor([[7, 2], [4, 9]]))
    assert torch.equal(query, torch.tensor([[7, 7, 2, 2], [4, 4, 9, 9]]))


@pytest.mark.parametrize("algorithm_class", [NearestNeighborBaseline, FineTuningBaseline])
def test_pre_training_is_cross_entropy_over_all_training_classes(algorithm_class):
    algorithm = make(algorithm_class)
    model = algorithm.build_model(SPEC)
    assert model.head.out_features == 10 and model.head.in_features == 64
    batch = small_batch()
    result = algorithm.meta_gradient(model, batch)
    images = torch.cat([batch.support_images, batch.query_images], 1).flatten(0, 1)
    targets = torch.tensor([7, 2, 7, 7, 2, 2, 4, 9, 4, 4, 9, 9])
    with torch.no_grad():
        expected = functional.cross_entropy(model(images), targets)
    assert torch.allclose(result.loss, expected, atol=1e-6)
    assert all(parameter.grad is not None for parameter in model.parameters())


def test_pre_training_needs_the_number_of_training_classes():
    with pytest.raises(UsageError, match="number of training classes"):
        make(NearestNeighborBaseline).build_model(ModelSpec(1, 28, 28, way=5))


def test_nearest_neighbour_picks_the_support_image_with_the_highest_cosine():
    supports = torch.tensor([[[10.0, 0.0], [0.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]])
    labels = torch.tensor([[0, 0, 1, 1]])
    # The first query is nearest to [1, 1] (class 1) by Euclidean distance, but points the way
    # of [10, 0] (class 0).
    queries = torch.tensor([[[2.0, 0.1], [-3.0, 2.0], [0.1, -2.0]]])
    scores = nearest_support_scores(queries, EmbeddedSupport(supports, labels, way=2))
    cosine = functional.cosine_similarity(queries.unsqueeze(2), supports.unsqueeze(1), dim=-1)
    assert torch.allclose(scores[..., 0], cosine[..., :2].amax(-1))
    assert torch.allclose(scores[..., 1], cosine[..., 2:].amax(-1))
    assert scores.argmax(-1).tolist() == [[0, 1, 0]]


def test_nearest_neighbour_predicts_the_class_of_a_copied_support_image():
    algorithm = make(NearestNeighborBaseline)
    model = algorithm.build_model(SPEC).eval()
    images = torch.rand(2, 3, 1, 28, 28)
    support = LabelledImages(images, torch.arange(3).expand(2, 3), way=3)
    with torch.no_grad():
        probabilities = algorithm.predict(model, support, images.flip(1))
    assert torch.allclose(probabilities.sum(-1), torch.ones(2, 3))
    assert torch.equal(probabilities.argmax(-1), torch.tensor([[2, 1, 0], [2, 1, 0]]))


def separable_task(tasks: int = 3, way: int = 4, shot: int = 2, dim: int = 16):
    """Support features clustered around random class centres, shaped as 1x1 images."""
    generator = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(tasks, way, dim, generator=generator)
    labels = torch.arange(way).repeat_interleave(shot).expand(tasks, -1)
    features = (centres.gather(1, labels.unsqueeze(-1).expand(-1, -1, dim))
                + 0.1 * torch.randn(tasks, way * shot, dim, generator=generator))
    return features.view(tasks, way * shot, dim, 1, 1), labels, way


def test_a_fine_tuned_head_classifies_its_own_support_set_perfectly():
    images, labels, way = separable_task()
    backbone = nn.Flatten()  # the features are the images
    with torch.no_grad():  # the engine's evaluation context: fitting enables gradients itself
        heads = finetune_heads(backbone, images, labels, way, steps=100, lr=0.01)
        scores = finetuned_logits(backbone, heads, images)
    assert heads.weight.shape == (3, 4, 16) and heads.bias.shape == (3, 4)
    assert torch.equal(scores.argmax(-1), labels)
    # each task's head is its own: the tasks' classes sit at different places
    assert not torch.allclose(heads.weight[0], heads.weight[1])


def test_fine_tuning_the_whole_network_gives_each_task_its_own_backbone():
    images, labels, way = separable_task()
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU())
    before = {name: value.clone() for name, value in backbone.state_dict().items()}
    heads = finetune_heads(backbone, images, labels, way, steps=60, lr=0.01, whole_network=True)
    assert heads.parameters["1.weight"].shape == (3, 8, 16)
    assert not torch.allclose(heads.parameters["1.weight"][0], heads.parameters["1.weight"][1])
    assert torch.equal(finetuned_logits(backbone, heads, images).argmax(-1), labels)
    for name, value in backbone.state_dict().items():  # the shared backbone is untouched
        assert torch.equal(value, before[name]), name


def test_finetune_predicts_through_the_plugin_api():
    algorithm = make(FineTuningBaseline, finetune_steps=20)
    assert algorithm.adapts_with_gradients
    model = algorithm.build_model(SPEC).eval()
    images = torch.rand(2, 3, 1, 28, 28)
    support = LabelledImages(images, torch.arange(3).expand(2, 3), way=3)
    probabilities = algorithm.predict(model, support, images)
    assert probabilities.shape == (2, 3, 3)
    assert torch.allclose(probabilities.sum(-1), torch.ones(2, 3))
    assert FineTuningBaseline.family == NearestNeighborBaseline.family == "baseline"
