"""Tasks per second: metactl's EpisodeSampler against loading each image from its PNG.

The PNG path is what torchvision's Omniglot and most peers do per image: open, convert to
grayscale, resize to 28x28 with Lanczos, rotate, invert, make a tensor. Both paths draw the
same tasks (the sampler's indices), and the first task is checked to be identical.

    python benchmarks/sampler.py [--root DIR] [--seconds 3] [--threads N]

Needs the Omniglot extraction and the vinyals 28x28 store: `metactl data fetch omniglot`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metactl.data.cards import get_card
from metactl.data.episodes import EpisodeSampler, SplitData, TaskBatch
from metactl.data.hdf5 import open_store
from metactl.data.layout import DatasetLayout
from metactl.errors import MetactlError
from metactl.paths import data_root
from metactl_datasets.omniglot import find_characters

SETTINGS = ((5, 1, 15), (20, 5, 15))
BATCH = 32


class PngTasks:
    """Builds the sampler's tasks image by image from the extracted PNG files."""

    def __init__(self, split: SplitData, extracted: Path, size: int) -> None:
        characters = find_characters(extracted, get_card("omniglot"))
        self.drawings = [characters[name].drawings for name in split.class_names]
        self.rotations = split.rotations
        self.size = size

    def image(self, sampling_class: int, image: int) -> torch.Tensor:
        """One drawing as float in [0, 1], (1, size, size), ink bright."""
        stored, turn = divmod(sampling_class, len(self.rotations))
        with Image.open(self.drawings[stored][image]) as png:
            gray = png.convert("L").resize((self.size, self.size), Image.Resampling.LANCZOS)
        gray = gray.rotate(self.rotations[turn])
        return (255 - torch.from_numpy(np.asarray(gray).copy())).float().div(255).unsqueeze(0)

    def task(self, classes: torch.Tensor, images: torch.Tensor, shot: int) -> tuple[torch.Tensor,
                                                                                  torch.Tensor]:
        """Support (way * shot, 1, H, W) and query (way * query, 1, H, W) of one task."""
        support, query = [], []
        for sampling_class, numbers in zip(classes.tolist(), images.tolist(), strict=True):
            pixels = [self.image(sampling_class, number) for number in numbers]
            support += pixels[:shot]
            query += pixels[shot:]
        return torch.stack(support), torch.stack(query)


def rate(work: Callable[[], int], seconds: float) -> float:
    """Tasks per second of ``work`` (which returns the tasks it made), run for ``seconds``."""
    work()  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += work()
    return done / (time.perf_counter() - start)


def check_same(batch: TaskBatch, png_tasks: PngTasks, classes, images) -> None:
    support, query = png_tasks.task(classes[0], images[0], batch.shot)
    if not (torch.equal(support, batch.support_images[0])
            and torch.equal(query, batch.query_images[0])):
        raise SystemExit("the PNG path and the sampler disagree on the first task")


def measure(split: SplitData, png_tasks: PngTasks, way: int, shot: int, query: int,
            seconds: float) -> tuple[float, float, float]:
    """Tasks/s: sampler one task per call, sampler BATCH per call, PNG path one task per call."""
    sampler = EpisodeSampler(split, way, shot, query, seed=0)
    classes, images = sampler.draw_indices(1)
    check_same(sampler.gather(classes, images), png_tasks, classes, images)
    one = rate(lambda: sampler.sample(1).tasks, seconds)
    batched = rate(lambda: sampler.sample(BATCH).tasks, seconds)

    def png_task() -> int:
        classes, images = sampler.draw_indices(1)
        png_tasks.task(classes[0], images[0], shot)
        return 1

    return one, batched, rate(png_task, seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="data root (default: $METACTL_HOME)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--split", default="train", help="split of the vinyals store")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own choice)")
    options = parser.parse_args(argv)
    if options.threads:
        torch.set_num_threads(options.threads)

    layout = DatasetLayout(data_root(options.root), get_card("omniglot"))
    try:
        split = open_store(layout.store_path("vinyals", 28)).split(options.split)
    except MetactlError as error:
        sys.exit(f"{error.one_line()} (this benchmark needs `metactl data fetch omniglot`)")
    if not layout.extracted.is_dir():
        sys.exit(f"no extraction at {layout.extracted}; run `metactl data fetch omniglot`")
    png_tasks = PngTasks(split, layout.extracted, size=28)

    print(f"Omniglot vinyals/{options.split}, 28x28, CPU, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {options.seconds:g} s per figure")
    print(f"{'task':<22}{'sampler 1/call':>16}{f'sampler {BATCH}/call':>18}{'PNG per image':>16}"
          f"{'ratio 1/call':>14}{f'ratio {BATCH}/call':>16}")
    for way, shot, query in SETTINGS:
        one, batched, png = measure(split, png_tasks, way, shot, query, options.seconds)
        label = f"{way}-way {shot}-shot {query}q"
        print(f"{label:<22}{one:>12,.0f} t/s{batched:>14,.0f} t/s{png:>12,.1f} t/s"
              f"{one / png:>13,.0f}x{batched / png:>15,.0f}x")


if __name__ == "__main__":
    main()
