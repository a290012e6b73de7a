"""A tiny but genuine Omniglot extraction for tests: real PNGs from the mirror's zips.

13 characters from 5 alphabets (260 drawings), 8 from the background archive and 5 from the
evaluation archive, with hand-written Vinyals-style split lists that mix both archives the
way the real lists do. The card is the real one with its counts cut down to match.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import pytest
from testsupport import SHARED_DATASETS

from metactl.data.cards import Content, DatasetCard, get_card
from metactl.data.layout import DatasetLayout

MIRROR = SHARED_DATASETS / "omniglot"

# (zip in the mirror, the top folder to extract its members to, characters)
TINY_SOURCES = (
    ("images_background_small1.zip", "images_background",
     ("Greek/character01", "Greek/character02", "Greek/character03",
      "Latin/character01", "Latin/character02", "Latin/character03",
      "Korean/character01", "Korean/character02")),
    ("images_evaluation.zip", "images_evaluation",
     ("Angelic/character01", "Angelic/character02", "Angelic/character03",
      "Keble/character01", "Keble/character02")),
)
TINY_SPLITS = {
    "train": ["Greek/character01", "Greek/character02", "Greek/character03", "Latin/character01",
              "Latin/character02", "Latin/character03", "Angelic/character01"],
    "val": ["Korean/character01", "Korean/character02"],
    "test": ["Angelic/character02", "Angelic/character03", "Keble/character01",
             "Keble/character02"],
}
ROTATIONS = (0, 90, 180, 270)


def require_mirror(*names: str) -> None:
    """Skip the test when the offline mirror lacks one of ``names``."""
    for name in names:
        if not (MIRROR / name).exists():
            pytest.skip(f"the Omniglot mirror file {MIRROR / name} is not here")


def tiny_card() -> DatasetCard:
    """The real Omniglot card, with content and split counts of the tiny extraction."""
    card = get_card("omniglot")
    vinyals = dataclasses.replace(
        card.splits["vinyals"], classes={name: len(names) for name, names in TINY_SPLITS.items()})
    background = dataclasses.replace(card.splits["background"], classes={"train": 8, "test": 5})
    return dataclasses.replace(card, content=Content(groups=5, classes=13, images_per_class=20),
                               splits={"vinyals": vinyals, "background": background})


def write_split_list(path: Path, characters: list[str], rotations=ROTATIONS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{name}/rot{angle:03d}" for name in characters for angle in rotations]
    path.write_text("\n".join(lines) + "\n")


def make_tiny_omniglot(root: Path) -> DatasetLayout:
    """Extract the tiny Omniglot under ``root`` laid out as a fetch would leave it."""
    require_mirror(*(source[0] for source in TINY_SOURCES))
    layout = DatasetLayout(root, tiny_card())
    for zip_name, target_top, characters in TINY_SOURCES:
        with zipfile.ZipFile(MIRROR / zip_name) as archive:
            for member in archive.namelist():
                parts = member.split("/")  # the zip's own top folder, then Alphabet/character
                if member.endswith(".png") and "/".join(parts[1:3]) in characters:
                    target = layout.extracted / target_top / "/".join(parts[1:])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(member))
    for split, characters in TINY_SPLITS.items():
        write_split_list(layout.download_path(f"splits/vinyals/{split}.txt"), characters)
    return layout


def drawing_paths(layout: DatasetLayout, character: str) -> list[Path]:
    """The PNG files of ``character`` (``Alphabet/characterNN``), in drawing order."""
    for top in ("images_background", "images_evaluation"):
        folder = layout.extracted / top / character
        if folder.is_dir():
            return sorted(folder.glob("*.png"))
    raise AssertionError(f"{character} is not in the tiny extraction")


TINY_CHECKSUMS = {"images_background.zip": {"sha256": "a5fc7909"},
                  "images_evaluation.zip": {"sha256": "a623286f"}}
