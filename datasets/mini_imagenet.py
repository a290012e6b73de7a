"""mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) split: check and pack.

The split lists are CSV files of ``filename,label`` rows; the images arrive as tar archives
(the mirror's four tar.xz parts) whose members are ``images/<filename>.jpg``. Nothing is
extracted to disk: each archive is streamed once, in its own thread (xz decompression and JPEG
decoding release the GIL), and every listed image is decoded straight into its place in the
store's arrays, sorted by class (wnid) and then by file name. The build checks that every image
decodes to an 84x84 RGB picture, that every CSV row got its image and that the counts are the
card's (100 classes x 600), and records the train split's per-channel mean and standard
deviation, which the sampler normalises with.

Registered as the dataset ``mini-imagenet`` by the hook at the bottom.
"""

from __future__ import annotations

import csv
import io
import lzma
import tarfile
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from metactl import hookimpl
from metactl.data.cards import DatasetCard, SplitScheme
from metactl.data.folders import normalisation
from metactl.data.hdf5 import StoreSplit, write_store
from metactl.data.images import decode_workers
from metactl.data.layout import DatasetLayout
from metactl.dataset import ImageDataset, Report
from metactl.errors import DataError

FETCH_HINT = "run `metactl data fetch {dataset} --force` to download it again"
CSV_HEADER = ["filename", "label"]
ARCHIVE_ERRORS = (tarfile.TarError, lzma.LZMAError, zlib.error, EOFError, OSError)


@dataclass(frozen=True)
class ListedImage:
    """One CSV row: where it lands in the store."""

    split: str
    position: int
    row: str  # "line N of splits/ravi/train.csv", for errors


@dataclass
class PackedSplits:
    """The store's arrays, filled in place while the archives are read.

    Attributes:
        images: split -> uint8, (images, size, size, 3), sorted by class then file name.
        filled: split -> bool, (images,): which rows have received their image.
        offsets: split -> int64, (classes + 1,).
        class_names: split -> wnids, sorted.
        index: file name -> where it goes.
    """

    images: dict[str, np.ndarray] = field(default_factory=dict)
    filled: dict[str, np.ndarray] = field(default_factory=dict)
    offsets: dict[str, np.ndarray] = field(default_factory=dict)
    class_names: dict[str, list[str]] = field(default_factory=dict)
    index: dict[str, ListedImage] = field(default_factory=dict)


def read_split_list(path: Path, relative: str, dataset: str) -> list[tuple[str, str, int]]:
    """(filename, label, line number) of every row of a ``filename,label`` CSV file."""
    hint = FETCH_HINT.format(dataset=dataset)
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            rows = list(csv.reader(stream))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read the split list {path} ({error})", hint) from None
    if not rows or [cell.strip() for cell in rows[0]] != CSV_HEADER:
        raise DataError(f"{relative} does not start with the header filename,label", hint)
    listed = []
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"line {number} of {relative} is not filename,label: {row!r:.60}",
                            hint)
        listed.append((row[0].strip(), row[1].strip(), number))
    return listed


def plan_store(layout: DatasetLayout, scheme: SplitScheme, size: int) -> PackedSplits:
    """Read the split lists and lay out the arrays every listed image will be decoded into."""
    card = layout.card
    packed = PackedSplits()
    for split in scheme.split_names:
        relative = scheme.lists[split]
        rows = read_split_list(layout.download_path(relative), relative, card.name)
        by_class: dict[str, list[tuple[str, int]]] = {}
        for filename, label, line in rows:
            by_class.setdefault(label, []).append((filename, line))
        names = sorted(by_class)
        counts = [len(by_class[name]) for name in names]
        packed.offsets[split] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        packed.class_names[split] = names
        packed.images[split] = np.empty((sum(counts), size, size, 3), dtype=np.uint8)
        packed.filled[split] = np.zeros(sum(counts), dtype=bool)
        position = 0
        for name in names:
            for filename, line in sorted(by_class[name]):
                if filename in packed.index:
                    raise DataError(f"{filename} is listed twice: {packed.index[filename].row} "
                                    f"and line {line} of {relative}", "fix the split lists")
                packed.index[filename] = ListedImage(split, position,
                                                     f"line {line} of {relative}")
                position += 1
    return packed


