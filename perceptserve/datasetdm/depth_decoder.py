"""DatasetDM's depth P-Decoder (`Depthmodule` in showlab/DatasetDM `model/depth_module.py`),
our implementation for export.

The feature pyramid mixed into a 4 x 256-channel map at the latent size, resized to 2.5x the
latent (DatasetDM's 160) and then to the image size, then two 3x3 convolutions and a sigmoid
scaled to `max_depth` (10 m in DatasetDM's NYU config, 80 m in KITTI's; not stored in the
checkpoint, hence a config value).
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
        return self._depth(self.targets_from_projected([low, mid, high, highest]))

    def reference(self, raw: Sequence[torch.Tensor]) -> torch.Tensor:
        """DatasetDM's own order: raw groups resized, then projected; same output."""
        return self._depth(self.targets_from_raw(raw))

    def _depth(self, targets: Sequence[torch.Tensor]) -> torch.Tensor:
        highest = self.mix(*targets)[-1]
        feature = resize(highest, scaled_size(highest, 5, 2))  # DatasetDM: 160 for 64
        feature = resize(feature, scaled_size(highest, self.config.image_scale, 1))
        return torch.sigmoid(self.last_layer_depth(feature)) * self.config.max_depth
