"""The Mask2Former-style query decoder DatasetDM's semantic and instance P-Decoders share
(`seg_decorder` in showlab/DatasetDM `model/segment/transformer_decoder.py`, and its open-vocabulary
variant in `transformer_decoder_semantic.py`): same parameters and key names, same masked-attention
loop; they differ in how the queries are formed and how the predictions are read.

Learnable queries attend in turn to three levels of the feature pyramid (20, 40 and 80 for a 64x64
latent) with masked attention, then give a class logit vector and a mask (at 2.5x the latent) each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from .features import FeatureLayout
from .layers import (
    MLP,
    CrossAttentionLayer,
    FeaturePyramid,
    FFNLayer,
    SelfAttentionLayer,
    resize,
    scaled_size,
    sine_positions,
)

LEVELS = 3  # Mask2Former's feature levels (DatasetDM: num_feature_levels = 3)


@dataclass(frozen=True)
class QueryConfig:
    """DatasetDM's values; the checkpoint decides the number of queries and classes (see
    `with_checkpoint_shapes`)."""

    width: int = 256  # hidden_dim = mask_dim = every projection width
    num_queries: int = 20
    num_classes: int = 2
    num_layers: int = 10
    num_heads: int = 8
    dim_feedforward: int = 2048
    context_dim: int = 768  # the text encoder's width
    top_k: int = 3  # candidates read per class (semantic) or per image (instance)
    image_scale: int = 8  # image pixels per latent pixel (the VAE's factor)

    def with_checkpoint_shapes(self, state: Mapping[str, torch.Tensor]):
        changes = {}
        if "query_feat.weight" in state:
            changes["num_queries"] = state["query_feat.weight"].shape[0]
        if "class_embed.weight" in state:
            changes["num_classes"] = state["class_embed.weight"].shape[0] - 1
        return replace(self, **changes)


class QueryDecoder(FeaturePyramid):
    def __init__(self, layout: FeatureLayout, config: QueryConfig) -> None:
        width = config.width
        super().__init__(layout, width, [(2 * width, width), (2 * width, width), (2 * width, width)])
        self.config = config
        self.query_feat = nn.Embedding(config.num_queries, width)
        self.query_embed = nn.Embedding(config.num_queries, width)
        self.query_feat_mlp = nn.Linear(width + config.context_dim, width, bias=False)
        self.query_embed_mlp = nn.Linear(width + config.context_dim, width, bias=False)
        self.decoder_norm = nn.LayerNorm(width)
        self.level_embed = nn.Embedding(LEVELS, width)
        self.class_embed = nn.Linear(width, config.num_classes + 1)
        self.mask_embed = MLP(width, width, width, 3)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(width, config.num_heads) for _ in range(config.num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(width, config.num_heads) for _ in range(config.num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(width, config.dim_feedforward) for _ in range(config.num_layers)
        )

    def _image_size(self, highest: torch.Tensor) -> tuple:
        return scaled_size(highest, self.config.image_scale, 1)

    def decode(self, targets: Sequence[torch.Tensor], tgt: torch.Tensor, query_pos: torch.Tensor, groups: int):
        """Queries `tgt` (B, G * Q, width) with positions `query_pos`, in G groups that attend only
        among themselves -> class logits (B, G * Q, classes + 1), mask logits (B, G * Q, h, w) at
        2.5x the latent."""
        low, mid, high, highest = self.mix(*targets)
        mask_features = resize(highest, scaled_size(highest, 5, 2))  # DatasetDM: 160 for 64
        levels = [
            resize(low, scaled_size(highest, 5, 16)),  # 20
            resize(mid, scaled_size(highest, 5, 8)),  # 40
            resize(high, scaled_size(highest, 5, 4)),  # 80
        ]
        batch, queries, width = tgt.shape[0], tgt.shape[1] // groups, self.config.width
        sources, positions, sizes = [], [], []
        for index, level in enumerate(levels):
            sizes.append(level.shape[-2:])
            positions.append(sine_positions(level.shape[-2], level.shape[-1], width // 2, level))
            sources.append(level.flatten(2).transpose(1, 2) + self.level_embed.weight[index])

        masks, attn_mask = self._masks(tgt, mask_features, sizes[0])
        for index in range(self.config.num_layers):
            level = index % LEVELS
            attn_mask = attn_mask & ~attn_mask.all(dim=-1, keepdim=True)  # a query blocked everywhere sees all
            cross_attention = self.transformer_cross_attention_layers[index]
            tgt = cross_attention(tgt, sources[level], attn_mask, positions[level], query_pos)
            per_group = (batch * groups, queries, width)
            tgt = self.transformer_self_attention_layers[index](tgt.reshape(per_group), query_pos.reshape(per_group))
            tgt = self.transformer_ffn_layers[index](tgt.reshape(batch, groups * queries, width))
            masks, attn_mask = self._masks(tgt, mask_features, sizes[(index + 1) % LEVELS])
        return self.class_embed(self.decoder_norm(tgt)), masks

    def _masks(self, tgt, mask_features, attention_size) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask2Former's prediction head: mask logits, and where each query may not attend next."""
        embedding = self.mask_embed(self.decoder_norm(tgt))
        masks = torch.einsum("bqc,bchw->bqhw", embedding, mask_features)
        blocked = resize(masks, attention_size).sigmoid().flatten(2) < 0.5
        return masks, blocked
