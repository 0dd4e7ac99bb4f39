"""A small random Stable Diffusion 1.x pipeline for tests and demos, built in seconds offline.

Same architecture as SD 1.x (UNet block types, cross-attention, VAE factor 8, CLIP text encoder,
PNDM scheduler), only narrower: the export, the feature grouping and the P-Decoders run the same
code paths as on a real checkpoint. The tokenizer's vocabulary and merges are generated here, so
nothing is downloaded. Written with `save_pretrained`, so `StableDiffusionPipeline.from_pretrained`
loads it like any diffusers folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .depth_decoder import DepthConfig
from .instance_decoder import InstanceConfig
from .pose_decoder import PoseConfig
from .semantic_decoder import SemanticConfig

SOURCE = "source"  # the pipeline's folder under the --tiny-random output folder

# Words the tiny tokenizer has merges for (the demo's prompts, DatasetDM's VOC class names);
# most become one token, anything else is spelled in smaller pieces, down to single bytes.
WORDS = (
    "a photo of the an in on at and with background aeroplane bicycle bird boat bottle bus car cat chair "
    "cow diningtable dog horse motorbike person pottedplant sheep sofa train tvmonitor street road table "
    "man woman child sitting walking mountain top sunset"
).split()

# SD 1.x's scheduler (CompVis/stable-diffusion-v1-4 scheduler_config.json values).
SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    skip_prk_steps=True,
    set_alpha_to_one=False,
    steps_offset=1,
)

TEXT_WIDTH = 32

# P-Decoders narrow enough for the tiny UNet; 3 decoder layers (DatasetDM: 10) visit all three
# feature levels, and the last attention mask wraps round to the first.
SEMANTIC = SemanticConfig(
    width=16, num_queries=8, num_layers=3, num_heads=4, dim_feedforward=32, context_dim=TEXT_WIDTH
)
DEPTH = DepthConfig(width=8)
# COCO's 80 categories (the default instance vocabulary), fewer queries.
INSTANCE = InstanceConfig(
    width=16, num_queries=10, num_layers=3, num_heads=4, dim_feedforward=32, context_dim=TEXT_WIDTH, top_k=20
)
POSE = PoseConfig(width=8)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which CLIP's byte-level BPE uses."""
    ranges = (("!", "~"), ("¡", "¬"), ("®", "ÿ"))
    printable = [code for first, last in ranges for code in range(ord(first), ord(last) + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def tokenizer_files(folder: Path) -> None:
    """Write `vocab.json` and `merges.txt` of a byte-level BPE with left-to-right merges for WORDS."""
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            merge = f"{parts[0]} {parts[1]}"
            if merge not in merges:
                merges.append(merge)
                vocab.append(merged)
            parts = [merged] + parts[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


# SD 1.x's own sizes (CompVis/stable-diffusion-v1-4's configs): an 860M-parameter UNet, CLIP
# ViT-L/14's text encoder (its 49408-token embedding; this tokenizer uses the first few), SD's
# VAE. Random weights, for measuring memory and time at the real size (benchmarks/README.md).
FULL_SIZE = dict(
    unet=dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
    vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512),
    text=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768),
)  # fmt: skip


def build(folder: Path, seed: int = 0, full_size: bool = False) -> Path:
    """Build the tiny pipeline (or with `full_size`, SD 1.x's sizes) and save it under
    `folder / SOURCE`; return that path."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    target = Path(folder) / SOURCE
    tokenizer_dir = target / "tokenizer"
    tokenizer_files(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=77)

    torch.manual_seed(seed)
    tiny_unet = dict(
        sample_size=32,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=2,  # SD 1.x's legacy name for the number of heads (8 there)
        norm_num_groups=8,
    )
    unet = UNet2DConditionModel(**(FULL_SIZE["unet"] if full_size else tiny_unet))
    tiny_vae = dict(block_out_channels=(8, 16, 32, 32), norm_num_groups=8, sample_size=256)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        **(FULL_SIZE["vae"] if full_size else tiny_vae),
    )
    tiny_text = dict(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **(FULL_SIZE["text"] if full_size else tiny_text),
        )
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(**SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(str(target))
    return target
