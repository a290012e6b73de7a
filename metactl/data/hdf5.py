"""The HDF5 store: one file per dataset, split scheme and image size.

```
/                       attrs: format, format_version, fingerprint, metactl_version, created,
                               dataset, scheme, size, source_checksums (JSON), preprocessing,
                               normalisation (JSON: per-channel mean and std of the train
                               split, in [0, 1] units; RGB stores), ...
/<split>/images         uint8, (images, height, width) or (images, height, width, channels),
                        sorted by class
/<split>/offsets        int64, (classes + 1,); class i is images[offsets[i]:offsets[i+1]]
/<split>/class_names    variable-length UTF-8 strings, (classes,)
/<split>                attrs: rotations (int64 angles in degrees, applied when sampling)
```

The fingerprint is a SHA-256 over the content (images, offsets, class names, rotations of
every split), not over the file's bytes, so two builds of the same data agree and episode
files can name the store they were drawn from.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

import metactl
from metactl.errors import DataError, UsageError
from metactl.fileio import atomic_write

if TYPE_CHECKING:
    import torch

    from metactl.data.episodes import SplitData

STORE_FORMAT = "metactl-store"
STORE_VERSION = 1
_JSON_ATTRIBUTES = "json_attributes"
_STRINGS = h5py.string_dtype("utf-8")
_SPLIT_DATASETS = {"images", "offsets", "class_names"}


@dataclass(frozen=True)
class StoreSplit:
    """One split to write.

    Attributes:
        images: uint8 array, (images, height, width) or (images, height, width, channels),
            sorted by class.
        offsets: int64 array, (classes + 1,), starting at 0 and ending at ``len(images)``.
        class_names: one name per class, in the order of ``offsets``.
        rotations: angles in degrees; each class yields one sampling class per angle.
    """

    images: np.ndarray
    offsets: np.ndarray
    class_names: list[str]
    rotations: tuple[int, ...] = (0,)

    def check(self, name: str) -> None:
        """Raise ``ValueError`` when the arrays do not describe a valid split."""
        problems = []
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4):
            problems.append("images must be uint8 with 3 or 4 dimensions")
        offsets = np.asarray(self.offsets)
        if offsets.ndim != 1 or len(offsets) != len(self.class_names) + 1:
            problems.append("offsets must have one entry per class plus one")
        elif offsets[0] != 0 or offsets[-1] != len(self.images) or np.any(np.diff(offsets) < 0):
            problems.append("offsets must rise from 0 to the number of images")
        if len(set(self.class_names)) != len(self.class_names):
            problems.append("class names must be unique")
        if problems:
            raise ValueError(f"split {name!r}: " + "; ".join(problems))


@dataclass(frozen=True)
class SplitSummary:
    """What ``metactl data info`` shows of one split; ``classes`` counts stored classes, each
    of which yields one sampling class per rotation."""

    name: str
    classes: int
    rotations: tuple[int, ...]
    images: int
    image_shape: tuple[int, ...]
    images_per_class: tuple[int, int]

    @property
    def sampling_classes(self) -> int:
        return self.classes * len(self.rotations)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "classes": self.classes, "rotations": list(self.rotations),
            "sampling_classes": self.sampling_classes, "images": self.images,
            "image_shape": list(self.image_shape),
            "images_per_class": {"min": self.images_per_class[0], "max": self.images_per_class[1]},
        }


def content_fingerprint(splits: dict[str, StoreSplit]) -> str:
    """SHA-256 over every split's name, image shape, image bytes, offsets, class names and
    rotations, in split-name order."""
    digest = hashlib.sha256()
    for name in sorted(splits):
        split = splits[name]
        header = {"split": name, "shape": list(split.images.shape),
                  "rotations": [int(angle) for angle in split.rotations]}
        digest.update(json.dumps(header, sort_keys=True).encode())
        digest.update(np.ascontiguousarray(split.images).data)
        digest.update(np.asarray(split.offsets, dtype="<i8").tobytes())
        digest.update(json.dumps(list(split.class_names)).encode())
    return digest.hexdigest()


def write_store(path: Path, splits: dict[str, StoreSplit], attrs: dict[str, Any]) -> Path:
    """Write a store atomically: to a temporary file in the same folder, then renamed.

    Args:
        path: where the store goes.
        splits: the splits by name (train / val / test).
        attrs: provenance, e.g. dataset, scheme, size, source_checksums, preprocessing.
            Dicts and lists are stored as JSON. format, fingerprint, metactl_version and
            created are added here.

    Returns:
        ``path``.
    """
    path = Path(path)
    for name, split in splits.items():
        split.check(name)
    file_attrs = _file_attrs(splits, attrs)
    hint = "check the free space and permissions of the data root"
    with atomic_write(path, hint, what="the store") as temporary:
        with h5py.File(temporary, "w") as file:
            _write_attrs(file, file_attrs)
            for name, split in splits.items():
                _write_split(file.create_group(name), split)
    return path


def _file_attrs(splits: dict[str, StoreSplit], attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        **attrs,
        "format": STORE_FORMAT,
        "format_version": STORE_VERSION,
        "fingerprint": content_fingerprint(splits),
        "metactl_version": metactl.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _write_attrs(file: h5py.File, attrs: dict[str, Any]) -> None:
    as_json = sorted(key for key, value in attrs.items() if isinstance(value, (dict, list)))
    for key, value in attrs.items():
        file.attrs[key] = json.dumps(value, sort_keys=True) if key in as_json else value
    file.attrs[_JSON_ATTRIBUTES] = json.dumps(as_json)


def _write_split(group: h5py.Group, split: StoreSplit) -> None:
    group.create_dataset("images", data=np.ascontiguousarray(split.images))
    group.create_dataset("offsets", data=np.asarray(split.offsets, dtype=np.int64))
    group.create_dataset("class_names", data=list(split.class_names), dtype=_STRINGS)
    group.attrs["rotations"] = np.asarray(split.rotations, dtype=np.int64)


class Store:
    """An opened store. The file is read when a split is asked for, and closed again, so a
    ``Store`` can be handed to worker processes.

    Use :func:`open_store`, which checks the file first.
    """

    def __init__(self, path: Path, attrs: dict[str, Any], split_names: tuple[str, ...]) -> None:
        self.path = path
        self.attrs = attrs
        self.split_names = split_names

    @property
    def dataset(self) -> str:
        return str(self.attrs.get("dataset", _dataset_guess(self.path)))

    @property
    def fingerprint(self) -> str:
        return str(self.attrs["fingerprint"])

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, splits={list(self.split_names)})"

    def split(self, name: str) -> SplitData:
        """Read one split into memory.

        Returns:
            :class:`SplitData` with images as a uint8 tensor, (images, height, width) or
            (images, height, width, channels), and offsets as int64, (classes + 1,).
        """
        import torch  # here, so that the data commands that never sample start without torch

        from metactl.data.episodes import SplitData

        self._check_split_name(name)
        with self._reading(f"split {name!r}") as file:
            group = file[name]
            images = torch.from_numpy(group["images"][...])
            offsets = torch.from_numpy(group["offsets"][...].astype(np.int64))
            class_names = tuple(group["class_names"].asstr()[...].tolist())
            rotations = tuple(int(angle) for angle in group.attrs["rotations"])
        self._check_consistent(name, images, offsets, class_names)
        return SplitData(images, offsets, class_names, rotations, name, self.fingerprint,
                         self.normalisation)

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """Per-channel (mean, std) in [0, 1] units, when the store records them."""
        recorded = self.attrs.get("normalisation")
        if not isinstance(recorded, dict):
            return None
        return tuple(recorded["mean"]), tuple(recorded["std"])

    def verify(self) -> None:
        """Recompute the content fingerprint and raise :class:`DataError` if it differs."""
        splits = {}
        for name in self.split_names:
            data = self.split(name)
            splits[name] = StoreSplit(data.images.numpy(), data.offsets.numpy(),
                                      list(data.class_names), data.rotations)
        if content_fingerprint(splits) != self.fingerprint:
            raise self._damaged("its content does not match its fingerprint")

    def split_summary(self, name: str) -> SplitSummary:
        """Counts and shapes of one split, without reading its images."""
        self._check_split_name(name)
        with self._reading(f"split {name!r}") as file:
            group = file[name]
            offsets = group["offsets"][...].astype(np.int64)
            shape = tuple(int(size) for size in group["images"].shape)
            rotations = tuple(int(angle) for angle in group.attrs["rotations"])
        counts = np.diff(offsets)
        smallest, largest = (int(counts.min()), int(counts.max())) if len(counts) else (0, 0)
        return SplitSummary(name, len(counts), rotations, shape[0], shape[1:], (smallest, largest))

    def summary(self) -> dict[str, Any]:
        """Everything ``metactl data info`` shows, as JSON-ready values."""
        provenance = {key: value for key, value in self.attrs.items()
                      if key not in ("format", "format_version", "fingerprint")}
        return {
            "path": str(self.path),
            "size_bytes": self.path.stat().st_size,
            "fingerprint": self.fingerprint,
            "splits": [self.split_summary(name).to_json() for name in self.split_names],
            "provenance": provenance,
        }

    def _check_split_name(self, name: str) -> None:
        if name not in self.split_names:
            raise UsageError(f"the store {self.path.name} has no split {name!r}",
                             f"use one of: {', '.join(self.split_names)}")

    def _check_consistent(self, name: str, images: torch.Tensor, offsets: torch.Tensor,
                          class_names: tuple[str, ...]) -> None:
        if (offsets.ndim != 1 or len(offsets) != len(class_names) + 1 or int(offsets[0]) != 0
                or int(offsets[-1]) != len(images) or bool((offsets.diff() < 0).any())):
            raise self._damaged(f"the offsets of split {name!r} do not match its images")

    @contextmanager
    def _reading(self, what: str) -> Iterator[h5py.File]:
        """Open the file for reading; HDF5 failures become a :class:`DataError`."""
        if not self.path.is_file():
            raise DataError(f"the store {self.path} has gone",
                            _build_hint(self.path))
        try:
            with _open_hdf5(self.path) as file:
                yield file
        except (OSError, KeyError, ValueError, RuntimeError) as error:
            raise self._damaged(f"cannot read {what} ({_first_line(error)})") from None

    def _damaged(self, problem: str) -> DataError:
        return DataError(f"the store {self.path} is damaged: {problem}",
                         _build_hint(self.path, rebuild=True))


def open_store(path: Path) -> Store:
    """Open a store after checking that it exists and is a readable metactl store.

    Raises:
        DataError: the file is missing, not a metactl store, or damaged; the hint says how
            to build or rebuild it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no store at {path}", _build_hint(path))
    if not h5py.is_hdf5(path):
        raise DataError(f"{path} is not a metactl store (not an HDF5 file)",
                        _build_hint(path, rebuild=True))
    try:
        with _open_hdf5(path) as file:
            attrs = _read_attrs(file)
            if attrs.get("format") != STORE_FORMAT:
                raise DataError(f"{path} is not a metactl store (no format attribute)",
                                _build_hint(path, rebuild=True))
            if not isinstance(attrs.get("fingerprint"), str):
                raise ValueError("no fingerprint attribute")
            split_names = _split_names(file)
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        raise DataError(f"the store {path} is damaged ({_first_line(error)})",
                        _build_hint(path, rebuild=True)) from None
    if int(attrs.get("format_version", 0)) > STORE_VERSION:
        raise DataError(f"the store {path} was written by a newer metactl "
                        f"({attrs.get('metactl_version', '?')})",
                        "upgrade metactl or rebuild the store")
    return Store(path, attrs, split_names)


