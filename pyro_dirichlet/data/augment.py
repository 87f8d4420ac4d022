"""Augmentation applied by the training loop to whole minibatches, vectorised (no per-image Python call)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RandomCropFlip"]


@dataclass(frozen=True)
class RandomCropFlip:
    """The standard CIFAR augmentation, vectorised: pad, random crop back, random flip.

    Each image of the batch is padded by ``padding`` pixels on every side with ``fill``,
    cropped at a uniformly random offset back to its own size, and mirrored left-right with
    probability 1/2. All random numbers come from ``generator`` (a CPU generator), so the
    same generator state gives the same batch on any device.

    Args:
        padding: pixels added on each side before cropping.
        fill: value of the padding, one per channel (or one for all) in the images' own
            scale; for normalised images, ``-mean / std`` pads with black as torchvision's
            ``RandomCrop(32, padding=4)`` before ``Normalize`` does.

    Example:
        >>> augment = RandomCropFlip(padding=4)
        >>> augment(torch.zeros(8, 3, 32, 32), torch.Generator().manual_seed(0)).shape
        torch.Size([8, 3, 32, 32])
    """

    padding: int = 4
    fill: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        if isinstance(self.padding, bool) or not isinstance(self.padding, int) or self.padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {self.padding!r}")
        if not isinstance(self.fill, tuple) or not self.fill:
            raise TypeError(f"fill must be a non-empty tuple of floats, got {self.fill!r}")

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise ValueError("images must be a tensor of shape (N, C, H, W)")
        if len(self.fill) not in (1, images.shape[1]):
            raise ValueError(
                f"fill has {len(self.fill)} values but the images have {images.shape[1]} channels"
            )
        n, channels, height, width = images.shape
        p = self.padding
        # Random numbers on the CPU generator first, then moved: reproducible on any device.
        rows = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        cols = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        device = images.device
        fill = torch.tensor(self.fill, dtype=images.dtype, device=device).view(-1, 1, 1)
        padded = fill.expand(channels, height + 2 * p, width + 2 * p).repeat(n, 1, 1, 1)
        padded[:, :, p : p + height, p : p + width] = images
        row_index = (rows.to(device)[:, None] + torch.arange(height, device=device))  # (N, H)
        col_index = cols.to(device)[:, None] + torch.arange(width, device=device)  # (N, W)
        # A flipped image reads its columns right to left.
        col_index = torch.where(flip.to(device)[:, None], col_index.flip(1), col_index)
        batch_index = torch.arange(n, device=device)[:, None, None]
        crops = padded.permute(0, 2, 3, 1)[batch_index, row_index[:, :, None], col_index[:, None, :]]
        return crops.permute(0, 3, 1, 2).contiguous()

