"""The plugin's own tests: run them with ``pytest`` after ``pip install -e .``."""

from __future__ import annotations

import torch
from metactl_example_plugin import CosineCentroid

from metactl.algorithm import LabelledImages, ModelSpec
from metactl.engine.config import algorithm_defaults
from metactl.plugins import get_registry


def test_registered_through_the_entry_point():
    assert get_registry().get("example-cosine-centroid") is CosineCentroid


def test_predicts_probabilities_of_every_class():
    torch.manual_seed(0)
    algorithm = CosineCentroid(algorithm_defaults(CosineCentroid.defaults, "omniglot", 5, 1))
    model = algorithm.build_model(ModelSpec(channels=1, height=28, width=28, way=5)).eval()
    support = LabelledImages(torch.rand(2, 5, 1, 28, 28), torch.arange(5).repeat(2, 1), way=5)
    with torch.no_grad():
        probabilities = algorithm.predict(model, support, torch.rand(2, 7, 1, 28, 28))
    assert probabilities.shape == (2, 7, 5)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(2, 7))


def test_a_query_equal_to_a_support_image_gets_its_class():
    algorithm = CosineCentroid({"hidden": 8, "scale": 10.0})
    model = algorithm.build_model(ModelSpec(channels=1, height=28, width=28, way=3)).eval()
    images = torch.rand(1, 3, 1, 28, 28)
    support = LabelledImages(images, torch.tensor([[0, 1, 2]]), way=3)
    with torch.no_grad():
        probabilities = algorithm.predict(model, support, images)
    assert probabilities.argmax(-1).tolist() == [[0, 1, 2]]


def test_passes_the_conformance_test(metactl_conformance):
    """metactl's own checks (the pytest plugin installed with metactl): build, one meta-step
    with finite loss and gradients, training statistics, predicted probabilities."""
    metactl_conformance("example-cosine-centroid", {"hidden": 8})