def _open_hdf5(path: Path) -> h5py.File:
    # No file locking: a store is never written in place (os.replace), and locking fails on
    # some network file systems.
    return h5py.File(path, "r", locking=False)


def _read_attrs(file: h5py.File) -> dict[str, Any]:
    as_json = set(json.loads(file.attrs.get(_JSON_ATTRIBUTES, "[]")))
    attrs = {}
    for key, value in file.attrs.items():
        if key == _JSON_ATTRIBUTES:
            continue
        attrs[key] = json.loads(value) if key in as_json else _plain(value)
    return attrs


def _plain(value: Any) -> Any:
    """HDF5 attribute values as Python values (numpy scalars and arrays become int, list...)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _split_names(file: h5py.File) -> tuple[str, ...]:
    names = []
    for name, item in file.items():
        if not isinstance(item, h5py.Group) or not _SPLIT_DATASETS <= set(item):
            raise ValueError(f"group {name!r} is not a split")
        names.append(name)
    order = {"train": 0, "val": 1, "test": 2}
    return tuple(sorted(names, key=lambda name: (order.get(name, 3), name)))


def _dataset_guess(path: Path) -> str:
    """The dataset a store path belongs to: stores live at ``<root>/<dataset>/<dataset>-...``."""
    folder = path.parent.name
    return folder if folder and path.name.startswith(f"{folder}-") else "<dataset>"


def _build_hint(path: Path, rebuild: bool = False) -> str:
    """The command that (re)builds the store at ``path``, named ``<dataset>-<scheme>-<size>.h5``."""
    dataset = _dataset_guess(path)
    command = f"metactl data preprocess {dataset}"
    match = re.fullmatch(rf"{re.escape(dataset)}-(?P<scheme>\w+)-(?P<size>\d+)\.h5", path.name)
    if match:
        command += f" --split {match['scheme']} --size {match['size']}"
    if rebuild:
        return f"rebuild it with `{command} --force`"
    return f"run `{command}`"


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
