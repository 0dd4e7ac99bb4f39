"""DatasetDM's open-vocabulary semantic P-Decoder (`seg_decorder_open_word` in showlab/DatasetDM
`model/segment/transformer_decoder_semantic.py`), our implementation for export.

A Mask2Former-style decoder: learnable queries, each concatenated with the class name's text
embedding (CLIP's last hidden state of the class name, averaged over its 77 tokens), attend in
turn to three levels of the feature pyramid with masked attention (10 layers), then give a class
logit vector and a mask per query. DatasetDM decodes one class name per call; here the K class
names are decoded together (the queries of each class attend only among themselves, as in K
separate calls) for B images at once.

Post-processing is DatasetDM's generation scripts': per class, the best of the top-3
(query, label) pairs by class probability x mean mask probability; its mask, at image size and
thresholded at logit 0, votes for the class; a pixel takes the first class whose mask covers it,
else background (0). Outputs: that class map (0 = background, k = the k-th class name) and each
class's best score.
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
class SemanticConfig:
    """DatasetDM's values (VOC config: 20 queries, 2 classes); the checkpoint decides the
    number of queries and classes (see `with_checkpoint_shapes`)."""

    width: int = 256  # hidden_dim = mask_dim = every projection width
    num_queries: int = 20
    num_classes: int = 2
    num_layers: int = 10
    num_heads: int = 8
    dim_feedforward: int = 2048
    context_dim: int = 768  # the text encoder's width
    top_k: int = 3  # DatasetDM's test_topk_per_image in its generation scripts
    image_scale: int = 8  # image pixels per latent pixel (the VAE's factor)

    def with_checkpoint_shapes(self, state: Mapping[str, torch.Tensor]) -> SemanticConfig:
        changes = {}
        if "query_feat.weight" in state:
            changes["num_queries"] = state["query_feat.weight"].shape[0]
        if "class_embed.weight" in state:
            changes["num_classes"] = state["class_embed.weight"].shape[0] - 1
        return replace(self, **changes)


class SemanticDecoder(FeaturePyramid):
    def __init__(self, layout: FeatureLayout, config: SemanticConfig) -> None:
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

    def forward(self, low, mid, high, highest, class_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected groups (from the feature extractor) + class names' text embeddings (K, 77, D)
        -> class map (B, H, W) int32 at image size, class scores (B, K)."""
        logits, masks = self.predictions(self.targets_from_projected([low, mid, high, highest]), class_embeddings)
        return self.postprocess(logits, masks, self._image_size(highest))

    def reference(self, raw: Sequence[torch.Tensor], class_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """DatasetDM's own order: raw groups resized, then projected; same outputs."""
        logits, masks = self.predictions(self.targets_from_raw(raw), class_embeddings)
        return self.postprocess(logits, masks, self._image_size(raw[-1]))

    def _image_size(self, highest: torch.Tensor) -> tuple:
        return scaled_size(highest, self.config.image_scale, 1)

    def predictions(self, targets: Sequence[torch.Tensor], class_embeddings: torch.Tensor):
        """-> class logits (B, K, Q, classes + 1), mask logits (B, K, Q, h, w) at 2.5x the latent."""
        low, mid, high, highest = self.mix(*targets)
        mask_features = resize(highest, scaled_size(highest, 5, 2))  # DatasetDM: 160 for 64
        levels = [
            resize(low, scaled_size(highest, 5, 16)),  # 20
            resize(mid, scaled_size(highest, 5, 8)),  # 40
            resize(high, scaled_size(highest, 5, 4)),  # 80
        ]
        batch, classes = mask_features.shape[0], class_embeddings.shape[0]
        queries, width = self.config.num_queries, self.config.width
        sources, positions, sizes = [], [], []
        for index, level in enumerate(levels):
            sizes.append(level.shape[-2:])
            positions.append(sine_positions(level.shape[-2], level.shape[-1], width // 2, level))
            sources.append(level.flatten(2).transpose(1, 2) + self.level_embed.weight[index])

        # Queries per class: learnable query (and its position) + the class name's embedding.
        # DatasetDM feeds `query_embed` through `query_feat_mlp` and `query_feat` through
        # `query_embed_mlp`; the checkpoints were trained that way, so kept.
        names = class_embeddings.mean(1)[:, None, :].expand(-1, queries, -1)
        query_pos = self.query_feat_mlp(torch.cat([self.query_embed.weight.expand(classes, -1, -1), names], dim=-1))
        tgt = self.query_embed_mlp(torch.cat([self.query_feat.weight.expand(classes, -1, -1), names], dim=-1))
        query_pos = query_pos.reshape(1, classes * queries, width).expand(batch, -1, -1)
        tgt = tgt.reshape(1, classes * queries, width).expand(batch, -1, -1)

        masks, attn_mask = self._masks(tgt, mask_features, sizes[0])
        for index in range(self.config.num_layers):
            level = index % LEVELS
            attn_mask = attn_mask & ~attn_mask.all(dim=-1, keepdim=True)  # a query blocked everywhere sees all
            cross_attention = self.transformer_cross_attention_layers[index]
            tgt = cross_attention(tgt, sources[level], attn_mask, positions[level], query_pos)
            per_class = (batch * classes, queries, width)
            tgt = self.transformer_self_attention_layers[index](tgt.reshape(per_class), query_pos.reshape(per_class))
            tgt = self.transformer_ffn_layers[index](tgt.reshape(batch, classes * queries, width))
            masks, attn_mask = self._masks(tgt, mask_features, sizes[(index + 1) % LEVELS])
        logits = self.class_embed(self.decoder_norm(tgt))
        return logits.unflatten(1, (classes, queries)), masks.unflatten(1, (classes, queries))

    def _masks(self, tgt, mask_features, attention_size) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask2Former's prediction head: mask logits, and where each query may not attend next."""
        embedding = self.mask_embed(self.decoder_norm(tgt))
        masks = torch.einsum("bqc,bchw->bqhw", embedding, mask_features)
        blocked = resize(masks, attention_size).sigmoid().flatten(2) < 0.5
        return masks, blocked

    def postprocess(self, logits, masks, image_size) -> tuple[torch.Tensor, torch.Tensor]:
        batch, classes, queries, height, width = masks.shape
        labels = logits.shape[-1] - 1
        scores = logits.softmax(-1)[..., :-1].flatten(2)  # (B, K, Q * labels)
        top_scores, top_index = scores.topk(self.config.top_k, dim=-1)
        query = torch.div(top_index, labels, rounding_mode="floor")
        chosen = torch.gather(masks, 2, query[..., None, None].expand(-1, -1, -1, height, width))
        chosen = resize(chosen.flatten(0, 1), image_size).unflatten(0, (batch, classes))
        binary = (chosen > 0).to(chosen.dtype)
        mask_scores = (chosen.sigmoid() * binary).flatten(3).sum(-1) / (binary.flatten(3).sum(-1) + 1e-6)
        class_scores, best = (top_scores * mask_scores).max(dim=-1)
        best_mask = torch.gather(binary, 2, best[:, :, None, None, None].expand(-1, -1, 1, *binary.shape[-2:]))
        background = torch.full_like(best_mask[:, :1, 0], 0.5)
        class_map = torch.cat([background, best_mask[:, :, 0]], dim=1).argmax(dim=1)
        return class_map.to(torch.int32), class_scores
