"""DatasetDM's instance P-Decoder (`seg_decorder` in showlab/DatasetDM
`model/segment/transformer_decoder.py`, used by `tools/parallel_generate_Instance_COCO_AnyClass.py`),
our implementation for export.

The same parameters and masked-attention loop as the semantic decoder (`query_decoder.py`), over a
closed set of categories (COCO's 80 for DatasetDM's checkpoint). How DatasetDM conditions it on the
text: through the caption's cross-attention maps, which are part of every feature group. Its
queries are the learnable `query_feat` (content) and `query_embed` (position) alone: the
`query_feat_mlp` / `query_embed_mlp` that mix in a class name's embedding are in its checkpoints
(so loaded strictly here) but its `forward` never calls them, and neither do we.

The ONNX model returns the raw predictions; the instance inference (top-k over query x category
scores, mask scores, thresholds, boxes) is `perceptserve.datasetdm.instances`, run by the served
models with the request's `max_instances` and `score_threshold`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .query_decoder import QueryConfig, QueryDecoder


@dataclass(frozen=True)
class InstanceConfig(QueryConfig):
    """DatasetDM's COCO config: 100 queries, 80 categories, the top 100 (query, category) pairs."""

    num_queries: int = 100
    num_classes: int = 80
    top_k: int = 100


class InstanceDecoder(QueryDecoder):
    def forward(self, low, mid, high, highest) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected groups (from the feature extractor) -> class logits (B, Q, categories + 1),
        mask logits (B, Q, h, w) at 2.5x the latent."""
        return self.predictions(self.targets_from_projected([low, mid, high, highest]))

    def reference(self, raw: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """DatasetDM's own order: raw groups resized, then projected; same outputs."""
        return self.predictions(self.targets_from_raw(raw))

    def predictions(self, targets: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = targets[-1].shape[0]
        tgt = self.query_feat.weight[None].expand(batch, -1, -1)
        query_pos = self.query_embed.weight[None].expand(batch, -1, -1)
        return self.decode(targets, tgt, query_pos, groups=1)

    @torch.no_grad()
    def sharpen_random_logits_(self, logits: torch.Tensor, spread: float = 4.0) -> None:
        """Random-init decoders only: scale the class head so that its logits on an example
        (`logits`, from `reference`) have standard deviation `spread`. Random logits are nearly
        equal, so every category's probability is about 1 / categories and no instance would
        pass DatasetDM's score threshold (0.4): demos and tests would see none."""
        scale = spread / float(logits.std().clamp_min(1e-6))
        self.class_embed.weight.mul_(scale)
        self.class_embed.bias.mul_(scale)
