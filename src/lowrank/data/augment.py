"""Light augmentation of image batches, on tensors: a random shift and rotation per image.

Each training image of a batch (flat rows of ``C x H x W`` samples) is moved by a random
sub-pixel translation of up to ``shift`` pixels in each direction and turned by a random
angle of up to ``rotate`` degrees either way, both drawn uniformly from a seeded
generator. One affine resampling does both (``torch.nn.functional.affine_grid`` +
``grid_sample``, bilinear); pixels moved in from outside the image copy the nearest
border pixel, which for digits and clothing is background, so the background level
stays whatever normalization made it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["Augmentation", "augment_images"]


def augment_images(x: torch.Tensor, sample_shape: tuple[int, ...], shift: float, rotate: float,
                   generator: torch.Generator) -> torch.Tensor:
    """A randomly shifted and rotated copy of the flat image batch ``x``.

    ``x``: (N, C*H*W) with ``sample_shape == (C, H, W)``; returns (N, C*H*W). ``shift`` in
    pixels, ``rotate`` in degrees (both >= 0; 0 and 0 returns ``x`` itself).
    """
    if not shift and not rotate:
        return x
    c, h, w = sample_shape
    n = x.shape[0]
    u = torch.rand(n, 3, generator=generator) * 2 - 1                 # (N, 3) uniform in [-1, 1)
    theta = u[:, 0] * math.radians(rotate)                             # (N,) angle
    tx, ty = u[:, 1] * (2 * shift / w), u[:, 2] * (2 * shift / h)      # (N,) in grid units ([-1, 1] spans the image)
    cos, sin = torch.cos(theta), torch.sin(theta)
    mat = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (N, 2, 3)
    mat = mat.to(device=x.device, dtype=x.dtype)
    img = x.reshape(n, c, h, w)
    grid = F.affine_grid(mat, [n, c, h, w], align_corners=False)      # (N, H, W, 2)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(n, c * h * w)


@dataclass(frozen=True)
class Augmentation:
    """What :func:`augment_images` applies to every training batch (the data config's
    ``augment_shift`` and ``augment_rotate``)."""

    shift: float = 0.0
    """Largest shift in pixels, each direction."""
    rotate: float = 0.0
    """Largest rotation in degrees, either way."""

    @property
    def active(self) -> bool:
        return bool(self.shift or self.rotate)

    def check(self, sample_shape: tuple[int, ...], dataset: str) -> None:
        """A ConfigError unless the samples are images (``C x H x W``) when augmentation is on."""
        if self.active and len(sample_shape) != 3:
            raise ConfigError(f"augment_shift / augment_rotate need image data (C x H x W samples), but "
                              f"{dataset}'s samples have shape {tuple(sample_shape)}; drop the augmentation flags")

    def __call__(self, x: torch.Tensor, sample_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return augment_images(x, sample_shape, self.shift, self.rotate, generator)
