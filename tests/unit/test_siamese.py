"""Siamese networks' defining computations: the L1 head, pair sampling, the distortions and
one-shot classification; and verification learnt on real Omniglot images."""

from __future__ import annotations

import pytest
import torch

from metactl.algorithm import LabelledImages, ModelSpec
from metactl.data.episodes import EpisodeSampler, TaskBatch
from metactl.errors import UsageError
from metactl.nn.pairs import random_affine, sample_pairs, unordered_pair_counts
from metactl_plugins.siamese import SiameseNetworks, class_similarities


def make_algorithm(**overrides) -> SiameseNetworks:
    return SiameseNetworks({**SiameseNetworks.defaults["*"], **overrides})


def small_model(algorithm: SiameseNetworks, way: int = 3):
    return algorithm.build_model(ModelSpec(1, 28, 28, way=way))


def test_the_head_weights_the_l1_distance_of_the_embeddings():
    model = small_model(make_algorithm(embedding=3))
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[-1.0, 2.0, 0.5]]))
        model.head.bias.fill_(0.25)
    first = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.3, 0.3]])
    second = torch.tensor([[0.4, 0.7, 0.5], [0.3, 0.3, 0.3]])
    logits = model.pair_logits(first, second)
    expected = torch.tensor([-1.0 * 0.3 + 2.0 * 0.2 + 0.25, 0.25])
    assert torch.allclose(logits, expected, atol=1e-6)
    assert torch.allclose(model.pair_logits(second, first), logits)  # symmetric


def test_all_pair_logits_match_the_pairwise_head():
    torch.manual_seed(0)
    model = small_model(make_algorithm(embedding=16))
    queries, supports = torch.rand(2, 3, 16), torch.rand(2, 4, 16)
    logits = model.all_pair_logits(queries, supports)
    assert logits.shape == (2, 3, 4)
    assert torch.allclose(logits[1, 2, 3], model.pair_logits(queries[1, 2], supports[1, 3]))


def test_embeddings_are_the_sigmoid_layer_of_the_encoder():
    torch.manual_seed(0)
    model = small_model(make_algorithm(embedding=32)).eval()
    images = torch.rand(2, 3, 1, 28, 28)
    with torch.no_grad():
        embedded = model.embed(images)
        expected = torch.sigmoid(model.embedding(model.encoder(images[1])))
    assert embedded.shape == (2, 3, 32)
    assert torch.allclose(embedded[1], expected, atol=1e-6)
    assert bool(((embedded > 0) & (embedded < 1)).all())


def test_pairs_are_distinct_and_labelled_by_class_equality():
    labels = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 2]] * 3)
    same, different = unordered_pair_counts(way=3, per_class=3)
    assert (same, different) == (9, 27)
    pairs = sample_pairs(labels, same=9, different=10, generator=torch.Generator().manual_seed(0))
    assert pairs.first.shape == pairs.second.shape == pairs.same.shape == (3, 19)
    equal = (labels.gather(1, pairs.first) == labels.gather(1, pairs.second)).float()
    assert torch.equal(equal, pairs.same)
    assert torch.equal(pairs.same.sum(1), torch.full((3,), 9.0))
    assert bool((pairs.first < pairs.second).all())  # unordered pairs, never an image with itself
    for task in range(3):
        keys = set(zip(pairs.first[task].tolist(), pairs.second[task].tolist(), strict=True))
        assert len(keys) == 19


def test_distortions_are_the_identity_when_no_component_is_drawn():
    images = torch.rand(4, 1, 28, 28)
    assert torch.allclose(random_affine(images, probability=0.0), images, atol=1e-5)
    generator = torch.Generator().manual_seed(0)
    distorted = random_affine(images, probability=1.0, generator=generator)
    assert distorted.shape == images.shape and not torch.allclose(distorted, images)
    assert float(distorted.min()) >= 0 and float(distorted.max()) <= 1


