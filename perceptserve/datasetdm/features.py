"""DatasetDM's diffusion features, captured in one export-friendly UNet pass.

What DatasetDM feeds its P-Decoders (`model/unet.py`, `ptp_utils.py` in showlab/DatasetDM): one
UNet pass over the classifier-free-guidance pair (the empty prompt and the caption), and from it
- the outputs of `conv_in`, of every down-block layer and downsampler, of the mid block, and of
  every up-block layer and upsampler, each with the unconditional and the conditional halves
  stacked on channels (their `reshape(B / 2, 2C, H, W)`);
- the cross-attention probabilities of every cross-attention layer, conditional half only, one
  map per head and text token (`b (layer head token) h w`);
grouped by spatial size into `low` (latent / 8), `mid` (/ 4), `high` (/ 2) and `highest` (the
latent size), features first in execution order, then the maps of the up, mid and down blocks.

DatasetDM fills a global dict from inside a patched UNet forward and monkey-patches every
attention's `forward`. Here the pass walks the diffusers UNet's own blocks (the up blocks layer
by layer, since diffusers returns only their last output) and the attention maps come out of a
diffusers attention processor through `cross_attention_kwargs`, a list local to the call.

The P-Decoders' first layers are 1x1 convolutions without bias of each group, applied after a
bilinear resize. Both are linear and act on different axes, so they commute: the convolution is
applied here, to each captured tensor at its own resolution, and the decoder resizes the result.
The hand-off shrinks from about 100 MiB (fp16, SD 1.4, 512x512) to a few MiB per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from perceptserve.errors import UserError
from perceptserve.model_repository.datasetdm import GROUPS  # DatasetDM's names, coarse to fine

PLACES = ("up", "mid", "down")  # DatasetDM's order of the attention maps within a group
TASKS = ("semantic", "depth", "instance", "pose")  # the P-Decoders, in the order their outputs are listed


class UnsupportedUNet(UserError, ValueError):
    """A UNet that is not Stable Diffusion 1.x's (DatasetDM's decoders are built for that one)."""


@dataclass(frozen=True)
class Part:
    """One captured UNet output: its module path, level (0 = latent size, k = latent / 2**k)
    and channels per guidance half (DatasetDM stacks both halves: 2 x channels)."""

    name: str
    level: int
    channels: int


@dataclass(frozen=True)
class AttentionLayer:
    name: str  # the cross-attention module's path (`...transformer_blocks.N.attn2`)
    place: str  # "down", "mid" or "up", as DatasetDM's attention store files it
    level: int
    heads: int


def _block_parts(prefix: str, cross: bool, level: int, width: int, count: int) -> list[Part]:
    """A down or up block's captured outputs: its attentions where it has cross-attention, else its resnets."""
    return [Part(f"{prefix}.{'attentions' if cross else 'resnets'}.{layer}", level, width) for layer in range(count)]


def _cross_attention(
    prefix: str, place: str, level: int, count: int, heads: int, transformers: int
) -> list[AttentionLayer]:
    """The cross-attention layers of a block's first `count` attentions, each with `transformers` blocks."""
    return [
        AttentionLayer(f"{prefix}.attentions.{layer}.transformer_blocks.{block}.attn2", place, level, heads)
        for layer in range(count)
        for block in range(transformers)
    ]


