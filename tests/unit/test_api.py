"""The Python API with an algorithm no plugin registered: train, evaluate, predict, load_run;
statistics of the training data kept in the checkpoint; no process-wide changes."""

from __future__ import annotations

import zipfile

import pytest
import torch
from testsupport import SHARED_DATASETS

import metactl
from metactl.errors import UsageError
from metactl_plugins.prototypical import PrototypicalNetworks


class CentredPrototypes(PrototypicalNetworks):
    """Prototypical Networks on features centred by the training set's mean feature (the
    centring of SimpleShot, Wang et al. 2019), defined here and registered nowhere."""

    name = "centred-prototypes"
    defaults = {"*": {"hidden": 16}}
    hyperparameter_help = {"hidden": "channels (16 here)"}

    def training_statistics(self, model, batches):
        from metactl.nn.backbones import embed_tasks

        features = torch.cat([embed_tasks(model, batch.images)[0] for batch in batches])
        return {"mean": features.mean(0)}

    def task_state(self, model, support):
        from metactl.nn.backbones import embed_tasks
        from metactl.nn.metric import class_means

        features = embed_tasks(model, support.images) - self.statistics["mean"]
        return class_means(features, support.labels, support.way)

    def logits(self, model, state, query_images):
        from metactl.nn.backbones import embed_tasks

        queries = embed_tasks(model, query_images) - self.statistics["mean"]
        return -torch.cdist(queries, state).pow(2)


def test_subclass_defaults_extend_the_parents():
    assert CentredPrototypes.defaults["*"]["hidden"] == 16
    assert CentredPrototypes.defaults["*"]["distance"] == "squared-euclidean"
    assert CentredPrototypes.defaults["omniglot"] == PrototypicalNetworks.defaults["omniglot"]
    assert PrototypicalNetworks.defaults["*"]["hidden"] == 64
    assert CentredPrototypes.hyperparameter_help["distance"].startswith("squared-euclidean")


@pytest.fixture(scope="module")
def trained(omniglot_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    return metactl.train(CentredPrototypes, steps=4, out=out, root=omniglot_root, quiet=True,
                         progress=False, way=5, shot=1, train_way=5, train_query=2,
                         val_every=4, val_episodes=4, device="cpu")


@pytest.mark.slow
def test_an_unregistered_class_trains_and_its_statistics_are_kept(trained, omniglot_root):
    from metactl.engine.checkpoint import load_checkpoint

    assert isinstance(trained, metactl.Run) and trained.status == "finished"
    assert trained.config["algorithm"] == "centred-prototypes" and trained.config["hidden"] == 16
    stored = load_checkpoint(trained.path / "checkpoints" / "best.pt")["statistics"]["mean"]
    assert stored.shape == (16,) and bool(stored.abs().sum() > 0)
    model = metactl.load_run(trained.path, algorithm=CentredPrototypes).load_model("cpu")
    torch.testing.assert_close(model.algorithm.statistics["mean"], stored)
    result = metactl.evaluate(trained, episodes=6, root=omniglot_root)  # the Run knows its class
    assert result.episodes == 6 and 0 <= result.mean <= 1
    assert (trained.path / "evaluation-test-5way-1shot.json").is_file()
    assert "evaluation-test-5way-1shot" in trained.evaluations


@pytest.mark.slow
def test_a_folder_of_an_unregistered_class_needs_the_class(trained):
    with pytest.raises(UsageError, match="unknown algorithm 'centred-prototypes'"):
        metactl.evaluate(trained.path, episodes=2)
    with pytest.raises(UsageError, match="is a centred-prototypes run, not prototypical"):
        metactl.evaluate(trained.path, episodes=2, algorithm=PrototypicalNetworks)


@pytest.mark.slow
def test_predict_classifies_real_drawings(trained, tmp_path):
    archive_path = SHARED_DATASETS / "omniglot" / "images_background_small1.zip"
    if not archive_path.is_file():
        pytest.skip(f"{archive_path} is not here")
    with zipfile.ZipFile(archive_path) as archive:
        for index in (1, 2):
            prefix = f"images_background_small1/Balinese/character0{index}/"
            members = sorted(n for n in archive.namelist()
                             if n.startswith(prefix) and n.endswith(".png"))[:2]
            for role, member in zip(("support", "queries"), members, strict=True):
                target = tmp_path / role / f"character{index}" / member.rsplit("/", 1)[1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member))
    predictions = trained.predict(tmp_path / "support", [tmp_path / "queries"], device="cpu")
    assert len(predictions) == 2
    assert {p.predicted_class for p in predictions} <= {"character1", "character2"}


def test_instances_and_names_are_accepted_and_nonsense_is_refused():
    from metactl.api import _algorithm_class

    assert _algorithm_class("prototypical") == (PrototypicalNetworks, {})
    instance = CentredPrototypes({"hidden": 8})
    assert _algorithm_class(instance) == (CentredPrototypes, {"hidden": 8})
    with pytest.raises(UsageError, match="is not an algorithm"):
        _algorithm_class(42)


def test_the_library_changes_nothing_process_wide(monkeypatch):
    """The allocator tuning belongs to the command line; the library applies it on request."""
    import metactl.engine.device as device

    calls = []
    monkeypatch.setattr(device, "keep_freed_memory", lambda: calls.append(1))
    device.placement_for({"device": "cpu"}, PrototypicalNetworks.device)
    with pytest.raises(UsageError):  # stops before training, after the tuning would be applied
        metactl.train("prototypical", steps=1, way=0, progress=False, quiet=True)
    assert calls == []
    with pytest.raises(UsageError):
        metactl.train("prototypical", steps=1, way=0, tune_memory=True)
    assert calls == [1]


def test_progress_shows_in_a_terminal_and_in_jupyter(monkeypatch):
    import importlib.util
    import io

    from rich.console import Console

    from metactl.engine.trainer import progress_display

    assert progress_display(Console(file=io.StringIO(), force_terminal=True)) == "bar"
    assert progress_display(Console(file=io.StringIO())) is None
    jupyter = Console(file=io.StringIO(), force_jupyter=True)
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "ipywidgets" else found(name, *rest))
    assert progress_display(jupyter) == "lines"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: object())
    assert progress_display(jupyter) == "bar"