def test_a_copied_support_image_is_the_most_similar_of_its_task():
    torch.manual_seed(0)
    algorithm = make_algorithm()
    model = small_model(algorithm)
    with torch.no_grad():  # distance lowers the similarity, as training makes it
        model.head.weight.copy_(-model.head.weight.abs())
    model.eval()
    images = torch.rand(2, 3, 1, 28, 28)
    support = LabelledImages(images, torch.arange(3).expand(2, 3), way=3)
    with torch.no_grad():
        probabilities = algorithm.predict(model, support, images.flip(1))
    assert probabilities.shape == (2, 3, 3)
    assert torch.allclose(probabilities.sum(-1), torch.ones(2, 3))
    assert torch.equal(probabilities.argmax(-1), torch.tensor([[2, 1, 0], [2, 1, 0]]))


def test_class_similarity_is_the_mean_over_the_class_s_images():
    logits = torch.tensor([[[0.0, 2.0, -1.0]]])  # one query, three support images
    similarities = class_similarities(logits, torch.tensor([[0, 0, 1]]), way=2)
    expected = torch.stack([(logits[..., 0].sigmoid() + logits[..., 1].sigmoid()) / 2,
                            logits[..., 2].sigmoid()], dim=-1)
    assert torch.allclose(similarities, expected)


def test_the_paper_s_tower_takes_105_pixel_images_only():
    model = make_algorithm(backbone="koch", embedding=8).build_model(ModelSpec(1, 105, 105, way=2))
    assert model.embedding.in_features == 256 * 6 * 6
    with pytest.raises(UsageError, match="cannot take 28x28 images"):
        make_algorithm(backbone="koch").build_model(ModelSpec(1, 28, 28, way=2))
    with pytest.raises(UsageError, match="unknown siamese backbone"):
        make_algorithm(backbone="resnet").build_model(ModelSpec(1, 28, 28, way=2))


def test_tasks_with_one_image_per_class_are_refused():
    algorithm = make_algorithm()
    batch = TaskBatch(torch.rand(1, 3, 1, 28, 28), torch.tensor([[0, 1, 2]]),
                      torch.rand(1, 0, 1, 28, 28), torch.zeros(1, 0, dtype=torch.int64),
                      torch.tensor([[0, 1, 2]]), way=3, shot=1, query=0)
    with pytest.raises(UsageError, match="one image per class"):
        algorithm.loss(small_model(algorithm), batch)


@pytest.mark.slow
def test_verification_is_learnt_on_real_omniglot(omniglot_root):
    """After 40 steps, an identical pair mostly scores higher than a pair of two test classes,
    and two drawings of one test class score higher than drawings of two classes."""
    from metactl.data.manage import open_split

    torch.manual_seed(0)
    algorithm = make_algorithm(distortions=True)
    model = small_model(algorithm, way=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = EpisodeSampler(open_split("omniglot", "train", root=omniglot_root), 5, 1, 5, seed=0)
    for _ in range(40):
        optimizer.zero_grad()
        algorithm.meta_gradient(model, sampler.sample(1))
        optimizer.step()
    model.eval()
    test = EpisodeSampler(open_split("omniglot", "test", root=omniglot_root), 20, 2, 0, seed=1)
    images = test.sample(4).support_images.view(4, 20, 2, 1, 28, 28)  # (tasks, class, drawing)
    with torch.no_grad():
        first, second = model.embed(images[:, :, 0]), model.embed(images[:, :, 1])
        identical = model.pair_logits(first, first)
        same_class = model.pair_logits(first, second)
        other_class = model.pair_logits(first, second.roll(1, dims=1))
    # The head's weights are free in sign, so an identical pair (distance 0, logit = the bias)
    # is not the maximum by construction; training makes it so for most pairs.
    assert float((identical > other_class).float().mean()) >= 0.7
    assert float((same_class > other_class).float().mean()) >= 0.65
    assert float(same_class.mean()) > float(other_class.mean()) + 0.4
