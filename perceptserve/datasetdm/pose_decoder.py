"""DatasetDM's pose P-Decoder (`PoseModule_HeatMap` in showlab/DatasetDM `model/pose_module_heat.py`)
and its keypoint reading (`tools/parallel_generate_Pose_COCO_HeatMap.py`), our implementation for export.

The feature pyramid mixed as in the depth decoder (4 x width channels at the latent size), then a
1x1 convolution to 17 COCO keypoint heatmaps. DatasetDM reads one person per image: the heatmaps
resized to the image size, each keypoint at its heatmap's maximum (`get_max_preds`: x = index mod
width, y = index div width, (0, 0) where the maximum is not positive), moved a quarter pixel towards
the higher neighbour on each axis away from the border, with the maximum as its score. Both are in
the graph: the served models get (x, y, score) per keypoint at the image size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .coco_names import KEYPOINTS
from .features import FeatureLayout
from .layers import StackingConfig, StackingPyramid, resize, scaled_size


@dataclass(frozen=True)
class PoseConfig(StackingConfig):
    pass


class PoseDecoder(StackingPyramid):
    def __init__(self, layout: FeatureLayout, config: PoseConfig) -> None:
        super().__init__(layout, config)
        self.final_layer = nn.Conv2d(4 * config.width, len(KEYPOINTS), kernel_size=1)

    def forward(self, low, mid, high, highest) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected groups -> heatmaps (B, 17, h, w) at the latent size, keypoints (B, 17, 3):
        x, y in image pixels and the heatmap's maximum."""
        heatmaps = self.heatmaps(self.targets_from_projected([low, mid, high, highest]))
        return heatmaps, read_keypoints(heatmaps, scaled_size(heatmaps, self.config.image_scale, 1))

    def reference(self, raw: Sequence[torch.Tensor]) -> torch.Tensor:
        """DatasetDM's own order: raw groups resized, then projected -> heatmaps."""
        return self.heatmaps(self.targets_from_raw(raw))

    def heatmaps(self, targets: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.final_layer(self.mix(*targets)[-1])


def read_keypoints(heatmaps: torch.Tensor, image_size: tuple) -> torch.Tensor:
    """DatasetDM's reading of (B, K, h, w) heatmaps at `image_size` -> (B, K, 3) (x, y, score).

    Written with tensor ops only (no arithmetic on the image size), so that the exported graph
    keeps the size dynamic: the maximum per row then over rows (the first maximum in row-major
    order, as `np.argmax` of the flattened map), the neighbour differences and the border as maps
    read at the keypoint."""
    maps = resize(heatmaps, image_size)  # (B, K, H, W)
    row_max, columns = maps.max(dim=-1)
    score, y = row_max.max(dim=-1)
    x = columns.gather(-1, y[..., None])[..., 0]
    positive = score > 0
    x, y = torch.where(positive, x, 0), torch.where(positive, y, 0)

    def at(field: torch.Tensor) -> torch.Tensor:
        row = field.gather(2, y[..., None, None].expand(-1, -1, 1, field.shape[-1]))[..., 0, :]
        return row.gather(-1, x[..., None])[..., 0]

    across = F.pad(maps[..., :, 2:] - maps[..., :, :-2], (1, 1))  # right - left neighbour
    down = F.pad(maps[..., 2:, :] - maps[..., :-2, :], (0, 0, 1, 1))
    inside = at(F.pad(torch.ones_like(maps[..., 2:-1, 2:-1]), (2, 1, 2, 1))) > 0  # 1 < x < W - 1, same for y
    shift_x = torch.where(inside, torch.sign(at(across)) * 0.25, 0.0)
    shift_y = torch.where(inside, torch.sign(at(down)) * 0.25, 0.0)
    return torch.stack([x.to(maps.dtype) + shift_x, y.to(maps.dtype) + shift_y, score], dim=-1)