def decode_picture(data: bytes, name: str, size: int, card: DatasetCard) -> np.ndarray:
    """One image of the dataset as uint8 (size, size, 3); it must decode to the card's
    geometry (84x84 RGB) and is resized with Lanczos for other store sizes."""
    hint = FETCH_HINT.format(dataset=card.name)
    expected = (card.geometry.width, card.geometry.height)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.size != expected or image.mode != "RGB":
                raise DataError(f"{name} is {image.size[0]}x{image.size[1]} {image.mode}, not "
                                f"{expected[0]}x{expected[1]} RGB", hint)
            if size != expected[0]:
                image = image.resize((size, size), Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as error:
        raise DataError(f"{name} does not decode as an image ({error})", hint) from None


def unpack_archive(archive: Path, packed: PackedSplits, size: int, card: DatasetCard,
                   stop: threading.Event) -> tuple[int, int]:
    """Decode every listed image of one tar archive into ``packed``; returns (images decoded,
    members not in the lists). ``stop`` ends the work early when another archive failed."""
    decoded = extra = 0
    try:
        with tarfile.open(archive, mode="r|*") as bundle:
            for member in bundle:
                if stop.is_set():
                    break
                if not member.isfile():
                    continue
                target = packed.index.get(PurePosixPath(member.name).name)
                if target is None:
                    extra += 1
                    continue
                reader = bundle.extractfile(member)
                assert reader is not None  # a regular file always has content
                name = f"{member.name} in {archive.name}"
                packed.images[target.split][target.position] = decode_picture(
                    reader.read(), name, size, card)
                packed.filled[target.split][target.position] = True
                decoded += 1
    except ARCHIVE_ERRORS as error:
        raise DataError(f"archive {archive} is corrupt or truncated ({error})",
                        FETCH_HINT.format(dataset=card.name)) from None
    return decoded, extra


def unpack_archives(archives: list[Path], packed: PackedSplits, size: int, card: DatasetCard,
                    report: Report) -> int:
    """Decode all archives in parallel threads; return the members outside the lists."""
    stop = threading.Event()

    def one(archive: Path) -> tuple[int, int]:
        try:
            decoded, extra = unpack_archive(archive, packed, size, card, stop)
        except BaseException:
            stop.set()
            raise
        report(f"decoded {decoded:,} images of {archive.name}")
        return decoded, extra

    with ThreadPoolExecutor(max(1, min(len(archives), decode_workers()))) as pool:
        results = list(pool.map(one, archives))
    return sum(extra for _, extra in results)


def check_packed(packed: PackedSplits, scheme: SplitScheme, card: DatasetCard) -> None:
    """Every row got its image; the class and image counts are the card's."""
    hint = FETCH_HINT.format(dataset=card.name)
    for split in scheme.split_names:
        missing = np.flatnonzero(~packed.filled[split])
        if len(missing):
            first = next(name for name, item in packed.index.items()
                         if item.split == split and item.position == missing[0])
            raise DataError(f"{len(missing)} image(s) of split {split!r} are in no archive, "
                            f"e.g. {first} ({packed.index[first].row})", hint)
    for split in scheme.split_names:
        expected = scheme.classes.get(split)
        found = len(packed.class_names[split])
        if expected is not None and found != expected:
            raise DataError(f"split {split!r} lists {found} classes; the card expects "
                            f"{expected}", hint)
    counts = np.concatenate([np.diff(offsets) for offsets in packed.offsets.values()])
    content = card.content
    if len(counts) != content.classes or (content.images is not None
                                          and int(counts.sum()) != content.images):
        raise DataError(f"the split lists hold {len(counts)} classes and {int(counts.sum())} "
                        f"images, not {content.classes} and {content.images}", hint)
    if content.images_per_class is not None and np.any(counts != content.images_per_class):
        raise DataError(f"not every class has {content.images_per_class} images", hint)


class MiniImageNet(ImageDataset):
    """mini-ImageNet with the Ravi & Larochelle split; the images from a mirror only."""

    card_file = Path(__file__).with_name("mini-imagenet.yaml")

    def build_store(self, layout: DatasetLayout, scheme: SplitScheme, size: int,
                    source_checksums: dict[str, str], report: Report) -> Path:
        card = self.card
        lists = set(scheme.lists.values())
        archives = [layout.download_path(source.path) for source in card.sources
                    if source.path not in lists]
        packed = plan_store(layout, scheme, size)
        extra = unpack_archives(archives, packed, size, card, report)
        check_packed(packed, scheme, card)
        total = sum(len(images) for images in packed.images.values())
        report(f"verified {total:,} images: every row of the split lists has its image, every "
               f"image is {card.geometry.width}x{card.geometry.height} RGB"
               + (f" ({extra} archive members outside the lists ignored)" if extra else ""))
        splits = {split: StoreSplit(packed.images[split], packed.offsets[split],
                                    packed.class_names[split]) for split in scheme.split_names}
        resize = ("kept at 84x84" if size == card.geometry.width
                  else f"resized to {size}x{size} with Pillow's LANCZOS filter")
        attrs = {"dataset": card.name, "scheme": scheme.name, "scheme_summary": scheme.summary,
                 "size": size, "source_checksums": source_checksums,
                 "preprocessing": f"JPEG decoded with Pillow as RGB, {resize}",
                 "licence": card.licence, "terms": card.terms, "citation": card.citation,
                 "normalisation": normalisation(splits["train"])}
        return write_store(layout.store_path(scheme.name, size), splits, attrs)


@hookimpl
def metactl_register_datasets(registry) -> None:
    registry.add(MiniImageNet)
