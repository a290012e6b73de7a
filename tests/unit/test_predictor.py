"""Prediction on real Omniglot drawings with a Prototypical Networks run made by the test."""

from __future__ import annotations

import csv
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from testsupport import SHARED_DATASETS

from metactl.algorithm import ModelSpec
from metactl.engine.checkpoint import save_checkpoint
from metactl.engine.config import resolve_config
from metactl.engine.predictor import (
    Prediction,
    check_output_path,
    load_query_paths,
    load_support_folder,
    predict,
    write_predictions,
)
from metactl.engine.run import RunFolder
from metactl.errors import DataError, UsageError
from metactl.plugins import get_registry
from metactl_datasets.omniglot import decode_drawing

MIRROR = SHARED_DATASETS / "omniglot"
ARCHIVE = MIRROR / "images_background_small1.zip"
CHARACTERS = {"alpha": "Balinese/character01", "beta": "Balinese/character02",
              "gamma": "Balinese/character03"}
SHAPE = (1, 28, 28)
PrototypicalNetworks = get_registry().get("prototypical")


@pytest.fixture(scope="module")
def drawings(tmp_path_factory) -> dict[str, list[Path]]:
    """The first 6 drawings (105x105 PNGs, black ink on white) of 3 real characters."""
    if not ARCHIVE.is_file():
        pytest.skip(f"the Omniglot mirror file {ARCHIVE} is not here")
    folder = tmp_path_factory.mktemp("omniglot")
    found: dict[str, list[Path]] = {}
    with zipfile.ZipFile(ARCHIVE) as archive:
        for label, character in CHARACTERS.items():
            prefix = f"images_background_small1/{character}/"
            members = sorted(n for n in archive.namelist()
                             if n.startswith(prefix) and n.endswith(".png"))[:6]
            found[label] = [Path(archive.extract(member, folder)) for member in members]
    return found


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """An untrained Prototypical Networks run, saved the way the trainer saves one."""
    torch.manual_seed(0)
    run = RunFolder(tmp_path_factory.mktemp("run"))
    config = resolve_config("prototypical", PrototypicalNetworks.defaults, {},
                            {"device": "cpu", "way": 3}, {})
    model = PrototypicalNetworks(config).build_model(ModelSpec(*SHAPE, way=3))
    save_checkpoint(run.last, {"algorithm": "prototypical", "dataset": "omniglot",
                               "model": model.state_dict(), "image_shape": list(SHAPE),
                               "num_train_classes": 0, "invert": True, "step": 0})
    run.write_config(config)
    return run.path


def _copy(paths: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(path, folder / path.name)) for path in paths]


@pytest.fixture
def support(tmp_path, drawings) -> Path:
    """One subfolder per class, one drawing each (1-shot)."""
    for label, paths in drawings.items():
        _copy(paths[:1], tmp_path / "support" / label)
    return tmp_path / "support"


@pytest.fixture
def queries(tmp_path, drawings) -> Path:
    """Drawings 2-4 of each class, nested one folder deep."""
    for label, paths in drawings.items():
        _copy(paths[1:4], tmp_path / "queries" / label)
    return tmp_path / "queries"


def test_support_images_are_converted_exactly_as_training_data(tmp_path, drawings):
    for label, paths in drawings.items():
        _copy(paths[:2], tmp_path / label)
    images, labels, class_names = load_support_folder(tmp_path, SHAPE, invert=True)
    assert images.shape == (1, 6, *SHAPE) and images.dtype == torch.float32
    assert labels.tolist() == [[0, 0, 1, 1, 2, 2]] and labels.dtype == torch.int64
    assert class_names == ["alpha", "beta", "gamma"]
    packed = decode_drawing(drawings["beta"][1], 28) / 255.0  # as the HDF5 store holds it
    np.testing.assert_allclose(images[0, 3, 0].numpy(), packed, atol=1e-6)
    assert images[0, :, 0, 0, 0].eq(0).all(), "white background becomes 0 when inverted"


