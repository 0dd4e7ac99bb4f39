"""The two graphs we export for a SAM family, built from the official modules.

`ImageEncoder` runs once per image and returns everything that depends on the image alone: the
image embedding, and for HQ-SAM `hq_features` too, so the prompt decoder never sees the ViT's
intermediate features. `PromptDecoder` takes the prompts of N prompt sets of one image and
selects the output masks at run time: HQ-SAM's with `multimask_output` and `hq_token_only`, as
`MaskDecoderHQ.forward` does; plain SAM's with the indices of the mask tokens to return
(`mask_slots`: [0], or [1, 2, 3] for `multimask_output`, as `MaskDecoder.forward` slices them).
"""

from __future__ import annotations

import torch
from torch import nn

from .geometry import IMAGE_SIZE
from .official import MobileSamPatchMerging, PatchMerging, Sam


class _BatchDynamic:
    """TinyViT's `PatchMerging` (the same code in HQ-SAM and MobileSAM) reads the batch size with
    `len(x)`, a Python int that freezes the exported batch dimension (why the official `vit_tiny`
    export fails). Same computation, with the batch size read from the tensor's shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            height, width = self.input_resolution
            x = x.view(x.shape[0], height, width, -1).permute(0, 3, 1, 2)
        return super().forward(x)


_BATCH_DYNAMIC = {
    official: type(f"BatchDynamic{official.__name__}", (_BatchDynamic, official), {})
    for official in (PatchMerging, MobileSamPatchMerging)
}


def _make_batch_dynamic(encoder: nn.Module) -> None:
    for module in encoder.modules():
        if type(module) in _BATCH_DYNAMIC:
            module.__class__ = _BATCH_DYNAMIC[type(module)]


# Modules of `ImageEncoder` that its int8 copy keeps in fp32 (`onnx_io.quantize_int8`): a ViT's
# first block, whose quantisation error the later blocks amplify (measured at vit_b). TinyViT
# has no such block: its first stage is convolutions, which the int8 copy keeps in fp32 anyway.
INT8_FP32_SCOPES = ("image_encoder.blocks.0",)


class ImageEncoder(nn.Module):
    """uint8 image [B, 1024, 1024, 3] (resized, zero-padded) + its resized size [B, 2] ->
    image_embeddings [B, 256, 64, 64] (+ hq_features [B, 32, 256, 256] with `hq`).

    Normalisation and padding live in the graph (they belong on the GPU, and a uint8 input is a
    quarter of the float one on the wire and in the response cache's key). Padding must be zero
    *after* normalisation, which is why the valid size is an input.
    """

    def __init__(self, sam: Sam, hq: bool) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder
        _make_batch_dynamic(self.image_encoder)
        self.hq = hq
        if hq:
            self.embedding_encoder = sam.mask_decoder.embedding_encoder
            self.compress_vit_feat = sam.mask_decoder.compress_vit_feat
        self.register_buffer("pixel_mean", sam.pixel_mean.clone(), persistent=False)
        self.register_buffer("pixel_std", sam.pixel_std.clone(), persistent=False)

    def forward(self, image: torch.Tensor, input_size: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Normalise in NHWC, then permute the floats: TensorRT takes uint8 only as a network input
        # or output (a permute of the uint8 image, even written after the cast, is exported first).
        mean, std = self.pixel_mean.reshape(1, 1, 1, -1), self.pixel_std.reshape(1, 1, 1, -1)
        x = ((image.to(mean.dtype) - mean) / std).permute(0, 3, 1, 2)
        index = torch.arange(IMAGE_SIZE, device=image.device)
        rows_valid = index[None, :] < input_size[:, 0:1]  # [B, 1024]
        cols_valid = index[None, :] < input_size[:, 1:2]
        valid = rows_valid[:, None, :, None] & cols_valid[:, None, None, :]
        x = torch.where(valid, x, torch.zeros_like(x))
        if not self.hq:
            return (self.image_encoder(x),)
        image_embeddings, interm_embeddings = self.image_encoder(x)
        early = interm_embeddings[0].permute(0, 3, 1, 2)
        hq_features = self.embedding_encoder(image_embeddings) + self.compress_vit_feat(early)
        return image_embeddings, hq_features


class PromptDecoder(nn.Module):
    """Prompt encoding + mask decoding for N prompt sets of one image, shared by both families.

    Prompt inputs, in the 1024-pixel frame of the encoder input:
      point_coords [N, P, 2] float, point_labels [N, P] float: points, box corners (labels 2, 3)
        and padding points (label -1) exactly as `PromptEncoder` would build them;
      mask_input [N, 1, 256, 256] and has_mask_input [1] (0 or 1).
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        coords = (coords + 0.5) / IMAGE_SIZE  # pixel centres, normalised (input is square)
        embedding = pe.pe_layer._pe_encoding(coords)
        labels = labels.unsqueeze(-1)
        embedding = torch.where(labels == -1, torch.zeros_like(embedding), embedding)
        embedding = embedding + (labels == -1) * pe.not_a_point_embed.weight
        for label, point_embedding in enumerate(pe.point_embeddings):
            embedding = embedding + (labels == label) * point_embedding.weight
        return embedding

    def _embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        has_mask = has_mask_input.reshape(1, 1, 1, 1)
        return has_mask * pe.mask_downscaling(mask_input) + (1 - has_mask) * no_mask

    def _decode(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, **features):
        """Every mask token's logits [N, T, 256, 256] and IoU [N, T] (`predict_masks`)."""
        return self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=self._embed_points(point_coords, point_labels),
            dense_prompt_embeddings=self._embed_mask(mask_input, has_mask_input),
            **features,
        )


class HQPromptDecoder(PromptDecoder):
    """HQ-SAM: also takes hq_features [1, 32, 256, 256], multimask_output [1] and hq_token_only
    [1] (bool). Outputs low_res_logits [N, 1, 256, 256] and iou_predictions [N, 1]."""

    def forward(
        self,
        image_embeddings: torch.Tensor,
        hq_features: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        multimask_output: torch.Tensor,
        hq_token_only: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks, iou = self._decode(
            image_embeddings, point_coords, point_labels, mask_input, has_mask_input, hq_features=hq_features
        )
        # Both of MaskDecoderHQ.forward's selections, chosen by the runtime flags.
        best_iou, best = torch.max(iou[:, 1:4], dim=1)
        multi_mask = torch.gather(masks[:, 1:4], 1, best.reshape(-1, 1, 1, 1).expand(-1, 1, *masks.shape[2:]))
        multimask = multimask_output.reshape(1, 1, 1, 1)
        sam_mask = torch.where(multimask, multi_mask, masks[:, 0:1])
        iou_out = torch.where(multimask.reshape(1, 1), best_iou.unsqueeze(1), iou[:, 0:1])
        hq_mask = masks[:, 4:5]
        low_res = torch.where(hq_token_only.reshape(1, 1, 1, 1), hq_mask, sam_mask + hq_mask)
        return low_res, iou_out


class SamPromptDecoder(PromptDecoder):
    """Plain SAM / MobileSAM: also takes mask_slots [C] (int64, the mask tokens to return).
    Outputs low_res_logits [N, C, 256, 256] and iou_predictions [N, C], as `MaskDecoder.forward`
    returns them: C is 3 with `multimask_output`, else 1."""

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        mask_slots: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks, iou = self._decode(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        return masks.index_select(1, mask_slots), iou.index_select(1, mask_slots)


def prompt_decoder(sam: Sam, hq: bool) -> PromptDecoder:
    return HQPromptDecoder(sam) if hq else SamPromptDecoder(sam)
