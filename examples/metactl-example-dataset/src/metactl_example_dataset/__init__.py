"""An example metactl dataset plugin: coloured shapes, fetched from a URL or a mirror.

The module is what the entry point names. A dataset whose archive holds one folder of images
per class needs only its card; metactl downloads, verifies, extracts, checks and packs it.
Override ``ImageDataset.build_store`` (and ``check_content``) for any other layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from metactl import hookimpl
from metactl.dataset import ImageDataset

if TYPE_CHECKING:
    from metactl.plugins import DatasetRegistry

__version__ = "0.1.0"


class ExampleShapes(ImageDataset):
    """20 classes of coloured shapes; see ``shapes.yaml``."""

    card_file = Path(__file__).with_name("shapes.yaml")


@hookimpl
def metactl_register_datasets(registry: DatasetRegistry) -> None:
    registry.add(ExampleShapes)
