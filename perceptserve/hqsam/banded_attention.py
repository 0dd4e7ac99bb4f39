"""The ViT's global attention computed a band of query rows at a time, for the exported encoder.

SAM's global blocks (4 of vit_b's 12) attend over all 64 x 64 tokens. The official forward builds
the whole score matrix, [heads, 4096, 4096] per image (805 MB at vit_b, 1.07 GB at vit_h), and the
relative-position sum and the softmax each make another: a vit_b export's parity check peaked at
10.7 GB RSS, and each image in a served batch carried them. In bands (of 32 MiB then) the same
export peaked at 6.1 GB, and the served int8 vit_b encoder (arena off) ran in 9.6 s, not 10.4.
Softmax is per query row, so banding the queries is the same arithmetic; only the export uses
it, and the parity check compares it with the official forward. The cost is export time: each
band is traced on its own (vit_b's encoder export: 40 s whole, 96 s in 16 bands).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .official import HQSamViTAttention, SamViTAttention

# The most bytes one band's scores may take per image: four rows at vit_b, three at vit_h. Bands
# of two rows ran no faster in ONNX Runtime and doubled the export time.
BAND_BYTES = 48 << 20


class _RowBanded:
    """The official `Attention.forward`, its queries taken `rows` image rows at a time;
    `get_rel_pos` is the official package's own."""

    get_rel_pos: staticmethod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        heads = self.num_heads
        rows = max(1, BAND_BYTES // (heads * width * height * width * 4))
        if rows >= height:
            return super().forward(x)
        qkv = self.qkv(x).reshape(batch, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, batch * heads, height * width, -1).unbind(0)
        keys = k.transpose(-2, -1)
        if self.use_rel_pos:  # the official decomposed terms, for every query at once (small)
            grid = q.reshape(batch * heads, height, width, -1)
            rel_h = torch.einsum("bhwc,hkc->bhwk", grid, self.get_rel_pos(height, height, self.rel_pos_h))
            rel_w = torch.einsum("bhwc,wkc->bhwk", grid, self.get_rel_pos(width, width, self.rel_pos_w))
        bands = []
        for top in range(0, height, rows):
            band = slice(top, min(top + rows, height))
            band_rows = band.stop - top
            scores = (q[:, top * width : band.stop * width] * self.scale) @ keys
            if self.use_rel_pos:
                scores = scores.view(batch * heads, band_rows, width, height, width)
                scores = scores + rel_h[:, band, :, :, None] + rel_w[:, band, :, None, :]
                scores = scores.view(batch * heads, band_rows * width, height * width)
            bands.append(scores.softmax(dim=-1) @ v)
        x = torch.cat(bands, dim=1).view(batch, heads, height, width, -1)
        return self.proj(x.permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1))


_BANDED = {
    official: type(
        f"RowBanded{official.__name__}",
        (_RowBanded, official),
        {"get_rel_pos": staticmethod(sys.modules[official.__module__].get_rel_pos)},
    )
    for official in (HQSamViTAttention, SamViTAttention)
}


@contextmanager
def row_banded_attention(encoder: nn.Module) -> Iterator[None]:
    """Within the block, `encoder`'s ViT attention computes in row bands; the official class is
    put back after, so the model stays the parity check's reference."""
    swapped = [(module, type(module)) for module in encoder.modules() if type(module) in _BANDED]
    for module, official in swapped:
        module.__class__ = _BANDED[official]
    try:
        yield
    finally:
        for module, official in swapped:
            module.__class__ = official
