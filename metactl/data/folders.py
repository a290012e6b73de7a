"""Stores from folders of class folders: the default dataset builder and ``metactl data import``.

A class is a folder that directly holds image files (any format Pillow reads); its name is its
path below the split's folder (``cat``, or ``Alphabet/character01``). Images are decoded in
parallel with :func:`metactl.data.images.read_image`, the same conversion ``metactl predict``
applies, and three-channel stores record the train split's per-channel mean and standard
deviation, which the sampler normalises with.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from metactl.data.cards import (
    NAME_PATTERN,
    SPLIT_NAMES,
    DatasetCard,
    SplitScheme,
    load_card,
    parse_card,
)
from metactl.data.hdf5 import StoreSplit, write_store
from metactl.data.images import (
    channel_statistics,
    class_folders,
    decode_all,
    is_grayscale,
    read_image,
)
from metactl.data.layout import DatasetLayout
from metactl.dataset import ImageDataset
from metactl.errors import DataError, UsageError
from metactl.fileio import atomic_write
from metactl.paths import data_root, ensure_writable

Report = Callable[[str], None]
IMPORT_SCHEME = "import"
SPLIT_BY = ("class", "folder")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


def pack_classes(classes: dict[str, list[Path]], size: int, channels: int, invert: bool = False,
                 hint: str = "") -> StoreSplit:
    """Decode every class's images, in order, into one uint8 array sorted by class:
    (images, size, size) for one channel, (images, size, size, 3) for three."""
    paths = [path for names in classes.values() for path in names]
    counts = [len(names) for names in classes.values()]
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    shape = (size, size) if channels == 1 else (size, size, 3)
    extra = {"hint": hint} if hint else {}
    images = decode_all(paths, lambda path: read_image(path, (size, size), channels, invert,
                                                       **extra), shape)
    return StoreSplit(images, offsets, list(classes))


def normalisation(train: StoreSplit) -> dict[str, Any]:
    """The store attribute that tells the sampler how to normalise: the train split's
    per-channel mean and standard deviation, in [0, 1] units."""
    return {**channel_statistics(train.images), "from": "train split"}


def build_folder_store(layout: DatasetLayout, scheme: SplitScheme, size: int,
                       source_checksums: dict[str, str], report: Report) -> Path:
    """The default builder of :class:`metactl.dataset.ImageDataset`: each split of ``scheme``
    is an extracted folder (``folders``) of class folders; the counts the card gives are
    checked before anything is written."""
    card = layout.card
    if scheme.lists or not scheme.folders:
        raise DataError(f"split scheme {scheme.name!r} of {card.name} lists its classes in "
                        "files, which the default builder does not read",
                        "the dataset plugin must override ImageDataset.build_store")
    hint = f"run `metactl data fetch {card.name} --force` to download and extract it again"
    classes = {split: _split_folder_classes(layout.extracted / folder, split, scheme, hint)
               for split, folder in scheme.folders.items()}
    _check_content(card, classes, hint)
    splits = {split: pack_classes(found, size, card.geometry.channels, card.geometry.invert,
                                  hint) for split, found in classes.items()}
    attrs = {"dataset": card.name, "scheme": scheme.name, "scheme_summary": scheme.summary,
             "size": size, "source_checksums": source_checksums, "licence": card.licence,
             "citation": card.citation,
             "preprocessing": f"decoded with Pillow, {_mode(card.geometry.channels)}, resized "
                              f"to {size}x{size} with Lanczos where needed"}
    if card.geometry.channels == 3 and "train" in splits:
        attrs["normalisation"] = normalisation(splits["train"])
    return write_store(layout.store_path(scheme.name, size), splits, attrs)


def _mode(channels: int) -> str:
    return "8-bit grayscale" if channels == 1 else "RGB"


def _split_folder_classes(folder: Path, split: str, scheme: SplitScheme, hint: str
                          ) -> dict[str, list[Path]]:
    if not folder.is_dir():
        raise DataError(f"the extraction lacks the folder {folder} of split {split!r}", hint)
    classes = class_folders(folder)
    expected = scheme.classes.get(split)
    if expected is not None and len(classes) != expected:
        raise DataError(f"split {split!r} has {len(classes)} classes in {folder}; the card "
                        f"expects {expected}", hint)
    return classes


def _check_content(card: DatasetCard, classes: dict[str, dict[str, list[Path]]],
                   hint: str) -> None:
    content = card.content
    counts = [len(paths) for found in classes.values() for paths in found.values()]
    problems = []
    if len(counts) != content.classes:
        problems.append(f"{len(counts)} classes instead of {content.classes}")
    if content.images is not None and sum(counts) != content.images:
        problems.append(f"{sum(counts)} images instead of {content.images}")
    if content.images_per_class is not None and any(c != content.images_per_class
                                                    for c in counts):
        problems.append(f"classes without {content.images_per_class} images")
    if problems:
        raise DataError(f"the {card.title} extraction is incomplete: {'; '.join(problems)}",
                        hint)


# --- metactl data import -------------------------------------------------------------------

class ImportedDataset(ImageDataset):
    """A dataset made by ``metactl data import``: its card lives beside its store."""

    def build_store(self, layout: DatasetLayout, scheme: SplitScheme, size: int,
                    source_checksums: dict[str, str], report: Report) -> Path:
        raise DataError(f"{self.name} was imported from a folder, and its store "
                        f"{layout.store_path(scheme.name, size).name} is missing",
                        f"import the folder again: `metactl data import DIR --name {self.name}`")


def read_imported(card_path: Path) -> ImportedDataset | None:
    """The imported dataset whose card is ``card_path``; None if the card does not parse."""
    try:
        return ImportedDataset(load_card(card_path))
    except DataError:
        return None


@dataclass(frozen=True)
class ImportRequest:
    """What ``metactl data import`` was asked for.

    Attributes:
        folder: one folder per class (``split_by="class"``), or ``train/``, ``val/``,
            ``test/`` folders of class folders (``split_by="folder"``).
        name: the new dataset's name.
        split_by: ``class`` (a seeded random split of the classes) or ``folder``.
        size: side of the stored images.
        seed: seeds the class split.
        fractions: shares of the classes for train, val and test (``split_by="class"``).
        way: every split must supply tasks of this many classes.
        min_images: every class needs at least this many images.
    """

    folder: Path
    name: str
    split_by: str = "class"
    size: int = 84
    seed: int = 0
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    way: int = 5
    min_images: int = 2


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.6,0.2,0.2"`` -> (0.6, 0.2, 0.2)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise UsageError(f"--fractions {text!r} is not three numbers",
                         "write e.g. --fractions 0.6,0.2,0.2")
    return values  # type: ignore[return-value]


def import_folder(request: ImportRequest, root: str | Path | None = None,
                  report: Report = lambda message: None) -> Path:
    """Turn a folder of class folders into a dataset store with train/val/test class splits.

    Everything is read and checked before anything is written; the store, then the card, are
    written atomically. Returns the store's path.

    Raises:
        UsageError: a bad option or name, or too few classes for the requested way.
        DataError: a class with too few images, or a file that cannot be read as an image.
    """
    _check_request(request, root)
    classes = _classes_by_split(request)
    channels = 1 if all(is_grayscale(path) for found in classes.values()
                        for paths in found.values() for path in paths) else 3
    report(f"decoding {sum(len(p) for found in classes.values() for p in found.values())} "
           f"images of {sum(len(found) for found in classes.values())} classes "
           f"({_mode(channels)}, {request.size}x{request.size})")
    hint = "remove or replace the file, then import again"
    splits = {split: pack_classes(found, request.size, channels, hint=hint)
              for split, found in classes.items()}
    card_data = _card_data(request, splits, channels)
    card = parse_card(card_data, f"<imported {request.name}>")
    layout = DatasetLayout(ensure_writable(data_root(root)), card)
    attrs = {"dataset": request.name, "scheme": IMPORT_SCHEME, "size": request.size,
             "imported_from": str(request.folder.resolve()), "split_by": request.split_by,
             "seed": request.seed, "source_checksums": {},
             "preprocessing": f"decoded with Pillow, {_mode(channels)}, resized to "
                              f"{request.size}x{request.size} with Lanczos where needed"}
    if channels == 3:
        attrs["normalisation"] = normalisation(splits["train"])
    store = write_store(layout.store_path(IMPORT_SCHEME, request.size), splits, attrs)
    with atomic_write(layout.folder / DatasetLayout.IMPORTED_CARD, what="the card") as temporary:
        temporary.write_text(yaml.safe_dump(card_data, sort_keys=False),
                             encoding="utf-8")
    return store


def _check_request(request: ImportRequest, root: str | Path | None) -> None:
    from metactl.plugins import get_datasets

    if not NAME_PATTERN.match(request.name):
        raise UsageError(f"--name {request.name!r} is not a dataset name",
                         "use lower-case letters, digits and dashes, e.g. --name my-birds")
    if request.name in get_datasets():
        raise UsageError(f"{request.name} is a registered dataset",
                         "import under another --name")
    if request.split_by not in SPLIT_BY:
        raise UsageError(f"--split-by {request.split_by!r} is not class or folder",
                         "use --split-by class (seeded) or --split-by folder (train/val/test)")
    if not 8 <= request.size <= 1024:
        raise UsageError(f"--size {request.size} is outside 8..1024", "use e.g. --size 84")
    if request.way < 2 or request.min_images < 2:
        raise UsageError("--way and --min-images must be at least 2",
                         "a task needs two classes, a class a support and a query image")
    if (len(request.fractions) != 3 or any(f < 0 for f in request.fractions)
            or abs(sum(request.fractions) - 1) > 1e-6):
        raise UsageError(f"--fractions {request.fractions} are not three shares adding up to 1",
                         "write e.g. --fractions 0.6,0.2,0.2")
    if not request.folder.is_dir():
        raise UsageError(f"{request.folder} is not a folder", "pass a folder of class folders")


def _classes_by_split(request: ImportRequest) -> dict[str, dict[str, list[Path]]]:
    if request.split_by == "folder":
        classes = _folder_splits(request.folder)
    else:
        found = class_folders(request.folder)
        _check_class_count(found, request, "the folder")
        classes = _seeded_split(found, request)
    for split, found in classes.items():
        _check_class_count(found, request, f"split {split!r}")
        for name, paths in found.items():
            if len(paths) < request.min_images:
                raise DataError(f"class {name!r} of {request.folder} has {len(paths)} image"
                                f"{'s' * (len(paths) != 1)}, fewer than --min-images "
                                f"{request.min_images}",
                                "add images to it, remove it, or lower --min-images")
    return classes


def _check_class_count(found: dict[str, list[Path]], request: ImportRequest, where: str) -> None:
    if len(found) < request.way:
        raise UsageError(f"{where} of {request.folder} has {len(found)} class"
                         f"{'es' * (len(found) != 1)}, fewer than the requested way "
                         f"{request.way}", "add class folders or import with a smaller --way")


def _folder_splits(folder: Path) -> dict[str, dict[str, list[Path]]]:
    present = [split for split in SPLIT_NAMES if (folder / split).is_dir()]
    if "train" not in present or "test" not in present:
        raise UsageError(f"--split-by folder needs {folder}/train and {folder}/test (and "
                         f"optionally val), found {', '.join(present) or 'neither'}",
                         "arrange the class folders so, or use --split-by class")
    classes = {split: class_folders(folder / split) for split in present}
    seen: dict[str, str] = {}
    for split, found in classes.items():
        for name in found:
            if name in seen:
                raise DataError(f"class {name!r} is in both {seen[name]}/ and {split}/ of "
                                f"{folder}", "few-shot splits must not share classes")
            seen[name] = split
    return classes


def _seeded_split(found: dict[str, list[Path]], request: ImportRequest
                  ) -> dict[str, dict[str, list[Path]]]:
    names = sorted(found)
    random.Random(request.seed).shuffle(names)
    val = round(request.fractions[1] * len(names))
    test = round(request.fractions[2] * len(names))
    chosen = {"train": names[val + test:], "val": names[:val], "test": names[val:val + test]}
    return {split: {name: found[name] for name in sorted(members)}
            for split, members in chosen.items() if members or split != "val"}


def _card_data(request: ImportRequest, splits: dict[str, StoreSplit], channels: int
               ) -> dict[str, Any]:
    """The card of an imported dataset, as YAML data."""
    counts = {split: len(data.class_names) for split, data in splits.items()}
    how = (f"seeded split of the classes (seed {request.seed}, fractions "
           f"{', '.join(str(f) for f in request.fractions)})" if request.split_by == "class"
           else "the folder's train/val/test folders")
    images = sum(len(data.images) for data in splits.values())
    return {"name": request.name, "title": request.name,
            "summary": f"{sum(counts.values())} classes, {images} images imported from "
                       f"{request.folder.resolve()}",
            "licence": "as the imported images", "citation": "", "sources": [],
            "geometry": {"channels": channels, "height": request.size, "width": request.size,
                         "default_size": request.size},
            "content": {"classes": sum(counts.values()), "images": images},
            "splits": {IMPORT_SCHEME: {"summary": how, "classes": counts}},
            "default_split": IMPORT_SCHEME}
