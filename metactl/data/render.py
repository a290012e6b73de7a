"""Render an episode as a PNG: one row per class, support images, a gap, then queries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from metactl.data.episodes import TaskBatch
from metactl.fileio import atomic_write

GAP = 4


def episode_grid(batch: TaskBatch, task: int = 0) -> np.ndarray:
    """A uint8 image (height, width, 3) of task ``task`` of ``batch``."""
    way, shot, query = batch.way, batch.shot, batch.query
    support = batch.support_images[task].reshape(way, shot, *batch.support_images.shape[2:])
    queries = batch.query_images[task].reshape(way, query, *batch.query_images.shape[2:])
    channels, height, width = support.shape[2:]
    columns = shot + query
    canvas = np.full((way * (height + GAP) + GAP, columns * (width + GAP) + 3 * GAP, 3), 96,
                     dtype=np.uint8)
    for row in range(way):
        images = [support[row, i] for i in range(shot)] + [queries[row, i] for i in range(query)]
        for column, image in enumerate(images):
            pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            if channels == 1:
                pixels = np.repeat(pixels, 3, axis=2)
            top = GAP + row * (height + GAP)
            left = GAP + column * (width + GAP) + (2 * GAP if column >= shot else 0)
            canvas[top:top + height, left:left + width] = pixels
    return canvas


def save_episode_png(batch: TaskBatch, path: Path, task: int = 0, scale: int = 2) -> Path:
    grid = Image.fromarray(episode_grid(batch, task))
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    separator = (GAP + batch.shot * (batch.support_images.shape[-1] + GAP) + GAP // 2) * scale
    ImageDraw.Draw(grid).line([(separator, 0), (separator, grid.height)], fill=(255, 200, 0),
                              width=max(1, scale))
    with atomic_write(path, "choose a writable output path with -o") as temporary:
        grid.save(temporary, format="PNG")
    return Path(path)
