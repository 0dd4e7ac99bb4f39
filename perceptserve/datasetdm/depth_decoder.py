"""DatasetDM's depth P-Decoder (`Depthmodule` in showlab/DatasetDM `model/depth_module.py`),
our implementation for export.

The feature pyramid mixed into a 4 x 256-channel map at the latent size, resized to 2.5x the
latent (DatasetDM's 160) and then to the image size, then two 3x3 convolutions and a sigmoid
scaled to `max_depth` (10 m in DatasetDM's NYU config, 80 m in KITTI's; not stored in the
checkpoint, hence a config value).

The first of those convolutions maps 4 x 256 channels to 4 x 256 at the full image size: at
512x512, 4.9 TFLOP and 1 GiB per activation. Run over the whole image at once, ONNX Runtime
held 4.5 GB for it (the served depth decoder's peak, more than the UNet's). The exported graph
runs both convolutions over `STRIPS` horizontal strips, each with the two rows above and below
that the two 3x3 kernels reach (zero padding only at the image's own edges): the same sums per
output pixel, one strip's activations alive at a time. `reference` keeps DatasetDM's whole-image
call, so the parity check compares the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .features import FeatureLayout
from .layers import StackingConfig, StackingPyramid, resize, scaled_size


@dataclass(frozen=True)
class DepthConfig(StackingConfig):
    max_depth: float = 10.0


STRIPS = 8  # image heights are multiples of 64: every strip has at least 8 rows
HALO = 2  # rows each side that two 3x3 convolutions read


class DepthDecoder(StackingPyramid):
    def __init__(self, layout: FeatureLayout, config: DepthConfig) -> None:
        super().__init__(layout, config)
        width = config.width
        self.last_layer_depth = nn.Sequential(
            nn.Conv2d(4 * width, 4 * width, kernel_size=3, stride=1, padding=1),
            nn.ReLU(),
            nn.Conv2d(4 * width, 1, kernel_size=3, stride=1, padding=1),
        )

    def forward(self, low, mid, high, highest) -> torch.Tensor:
        """Projected groups (from the feature extractor) -> depth (B, 1, H, W) at image size."""
        feature = self._full_size(self.targets_from_projected([low, mid, high, highest]))
        return self._scaled(torch.cat(self._strips(feature), dim=2))

    def reference(self, raw: Sequence[torch.Tensor]) -> torch.Tensor:
        """DatasetDM's own order: raw groups resized, then projected, the convolutions over the
        whole image; the same output."""
        return self._scaled(self.last_layer_depth(self._full_size(self.targets_from_raw(raw))))

    def _full_size(self, targets: Sequence[torch.Tensor]) -> torch.Tensor:
        highest = self.mix(*targets)[-1]
        feature = resize(highest, scaled_size(highest, 5, 2))  # DatasetDM: 160 for 64
        return resize(feature, scaled_size(highest, self.config.image_scale, 1))

    def _strips(self, feature: torch.Tensor) -> list[torch.Tensor]:
        """`last_layer_depth` over STRIPS row bands of `feature`, each read with HALO rows of
        context (none beyond the image, where the whole-image call pads with zeros too)."""
        height = feature.shape[2]
        bounds = [index * height // STRIPS for index in range(STRIPS + 1)]
        strips = []
        for index, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            first, last = index == 0, index == STRIPS - 1
            top = start if first else start - HALO
            band = self.last_layer_depth(feature[:, :, top : (end if last else end + HALO)])
            strips.append(band[:, :, start - top : start - top + (end - start)])
        return strips

    def _scaled(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) * self.config.max_depth
