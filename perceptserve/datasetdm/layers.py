"""Building blocks of DatasetDM's P-Decoders, written for export, with DatasetDM's parameter names.

Attribute names follow `model/segment/transformer_decoder_semantic.py` and `model/depth_module.py`
in showlab/DatasetDM, so their checkpoints load strictly; the computations follow those modules
in eval mode. Differences that are only about export: attention is written out batch-first with
an explicit mask, spectral norm can be folded into the weights, positions come from `arange`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .features import GROUPS, FeatureLayout

SN_EPS = 1e-4  # DatasetDM's SegBlock convs: SNConv2d(..., eps=1e-04)
BN_EPS = 1e-4  # its F.batch_norm(..., 0.1, 1e-4)


def resize(x: torch.Tensor, size: tuple) -> torch.Tensor:
    """DatasetDM's only resize: bilinear, align_corners=False."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SNConv2d(nn.Conv2d):
    """DatasetDM's `SNConv2d` in eval mode: the weight divided by its largest singular value,
    estimated by one power iteration from the stored vector `u0` (not updated in eval).
    `fold_()` divides the weight once, so the exported graph is a plain convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)
        self.register_buffer("u0", torch.randn(1, out_channels))
        self.register_buffer("sv0", torch.ones(1))  # DatasetDM logs sigma here during training
        self.folded = False

    def sigma(self) -> torch.Tensor:
        matrix = self.weight.reshape(self.weight.shape[0], -1)
        v = F.normalize(self.u0 @ matrix, eps=SN_EPS)
        u = F.normalize(v @ matrix.t(), eps=SN_EPS)
        return (v @ matrix.t() @ u.t()).squeeze()

    @torch.no_grad()
    def fold_(self) -> None:
        if not self.folded:
            self.weight.div_(self.sigma())
            self.folded = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.folded else self.weight / self.sigma()
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)


@torch.no_grad()
def calibrate_batch_norms_(module: nn.Module, run: Callable[[], object]) -> None:
    """Set every `SegBlock`'s frozen statistics to the batch statistics of one forward (`run`),
    as training would have. Only for random-init decoders: with mean 0 / variance 1 their masks
    have one sign over the whole image, which makes outputs (and parity checks) trivial."""

    def calibrate(block: SegBlock, args: tuple) -> None:
        x = args[0]
        block.stored_mean1.copy_(x.mean((0, 2, 3)))
        block.stored_var1.copy_(x.var((0, 2, 3)))
        h = block.conv1(F.relu(F.batch_norm(x, block.stored_mean1, block.stored_var1, eps=BN_EPS)))
        block.stored_mean2.copy_(h.mean((0, 2, 3)))
        block.stored_var2.copy_(h.var((0, 2, 3)))

    handles = [m.register_forward_pre_hook(calibrate) for m in module.modules() if isinstance(m, SegBlock)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()


def fold_spectral_norm(module: nn.Module) -> nn.Module:
    for child in module.modules():
        if isinstance(child, SNConv2d):
            child.fold_()
    return module


class SegBlock(nn.Module):
    """DatasetDM's residual mixing block with frozen batch-norm statistics.

    Their `ReLU(inplace=True)` rewrites the normalised input in place, so the shortcut sees
    relu(bn(x)), not x; reproduced here on purpose."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = SNConv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = SNConv2d(out_channels, out_channels, 3, padding=1)
        self.learnable_sc = in_channels != out_channels
        if self.learnable_sc:
            self.conv_sc = SNConv2d(in_channels, out_channels, 1, padding=0)
        self.register_buffer("stored_mean1", torch.zeros(in_channels))
        self.register_buffer("stored_var1", torch.ones(in_channels))
        self.register_buffer("stored_mean2", torch.zeros(out_channels))
        self.register_buffer("stored_var2", torch.ones(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.batch_norm(x, self.stored_mean1, self.stored_var1, eps=BN_EPS))
        h = self.conv1(x)
        h = self.conv2(F.relu(F.batch_norm(h, self.stored_mean2, self.stored_var2, eps=BN_EPS)))
        return h + (self.conv_sc(x) if self.learnable_sc else x)


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [output_dim], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x) if index == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MultiheadAttention(nn.Module):
    """`nn.MultiheadAttention`'s parameters (`in_proj_weight`, `in_proj_bias`, `out_proj`) and
    eval-mode result, batch-first, with a boolean mask (True = may not attend) shared by heads."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _heads(self, x: torch.Tensor, index: int) -> torch.Tensor:
        width = self.in_proj_bias.shape[0] // 3
        rows = slice(index * width, (index + 1) * width)
        x = F.linear(x, self.in_proj_weight[rows], self.in_proj_bias[rows])
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (N, heads, L, d)

    def forward(self, query, key, value, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._heads(query, 0), self._heads(key, 1), self._heads(value, 2)
        logits = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-1, -2)
        if mask is not None:
            logits = logits.masked_fill(mask[:, None], float("-inf"))
        out = (logits.softmax(-1) @ v).transpose(1, 2).flatten(2)
        return self.out_proj(out)


class SelfAttentionLayer(nn.Module):
    """Mask2Former's post-norm self-attention layer (DatasetDM: normalize_before=False)."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        q = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, q, tgt))


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.multihead_attn = MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, mask, pos, query_pos) -> torch.Tensor:
        return self.norm(tgt + self.multihead_attn(tgt + query_pos, memory + pos, memory, mask))


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


