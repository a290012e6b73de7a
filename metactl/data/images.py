"""Reading image files into uint8 arrays, decoding many in parallel, and packing class folders.

Every image of a store and every image ``metactl predict`` reads goes through :func:`read_image`,
so an image is converted the same way for training and for prediction: orientation from its
EXIF tag, transparency painted white, 8-bit grayscale (one channel) or RGB (three), resized to
the store's side with Pillow's Lanczos filter, and inverted when the dataset is (Omniglot).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from metactl.errors import DataError

IMAGE_HINT = "replace or remove the file; PNG, JPEG or any format Pillow reads will do"
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F", "P;L"})

ImageSource = Path | bytes
"""A file, or the bytes of an image file read from an archive."""


def image_suffixes() -> frozenset[str]:
    """File extensions Pillow can open (``.png``, ``.jpg``, ...), lower case."""
    Image.init()
    return frozenset(Image.registered_extensions())


def is_image_file(path: Path, suffixes: frozenset[str]) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in suffixes


def images_under(folder: Path, suffixes: frozenset[str] | None = None) -> list[Path]:
    """Image files under ``folder`` at any depth, sorted, hidden files and folders skipped."""
    suffixes = suffixes or image_suffixes()
    return sorted(path for path in Path(folder).rglob("*")
                  if is_image_file(path, suffixes)
                  and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def class_folders(folder: Path) -> dict[str, list[Path]]:
    """Every folder under ``folder`` that directly holds image files, by its relative path
    (``cat`` or ``Alphabet/character01``), with its images sorted; hidden entries skipped."""
    classes: dict[str, list[Path]] = {}
    for path in images_under(folder):
        classes.setdefault(path.parent.relative_to(folder).as_posix(), []).append(path)
    classes.pop(".", None)  # images lying loose in the top folder belong to no class
    return dict(sorted(classes.items()))


def read_image(source: ImageSource, size: tuple[int, int], channels: int, invert: bool = False,
               name: str = "", hint: str = IMAGE_HINT) -> np.ndarray:
    """Decode one image as a store holds it.

    Args:
        source: an image file, or its bytes.
        size: (height, width) to resize to (Lanczos) unless the image already has it.
        channels: 1 (8-bit grayscale) or 3 (RGB).
        invert: store ``255 - pixel`` (ink 255 on a 0 background, for Omniglot-like drawings).
        name: how errors call the image (default: the path).
        hint: the errors' hint.

    Returns:
        uint8, (height, width) for one channel or (height, width, 3).

    Raises:
        DataError: the image cannot be read or decoded.
    """
    label = name or str(source)
    try:
        with warnings.catch_warnings():
            # Large photos are fine here (they are resized); Pillow still refuses real bombs.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as opened:
                image = _flatten_transparency(ImageOps.exif_transpose(opened))
                image = image.convert("L" if channels == 1 else "RGB")
    except UnidentifiedImageError:
        raise DataError(f"{label} is not an image Pillow can read", hint) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot read image {label} ({error})", hint) from None
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.uint8)
    return 255 - pixels if invert else pixels


def _flatten_transparency(image: Image.Image) -> Image.Image:
    """Paint transparent pixels white: a drawing saved with a transparent background would
    otherwise turn black, the colour of ink."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba)


def is_grayscale(path: Path) -> bool:
    """Whether ``path`` is a grayscale image (read from its header; nothing is decoded)."""
    try:
        with Image.open(path) as image:
            return image.mode in GRAYSCALE_MODES
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError):
        return False  # read_image reports it when the image is decoded


def decode_workers() -> int:
    """Threads for decoding: Pillow releases the GIL while it decodes and resizes."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


def decode_all(sources: Sequence[Any], decode: Callable[[Any], np.ndarray], shape: tuple[int, ...],
               workers: int | None = None,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Decode ``sources`` in order into one uint8 array, (len(sources), *shape), in parallel.

    ``decode(source)`` returns one uint8 image of ``shape``; its first error is raised as is.
    ``progress(count)`` is called with the number of images done after each chunk.
    """
    images = np.empty((len(sources), *shape), dtype=np.uint8)
    workers = workers or decode_workers()
    chunk = max(1, min(256, len(sources) // (4 * workers) or 1))

    def fill(start: int) -> int:
        for index in range(start, min(start + chunk, len(sources))):
            images[index] = decode(sources[index])
        return min(chunk, len(sources) - start)

    if workers == 1:
        done = map(fill, range(0, len(sources), chunk))
        for count in done:
            _advance(progress, count)
        return images
    with ThreadPoolExecutor(workers) as pool:
        for count in pool.map(fill, range(0, len(sources), chunk)):
            _advance(progress, count)
    return images


def _advance(progress: Callable[[int], None] | None, count: int) -> None:
    if progress is not None:
        progress(count)


def channel_statistics(images: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation of uint8 ``images`` (N, H, W[, C]), in units
    of the [0, 1] range the sampler hands to models; exact, from a histogram of pixel values
    counted chunk by chunk (no float copy of the images)."""
    channels = images.shape[3] if images.ndim == 4 else 1
    histogram = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(images), 1024):
        block = np.asarray(images[start:start + 1024]).reshape(-1, channels)
        for channel in range(channels):
            pixels = np.ascontiguousarray(block[:, channel])
            histogram[channel] += np.bincount(pixels, minlength=256)
    values = np.arange(256, dtype=np.float64) / 255
    count = histogram.sum(1)
    mean = histogram @ values / count
    std = np.sqrt(np.maximum(histogram @ np.square(values) / count - np.square(mean), 0.0))
    return {"mean": [round(float(m), 6) for m in mean], "std": [round(float(s), 6) for s in std]}
