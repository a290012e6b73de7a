"""Where a dataset's files live under the data root.

```
<root>/<dataset>/downloads/<source path>      as fetched (archives, split lists)
<root>/<dataset>/extracted/<archive top folder>/...
<root>/<dataset>/<dataset>-<scheme>-<size>.h5  the HDF5 store
<root>/<dataset>/card.yaml                      the card of a dataset made by `data import`
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from metactl.data.cards import DatasetCard


@dataclass(frozen=True)
class DatasetLayout:
    root: Path
    card: DatasetCard

    IMPORTED_CARD = "card.yaml"

    @property
    def folder(self) -> Path:
        return self.root / self.card.name

    @property
    def downloads(self) -> Path:
        return self.folder / "downloads"

    @property
    def extracted(self) -> Path:
        return self.folder / "extracted"

    def download_path(self, relative: str) -> Path:
        return self.downloads / relative

    def store_path(self, scheme: str | None = None, size: int | None = None) -> Path:
        scheme = scheme or self.card.default_split
        size = size or self.card.geometry.default_size
        return self.folder / f"{self.card.name}-{scheme}-{size}.h5"

    def stores(self) -> list[Path]:
        return sorted(self.folder.glob(f"{self.card.name}-*.h5")) if self.folder.is_dir() else []