def sine_positions(height, width, num_pos_feats: int, like: torch.Tensor) -> torch.Tensor:
    """Mask2Former's `PositionEmbeddingSine(normalize=True)` without a padding mask, as
    (1, height * width, 2 * num_pos_feats); the cumulative sums of ones are `arange`s here."""
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, height + 1, dtype=torch.float32, device=like.device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=like.device)
    y = y / (y[-1] + eps) * scale
    x = x / (x[-1] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=like.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="trunc") / num_pos_feats)

    def encode(values: torch.Tensor) -> torch.Tensor:
        angles = values[:, None] / dim_t
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(-1, x.shape[0], -1)
    pos_x = encode(x)[None, :, :].expand(y.shape[0], -1, -1)
    return torch.cat((pos_y, pos_x), dim=2).reshape(1, -1, 2 * num_pos_feats).to(like.dtype)


def level_size(reference: torch.Tensor, level: int) -> tuple:
    """(height, width) of a UNet level, from a tensor at level 0 (the latent size)."""
    height, width = reference.shape[-2:]
    return height // (2**level), width // (2**level)


class FeaturePyramid(nn.Module):
    """What DatasetDM's semantic and depth decoders share (`_prepare_features`): the four 1x1
    projections (`*_feature_conv`, moved into the feature extractor for serving) and the three
    `SegBlock`s that mix the groups coarse to fine, every group resized to the next finer level
    (DatasetDM's 8->16, 16->32, 32->64 at 512x512) and `highest` kept at the latent size."""

    def __init__(self, layout: FeatureLayout, width: int, mix_widths: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self.layout = layout
        for group in GROUPS:
            conv = nn.Sequential(nn.Conv2d(layout.channels(group), width, kernel_size=1, bias=False))
            setattr(self, f"{group}_feature_conv", conv)
        for group, (in_channels, out_channels) in zip(GROUPS[1:], mix_widths, strict=True):
            setattr(self, f"{group}_feature_mix_conv", SegBlock(in_channels, out_channels))

    def projection_weights(self) -> list[torch.Tensor]:
        return [getattr(self, f"{group}_feature_conv")[0].weight for group in GROUPS]

    def _target_size(self, highest: torch.Tensor, group: str) -> tuple:
        return level_size(highest, max(self.layout.level(group) - 1, 0))

    def targets_from_raw(self, raw: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """DatasetDM's path: each raw group resized, then projected by its 1x1 convolution."""
        highest = raw[-1]
        out = []
        for group, tensor in zip(GROUPS, raw, strict=True):
            if group != "highest":
                tensor = resize(tensor, self._target_size(highest, group))
            out.append(getattr(self, f"{group}_feature_conv")(tensor))
        return out

    def targets_from_projected(self, projected: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The served path: groups projected by the feature extractor, resized here."""
        highest = projected[-1]
        return [
            t if g == "highest" else resize(t, self._target_size(highest, g))
            for g, t in zip(GROUPS, projected, strict=True)
        ]

    def mix(self, low, mid, high, highest) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (low at level 1, mid at level 0, high, highest), the tensors both decoders read on."""
        low = resize(low, level_size(highest, 1))
        mid = resize(self.mid_feature_mix_conv(torch.cat([low, mid], dim=1)), level_size(highest, 0))
        high = self.high_feature_mix_conv(torch.cat([mid, high], dim=1))
        highest = self.highest_feature_mix_conv(torch.cat([high, highest], dim=1))
        return low, mid, high, highest


@dataclass(frozen=True)
class StackingConfig:
    width: int = 256  # every projection's width
    image_scale: int = 8  # image pixels per latent pixel


class StackingPyramid(FeaturePyramid):
    """The pyramid of DatasetDM's depth and pose decoders: each level keeps every channel of the
    coarser ones (2, 3, then 4 x width at the latent size), where the query decoders mix back to
    `width`."""

    def __init__(self, layout: FeatureLayout, config: StackingConfig) -> None:
        super().__init__(layout, config.width, [(k * config.width, k * config.width) for k in (2, 3, 4)])
        self.config = config


def scaled_size(reference: torch.Tensor, numerator: int, denominator: int) -> tuple:
    """DatasetDM's fixed sizes (20, 40, 80, 160 for a 64x64 latent) as fractions of the latent."""
    height, width = reference.shape[-2:]
    return height * numerator // denominator, width * numerator // denominator