@dataclass(frozen=True)
class FeatureLayout:
    """Which tensors a UNet config yields and how DatasetDM groups them; computed from the
    config alone, so sizes for SD 1.4 can be reported without its weights."""

    parts: tuple[Part, ...]
    attention: tuple[AttentionLayer, ...]
    levels: int
    tokens: int

    @classmethod
    def from_unet_config(cls, config: Mapping, tokens: int = 77) -> FeatureLayout:
        widths = list(config["block_out_channels"])
        levels = len(widths)
        layers = config["layers_per_block"]
        transformers = config.get("transformer_layers_per_block", 1)
        if not isinstance(layers, int) or not isinstance(transformers, int):
            raise UnsupportedUNet("per-block layers_per_block / transformer_layers_per_block: not an SD 1.x UNet")
        heads = config.get("num_attention_heads") or config["attention_head_dim"]
        heads = [heads] * levels if isinstance(heads, int) else list(heads)
        parts = [Part("conv_in", 0, widths[0])]
        attention: list[AttentionLayer] = []
        for index, kind in enumerate(config["down_block_types"]):
            prefix, cross = f"down_blocks.{index}", kind.startswith("CrossAttn")
            parts += _block_parts(prefix, cross, index, widths[index], layers)
            attention += _cross_attention(prefix, "down", index, layers if cross else 0, heads[index], transformers)
            if index < levels - 1:
                parts.append(Part(f"{prefix}.downsamplers.0", index + 1, widths[index]))
        parts.append(Part("mid_block", levels - 1, widths[-1]))
        if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn":
            attention += _cross_attention("mid_block", "mid", levels - 1, 1, heads[-1], transformers)
        for index, kind in enumerate(config["up_block_types"]):
            prefix, cross, level = f"up_blocks.{index}", kind.startswith("CrossAttn"), levels - 1 - index
            parts += _block_parts(prefix, cross, level, widths[level], layers + 1)
            attention += _cross_attention(prefix, "up", level, layers + 1 if cross else 0, heads[level], transformers)
            if index < levels - 1:
                parts.append(Part(f"{prefix}.upsamplers.0", level - 1, widths[level]))
        return cls(tuple(parts), tuple(attention), levels, tokens)

    def level(self, group: str) -> int:
        return self.levels - 1 - GROUPS.index(group)

    def parts_of(self, group: str) -> list[int]:
        """Indices into `parts`, in execution order (DatasetDM's list order)."""
        return [i for i, part in enumerate(self.parts) if part.level == self.level(group)]

    def attention_of(self, group: str) -> list[int]:
        """Indices into `attention`: up, then mid, then down; execution order within each."""
        level = self.level(group)
        return [i for place in PLACES for i, a in enumerate(self.attention) if a.level == level and a.place == place]

    def feature_channels(self, group: str) -> int:
        return sum(2 * self.parts[i].channels for i in self.parts_of(group))

    def map_channels(self, group: str) -> int:
        return sum(self.attention[i].heads * self.tokens for i in self.attention_of(group))

    def channels(self, group: str) -> int:
        """The input width of the P-Decoder's 1x1 projection of `group` (DatasetDM's
        `1280*14 + 8*77` and so on for SD 1.x)."""
        return self.feature_channels(group) + self.map_channels(group)

    def raw_elements(self, latent_height: int, latent_width: int) -> int:
        """Elements per image that DatasetDM hands to its decoder (all groups, native sizes)."""
        return sum(
            self.channels(g) * (latent_height >> self.level(g)) * (latent_width >> self.level(g)) for g in GROUPS
        )

    def projected_elements(self, latent_height: int, latent_width: int, widths: Mapping[str, int]) -> int:
        """Elements per image after the 1x1 projections, `widths` being each group's output width."""
        return sum(widths[g] * (latent_height >> self.level(g)) * (latent_width >> self.level(g)) for g in GROUPS)


