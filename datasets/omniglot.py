"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015): check an extraction and pack it into a store.

An extraction holds one top folder per archive (``images_background``, ``images_evaluation``),
then ``Alphabet/characterNN/NNNN_DD.png``: 105x105 1-bit drawings, black ink on white.
Classes are named ``Alphabet/characterNN`` whichever archive they come from.

Registered as the dataset ``omniglot`` by the hook at the bottom, like any dataset plugin.
The store holds each drawing once, inverted (ink 255 on a 0 background, as in most few-shot
code) and resized with Pillow's Lanczos filter. Rotated classes (the Vinyals split) are not
stored: the split's ``rotations`` attribute tells the sampler to rotate at sampling time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from metactl import hookimpl
from metactl.data.cards import DatasetCard, SplitScheme
from metactl.data.hdf5 import StoreSplit, write_store
from metactl.data.layout import DatasetLayout
from metactl.dataset import ImageDataset, Report
from metactl.errors import DataError, UsageError

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` with counts of drawings."""

FETCH_HINT = "run `metactl data fetch {dataset} --force` to download and extract it again"
PREPROCESSING = "PNG decoded with Pillow, converted to 8-bit grayscale, {resize}, then inverted " \
                "(ink 255 on a 0 background)"
_LIST_LINE = re.compile(r"^(?P<character>[^/]+/[^/]+)/rot(?P<angle>\d{3})$")


@dataclass(frozen=True)
class Character:
    """One character folder of an extraction.

    Attributes:
        name: ``Alphabet/characterNN``.
        archive: the top folder it was found in (``images_background`` or ``images_evaluation``).
        drawings: its PNG files, in file-name order.
    """

    name: str
    archive: str
    drawings: tuple[Path, ...]

    @property
    def alphabet(self) -> str:
        return self.name.split("/")[0]


def archive_folders(card: DatasetCard) -> tuple[str, ...]:
    """The top folders an extraction holds: one per archive the card extracts."""
    return tuple(Path(source.path).stem for source in card.sources if source.extract)


def find_characters(extracted: Path, card: DatasetCard) -> dict[str, Character]:
    """Every character folder under ``extracted``, by name; nothing is checked."""
    characters: dict[str, Character] = {}
    for archive in archive_folders(card):
        top = extracted / archive
        if not top.is_dir():
            continue
        for character_folder in sorted(top.glob("*/*")):
            if not character_folder.is_dir():
                continue
            name = f"{character_folder.parent.name}/{character_folder.name}"
            drawings = tuple(sorted(character_folder.glob("*.png")))
            characters[name] = Character(name, archive, drawings)
    return characters


def validate_extracted(extracted: Path, card: DatasetCard) -> None:
    """Check that ``extracted`` holds the alphabets, characters and drawings ``card.content``
    promises (Omniglot: 50 alphabets, 1623 characters, 20 drawings each).

    Raises:
        DataError: naming what is missing.
    """
    _checked_characters(Path(extracted), card)


def _checked_characters(extracted: Path, card: DatasetCard) -> dict[str, Character]:
    missing = [name for name in archive_folders(card) if not (extracted / name).is_dir()]
    if missing:
        raise DataError(f"the {card.title} extraction in {extracted} lacks {', '.join(missing)}",
                        FETCH_HINT.format(dataset=card.name))
    characters = find_characters(extracted, card)
    problems = _content_problems(characters, card)
    if problems:
        raise DataError(f"the {card.title} extraction in {extracted} is incomplete: "
                        + "; ".join(problems), FETCH_HINT.format(dataset=card.name))
    return characters


def _content_problems(characters: dict[str, Character], card: DatasetCard) -> list[str]:
    expected = card.content
    problems = []
    alphabets = {character.alphabet for character in characters.values()}
    if expected.groups is not None and len(alphabets) != expected.groups:
        problems.append(f"{len(alphabets)} alphabets instead of {expected.groups}")
    if len(characters) != expected.classes:
        problems.append(f"{len(characters)} characters instead of {expected.classes}")
    short = [character for character in characters.values()
             if expected.images_per_class is not None
             and len(character.drawings) != expected.images_per_class]
    if short:
        example = short[0]
        problems.append(f"{len(short)} character(s) without {expected.images_per_class} drawings "
                        f"(e.g. {example.name} has {len(example.drawings)})")
    return problems


def split_classes(layout: DatasetLayout, scheme: SplitScheme,
                  characters: dict[str, Character]) -> dict[str, list[str]]:
    """The sorted character names of each split of ``scheme``.

    Lists come from the split files under ``layout.downloads``; folders take every character
    of one archive. Each listed character must exist and the splits must not overlap.
    """
    card = layout.card
    classes = {}
    for split in scheme.split_names:
        if split in scheme.lists:
            path = layout.download_path(scheme.lists[split])
            names = read_split_list(path, scheme.rotations, card.name)
        else:
            archive = scheme.folders[split]
            names = sorted(name for name, item in characters.items() if item.archive == archive)
        absent = [name for name in names if name not in characters]
        if absent:
            raise DataError(f"split {split!r} of {card.name}/{scheme.name} names {len(absent)} "
                            f"character(s) the extraction lacks (e.g. {absent[0]})",
                            FETCH_HINT.format(dataset=card.name))
        expected = scheme.classes.get(split)
        if expected is not None and len(names) != expected:
            raise DataError(f"split {split!r} of {card.name}/{scheme.name} has {len(names)} "
                            f"characters; the card expects {expected}",
                            FETCH_HINT.format(dataset=card.name))
        classes[split] = names
    _check_disjoint(classes, f"{card.name}/{scheme.name}")
    return classes


def read_split_list(path: Path, rotations: tuple[int, ...], dataset: str) -> list[str]:
    """The sorted, unique ``Alphabet/characterNN`` of a list of ``Alphabet/characterNN/rotDDD``
    lines; each character must be listed with exactly ``rotations``."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise DataError(f"cannot read the split list {path} ({error.strerror or error})",
                        FETCH_HINT.format(dataset=dataset)) from None
    angles: dict[str, set[int]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = _LIST_LINE.match(line.strip())
        if match is None:
            raise DataError(f"line {number} of the split list {path} is not "
                            f"Alphabet/characterNN/rotDDD: {line.strip()[:60]!r}",
                            FETCH_HINT.format(dataset=dataset))
        angles.setdefault(match["character"], set()).add(int(match["angle"]))
    for character, found in angles.items():
        if found != set(rotations):
            raise DataError(f"the split list {path} gives {character} the rotations "
                            f"{sorted(found)}, not {sorted(rotations)}",
                            FETCH_HINT.format(dataset=dataset))
    return sorted(angles)


def _check_disjoint(classes: dict[str, list[str]], scheme: str) -> None:
    seen: dict[str, str] = {}
    for split, names in classes.items():
        for name in names:
            if name in seen:
                raise DataError(f"{name} is in both split {seen[name]!r} and split {split!r} "
                                f"of {scheme}", "fix the split lists")
            seen[name] = split


def build_store(layout: DatasetLayout, scheme: str | None, size: int,
                source_checksums: dict[str, Any],
                progress: ProgressCallback | None = None) -> Path:
    """Decode the extraction once and write the store for ``scheme`` at ``size``x``size``.

    Args:
        layout: where the extraction, split lists and store live.
        scheme: a split scheme of the card (``vinyals``, ``background``); None for the default.
        size: the side of the stored images; 105 keeps the original pixels.
        source_checksums: recorded as provenance (JSON), e.g. ``{"images_background.zip": sha256}``.
        progress: called as ``progress(done, total)`` with counts of drawings.

    Returns:
        The store's path, ``layout.store_path(scheme, size)``.
    """
    card = layout.card
    split_scheme = card.split_scheme(scheme)
    if size < 1:
        raise UsageError(f"the image size must be positive, got {size}", "pass --size 28")
    characters = _checked_characters(layout.extracted, card)
    classes = split_classes(layout, split_scheme, characters)
    geometry = (card.geometry.width, card.geometry.height)
    counter = _Counter(progress, sum(len(characters[name].drawings)
                                     for names in classes.values() for name in names))
    splits = {
        split: _pack_split([characters[name] for name in names], size, split_scheme.rotations,
                           geometry, counter, card.name)
        for split, names in classes.items()
    }
    attrs = {
        "dataset": card.name, "scheme": split_scheme.name, "scheme_summary": split_scheme.summary,
        "size": size, "source_checksums": source_checksums,
        "preprocessing": _preprocessing(size, geometry),
        "licence": card.licence, "citation": card.citation,
    }
    return write_store(layout.store_path(split_scheme.name, size), splits, attrs)


def _preprocessing(size: int, geometry: tuple[int, int]) -> str:
    if (size, size) == geometry:
        resize = f"kept at {size}x{size}"
    else:
        resize = f"resized to {size}x{size} with Pillow's LANCZOS filter"
    return PREPROCESSING.format(resize=resize)


class _Counter:
    def __init__(self, progress: ProgressCallback | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        self.advance(0)

    def advance(self, count: int) -> None:
        self.done += count
        if self.progress is not None:
            self.progress(self.done, self.total)


def _pack_split(characters: list[Character], size: int, rotations: tuple[int, ...],
                geometry: tuple[int, int], counter: _Counter, dataset: str) -> StoreSplit:
    """Decode the characters' drawings, in order, into one (images, size, size) array."""
    counts = [len(character.drawings) for character in characters]
    offsets = np.zeros(len(characters) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    images = np.empty((int(offsets[-1]), size, size), dtype=np.uint8)
    for character, start in zip(characters, offsets[:-1], strict=True):
        for index, path in enumerate(character.drawings):
            images[start + index] = decode_drawing(path, size, geometry, dataset)
        counter.advance(len(character.drawings))
    return StoreSplit(images, offsets, [character.name for character in characters], rotations)


def decode_drawing(path: Path, size: int, geometry: tuple[int, int] = (105, 105),
                   dataset: str = "omniglot") -> np.ndarray:
    """One drawing as uint8, (size, size): resized with Lanczos, then inverted (ink 255).

    Inverting after the resize is what peers do (``1 - image`` on the resized tensor); the
    other order differs by 1 grey level in a few pixels.
    """
    try:
        with Image.open(path) as image:
            if image.size != geometry:
                raise DataError(f"{path} is {image.size[0]}x{image.size[1]}, not "
                                f"{geometry[0]}x{geometry[1]}", FETCH_HINT.format(dataset=dataset))
            gray = image.convert("L")
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"cannot decode {path} ({error})",
                        FETCH_HINT.format(dataset=dataset)) from None
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.LANCZOS)
    return 255 - np.asarray(gray)


class Omniglot(ImageDataset):
    """Omniglot with the Vinyals and the original background/evaluation split schemes."""

    card_file = Path(__file__).with_name("omniglot.yaml")

    def check_content(self, layout: DatasetLayout, report: Report) -> None:
        validate_extracted(layout.extracted, self.card)
        report(f"verified the content of {self.name}")

    def build_store(self, layout: DatasetLayout, scheme: SplitScheme, size: int,
                    source_checksums: dict[str, str], report: Report) -> Path:
        return build_store(layout, scheme.name, size, source_checksums)


@hookimpl
def metactl_register_datasets(registry) -> None:
    registry.add(Omniglot)
