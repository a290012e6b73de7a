"""What the ``metactl data`` commands do: fetch, preprocess, inspect, draw episodes.

Each function takes plain values, does the work, and returns what the CLI prints; progress and
notes go through ``report`` so the library never prints by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metactl.data.cards import DatasetCard, SplitScheme
from metactl.data.layout import DatasetLayout
from metactl.dataset import Dataset, ImageDataset
from metactl.errors import DataError, DownloadError, UsageError, check_positive
from metactl.paths import MIRROR_VARIABLE, data_root, ensure_writable, mirror_setting

if TYPE_CHECKING:
    from metactl.data.episodes import EpisodeSet, SplitData

Report = Callable[[str], None]


def _silent(message: str) -> None:
    """Default reporter: say nothing."""


def find_dataset(name: str, root: str | Path | None = None) -> Dataset:
    """The dataset called ``name``: registered by a plugin, or imported into the data root
    with ``metactl data import``; else an error suggesting the nearest known names."""
    from metactl.plugins import get_datasets, unknown_name

    registry = get_datasets()
    if name in registry:
        return registry.get(name)
    imported = imported_datasets(root)
    if name in imported:
        return imported[name]
    raise unknown_name("dataset", name, [*registry.names(), *imported])


def image_dataset(name: str, root: str | Path | None = None) -> ImageDataset:
    """The image dataset called ``name``; a task family is refused with a hint."""
    dataset = find_dataset(name, root)
    if dataset.generates_tasks:
        raise UsageError(f"{name} is generated on the fly and has no files to fetch or inspect",
                         f"train on it directly, e.g. `metactl train maml --dataset {name}`")
    return dataset


def imported_datasets(root: str | Path | None = None) -> dict[str, ImageDataset]:
    """The datasets ``metactl data import`` wrote under the data root, by name."""
    from metactl.data.folders import read_imported

    folder = data_root(root)
    if not folder.is_dir():
        return {}
    found = {}
    for card_path in sorted(folder.glob(f"*/{DatasetLayout.IMPORTED_CARD}")):
        dataset = read_imported(card_path)
        if dataset is not None:
            found[dataset.name] = dataset
    return found


def layout_for(name: str, root: str | Path | None = None) -> DatasetLayout:
    return DatasetLayout(data_root(root), image_dataset(name, root).card)


@dataclass(frozen=True)
class DatasetStatus:
    name: str
    title: str
    folder: Path
    state: str  # absent / partial / downloaded / preprocessed / imported / synthetic
    download_bytes: int
    stores: tuple[tuple[Path, int], ...]
    package: str = ""
    summary: str = ""


def _size_of(paths: list[Path]) -> int:
    return sum(path.stat().st_size for path in paths if path.is_file())


def dataset_status(card: DatasetCard, root: str | Path | None = None,
                   package: str = "") -> DatasetStatus:
    layout = DatasetLayout(data_root(root), card)
    downloads = [layout.download_path(source.path) for source in card.sources]
    present = [path for path in downloads if path.is_file()]
    stores = tuple((path, path.stat().st_size) for path in layout.stores())
    if stores:
        state = "preprocessed"
    elif len(present) == len(downloads):
        state = "downloaded"
    else:
        state = "partial" if present else "absent"
    return DatasetStatus(card.name, card.title, layout.folder, state, _size_of(present), stores,
                         package, card.summary)


def list_datasets(root: str | Path | None = None) -> list[DatasetStatus]:
    """Every registered dataset with the package it comes from, then the imported ones."""
    from metactl.plugins import get_datasets

    statuses = []
    for entry in get_datasets().entries():
        dataset = entry.dataset
        if dataset.generates_tasks:
            statuses.append(DatasetStatus(dataset.name, dataset.title, Path(), "synthetic", 0,
                                          (), entry.distribution, dataset.summary))
        else:
            statuses.append(dataset_status(dataset.card, root, entry.distribution))
    for dataset in imported_datasets(root).values():
        statuses.append(replace(dataset_status(dataset.card, root, "imported"),
                                state="imported"))
    return statuses


def fetch_dataset(name: str, *, root: str | Path | None = None, mirror: str | None = None,
                  force: bool = False, report: Report = _silent, progress: Any = None) -> Path:
    """Download, verify, extract, validate and preprocess a dataset; return the store path."""
    dataset = image_dataset(name, root)
    layout = DatasetLayout(data_root(root), dataset.card)
    store = layout.store_path()
    if not force and store.is_file() and _store_opens(store):
        report(f"{name} is already fetched and preprocessed: {store}")
        return store
    if not dataset.card.sources:
        raise DataError(f"{name} has no files to fetch and no store at {store}",
                        "import the folder again with `metactl data import`")
    mirror = mirror_setting(mirror)
    _check_mirror(layout, mirror, force)
    if dataset.card.terms:
        report(f"terms of use of {dataset.card.title}: {dataset.card.terms}")
    ensure_writable(layout.folder)
    _download_sources(layout, mirror, force, report, progress)
    card = dataset.card
    return _build_store(layout, dataset, card.split_scheme(None), card.geometry.default_size,
                        force, report)


def _check_mirror(layout: DatasetLayout, mirror: str | None, force: bool) -> None:
    """Fail before downloading anything when a file needs a mirror that is not given, or a
    local mirror lacks a file still to fetch."""
    from metactl.data.download import resolve

    card = layout.card
    needed = [source for source in card.sources
              if force or not layout.download_path(source.path).is_file()]
    only = [source.path for source in needed if source.mirror_only]
    if only and not mirror:
        raise DownloadError(
            f"{card.title}'s {', '.join(only)} come from no public host ({card.licence})",
            f"put the files in a folder laid out as DIR/{card.name}/<file> and pass "
            f"--mirror DIR or set {MIRROR_VARIABLE} (see docs/datasets.md)")
    if not mirror or "://" in mirror:
        return
    absent = [source.path for source in needed
              if not Path(resolve(source, card.name, mirror)).is_file()]
    if absent:
        raise DownloadError(f"the mirror {Path(mirror) / card.name} lacks {', '.join(absent)}",
                            f"copy the missing files there, or point --mirror / "
                            f"{MIRROR_VARIABLE} at a complete mirror")


def _store_opens(path: Path) -> bool:
    from metactl.data.hdf5 import open_store

    try:
        open_store(path).split_names  # noqa: B018 - opening validates the file
    except DataError:
        return False
    return True


def _download_sources(layout: DatasetLayout, mirror: str | None, force: bool, report: Report,
                      progress: Any) -> None:
    from metactl.data.download import fetch_file

    for source in layout.card.sources:
        result = fetch_file(source, layout.card.name, layout.download_path(source.path),
                            mirror=mirror, force=force, progress=progress, retries=3)
        if result.message:
            report(result.message)


def _extract_sources(layout: DatasetLayout, digests: dict[str, str], force: bool,
                     report: Report) -> None:
    from metactl.data.archive import safe_extract

    for source in layout.card.sources:
        if not source.extract:
            continue
        archive = layout.download_path(source.path)
        marker = layout.extracted / f".{Path(source.path).name}.extracted"
        digest = digests[source.path]
        if not force and marker.is_file() and marker.read_text().strip() == digest:
            continue
        ensure_writable(layout.extracted)
        marker.unlink(missing_ok=True)
        report(f"extracting {source.path}")
        safe_extract(archive, layout.extracted, content_sha256=source.content_sha256)
        marker.write_text(digest + "\n")


def _build_store(layout: DatasetLayout, dataset: ImageDataset, scheme: SplitScheme, size: int,
                 force_extract: bool, report: Report) -> Path:
    """Extract (where needed), validate the content and write the store; each downloaded file
    is hashed once, for the extraction markers and the store's provenance alike."""
    import time

    from metactl.data.download import file_checksums
    from metactl.fileio import remove_stale_temporaries

    card = layout.card
    remove_stale_temporaries(layout.folder)  # a store a killed process was writing
    digests = {s.path: file_checksums(layout.download_path(s.path))["sha256"]
               for s in card.sources}
    _extract_sources(layout, digests, force_extract, report)
    dataset.check_content(layout, report)
    report(f"building the {scheme.name} store at {size}x{size} pixels")
    started = time.perf_counter()
    path = dataset.build_store(layout, scheme, size, digests, report)
    report(f"wrote {path} in {time.perf_counter() - started:.1f} s")
    return path


