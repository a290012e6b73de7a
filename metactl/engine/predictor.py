"""Prediction: adapt a trained run to a folder of labelled support images, classify queries.

The support folder holds one subfolder per class; the subfolder names (sorted) are the class
names. Images of any format and size Pillow reads are converted the way the training data was
packed: 8-bit grayscale for one channel or RGB for three, resized to the run's height and width
with Lanczos, inverted when the dataset was (Omniglot is stored as white ink on black, so a
black-on-white drawing must be inverted), scaled to [0, 1] and, when the run's store recorded
per-channel statistics (RGB datasets such as mini-ImageNet), normalised with them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from metactl.data.images import image_suffixes, images_under, read_image
from metactl.engine.run import write_text_atomic
from metactl.errors import DataError, PluginError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from metactl.algorithm import Algorithm

    Normalisation = tuple[tuple[float, ...], tuple[float, ...]] | None

QUERY_CHUNK = 256
"""Queries classified per forward pass; bounds memory for folders of thousands of images."""

SUPPORT_HINT = "give --support a folder with one subfolder of images per class"
QUERY_HINT = "pass --query with an image or a folder of images (PNG, JPEG, any format Pillow reads)"
OUTPUT_FORMATS = (".csv", ".json")


@dataclass(frozen=True)
class Prediction:
    """The class of one query image.

    Attributes:
        path: the query image.
        predicted_class: the most probable class (a support subfolder name).
        probability: its probability.
        probabilities: every class's probability, in class order; they sum to 1.
    """

    path: Path
    predicted_class: str
    probability: float
    probabilities: dict[str, float]


def load_image(path: Path, image_shape: Sequence[int], invert: bool) -> np.ndarray:
    """Read one image as the training data was packed.

    Args:
        path: any image file Pillow reads.
        image_shape: (channels, height, width) of the run; channels is 1 or 3.
        invert: whether the dataset's images were inverted when packed.

    Returns:
        float32 in [0, 1], (channels, height, width).
    """
    channels, height, width = (int(value) for value in image_shape)
    if channels not in (1, 3):
        raise DataError(f"the run's images have {channels} channels",
                        "prediction reads grayscale (1) or RGB (3) images only")
    pixels = read_image(Path(path), (height, width), channels, invert)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return pixels.transpose(2, 0, 1).astype(np.float32) / 255.0


def _stack(paths: Sequence[Path], image_shape: Sequence[int], invert: bool,
           normalisation: Normalisation = None) -> Tensor:
    """(1, len(paths), channels, height, width) float32, normalised as the training images
    were when ``normalisation`` (per-channel mean and std) is given."""
    import torch

    images = torch.from_numpy(np.stack([load_image(p, image_shape, invert) for p in paths]))[None]
    if normalisation is not None:
        mean, std = (torch.tensor(values).view(-1, 1, 1) for values in normalisation)
        images = (images - mean) / std
    return images


def _class_folders(folder: Path) -> list[Path]:
    if not folder.exists():
        raise UsageError(f"support folder {folder} does not exist", SUPPORT_HINT)
    if not folder.is_dir():
        raise UsageError(f"support path {folder} is not a folder", SUPPORT_HINT)
    classes = sorted(path for path in folder.iterdir()
                     if path.is_dir() and not path.name.startswith("."))
    if len(classes) < 2:
        found = f"only {classes[0].name!r}" if classes else "none"
        raise UsageError(f"support folder {folder} needs at least 2 class subfolders, "
                         f"found {found}", SUPPORT_HINT)
    return classes


def load_support_folder(folder: Path, image_shape: Sequence[int], invert: bool,
                        normalisation: Normalisation = None) -> tuple[Tensor, Tensor, list[str]]:
    """Read a support set of one subfolder per class.

    Args:
        folder: holds one subfolder per class, each with at least one image (at any depth).
        image_shape: (channels, height, width) of the run.
        invert: whether the run's dataset was inverted when packed.
        normalisation: per-channel (mean, std) the run's training images were normalised with.

    Returns:
        images: float32, (1, support, channels, height, width), in [0, 1] unless normalised.
        labels: int64, (1, support), the index of each image's class in ``class_names``.
        class_names: the subfolder names, sorted.
    """
    import torch

    folder = Path(folder)
    suffixes = image_suffixes()
    paths: list[Path] = []
    labels: list[int] = []
    classes = _class_folders(folder)
    for label, class_folder in enumerate(classes):
        images = images_under(class_folder, suffixes)
        if not images:
            raise DataError(f"class folder {class_folder} holds no images",
                            "put at least one image in every class folder, or remove it")
        paths.extend(images)
        labels.extend([label] * len(images))
    images = _stack(paths, image_shape, invert, normalisation)
    return images, torch.tensor([labels], dtype=torch.int64), [c.name for c in classes]


def load_query_paths(paths: Sequence[Path]) -> list[Path]:
    """The query images: each path is an image, or a folder searched recursively (sorted).

    Duplicates are dropped, the first occurrence keeps its place.
    """
    suffixes = image_suffixes()
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise UsageError(f"query path {path} does not exist", QUERY_HINT)
        if path.is_dir():
            found.extend(images_under(path, suffixes))
        else:
            found.append(path)
    if not found:
        named = ", ".join(str(p) for p in paths) or "none given"
        raise UsageError(f"no query images found ({named})", QUERY_HINT)
    return list(dict.fromkeys(found))


def _chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    import torch

    return torch.device("cpu")


def predict(run_path: Path, support: Path, queries: Sequence[Path], device: str | None = None,
            chunk_size: int = QUERY_CHUNK, algorithm: type[Algorithm] | None = None
            ) -> list[Prediction]:
    """Adapt the run's model to ``support`` and classify every query image.

    Args:
        run_path: a run folder written by ``metactl train``.
        support: one subfolder of images per class; the way is the number of subfolders.
        queries: images or folders of images.
        device: ``auto``, ``cpu`` or ``cuda``; default: the run's.
        chunk_size: queries per forward pass.
        algorithm: the run's Algorithm class when it is not a registered one.

    Returns:
        One :class:`Prediction` per query image, in the order of ``load_query_paths``.
    """

    from metactl.algorithm import LabelledImages
    from metactl.engine.run import load_trained

    trained = load_trained(run_path, device, algorithm=algorithm)
    if trained.checkpoint.get("task", "classification") != "classification":
        raise UsageError(f"predict classifies images, and {run_path} is a "
                         f"{trained.checkpoint.get('task')} run ({trained.config['dataset']})",
                         f"evaluate it with `metactl evaluate {run_path}`")
    invert = bool(trained.checkpoint.get("invert", False))
    query_paths = load_query_paths(queries)
    normalisation = trained.checkpoint.get("normalisation")
    images, labels, class_names = load_support_folder(support, trained.image_shape, invert,
                                                      normalisation)
    target = _model_device(trained.model)
    support_set = LabelledImages(images.to(target), labels.to(target), len(class_names))
    algorithm = trained.algorithm
    # A gradient-based inner loop must differentiate even though nothing is trained here.
    gradients = algorithm.gradient_mode()
    predictions: list[Prediction] = []
    with gradients:
        for chunk in _chunks(query_paths, chunk_size):
            query_images = _stack(chunk, trained.image_shape, invert, normalisation).to(target)
            probabilities = algorithm.predict(trained.model, support_set, query_images)
            _check_probabilities(algorithm.name, probabilities, len(chunk), len(class_names))
            predictions.extend(_predictions(chunk, probabilities[0].detach().float().cpu(),
                                            class_names))
    return predictions


def _check_probabilities(algorithm: str, probabilities: Tensor, queries: int, way: int) -> None:
    if tuple(probabilities.shape) != (1, queries, way):
        raise PluginError(f"algorithm {algorithm!r} predicted a tensor of shape "
                          f"{tuple(probabilities.shape)}, expected (1, {queries}, {way})",
                          "report this to the plugin's authors")


def _predictions(paths: Sequence[Path], probabilities: Tensor,
                 class_names: list[str]) -> list[Prediction]:
    """``probabilities``: (queries, way)."""
    results = []
    for path, row in zip(paths, probabilities.tolist(), strict=True):
        best = max(range(len(row)), key=row.__getitem__)
        results.append(Prediction(path, class_names[best], row[best],
                                  dict(zip(class_names, row, strict=True))))
    return results


def check_output_path(path: Path) -> str:
    """The format, ``.csv`` or ``.json``, of an output file; call it before predicting so a
    wrong name fails before the work is done."""
    from metactl.fileio import check_output_file

    check_output_file(path, "--output")
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UsageError(f"cannot write predictions to {Path(path).name}: unknown format "
                         f"{suffix or '(no extension)'!r}", "name the file .csv or .json")
    return suffix


def write_predictions(predictions: Sequence[Prediction], path: Path) -> Path:
    """Write ``predictions`` as CSV or JSON, chosen by the file's extension, atomically.

    CSV columns: ``query, predicted_class, probability`` and one column per class. JSON: a list
    of objects with the same fields and ``probabilities`` as a mapping of class to probability.
    """
    path = Path(path)
    text = _as_csv(predictions) if check_output_path(path) == ".csv" else _as_json(predictions)
    try:
        write_text_atomic(path, text)
    except OSError as error:
        raise UsageError(f"cannot write {path}: {error.strerror or error}",
                         "choose a writable output path") from None
    return path


def _as_csv(predictions: Sequence[Prediction]) -> str:
    class_names = list(predictions[0].probabilities) if predictions else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["query", "predicted_class", "probability", *class_names])
    for prediction in predictions:
        writer.writerow([str(prediction.path), prediction.predicted_class,
                         _rounded(prediction.probability),
                         *(_rounded(prediction.probabilities[name]) for name in class_names)])
    return buffer.getvalue()


def _as_json(predictions: Sequence[Prediction]) -> str:
    records = [{"query": str(p.path), "predicted_class": p.predicted_class,
                "probability": _rounded(p.probability),
                "probabilities": {name: _rounded(value)
                                  for name, value in p.probabilities.items()}}
               for p in predictions]
    return json.dumps(records, indent=2, ensure_ascii=False) + "\n"


def _rounded(probability: float) -> float:
    return round(float(probability), 6)
