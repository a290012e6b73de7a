"""What the ``metactl data`` commands do: fetch, preprocess, inspect, draw episodes.

Each function takes plain values, does the work, and returns what the CLI prints; progress and
notes go through ``report`` so the library never prints by itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metactl.data.cards import DatasetCard, builtin_cards, get_card
from metactl.data.layout import DatasetLayout
from metactl.errors import DataError, UsageError, check_positive
from metactl.paths import data_root, ensure_writable, mirror_setting

if TYPE_CHECKING:
    from metactl.data.episodes import EpisodeSet, SplitData

Report = Callable[[str], None]

BUILDERS = {"omniglot": "metactl.data.omniglot"}


def _silent(message: str) -> None:
    """Default reporter: say nothing."""


def layout_for(name: str, root: str | Path | None = None) -> DatasetLayout:
    card = get_card(name)
    return DatasetLayout(data_root(root), card)


def _builder(card: DatasetCard) -> Any:
    return importlib.import_module(BUILDERS[card.builder])


@dataclass(frozen=True)
class DatasetStatus:
    name: str
    title: str
    folder: Path
    state: str  # absent / partial / downloaded / preprocessed
    download_bytes: int
    stores: tuple[tuple[Path, int], ...]


def _size_of(paths: list[Path]) -> int:
    return sum(path.stat().st_size for path in paths if path.is_file())


def dataset_status(card: DatasetCard, root: str | Path | None = None) -> DatasetStatus:
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
    return DatasetStatus(card.name, card.title, layout.folder, state, _size_of(present), stores)


def list_datasets(root: str | Path | None = None) -> list[DatasetStatus]:
    return [dataset_status(card, root) for card in builtin_cards().values()]


def fetch_dataset(name: str, *, root: str | Path | None = None, mirror: str | None = None,
                  force: bool = False, report: Report = _silent, progress: Any = None) -> Path:
    """Download, verify, extract, validate and preprocess a dataset; return the store path."""
    layout = layout_for(name, root)
    store = layout.store_path()
    if not force and store.is_file() and _store_opens(store):
        report(f"{name} is already fetched and preprocessed: {store}")
        return store
    ensure_writable(layout.folder)
    _download_sources(layout, mirror_setting(mirror), force, report, progress)
    return _build_store(layout, layout.card.default_split, layout.card.geometry.default_size,
                        force, report)


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


def _build_store(layout: DatasetLayout, scheme: str, size: int, force_extract: bool,
                 report: Report) -> Path:
    """Extract (where needed), validate the content and write the store; each downloaded file
    is hashed once, for the extraction markers and the store's provenance alike."""
    from metactl.data.download import file_checksums
    from metactl.fileio import remove_stale_temporaries

    card = layout.card
    remove_stale_temporaries(layout.folder)  # a store a killed process was writing
    digests = {s.path: file_checksums(layout.download_path(s.path))["sha256"]
               for s in card.sources}
    _extract_sources(layout, digests, force_extract, report)
    builder = _builder(card)
    builder.validate_extracted(layout.extracted, card)
    report(f"verified the content of {card.name}")
    report(f"building the {scheme} store at {size}x{size} pixels")
    path = builder.build_store(layout, scheme, size, digests)
    report(f"wrote {path}")
    return path


def preprocess_dataset(name: str, *, root: str | Path | None = None, scheme: str | None = None,
                       size: int | None = None, force: bool = False,
                       report: Report = _silent) -> Path:
    """Build the HDF5 store for ``scheme`` at ``size`` pixels from the extracted files."""
    check_positive(size=size)
    layout = layout_for(name, root)
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
    return _build_store(layout, scheme_name, size, False, report)


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
    card = get_card(name)
    scheme_name = card.split_scheme(scheme).name
    size = card.geometry.default_size if size is None else size
    data = open_split(name, split, root=root, scheme=scheme_name, size=size)
    return EpisodeSet.draw(data, dataset=name, scheme=scheme_name, size=size, way=way, shot=shot,
                           query=query, episodes=episodes, seed=seed)
