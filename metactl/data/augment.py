"""Standard data augmentation for training, applied to whole sampled batches on their device.

Random crop after zero padding, horizontal flip and colour jitter (brightness, contrast,
saturation), as in the ResNet-12 few-shot recipes (MetaOptNet, Lee et al. 2019; RFS, Tian et
al. 2020). Every random number comes from the sampler's seeded CPU generator, so a resumed run
draws the same augmentations. Evaluation never augments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class StandardAugmentation:
    """Augments pixels in [0, 1], (tasks, way, images, C, H, W), image by image.

    Attributes:
        padding: zero padding on each side before a random crop back to H x W.
        flip: probability of a horizontal flip.
        jitter: brightness, contrast and saturation factors drawn from [1 - j, 1 + j].
    """

    padding: int = 8
    flip: float = 0.5
    jitter: float = 0.4

    def __call__(self, pixels: Tensor, generator: torch.Generator) -> Tensor:
        shape = pixels.shape
        images = pixels.reshape(-1, *shape[-3:])
        images = self.crop(images, generator)
        images = self.flipped(images, generator)
        images = self.jittered(images, generator)
        return images.reshape(shape)

    def _draw(self, count: int, generator: torch.Generator, device: torch.device) -> Tensor:
        return torch.rand(count, generator=generator).to(device)

    def crop(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W), each a random H x W window of the padded image."""
        if self.padding <= 0:
            return images
        count, _, height, width = images.shape
        padded = torch.nn.functional.pad(images, [self.padding] * 4)
        tops = torch.randint(0, 2 * self.padding + 1, (count,), generator=generator)
        lefts = torch.randint(0, 2 * self.padding + 1, (count,), generator=generator)
        rows = (tops[:, None] + torch.arange(height)).to(images.device)  # (N, H)
        columns = (lefts[:, None] + torch.arange(width)).to(images.device)  # (N, W)
        index = torch.arange(count, device=images.device)[:, None, None]
        cropped = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], columns[:, None, :]]
        return cropped.permute(0, 3, 1, 2)

    def flipped(self, images: Tensor, generator: torch.Generator) -> Tensor:
        flip = self._draw(len(images), generator, images.device) < self.flip
        return torch.where(flip[:, None, None, None], images.flip(-1), images)

    def jittered(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if self.jitter <= 0:
            return images
        count = len(images)

        def factors() -> Tensor:
            drawn = self._draw(count, generator, images.device)
            return (1 + self.jitter * (2 * drawn - 1))[:, None, None, None]

        images = images * factors()  # brightness
        mean = _gray(images).mean(dim=(-2, -1), keepdim=True)
        images = (images - mean) * factors() + mean  # contrast
        if images.shape[1] == 3:
            gray = _gray(images)
            images = (images - gray) * factors() + gray  # saturation
        return images.clamp(0, 1)


def _gray(images: Tensor) -> Tensor:
    """Luma (ITU-R 601), (N, 1, H, W); the image itself when it has one channel."""
    if images.shape[1] == 1:
        return images
    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=images.dtype)
    return (images * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
