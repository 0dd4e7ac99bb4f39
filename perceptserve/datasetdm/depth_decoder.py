"""DatasetDM's depth P-Decoder (`Depthmodule` in showlab/DatasetDM `model/depth_module.py`),
our implementation for export.

The feature pyramid mixed into a 4 x 256-channel map at the latent size, resized to 2.5x the
latent (DatasetDM's 160) and then to the image size, then two 3x3 convolutions and a sigmoid
scaled to `max_depth` (10 m in DatasetDM's NYU config, 80 m in KITTI's; not stored in the
checkpoint, hence a config value).

Written DatasetDM's way, the first convolution maps 4 x 256 channels to 4 x 256 at the full
image size: at 512x512, 4.9 TFLOP (42 s of the 154 s a served 512x512 generate took on a 2-core
CPU) and a 1 GiB input. But its input is a resize of the latent-size map, and a resize is linear
along each axis, so it commutes with the convolution's channel mixing: the exported graph mixes
the channels once per kernel tap at the latent size (9 taps x 1024 x 1024 x 64 x 64: 77 GFLOP),
then applies the two resizes, each tap shifted by its offset, as two matrix products, along the
width and then along the height (140 GFLOP). The same sums per output pixel in another order;
the 1 GiB resized map is never made. The height product, the ReLU and the second convolution
run over `STRIPS` horizontal strips, each with the row above and below that the second 3x3
kernel reads, so one strip of the first convolution's output is alive at a time. `reference`
keeps DatasetDM's own order, so the parity check compares the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .features import FeatureLayout
from .layers import StackingConfig, StackingPyramid, resize, scaled_size


@dataclass(frozen=True)
class DepthConfig(StackingConfig):
    max_depth: float = 10.0


STRIPS = 8  # image heights are multiples of 64: every strip has at least 8 rows
HALO = 1  # rows each side that the second 3x3 convolution reads
TAPS = 3  # the first convolution's kernel size, along each axis
MIDDLE = (5, 2)  # DatasetDM's first resize, as a fraction of the latent size: 160 for 64


class DepthDecoder(StackingPyramid):
    def __init__(self, layout: FeatureLayout, config: DepthConfig) -> None:
        super().__init__(layout, config)
        width = config.width
        self.last_layer_depth = nn.Sequential(
            nn.Conv2d(4 * width, 4 * width, kernel_size=TAPS, stride=1, padding=1),
            nn.ReLU(),
            nn.Conv2d(4 * width, 1, kernel_size=3, stride=1, padding=1),
        )

    def forward(self, low, mid, high, highest) -> torch.Tensor:
        """Projected groups (from the feature extractor) -> depth (B, 1, H, W) at image size."""
        mixed = self.mix(*self.targets_from_projected([low, mid, high, highest]))[-1]
        columns, rows = self._tap_resizes(mixed)
        return self._scaled(torch.cat(self._strips(columns, rows), dim=2))

    def reference(self, raw: Sequence[torch.Tensor]) -> torch.Tensor:
        """DatasetDM's own order: raw groups resized, then projected, the resizes to the image
        size, then the convolutions over the whole image; the same output."""
        highest = self.mix(*self.targets_from_raw(raw))[-1]
        feature = resize(highest, scaled_size(highest, *MIDDLE))
        feature = resize(feature, scaled_size(highest, self.config.image_scale, 1))
        return self._scaled(self.last_layer_depth(feature))

    def _tap_resizes(self, mixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (every tap's channel mix resized along the width and summed over the column taps,
        (B, C, TAPS * h, W), row tap major; the height resize of each row tap, (H, TAPS * h)).
        The first convolution's output at rows R is then `rows[R] @ columns`, before its bias."""
        conv = self.last_layer_depth[0]
        batch, channels, height, width = mixed.shape
        # One 1x1 convolution for the nine taps, output channels ordered (row tap, out, column tap).
        taps = conv.weight.permute(2, 0, 3, 1).reshape(TAPS * channels * TAPS, channels, 1, 1)
        mixes = F.conv2d(mixed, taps).reshape(batch, TAPS, channels, TAPS, height, width)
        mixes = mixes.transpose(3, 4).reshape(batch, TAPS, channels, height, TAPS * width)
        columns = mixes @ _shifted_resizes(width, self.config.image_scale).T
        columns = columns.transpose(1, 2).reshape(batch, channels, TAPS * height, -1)
        return columns, _shifted_resizes(height, self.config.image_scale)

    def _strips(self, columns: torch.Tensor, rows: torch.Tensor) -> list[torch.Tensor]:
        """The first convolution's output over STRIPS row bands, each with HALO rows of context
        (none beyond the image, where the whole-image call pads with zeros too), then the ReLU
        and the second convolution."""
        bias = self.last_layer_depth[0].bias[:, None, None]
        height = rows.shape[0]
        bounds = [index * height // STRIPS for index in range(STRIPS + 1)]
        strips = []
        for index, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            top = start if index == 0 else start - HALO
            bottom = end if index == STRIPS - 1 else end + HALO
            band = self.last_layer_depth[1:](rows[top:bottom] @ columns + bias)  # ReLU, second conv
            strips.append(band[:, :, start - top : start - top + (end - start)])
        return strips

    def _scaled(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) * self.config.max_depth


def _shifted_resizes(size: int, image_scale: int) -> torch.Tensor:
    """(size * image_scale, TAPS * size): DatasetDM's two resizes along one axis (to 2.5x, then
    to the image size) as one matrix, once per tap offset (-1, 0, +1), its rows shifted by the
    offset with zeros beyond the edges (the convolution's padding), side by side."""
    basis = torch.eye(size).reshape(1, size, size, 1)  # channel k: the k-th unit vector
    resized = resize(resize(basis, (size * MIDDLE[0] // MIDDLE[1], 1)), (size * image_scale, 1))
    matrix = resized[0, :, :, 0].T  # (out, in): output position <- latent position
    padded = F.pad(matrix, (0, 0, TAPS // 2, TAPS // 2))
    out = matrix.shape[0]
    return torch.cat([padded[offset : offset + out] for offset in range(TAPS)], dim=1)
