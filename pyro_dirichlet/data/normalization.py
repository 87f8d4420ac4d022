"""Per-channel normalisation of a user's images: measured on the training split, or given as one mean and std."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MAX_MEAN", "MIN_STD", "MAX_STD", "Normalization", "parse_normalize"]

#: The range a mean and a std may have: every normalised pixel stays a finite, distinct float32.
MAX_MEAN, MIN_STD, MAX_STD = 1e6, 1e-6, 1e6


@dataclass(frozen=True)
class Normalization:
    """``(x - mean[c]) / std[c]`` per channel ``c`` of images scaled to [0, 1].

    Attributes:
        mean: one value per channel.
        std: one positive value per channel.

    Example:
        >>> Normalization.of(torch.rand(8, 3, 4, 4)).std.__len__()
        3
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"normalize needs one mean and one std per channel, got {self.mean} and {self.std}.")
        if not all(math.isfinite(m) for m in self.mean) or not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ValueError(f"normalize needs finite means and positive, finite stds, got {self.mean} and {self.std}.")
        # Images are float32 in [0, 1]: a std of 1e-50 or a mean of 1e39 would become 0 or inf there.
        if not all(abs(m) <= MAX_MEAN for m in self.mean) or not all(MIN_STD <= s <= MAX_STD for s in self.std):
            raise ValueError(f"normalize needs means within ±{MAX_MEAN:g} and stds between {MIN_STD:g} and {MAX_STD:g} "
                             f"(images lie in [0, 1] and are float32), got {self.mean} and {self.std}.")

    @classmethod
    def of(cls, images: Tensor) -> Normalization:
        """The mean and std of each channel of ``images`` ``(N, C, H, W)``; a constant channel gets std 1."""
        flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()
        std = flat.std(dim=1, unbiased=False)
        return cls(tuple(flat.mean(dim=1).tolist()), tuple(torch.where(std > 1e-6, std, 1.0).tolist()))

    def for_channels(self, channels: int) -> Normalization:
        """This normalisation for ``channels`` channels: one given value serves every channel."""
        if len(self.mean) == channels:
            return self
        if len(self.mean) == 1:
            return Normalization(self.mean * channels, self.std * channels)
        raise ValueError(f"normalize gives {len(self.mean)} channels' values, but the images have {channels} channels.")

    def apply(self, images: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype).view(1, -1, 1, 1)
        return (images - mean) / std

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


def parse_normalize(text: str) -> Normalization:
    """``"0.5,0.25"`` (one mean and std for every channel) or ``"0.49,0.48,0.45/0.25,0.24,0.26"`` (per channel).

    Raises:
        ValueError: neither form, means and stds of different counts, or a std that is not
            positive; names ``--normalize``.

    Example:
        >>> parse_normalize("0.5,0.25")
        Normalization(mean=(0.5,), std=(0.25,))
        >>> parse_normalize("0.4914,0.4822,0.4465/0.247,0.2435,0.2616").std
        (0.247, 0.2435, 0.2616)
    """
    forms = "MEAN,STD or MEAN_R,MEAN_G,MEAN_B/STD_R,STD_G,STD_B"
    if "/" in text:
        means, _, stds = text.partition("/")
        parts = [[part.strip() for part in side.split(",")] for side in (means, stds)]
    else:
        values = [part.strip() for part in text.split(",")]
        parts = [values[:1], values[1:]] if len(values) == 2 else [values, []]
    try:
        mean, std = ([float(part) for part in side] for side in parts)
    except ValueError:
        raise ValueError(f"--normalize expects {forms} (numbers), got {text!r}.") from None
    if not mean or len(mean) != len(std):
        raise ValueError(f"--normalize expects {forms}, one std per mean, got {text!r}.")
    try:
        return Normalization(tuple(mean), tuple(std))
    except ValueError:
        raise ValueError(f"--normalize expects finite means within ±{MAX_MEAN:g} and positive, finite stds between "
                         f"{MIN_STD:g} and {MAX_STD:g}, got {text!r}.") from None