def test_without_inversion_the_background_stays_white(tmp_path, drawings):
    for label, paths in drawings.items():
        _copy(paths[:1], tmp_path / label)
    images, _, _ = load_support_folder(tmp_path, SHAPE, invert=False)
    assert images[0, :, 0, 0, 0].eq(1).all()


def test_any_size_and_colour_is_converted_to_the_run_shape(tmp_path, drawings):
    for index, label in enumerate(("red", "blue")):
        (tmp_path / label).mkdir()
        Image.new("RGB", (50 + index, 40), (200, 10 * index, 0)).save(tmp_path / label / "a.jpg")
    Image.open(drawings["alpha"][0]).save(tmp_path / "red" / "b.bmp")
    images, labels, _ = load_support_folder(tmp_path, (3, 21, 17), invert=False)
    assert images.shape == (1, 3, 3, 21, 17)
    assert labels.tolist() == [[0, 1, 1]]  # blue, then red's two images
    assert 0 <= images.min() and images.max() <= 1


def test_transparent_pixels_become_white_background(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        Image.new("RGBA", (30, 30), (0, 0, 0, 0)).save(tmp_path / label / "clear.png")
    images, _, _ = load_support_folder(tmp_path, SHAPE, invert=True)
    assert images.eq(0).all(), "a transparent background is paper, not ink"


def test_query_paths_recurse_sorted_and_skip_what_is_not_an_image(tmp_path, drawings):
    nested = _copy(drawings["alpha"][:2], tmp_path / "folder" / "deeper")
    top = _copy(drawings["beta"][:1], tmp_path / "folder")
    (tmp_path / "folder" / "notes.txt").write_text("not an image")
    _copy(drawings["gamma"][:1], tmp_path / "folder" / ".hidden")
    single = _copy(drawings["gamma"][1:2], tmp_path)[0]
    found = load_query_paths([single, tmp_path / "folder", single])
    assert found == [single, *sorted(nested + top)]


def test_predict_gives_a_distribution_over_the_support_classes(run_folder, support, queries):
    predictions = predict(run_folder, support, [queries], device="cpu")
    assert len(predictions) == 9
    assert [p.path.parent.name for p in predictions] == ["alpha"] * 3 + ["beta"] * 3 + ["gamma"] * 3
    for prediction in predictions:
        assert list(prediction.probabilities) == ["alpha", "beta", "gamma"]
        assert sum(prediction.probabilities.values()) == pytest.approx(1, abs=1e-5)
        assert prediction.probability == max(prediction.probabilities.values())
        assert prediction.probabilities[prediction.predicted_class] == prediction.probability


def test_a_query_identical_to_a_support_image_gets_that_class(run_folder, support):
    """1-shot: the prototype is the support embedding itself, at distance 0 from the query."""
    copies = sorted(support.rglob("*.png"))
    predictions = predict(run_folder, support, copies, device="cpu")
    assert [p.predicted_class for p in predictions] == ["alpha", "beta", "gamma"]


def test_chunking_the_queries_does_not_change_the_predictions(run_folder, support, queries):
    whole = predict(run_folder, support, [queries], device="cpu")
    chunked = predict(run_folder, support, [queries], device="cpu", chunk_size=2)
    for one, other in zip(whole, chunked, strict=True):
        assert one.path == other.path and one.predicted_class == other.predicted_class
        assert one.probability == pytest.approx(other.probability, abs=1e-5)


def test_gradient_based_algorithms_predict_with_gradients_enabled(run_folder, support, queries,
                                                                  monkeypatch):
    modes = []

    def recording_predict(self, model, support_set, query_images):
        modes.append(torch.is_grad_enabled())
        return PrototypicalNetworks.logits(self, model, self.adapt(model, support_set),
                                           query_images).softmax(-1)

    monkeypatch.setattr(PrototypicalNetworks, "predict", recording_predict)
    predict(run_folder, support, [queries], device="cpu")
    monkeypatch.setattr(PrototypicalNetworks, "adapts_with_gradients", True)
    predict(run_folder, support, [queries], device="cpu")
    assert modes == [False, True]


def _sample_predictions() -> list[Prediction]:
    return [Prediction(Path("q/a,1.png"), "alpha", 0.7, {"alpha": 0.7, "beta,2": 0.3}),
            Prediction(Path("q/b.png"), "beta,2", 0.6, {"alpha": 0.4, "beta,2": 0.6})]


def test_write_predictions_as_csv(tmp_path):
    path = write_predictions(_sample_predictions(), tmp_path / "out.csv")
    with path.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    assert rows[0] == ["query", "predicted_class", "probability", "alpha", "beta,2"]
    assert rows[1] == [str(Path("q/a,1.png")), "alpha", "0.7", "0.7", "0.3"]
    assert len(rows) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"], "no temporary file left"


def test_write_predictions_as_json(tmp_path):
    path = write_predictions(_sample_predictions(), tmp_path / "sub" / "out.JSON")
    records = json.loads(path.read_text(encoding="utf-8"))
    assert records[1] == {"query": str(Path("q/b.png")), "predicted_class": "beta,2",
                          "probability": 0.6, "probabilities": {"alpha": 0.4, "beta,2": 0.6}}


def test_write_predictions_refuses_an_unknown_format(tmp_path):
    with pytest.raises(UsageError, match="unknown format '.txt'") as raised:
        write_predictions(_sample_predictions(), tmp_path / "out.txt")
    assert ".csv or .json" in raised.value.hint
    with pytest.raises(UsageError, match="no extension"):
        check_output_path(tmp_path / "predictions")
    assert check_output_path(Path("x.CSV")) == ".csv"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case, error, message", [
    ("missing", UsageError, "does not exist"),
    ("a file", UsageError, "is not a folder"),
    ("one class", UsageError, "at least 2 class subfolders"),
    ("empty class", DataError, "class folder .*beta holds no images"),
    ("corrupt image", DataError, r"broken\.png is not an image Pillow can read"),
])
def test_bad_support_folders_say_what_is_wrong(tmp_path, drawings, case, error, message):
    folder = tmp_path / "support"
    if case == "a file":
        folder.write_text("not a folder")
    elif case != "missing":
        _copy(drawings["alpha"][:1], folder / "alpha")
        if case == "empty class":
            (folder / "beta").mkdir()
        if case == "corrupt image":
            (folder / "beta").mkdir()
            (folder / "beta" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(error, match=message) as raised:
        load_support_folder(folder, SHAPE, invert=True)
    assert raised.value.hint and "\n" not in raised.value.one_line()


def test_a_truncated_image_is_named(tmp_path, drawings):
    for label, paths in drawings.items():
        _copy(paths[:1], tmp_path / label)
    victim = tmp_path / "beta" / drawings["beta"][0].name
    victim.write_bytes(victim.read_bytes()[:120])
    with pytest.raises(DataError, match=re.escape(victim.name)):
        load_support_folder(tmp_path, SHAPE, invert=True)


def test_missing_or_empty_queries_are_usage_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(UsageError, match="no query images"):
        load_query_paths([tmp_path / "empty"])
    with pytest.raises(UsageError, match="no query images"):
        load_query_paths([])
    with pytest.raises(UsageError, match="query path .*nowhere does not exist"):
        load_query_paths([tmp_path / "nowhere"])


def test_a_query_that_is_not_an_image_is_named(run_folder, support, tmp_path):
    (tmp_path / "query.png").write_text("text, not pixels")
    with pytest.raises(DataError, match=r"query\.png is not an image"):
        predict(run_folder, support, [tmp_path / "query.png"], device="cpu")


def test_a_missing_run_is_a_usage_error(tmp_path, support, queries):
    with pytest.raises(UsageError, match="does not exist"):
        predict(tmp_path / "no-run", support, [queries])