class AttentionMapProcessor:
    """A diffusers attention processor that, when the call passes `attention_maps` (a list) in
    `cross_attention_kwargs`, computes cross-attention explicitly and appends its probabilities
    (batch, heads, queries, tokens) to that list. Every other call, and self-attention, goes to
    the default scaled-dot-product processor, so a plain UNet call is unchanged."""

    def __init__(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.default = AttnProcessor2_0()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        attention_maps: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if attention_maps is None or encoder_hidden_states is None:
            return self.default(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        plain = attn.spatial_norm is None and attn.group_norm is None and attention_mask is None
        if not plain or hidden_states.ndim != 3:
            raise NotImplementedError("attention-map capture supports SD 1.x cross-attention only")
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        def heads(x: torch.Tensor) -> torch.Tensor:  # (N, L, heads * d) -> (N, heads, L, d)
            return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)

        query = heads(attn.to_q(hidden_states))
        key, value = heads(attn.to_k(encoder_hidden_states)), heads(attn.to_v(encoder_hidden_states))
        probs = ((query @ key.transpose(-1, -2)) * attn.scale).float().softmax(dim=-1).to(query.dtype)
        attention_maps.append(probs)
        out = attn.to_out[1](attn.to_out[0]((probs @ value).transpose(1, 2).flatten(2)))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def install_processors(unet) -> None:
    """Give every attention of `unet` the map-capturing processor (a plain call is unchanged)."""
    unet.set_attn_processor(AttentionMapProcessor())


@dataclass
class Captured:
    """One pass's tensors: both noise predictions, every captured output over the doubled
    batch [uncond; text], every cross-attention's probabilities for the text half."""

    noise_uncond: torch.Tensor
    noise_text: torch.Tensor
    outputs: list[torch.Tensor]  # per layout.parts: (2B, C, H, W)
    probabilities: list[torch.Tensor]  # per layout.attention: (B, heads, H * W, tokens)

    def feature(self, index: int) -> torch.Tensor:
        """DatasetDM's per-image feature: the uncond and text halves on channels, (B, 2C, H, W)."""
        output = self.outputs[index]
        batch = output.shape[0] // 2
        return torch.cat([output[:batch], output[batch:]], dim=1)

    def map(self, index: int, size: torch.Size) -> torch.Tensor:
        """DatasetDM's attention maps of one layer, `b (head token) h w`."""
        probs = self.probabilities[index]
        return probs.transpose(-1, -2).reshape(probs.shape[0], -1, *size)

    def group(self, layout: FeatureLayout, group: str) -> torch.Tensor:
        """DatasetDM's `features_dict[group]` at the group's own size (before its resize)."""
        features = [self.feature(i) for i in layout.parts_of(group)]
        maps = [self.map(i, features[0].shape[-2:]) for i in layout.attention_of(group)]
        return torch.cat(features + maps, dim=1)


def _check_supported(unet) -> None:
    config = unet.config
    unsupported = {
        "class_embed_type": config.class_embed_type,
        "addition_embed_type": config.addition_embed_type,
        "encoder_hid_dim_type": config.encoder_hid_dim_type,
        "time_embedding_act_fn": config.time_embedding_act_fn,
    }
    found = {k: v for k, v in unsupported.items() if v is not None}
    if found or config.center_input_sample:
        raise UnsupportedUNet(f"not a Stable Diffusion 1.x UNet (unsupported config: {found or 'center_input_sample'})")


class FeatureExtractor(nn.Module):
    """(latents, timestep, caption and empty-prompt embeddings) -> both noise predictions and,
    per exported task, the four projected feature groups at their native sizes.

    Installs `AttentionMapProcessor` on every attention of `unet` (plain calls are unchanged).
    `projections[task]` holds the task decoder's four 1x1 weights (`low`..`highest`), each
    (width, layout.channels(group), 1, 1). They are regrouped per captured tensor: for a block
    output, one convolution over the doubled batch with every task's uncond and text weights
    stacked; for an attention layer, one contraction of its probabilities over heads and tokens.
    Few, simple ops, which keeps the exported graph small.
    """

    def __init__(self, unet, layout: FeatureLayout, projections: Mapping[str, Sequence[torch.Tensor]]) -> None:
        super().__init__()
        _check_supported(unet)
        install_processors(unet)
        self.unet = unet
        self.layout = layout
        self.tasks = [task for task in TASKS if task in projections]
        self.widths = [projections[task][0].shape[0] for task in self.tasks]
        split: dict[int, list] = {}  # part -> [(uncond, text) weights per task]
        maps: dict[int, list] = {}  # attention layer -> weights per task
        for task in self.tasks:
            for group, weight in zip(GROUPS, projections[task], strict=True):
                if weight.shape[1] != layout.channels(group):
                    raise ValueError(
                        f"{task} decoder's {group} projection takes {weight.shape[1]} channels, "
                        f"the UNet gives {layout.channels(group)}"
                    )
                weight, offset = weight.detach()[:, :, 0, 0], 0
                for i in layout.parts_of(group):  # DatasetDM's channels: uncond half, then text half
                    channels = layout.parts[i].channels
                    uncond, text = weight[:, offset : offset + 2 * channels].split(channels, dim=1)
                    split.setdefault(i, []).append((uncond, text))
                    offset += 2 * channels
                for i in layout.attention_of(group):  # (head, token) channels
                    heads = layout.attention[i].heads
                    part = weight[:, offset : offset + heads * layout.tokens]
                    maps.setdefault(i, []).append(part.unflatten(1, (heads, layout.tokens)))
                    offset += heads * layout.tokens
        # Rows: every task's uncond weights, then every task's text weights.
        stacked = [torch.cat([u for u, _ in split[i]] + [t for _, t in split[i]]) for i in range(len(layout.parts))]
        self.part_weights = nn.ParameterList(nn.Parameter(w[:, :, None, None], requires_grad=False) for w in stacked)
        self.map_weights = nn.ParameterList(
            nn.Parameter(torch.cat(maps[i]), requires_grad=False) for i in range(len(layout.attention))
        )

    def capture(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_embeddings: torch.Tensor,
        uncond_embeddings: torch.Tensor,
    ) -> Captured:
        """One UNet pass over [empty prompt; caption] and what DatasetDM takes from it."""
        unet, batch = self.unet, latents.shape[0]
        sample = torch.cat([latents, latents])
        context = torch.cat([uncond_embeddings, text_embeddings])
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=torch.cat([timestep, timestep])), None)
        maps: list[torch.Tensor] = []
        kwargs = {"attention_maps": maps}

        hidden = unet.conv_in(sample)
        outputs, skips = [hidden], [hidden]
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, residuals = block(hidden, emb, encoder_hidden_states=context, cross_attention_kwargs=kwargs)
            else:
                hidden, residuals = block(hidden, emb)
            outputs += residuals
            skips += residuals
        hidden = unet.mid_block(hidden, emb, encoder_hidden_states=context, cross_attention_kwargs=kwargs)
        outputs.append(hidden)
        for block in unet.up_blocks:
            count = len(block.resnets)
            residuals, skips = skips[-count:], skips[:-count]
            hidden = _up_block(block, hidden, residuals, emb, context, kwargs, outputs)
        noise = unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))

        if len(outputs) != len(self.layout.parts) or len(maps) != len(self.layout.attention):
            raise RuntimeError("the UNet's blocks do not match the layout computed from its config")
        return Captured(noise[:batch], noise[batch:], outputs, [probs[batch:] for probs in maps])

    def project(self, captured: Captured) -> dict[str, list[torch.Tensor]]:
        """Every task decoder's four 1x1 projections (DatasetDM's `*_feature_conv`), per group."""
        total_width = sum(self.widths)
        projected = {task: [] for task in self.tasks}
        for group in GROUPS:
            total = None
            for i in self.layout.parts_of(group):
                term = F.conv2d(captured.outputs[i], self.part_weights[i])
                total = term if total is None else total + term
            batch = total.shape[0] // 2
            group_sum = total[:batch, :total_width] + total[batch:, total_width:]
            for i in self.layout.attention_of(group):
                term = torch.einsum("bnpt,ont->bop", captured.probabilities[i], self.map_weights[i])
                group_sum = group_sum + term.reshape(group_sum.shape)
            for task, part in zip(self.tasks, group_sum.split(self.widths, dim=1), strict=True):
                projected[task].append(part)
        return projected

    def forward(self, latents, timestep, text_embeddings, uncond_embeddings) -> tuple[torch.Tensor, ...]:
        captured = self.capture(latents, timestep, text_embeddings, uncond_embeddings)
        projected = self.project(captured)
        return (captured.noise_uncond, captured.noise_text, *(t for task in self.tasks for t in projected[task]))


def _up_block(block, hidden, residuals, emb, context, kwargs, outputs: list) -> torch.Tensor:
    """diffusers' (CrossAttn)UpBlock2D.forward, keeping every layer's output (DatasetDM's
    modified blocks return them; diffusers' return only the last)."""
    attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
    for resnet, attention in zip(block.resnets, attentions, strict=True):
        hidden = torch.cat([hidden, residuals[-1]], dim=1)
        residuals = residuals[:-1]
        hidden = resnet(hidden, emb)
        if attention is not None:
            hidden = attention(hidden, encoder_hidden_states=context, cross_attention_kwargs=kwargs, return_dict=False)[
                0
            ]
        outputs.append(hidden)
    if block.upsamplers is not None:
        for upsampler in block.upsamplers:
            hidden = upsampler(hidden)
        outputs.append(hidden)
    return hidden