def preprocess_dataset(name: str, *, root: str | Path | None = None, scheme: str | None = None,
                       size: int | None = None, force: bool = False,
                       report: Report = _silent) -> Path:
    """Build the HDF5 store for ``scheme`` at ``size`` pixels from the extracted files."""
    check_positive(size=size)
    dataset = image_dataset(name, root)
    layout = DatasetLayout(data_root(root), dataset.card)
    card = layout.card
    scheme_name = card.split_scheme(scheme).name
    size = card.geometry.default_size if size is None else size
    if not 1 <= size <= max(card.geometry.height, card.geometry.width):
        raise UsageError(f"--size {size} is outside 1..{card.geometry.height}",
                         f"use a size up to the original {card.geometry.height} pixels")
    store = layout.store_path(scheme_name, size)
    if not force and store.is_file() and _store_opens(store):
        report(f"{name} store already built: {store}")
        return store
    missing = [s.path for s in card.sources if not layout.download_path(s.path).is_file()]
    if missing:
        raise DataError(f"{name} is not downloaded (missing {missing[0]})",
                        f"run `metactl data fetch {name}` first")
    ensure_writable(layout.folder)  # before decoding thousands of images
    return _build_store(layout, dataset, card.splits[scheme_name], size, False, report)


def open_split(name: str, split: str, *, root: str | Path | None = None,
               scheme: str | None = None, size: int | None = None, fetch: bool = False,
               mirror: str | None = None, report: Report = _silent) -> SplitData:
    """Load one split of a dataset's store; fetch the dataset first if asked and missing."""
    from metactl.data.hdf5 import open_store

    layout = layout_for(name, root)
    scheme_name = layout.card.split_scheme(scheme).name
    store = layout.store_path(scheme_name, size)
    if not store.is_file():
        if not fetch:
            raise DataError(f"no {name} store at {store}",
                            f"run `metactl data fetch {name}` (or `metactl data preprocess "
                            f"{name} --split {scheme_name}`)")
        if not all(layout.download_path(s.path).is_file() for s in layout.card.sources):
            fetch_dataset(name, root=root, mirror=mirror, report=report)
        if not store.is_file():
            preprocess_dataset(name, root=root, scheme=scheme_name, size=size, report=report)
    return open_store(store).split(split)


def draw_episodes(name: str, *, split: str, way: int, shot: int, query: int, episodes: int,
                  seed: int, root: str | Path | None = None, scheme: str | None = None,
                  size: int | None = None) -> EpisodeSet:
    from metactl.data.episodes import EpisodeSet

    check_positive(way=way, shot=shot, episodes=episodes, size=size)
    if query < 0:
        raise UsageError(f"--query must not be negative, got {query}", "pass --query 1 or more")
    card = image_dataset(name, root).card
    scheme_name = card.split_scheme(scheme).name
    size = card.geometry.default_size if size is None else size
    data = open_split(name, split, root=root, scheme=scheme_name, size=size)
    return EpisodeSet.draw(data, dataset=name, scheme=scheme_name, size=size, way=way, shot=shot,
                           query=query, episodes=episodes, seed=seed)
