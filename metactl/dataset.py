"""The contract every dataset plugin fulfils.

A dataset is one of two kinds, registered from a ``metactl_register_datasets`` hook:

- :class:`ImageDataset`: a card (a YAML file: sources with checksums, licence and terms,
  citation, image geometry, expected content, split schemes) and a builder that turns the
  fetched files into the HDF5 store the sampler draws N-way K-shot tasks from. The default
  builder reads class folders out of the extracted archives; Omniglot and mini-ImageNet bring
  their own.
- :class:`TaskFamily`: tasks generated on the fly (the sinusoid regression of the MAML paper):
  a seeded task sampler, the model's input description, the settings the family implies and,
  optionally, a report (a plot).

The engine asks only these questions, so it names no dataset. See ``docs/datasets.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from metactl.data.cards import DatasetCard, SplitScheme, load_card
from metactl.errors import UsageError

if TYPE_CHECKING:
    import torch

    from metactl.algorithm import ModelSpec
    from metactl.data.episodes import TaskBatch
    from metactl.data.layout import DatasetLayout
    from metactl.engine.run import TrainedModel

Report = Callable[[str], None]


class ImageDataset:
    """An image dataset: its card and its builder.

    Subclass it, point ``card_file`` at the YAML card, and override :meth:`build_store` unless
    the archives hold one folder of images per class under the folders that the card's split
    schemes name. The registry makes one instance, ``cls()``, which reads and checks the card.
    """

    card_file: ClassVar[str | Path] = ""
    generates_tasks: ClassVar[bool] = False

    def __init__(self, card: DatasetCard | None = None) -> None:
        self.card = card if card is not None else load_card(Path(self.card_file))

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def title(self) -> str:
        return self.card.title

    @property
    def summary(self) -> str:
        return self.card.summary

    def check_content(self, layout: DatasetLayout, report: Report) -> None:
        """Called after fetching and extracting, before building: raise
        :class:`~metactl.errors.DataError` naming what is missing or wrong, and report what
        was verified. The default checks nothing here; the default :meth:`build_store` checks
        the content it reads."""

    def build_store(self, layout: DatasetLayout, scheme: SplitScheme, size: int,
                    source_checksums: dict[str, str], report: Report) -> Path:
        """Decode the fetched files and write the store ``layout.store_path(scheme.name, size)``
        with :func:`metactl.data.hdf5.write_store` (atomic); return its path.

        Args:
            layout: where the downloads, the extraction and the store live.
            scheme: the split scheme to build.
            size: the side of the stored images, in pixels.
            source_checksums: sha256 of each downloaded file, by card path; record them.
            report: progress notes for the user.
        """
        from metactl.data.folders import build_folder_store

        return build_folder_store(layout, scheme, size, source_checksums, report)


class TaskSampler(Protocol):
    """Draws batches of generated tasks; ``generator`` is saved with checkpoints."""

    generator: torch.Generator

    def sample(self, tasks: int = 1) -> TaskBatch: ...


class TaskFamily:
    """Tasks generated on the fly: nothing to fetch, no store.

    Class attributes:
        name, title, summary, citation: as on a card.
        settings: engine settings the family implies (way, shot, query...), applied between the
            engine's defaults and the algorithm's.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    settings: ClassVar[Mapping[str, Any]] = {}
    generates_tasks: ClassVar[bool] = True

    def model_spec(self) -> ModelSpec:
        """What the model receives (``task="regression"`` for float targets)."""
        raise NotImplementedError(f"{type(self).__name__} must implement model_spec")

    def sampler(self, shot: int, query: int, seed: int, device: torch.device) -> TaskSampler:
        """A seeded sampler of tasks with ``shot`` support and ``query`` query points; the
        same seed must give the same tasks."""
        raise NotImplementedError(f"{type(self).__name__} must implement sampler")

    def plot(self, trained: TrainedModel, steps: list[int], path: Path, *, shot: int | None,
             seed: int | None, device: torch.device) -> Path:
        """Draw one test task and the predictions after each number of inner steps
        (``metactl evaluate --plot``)."""
        raise UsageError(f"the {self.name} tasks have no plot", "drop --plot")


Dataset = ImageDataset | TaskFamily
