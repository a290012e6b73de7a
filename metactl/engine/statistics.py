"""The training split, batch by batch, for :meth:`Algorithm.training_statistics`."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from metactl.algorithm import LabelledImages
from metactl.data.episodes import SplitData

BATCH_IMAGES = 256


def training_batches(split: SplitData, batch_images: int = BATCH_IMAGES
                     ) -> Iterator[LabelledImages]:
    """Every stored image of ``split`` once (unrotated), in class order.

    Yields:
        LabelledImages of one task: images float (1, N, C, H, W) in [0, 1] on the split's
        device, labels int64 (1, N): the sampling class of each image (rotation 0).
    """
    counts = split.counts.to(split.images.device)
    classes = torch.repeat_interleave(torch.arange(split.stored_classes,
                                                   device=split.images.device), counts)
    classes = classes * len(split.rotations)
    for start in range(0, split.images.shape[0], batch_images):
        pixels = split.images[start:start + batch_images]
        pixels = pixels.permute(0, 3, 1, 2) if pixels.dim() == 4 else pixels.unsqueeze(1)
        images = pixels.float().div_(255.0).unsqueeze(0)
        labels = classes[start:start + batch_images].unsqueeze(0)
        yield LabelledImages(images, labels, split.num_classes)
