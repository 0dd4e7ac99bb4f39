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

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .layers import resize
from .query_decoder import QueryConfig, QueryDecoder


@dataclass(frozen=True)
class SemanticConfig(QueryConfig):
    """DatasetDM's VOC config: 20 queries, 2 classes, the top 3 (query, label) pairs per class."""


class SemanticDecoder(QueryDecoder):
    def forward(self, low, mid, high, highest, class_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected groups (from the feature extractor) + class names' text embeddings (K, 77, D)
        -> class map (B, H, W) int32 at image size, class scores (B, K)."""
        logits, masks = self.predictions(self.targets_from_projected([low, mid, high, highest]), class_embeddings)
        return self.postprocess(logits, masks, self._image_size(highest))

    def reference(self, raw: Sequence[torch.Tensor], class_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """DatasetDM's own order: raw groups resized, then projected; same outputs."""
        logits, masks = self.predictions(self.targets_from_raw(raw), class_embeddings)
        return self.postprocess(logits, masks, self._image_size(raw[-1]))

    def predictions(self, targets: Sequence[torch.Tensor], class_embeddings: torch.Tensor):
        """-> class logits (B, K, Q, classes + 1), mask logits (B, K, Q, h, w) at 2.5x the latent."""
        batch, classes = targets[-1].shape[0], class_embeddings.shape[0]
        queries, width = self.config.num_queries, self.config.width
        # Queries per class: learnable query (and its position) + the class name's embedding.
        # DatasetDM feeds `query_embed` through `query_feat_mlp` and `query_feat` through
        # `query_embed_mlp`; the checkpoints were trained that way, so kept.
        names = class_embeddings.mean(1)[:, None, :].expand(-1, queries, -1)
        query_pos = self.query_feat_mlp(torch.cat([self.query_embed.weight.expand(classes, -1, -1), names], dim=-1))
        tgt = self.query_embed_mlp(torch.cat([self.query_feat.weight.expand(classes, -1, -1), names], dim=-1))
        query_pos = query_pos.reshape(1, classes * queries, width).expand(batch, -1, -1)
        tgt = tgt.reshape(1, classes * queries, width).expand(batch, -1, -1)
        logits, masks = self.decode(targets, tgt, query_pos, groups=classes)
        return logits.unflatten(1, (classes, queries)), masks.unflatten(1, (classes, queries))

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
