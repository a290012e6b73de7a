"""Dataset cards: YAML files that describe an image dataset: where its files come from, on what
terms, what it holds and how its classes are split. ``docs/datasets.md`` documents every key."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metactl.errors import DataError, UsageError

SPLIT_NAMES = ("train", "val", "test")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass(frozen=True)
class Source:
    """One file to download: its path relative to the dataset folder, URL and checksums.

    ``content_sha256`` (archives only) is the digest of the official extracted files, checked
    at every extraction (see :func:`metactl.data.archive.safe_extract`), so that an archive a
    mirror rebuilt is accepted only with the official content.

    ``mirror_only`` marks a file that no public host serves (mini-ImageNet's images, under
    ImageNet's terms): it is fetched from a mirror only, and ``url`` may be empty.
    """

    path: str
    url: str = ""
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    extract: bool = False
    content_sha256: str | None = None
    mirror_only: bool = False

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
    """What a complete dataset holds; checked before a store is built.

    Attributes:
        classes: classes in all splits together.
        images_per_class: images in every class, when they all have the same number.
        images: images in all.
        groups: groups of classes (Omniglot's alphabets), when the dataset has them.
    """

    classes: int
    images_per_class: int | None = None
    images: int | None = None
    groups: int | None = None


@dataclass(frozen=True)
class SplitScheme:
    """A way of dividing the classes into train / val / test.

    ``lists`` maps a split to a file among the downloads that lists its classes or images, in
    a format the dataset's builder reads (Omniglot: ``Alphabet/characterNN/rotDDD`` lines;
    mini-ImageNet: ``filename,label`` CSV rows); ``folders`` maps a split to an extracted
    folder whose class folders all belong to it. ``classes`` gives the expected class count of
    each split; ``rotations`` turn every stored class into one sampling class per angle.
    """

    name: str
    summary: str
    rotations: tuple[int, ...]
    lists: dict[str, str] = field(default_factory=dict)
    folders: dict[str, str] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)

    @property
    def split_names(self) -> tuple[str, ...]:
        names = set(self.lists) | set(self.folders) | set(self.classes)
        return tuple(name for name in SPLIT_NAMES if name in names)


@dataclass(frozen=True)
class DatasetCard:
    """A parsed card. ``terms`` states the conditions of use where they go beyond the licence
    (mini-ImageNet: ImageNet's non-commercial research terms); fetching prints them."""

    name: str
    title: str
    summary: str
    homepage: str
    licence: str
    citation: str
    sources: tuple[Source, ...]
    geometry: Geometry
    content: Content
    splits: dict[str, SplitScheme]
    default_split: str
    terms: str = ""
    file: str = ""

    @property
    def mirror_only(self) -> tuple[Source, ...]:
        return tuple(source for source in self.sources if source.mirror_only)

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
    """Turn the parsed YAML of a card into a :class:`DatasetCard`.

    Raises:
        DataError: naming the file and the key that is missing or wrong.
    """
    read = _Reader(file)
    top = read.mapping(data, "the card")
    name = read.get(top, "name", str)
    if not NAME_PATTERN.match(name):
        raise read.fail("name", f"{name!r} must be lower-case letters, digits and dashes")
    sources = tuple(_parse_source(read, item, index) for index, item in
                    enumerate(read.get(top, "sources", list)))
    splits = {name: _parse_scheme(read, name, value)
              for name, value in read.get(top, "splits", dict).items()}
    default_split = read.get(top, "default_split", str)
    if default_split not in splits:
        raise read.fail("default_split", f"must be one of {', '.join(splits) or 'the splits'}")
    return DatasetCard(
        name=name,
        title=read.get(top, "title", str),
        summary=read.get(top, "summary", str),
        homepage=read.get(top, "homepage", str, default=""),
        licence=read.get(top, "licence", str),
        citation=read.get(top, "citation", str),
        sources=sources,
        geometry=_parse_geometry(read, read.get(top, "geometry", dict)),
        content=_parse_content(read, read.get(top, "content", dict)),
        splits=splits,
        default_split=default_split,
        terms=read.get(top, "terms", str, default=""),
        file=file,
    )


def _parse_geometry(read: _Reader, data: dict[str, Any]) -> Geometry:
    sides = {key: read.get(data, key, int, "geometry.")
             for key in ("channels", "height", "width", "default_size")}
    if sides["channels"] not in (1, 3):
        raise read.fail("geometry.channels", "must be 1 (grayscale) or 3 (RGB)")
    for key, value in sides.items():
        if value < 1:
            raise read.fail(f"geometry.{key}", "must be positive")
    return Geometry(**sides, invert=read.get(data, "invert", bool, "geometry.", default=False))


def _parse_content(read: _Reader, data: dict[str, Any]) -> Content:
    optional = {key: read.get(data, key, int, "content.", default=None)
                for key in ("images_per_class", "images", "groups")}
    return Content(classes=read.get(data, "classes", int, "content."), **optional)


def _parse_source(read: _Reader, item: Any, index: int) -> Source:
    prefix = f"sources[{index}]."
    data = read.mapping(item, prefix.rstrip("."))
    mirror_only = read.get(data, "mirror_only", bool, prefix, default=False)
    source = Source(
        path=read.get(data, "path", str, prefix),
        url=read.get(data, "url", str, prefix, default=""),
        md5=read.get(data, "md5", str, prefix, default=None),
        sha256=read.get(data, "sha256", str, prefix, default=None),
        size=read.get(data, "size", int, prefix, default=None),
        extract=read.get(data, "extract", bool, prefix, default=False),
        content_sha256=read.get(data, "content_sha256", str, prefix, default=None),
        mirror_only=mirror_only,
    )
    if not source.url and not mirror_only:
        raise read.fail(prefix + "url", "is missing (a file no public host serves needs "
                        "mirror_only: true)")
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
    classes = read.get(data, "classes", dict, prefix, default={})
    if not lists and not folders and not classes:
        raise read.fail(prefix + "lists", "or folders is required")
    for split in classes:
        if split not in SPLIT_NAMES:
            raise read.fail(f"{prefix}classes.{split}",
                            f"is not a split; use {', '.join(SPLIT_NAMES)}")
    return SplitScheme(
        name=name,
        summary=read.get(data, "summary", str, prefix, default=""),
        rotations=rotations,
        lists=dict(lists),
        folders=dict(folders),
        classes=dict(classes),
    )


def load_card(path: Path) -> DatasetCard:
    """Read and validate one card file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise DataError(f"cannot read dataset card {path}: {error}", "fix the card") from None
    return parse_card(data, str(path))


def get_card(name: str, root: str | Path | None = None) -> DatasetCard:
    """The card of the image dataset called ``name`` (registered by a plugin, or imported into
    the data root), or an error suggesting the nearest known name."""
    from metactl.data.manage import image_dataset

    return image_dataset(name, root).card
