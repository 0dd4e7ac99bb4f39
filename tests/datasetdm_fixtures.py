"""DatasetDM test fixtures: one export of the tiny random pipeline (all four tasks) per
session, and two references written independently of the code under test, from reading
showlab/DatasetDM: its decoders' parameter names and shapes, and its feature capture (forward
hooks on the block outputs, its attention-store reshapes) on the eager diffusers UNet."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
import torch
from perceptserve.export.datasetdm import DatasetDMExport, Models, prepare, run
from perceptserve.export.datasetdm_parity import ParityReport

from perceptserve.datasetdm.features import FeatureLayout
from perceptserve.datasetdm.source import Diffusion, load
from perceptserve.settings import Settings

from .background import EXPORTS

warnings.filterwarnings("ignore", category=FutureWarning)

TINY_EXPORT = "tiny_export"  # the fixture's name: collection starts it for the tests that use it


@dataclass
class TinyExport:
    job: DatasetDMExport
    report: ParityReport

    @property
    def repository(self) -> Path:
        return self.job.repository

    def diffusion(self) -> Diffusion:
        """A fresh load of the exported pipeline (default attention processors)."""
        return load(self.job.tiny_source)

    @cached_property
    def models(self) -> Models:
        """The export's PyTorch sources, rebuilt (deterministic: same seeds, same calibration);
        their UNet carries the feature extractor's attention processors."""
        return prepare(self.job, self.diffusion())


def export_tiny(root: Path) -> TinyExport:
    """The tiny random pipeline with all four tasks, exported into `root`."""
    job = DatasetDMExport(repository=root / "repository", tasks=("semantic", "instance", "depth", "pose"))
    with torch.no_grad():
        return TinyExport(job, run(job, Settings()))


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> TinyExport:
    """Started in the background at collection when some test needs it (tests/background.py)."""
    return EXPORTS.result(TINY_EXPORT) or export_tiny(tmp_path_factory.mktemp("datasetdm"))


def segblock_shapes(prefix: str, in_channels: int, out_channels: int) -> dict[str, tuple]:
    """DatasetDM's SegBlock with SNConv2d convs (weight, bias, u0, sv0) and frozen statistics."""
    shapes = {}
    convs = {"conv1": (out_channels, in_channels, 3, 3), "conv2": (out_channels, out_channels, 3, 3)}
    if in_channels != out_channels:
        convs["conv_sc"] = (out_channels, in_channels, 1, 1)
    for name, shape in convs.items():
        shapes.update(
            {
                f"{prefix}.{name}.weight": shape,
                f"{prefix}.{name}.bias": (out_channels,),
                f"{prefix}.{name}.u0": (1, out_channels),
                f"{prefix}.{name}.sv0": (1,),
            }
        )
    for index, channels in ((1, in_channels), (2, out_channels)):
        shapes[f"{prefix}.stored_mean{index}"] = (channels,)
        shapes[f"{prefix}.stored_var{index}"] = (channels,)
    return shapes


def datasetdm_state_shapes(task: str, layout: FeatureLayout, config) -> dict[str, tuple]:
    """Parameter names and shapes of DatasetDM's `seg_decorder_open_word` (semantic), `seg_decorder`
    (instance: the same parameters), `Depthmodule` and `PoseModule_HeatMap`, as their `__init__`s
    define them (projection widths, hidden and mask dims all `config.width`)."""
    w = config.width
    shapes = {f"{g}_feature_conv.0.weight": (w, layout.channels(g), 1, 1) for g in ("low", "mid", "high", "highest")}
    if task in ("depth", "pose"):
        shapes.update(segblock_shapes("mid_feature_mix_conv", 2 * w, 2 * w))
        shapes.update(segblock_shapes("high_feature_mix_conv", 3 * w, 3 * w))
        shapes.update(segblock_shapes("highest_feature_mix_conv", 4 * w, 4 * w))
        if task == "pose":
            return shapes | {"final_layer.weight": (17, 4 * w, 1, 1), "final_layer.bias": (17,)}
        shapes.update(
            {
                "last_layer_depth.0.weight": (4 * w, 4 * w, 3, 3),
                "last_layer_depth.0.bias": (4 * w,),
                "last_layer_depth.2.weight": (1, 4 * w, 3, 3),
                "last_layer_depth.2.bias": (1,),
            }
        )
        return shapes
    for group in ("mid", "high", "highest"):
        shapes.update(segblock_shapes(f"{group}_feature_mix_conv", 2 * w, w))
    q, c, f = config.num_queries, config.num_classes, config.dim_feedforward
    shapes.update(
        {
            "query_feat.weight": (q, w),
            "query_embed.weight": (q, w),
            "query_feat_mlp.weight": (w, w + config.context_dim),
            "query_embed_mlp.weight": (w, w + config.context_dim),
            "decoder_norm.weight": (w,),
            "decoder_norm.bias": (w,),
            "level_embed.weight": (3, w),
            "class_embed.weight": (c + 1, w),
            "class_embed.bias": (c + 1,),
        }
    )
    for index in range(3):
        shapes[f"mask_embed.layers.{index}.weight"] = (w, w)
        shapes[f"mask_embed.layers.{index}.bias"] = (w,)
    for layer in range(config.num_layers):
        for prefix in (
            f"transformer_self_attention_layers.{layer}.self_attn",
            f"transformer_cross_attention_layers.{layer}.multihead_attn",
        ):
            shapes.update(
                {
                    f"{prefix}.in_proj_weight": (3 * w, w),
                    f"{prefix}.in_proj_bias": (3 * w,),
                    f"{prefix}.out_proj.weight": (w, w),
                    f"{prefix}.out_proj.bias": (w,),
                }
            )
        for prefix in (
            f"transformer_self_attention_layers.{layer}",
            f"transformer_cross_attention_layers.{layer}",
            f"transformer_ffn_layers.{layer}",
        ):
            shapes[f"{prefix}.norm.weight"] = (w,)
            shapes[f"{prefix}.norm.bias"] = (w,)
        ffn = f"transformer_ffn_layers.{layer}"
        shapes.update(
            {
                f"{ffn}.linear1.weight": (f, w),
                f"{ffn}.linear1.bias": (f,),
                f"{ffn}.linear2.weight": (w, f),
                f"{ffn}.linear2.bias": (w,),
            }
        )
    return shapes


