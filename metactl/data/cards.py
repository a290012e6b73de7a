"""Dataset cards: YAML files that describe a dataset's sources, geometry and splits."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from metactl.errors import DataError, UsageError

SPLIT_NAMES = ("train", "val", "test")
# Task families generated on the fly: no card, nothing to download.
SYNTHETIC = {"sinusoid": "sine regression tasks of the MAML paper, generated on the fly"}


@dataclass(frozen=True)
class Source:
    """One file to download: its path relative to the dataset folder, URL and checksums.

    ``content_sha256`` (archives only) is the digest of the official extracted files, checked
    at every extraction (see :func:`metactl.data.archive.safe_extract`), so that an archive a
    mirror rebuilt is accepted only with the official content."""

    path: str
    url: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    extract: bool = False
    content_sha256: str | None = None

    @property
    def checksums(self) -> dict[str, str]:
        pairs = (("md5", self.md5), ("sha256", self.sha256))
        return {name: value for name, value in pairs if value}


@dataclass(frozen=True)
class Geometry:
    """Image shape as distributed; ``invert`` flips pixel values when packing (ink 255 on 0)."""

    channels: int
    height: int
    width: int
    default_size: int
    invert: bool = False


@dataclass(frozen=True)
class Content:
    """What a complete extraction holds."""

    groups: int
    classes: int
    images_per_class: int


@dataclass(frozen=True)
class SplitScheme:
    """A way of dividing the classes into train / val / test.

    ``lists`` maps a split to a class-list file (one ``group/class/rotDDD`` per line);
    ``folders`` maps a split to an extracted top folder whose classes all belong to it.
    """

    name: str
    summary: str
    rotations: tuple[int, ...]
    lists: dict[str, str] = field(default_factory=dict)
    folders: dict[str, str] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)

    @property
    def split_names(self) -> tuple[str, ...]:
        names = set(self.lists) | set(self.folders)
        return tuple(name for name in SPLIT_NAMES if name in names)


@dataclass(frozen=True)
class DatasetCard:
    name: str
    title: str
    summary: str
    homepage: str
    licence: str
    citation: str
    builder: str
    sources: tuple[Source, ...]
    geometry: Geometry
    content: Content
    splits: dict[str, SplitScheme]
    default_split: str
    file: str = ""

    def split_scheme(self, name: str | None) -> SplitScheme:
        name = name or self.default_split
        if name not in self.splits:
            raise UsageError(
                f"dataset {self.name!r} has no split {name!r}",
                f"use one of: {', '.join(self.splits)}",
            )
        return self.splits[name]


class _Reader:
    """Reads typed values out of a YAML mapping, naming the file and key in every error."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key: str, problem: str) -> DataError:
        return DataError(f"dataset card {self.file}: {key} {problem}", "fix the card")

    def mapping(self, data: Any, key: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(key, "must be a mapping")
        return data

    def get(self, data: dict[str, Any], key: str, kind: type, prefix: str = "", **default: Any):
        where = f"{prefix}{key}"
        if key not in data:
            if "default" in default:
                return default["default"]
            raise self.fail(where, "is missing")
        value = data[key]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise self.fail(where, f"must be a {kind.__name__}, not {type(value).__name__}")
        return value


def parse_card(data: Any, file: str) -> DatasetCard:
    """Turn the parsed YAML of a card into a :class:`DatasetCard`."""
    read = _Reader(file)
    top = read.mapping(data, "the card")
    sources = tuple(_parse_source(read, item, index) for index, item in
                    enumerate(read.get(top, "sources", list)))
    geometry_data = read.mapping(read.get(top, "geometry", dict), "geometry")
    geometry = Geometry(**{key: read.get(geometry_data, key, int, "geometry.")
                           for key in ("channels", "height", "width", "default_size")},
                        invert=read.get(geometry_data, "invert", bool, "geometry.",
                                        default=False))
    content_data = read.get(top, "content", dict)
    content = Content(**{key: read.get(content_data, key, int, "content.")
                         for key in ("groups", "classes", "images_per_class")})
    splits = {name: _parse_scheme(read, name, value)
              for name, value in read.get(top, "splits", dict).items()}
    default_split = read.get(top, "default_split", str)
    if default_split not in splits:
        raise read.fail("default_split", f"must be one of {', '.join(splits)}")
    return DatasetCard(
        name=read.get(top, "name", str),
        title=read.get(top, "title", str),
        summary=read.get(top, "summary", str),
        homepage=read.get(top, "homepage", str),
        licence=read.get(top, "licence", str),
        citation=read.get(top, "citation", str),
        builder=read.get(top, "builder", str),
        sources=sources,
        geometry=geometry,
        content=content,
        splits=splits,
        default_split=default_split,
        file=file,
    )


def _parse_source(read: _Reader, item: Any, index: int) -> Source:
    prefix = f"sources[{index}]."
    data = read.mapping(item, prefix.rstrip("."))
    source = Source(
        path=read.get(data, "path", str, prefix),
        url=read.get(data, "url", str, prefix),
        md5=read.get(data, "md5", str, prefix, default=None),
        sha256=read.get(data, "sha256", str, prefix, default=None),
        size=read.get(data, "size", int, prefix, default=None),
        extract=read.get(data, "extract", bool, prefix, default=False),
        content_sha256=read.get(data, "content_sha256", str, prefix, default=None),
    )
    if not source.checksums:
        raise read.fail(prefix + "md5", "or sha256 is required")
    if Path(source.path).is_absolute() or ".." in Path(source.path).parts:
        raise read.fail(prefix + "path", "must be a relative path inside the dataset folder")
    return source


def _parse_scheme(read: _Reader, name: str, value: Any) -> SplitScheme:
    prefix = f"splits.{name}."
    data = read.mapping(value, prefix.rstrip("."))
    rotations = tuple(read.get(data, "rotations", list, prefix, default=[0]))
    if not rotations or any(r not in (0, 90, 180, 270) for r in rotations):
        raise read.fail(prefix + "rotations", "must list angles among 0, 90, 180, 270")
    lists = read.get(data, "lists", dict, prefix, default={})
    folders = read.get(data, "folders", dict, prefix, default={})
    for split in [*lists, *folders]:
        if split not in SPLIT_NAMES:
            raise read.fail(f"{prefix}{split}", f"is not a split; use {', '.join(SPLIT_NAMES)}")
    if not lists and not folders:
        raise read.fail(prefix + "lists", "or folders is required")
    return SplitScheme(
        name=name,
        summary=read.get(data, "summary", str, prefix, default=""),
        rotations=rotations,
        lists=dict(lists),
        folders=dict(folders),
        classes=dict(read.get(data, "classes", dict, prefix, default={})),
    )


def load_card(path: Path) -> DatasetCard:
    """Read and validate one card file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise DataError(f"cannot read dataset card {path}: {error}", "fix the card") from None
    return parse_card(data, str(path))


@lru_cache(maxsize=1)
def builtin_cards() -> dict[str, DatasetCard]:
    """The cards shipped in ``datasets/``, by name."""
    cards = {}
    for entry in resources.files("metactl_datasets").iterdir():
        if entry.name.endswith(".yaml"):
            with resources.as_file(entry) as path:
                card = load_card(Path(path))
            cards[card.name] = card
    return cards


def get_card(name: str) -> DatasetCard:
    """The card called ``name``, or an error suggesting the nearest known name."""
    cards = builtin_cards()
    if name in cards:
        return cards[name]
    if name in SYNTHETIC:
        raise UsageError(f"{name} is generated on the fly and has no files to fetch or inspect",
                         f"train on it directly, e.g. `metactl train maml --dataset {name}`")
    close = difflib.get_close_matches(name, [*cards, *SYNTHETIC], n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known datasets: {', '.join(sorted(cards))}"
    raise UsageError(f"unknown dataset {name!r}", hint)
