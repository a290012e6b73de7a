"""Same/different image pairs drawn from a batch of tasks, and Koch et al.'s affine distortions.

Used by verification-style training (Siamese networks): images are embedded once and the pairs
index into the embeddings, so a pair costs no extra forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from torch import Tensor


@dataclass(frozen=True)
class Pairs:
    """Index pairs into the images of each task.

    Attributes:
        first, second: int64, (T, P), image indices within the task.
        same: float, (T, P); 1 where both images have the same label, else 0.
    """

    first: Tensor
    second: Tensor
    same: Tensor


def unordered_pair_counts(way: int, per_class: int) -> tuple[int, int]:
    """Distinct unordered (same, different) pairs in a task of ``way`` classes with
    ``per_class`` images each."""
    return way * per_class * (per_class - 1) // 2, way * (way - 1) // 2 * per_class ** 2


def sample_pairs(labels: Tensor, same: int, different: int,
                 generator: torch.Generator | None = None) -> Pairs:
    """Draw distinct unordered pairs per task, ``same`` of them of one class and ``different``
    of two classes, uniformly without replacement.

    Args:
        labels: int64, (T, N), the label of each image of each task.
        same, different: pairs of each kind per task; each must not exceed the candidates of
            every task (see :func:`unordered_pair_counts` for balanced tasks).
        generator: a CPU generator; by default torch's global one, which the engine seeds and
            saves in checkpoints, so a resumed run draws the same pairs.

    Returns:
        :class:`Pairs` of P = same + different pairs, the same-class ones first.
    """
    tasks, count = labels.shape
    # Random keys on the CPU: the draw is tiny and then independent of the device.
    keys = torch.rand(tasks, count * count, generator=generator).to(labels.device)
    equal = labels.unsqueeze(2) == labels.unsqueeze(1)  # (T, N, N)
    upper = torch.ones(count, count, dtype=torch.bool, device=labels.device).triu(1)
    chosen = []
    for wanted, kind in ((same, equal), (different, ~equal)):
        candidates = (kind & upper).flatten(1)
        chosen.append(keys.masked_fill(~candidates, -1.0).topk(wanted, dim=1).indices)
    flat = torch.cat(chosen, dim=1)  # (T, P), index into the N x N grid
    flags = torch.cat([torch.ones(tasks, same), torch.zeros(tasks, different)], dim=1)
    return Pairs(flat // count, flat % count, flags.to(labels.device))


def random_affine(images: Tensor, probability: float = 0.5, rotation: float = 10.0,
                  shear: float = 0.3, scale: tuple[float, float] = (0.8, 1.2),
                  translation: float = 2.0 / 105.0,
                  generator: torch.Generator | None = None) -> Tensor:
    """Koch et al. (2015)'s random affine distortions, one independent draw per image.

    Each component is included with ``probability``: a rotation in [-rotation, rotation]
    degrees, shears in [-shear, shear], scales in ``scale`` on each axis, and translations of up
    to ``translation`` of the image side on each axis (the paper's 2 pixels of 105). The area
    that comes into view is filled with zeros, the background of images stored as white ink on
    black (Omniglot).

    Args:
        images: float, (N, C, H, W).

    Returns:
        float, (N, C, H, W).
    """
    count = images.shape[0]

    def uniform(low: float, high: float, default: float) -> Tensor:
        values = torch.empty(count).uniform_(low, high, generator=generator)
        keep = torch.rand(count, generator=generator) < probability
        return torch.where(keep, values, torch.full_like(values, default))

    angle = uniform(-rotation, rotation, 0.0) * (math.pi / 180.0)
    shear_x, shear_y = uniform(-shear, shear, 0.0), uniform(-shear, shear, 0.0)
    scale_x, scale_y = uniform(*scale, 1.0), uniform(*scale, 1.0)
    # Normalised coordinates span 2 units per image side.
    shift_x, shift_y = (uniform(-2 * translation, 2 * translation, 0.0) for _ in range(2))
    cos, sin = angle.cos(), angle.sin()
    rotate = torch.stack([cos, -sin, sin, cos], dim=1).view(count, 2, 2)
    shear_matrix = torch.stack([torch.ones(count), shear_x, shear_y, torch.ones(count)],
                               dim=1).view(count, 2, 2)
    linear = rotate @ shear_matrix @ torch.diag_embed(torch.stack([scale_x, scale_y], dim=1))
    theta = torch.cat([linear, torch.stack([shift_x, shift_y], dim=1).unsqueeze(-1)], dim=2)
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    return functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=False)