def random_state(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {name: torch.randn(shape, generator=generator) * 0.1 for name, shape in shapes.items()}
    for name in state:  # positive variances, as trained statistics are
        if "stored_var" in name:
            state[name] = state[name].abs() + 0.5
    return state


@torch.no_grad()
def hook_capture(unet, latents, timestep, text, uncond) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """DatasetDM's capture (`model/unet.py`, `ptp_utils.py`, `aggregate_attention`) on one image,
    from forward hooks on a plain `unet(...)` call over [uncond; text]:
    - `conv_in`'s output, every down block's residual outputs, the mid block's output, every
      up-block layer's and upsampler's output, each reshaped (2, C, H, W) -> (1, 2C, H, W) and
      filed by spatial size (latent / 8: low, / 4: mid, / 2: high, latent: highest);
    - every `attn2`'s probabilities softmax(q k^T * scale) recomputed from its inputs, the
      conditional half, filed under down / mid / up by the top-level block, `b (c d) h w`;
    each group = features in call order, then the maps of the up, mid and down blocks.
    Returns (groups by name, noise prediction)."""
    assert latents.shape[0] == 1, "DatasetDM's reshape assumes one image"
    height = latents.shape[-2]
    sizes = {height // 8: "low", height // 4: "mid", height // 2: "high", height: "highest"}
    features = {name: [] for name in sizes.values()}
    maps = {(place, name): [] for place in ("down", "mid", "up") for name in sizes.values()}

    def file(tensor):
        features[sizes[tensor.shape[-2]]].append(tensor.reshape(1, tensor.shape[1] * 2, *tensor.shape[2:]))

    def down_block(module, args, output):
        for tensor in output[1]:  # (hidden, residuals): DatasetDM's res_samples
            file(tensor)

    def layer(module, args, output):
        file(output.sample if hasattr(output, "sample") else output[0] if isinstance(output, tuple) else output)

    def attention(place):
        def hook(module, args, kwargs, output):
            q = module.head_to_batch_dim(module.to_q(args[0]))
            k = module.head_to_batch_dim(module.to_k(kwargs["encoder_hidden_states"]))
            probs = (torch.einsum("bid,bjd->bij", q, k) * module.scale).softmax(dim=-1)
            cond = probs[probs.shape[0] // 2 :]
            h = next(side for side in sizes if side * (side * latents.shape[-1] // height) == cond.shape[1])
            w = cond.shape[1] // h
            cond = cond.reshape(1, -1, h, w, cond.shape[-1])  # b c h w d
            maps[place, sizes[h]].append(cond.permute(0, 1, 4, 2, 3).reshape(1, -1, h, w))  # b (c d) h w

        return hook

    handles = [unet.conv_in.register_forward_hook(layer)]
    handles += [block.register_forward_hook(down_block) for block in unet.down_blocks]
    handles.append(unet.mid_block.register_forward_hook(layer))
    for block in unet.up_blocks:
        inner = block.attentions if getattr(block, "attentions", None) else block.resnets
        handles += [module.register_forward_hook(layer) for module in inner]
        handles += [module.register_forward_hook(layer) for module in block.upsamplers or []]
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            place = name.split(".")[0].split("_")[0]  # down_blocks / mid_block / up_blocks
            handles.append(module.register_forward_hook(attention(place), with_kwargs=True))
    try:
        noise = unet(torch.cat([latents, latents]), torch.cat([timestep, timestep]), torch.cat([uncond, text])).sample
    finally:
        for handle in handles:
            handle.remove()
    groups = {
        name: torch.cat(features[name] + [m for place in ("up", "mid", "down") for m in maps[place, name]], dim=1)
        for name in sizes.values()
    }
    return groups, noise
