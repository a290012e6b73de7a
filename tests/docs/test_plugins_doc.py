"""docs/plugins.md: the MAML recipe and the statistics example run as written."""

from __future__ import annotations

import re

import pytest
from testsupport import REPOSITORY

PAGE = REPOSITORY / "docs" / "plugins.md"


def block_defining(name: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.DOTALL)
    (found,) = [block for block in blocks if name in block]
    return found


def recipe_class():
    namespace: dict = {}
    exec(compile(block_defining("class TinyMAML"), str(PAGE), "exec"), namespace)
    return namespace["TinyMAML"]


def test_the_maml_recipe_passes_the_conformance_test(metactl_conformance):
    metactl_conformance(recipe_class(), {"hidden": 8})


def test_the_recipe_with_running_statistics_fails_with_one_clear_line():
    import torch

    from metactl.errors import UsageError
    from metactl.nn.backbones import build_backbone
    from metactl.testing import tiny_batch

    algorithm = recipe_class()({"inner_steps": 1, "test_inner_steps": 1, "inner_lr": 0.4,
                                "hidden": 8})
    model = torch.nn.Sequential(build_backbone("conv4", 1, 8), torch.nn.Linear(8, 3)).train()
    with pytest.raises(UsageError, match="keeps running statistics") as raised:
        algorithm.meta_gradient(model, tiny_batch())
    line = raised.value.one_line()
    assert "running_stats=False" in line and "\n" not in line


@pytest.mark.slow
def test_the_maml_recipe_trains_and_evaluates_on_omniglot(omniglot_root, tmp_path):
    """The engine drives the recipe end to end: train, validate, checkpoint, evaluate."""
    import metactl

    run = metactl.train(recipe_class(), steps=3, out=tmp_path / "run", root=omniglot_root,
                        quiet=True, progress=False, way=5, shot=1, train_way=5, train_query=2,
                        val_every=3, val_episodes=4, hidden=8, device="cpu")
    assert run.status == "finished" and run.best_validation is not None
    result = metactl.evaluate(run, episodes=8, root=omniglot_root, inner_steps=1)
    assert result.episodes == 8 and 0 <= result.mean <= 1


def test_the_statistics_example_computes_the_mean_feature():
    import torch

    from metactl.algorithm import LabelledImages
    from metactl.nn.backbones import build_backbone, embed_tasks

    namespace: dict = {}
    exec(compile(block_defining("def training_statistics"), str(PAGE), "exec"), namespace)
    model = build_backbone("conv4", 1, 8).eval()
    images = torch.rand(1, 10, 1, 28, 28)
    batches = [LabelledImages(images[:, :6], torch.zeros(1, 6, dtype=torch.long), 4),
               LabelledImages(images[:, 6:], torch.ones(1, 4, dtype=torch.long), 4)]
    with torch.no_grad():
        statistics = namespace["training_statistics"](None, model, iter(batches))
        expected = embed_tasks(model, images)[0].mean(0)
    torch.testing.assert_close(statistics["mean"], expected)
