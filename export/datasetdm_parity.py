"""Parity of the exported DatasetDM models with their PyTorch sources, on one example batch.

References: transformers' `CLIPTextModel` for the text encoder, diffusers' `UNet2DConditionModel`
and `AutoencoderKL` calls for the UNet and the VAE, and for the feature extractor and the
P-Decoders DatasetDM's own order of operations (raw feature groups, resized, then the full 1x1
projections, spectral norm computed from `u0`), against our ONNX chain (projections inside the
extractor, spectral norm folded). Compared: max abs difference relative to the reference's
largest magnitude, and for the semantic class map the fraction of pixels that agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from perceptserve.model_repository import datasetdm as names
from perceptserve.model_repository.configs import cpu_onnx_file
from perceptserve.model_repository.writer import version_dir

from perceptserve.datasetdm.features import GROUPS, FeatureExtractor
from perceptserve.datasetdm.source import Diffusion
from perceptserve.onnxruntime_session import cpu_session

MIB = 1 << 20


@dataclass(frozen=True)
class Tolerance:
    relative: float  # max |ours - ref| / max |ref|
    # The semantic decoder's scores: Mask2Former's attention masks threshold mask logits, and a
    # logit within rounding of 0 flips a mask bit, so they agree less tightly than the rest.
    masked: float
    agreement: float  # fraction of equal class-map pixels

    @classmethod
    def for_precision(cls, precision: str) -> Tolerance:
        return cls(1e-3, 1e-2, 0.999) if precision == "fp32" else cls(5e-2, 1e-1, 0.97)


@dataclass(frozen=True)
class Example:
    """The parity batch: images (B, 3, H, W) in [-1, 1], one caption each, class names."""

    images: torch.Tensor
    prompts: tuple[str, ...]
    class_names: tuple[str, ...]
    timesteps: tuple[int, ...]


@dataclass
class ParityReport:
    tolerance: Tolerance
    precision: str
    rows: list[tuple[str, float, float, float]] = field(default_factory=list)  # (what, max abs diff, relative, limit)
    agreements: list[tuple[str, float]] = field(default_factory=list)
    handoff: tuple[int, int] | None = None  # elements per 512x512 image: DatasetDM's raw, ours projected

    def add(self, what: str, ours: np.ndarray, reference: np.ndarray, limit: float | None = None) -> None:
        diff = float(np.abs(ours.astype(np.float64) - reference).max())
        relative = diff / max(float(np.abs(reference).max()), 1e-12)
        self.rows.append((what, diff, relative, self.tolerance.relative if limit is None else limit))

    def agree(self, what: str, ours: np.ndarray, reference: np.ndarray) -> None:
        self.agreements.append((what, float((ours == reference).mean())))

    def relative(self, prefix: str) -> float:
        """The worst relative difference among rows whose name starts with `prefix`."""
        return max(rel for what, _, rel, _ in self.rows if what.startswith(prefix))

    @property
    def passed(self) -> bool:
        return all(rel <= limit for *_, rel, limit in self.rows) and all(
            value >= self.tolerance.agreement for _, value in self.agreements
        )

    def format(self) -> str:
        lines = [f"parity of the {self.precision} ONNX models against their PyTorch sources:"]
        for what, diff, rel, limit in self.rows:
            note = "" if limit == self.tolerance.relative else f"  (limit {limit:g}: thresholded attention masks)"
            lines.append(f"  {what:<62} max abs diff {diff:.3e}  relative {rel:.3e}{note}")
        lines += [f"  {what:<62} fraction agreeing {value:.5f}" for what, value in self.agreements]
        if self.handoff:
            raw, projected = self.handoff
            lines.append(
                "  feature hand-off per 512x512 image: DatasetDM's raw groups "
                f"{raw * 2 / MIB:.1f} MiB fp16 ({raw * 4 / MIB:.1f} fp32) -> projected {projected * 2 / MIB:.2f} MiB "
                f"fp16 ({projected * 4 / MIB:.2f} fp32)"
            )
        verdict = "PASS" if self.passed else "FAIL"
        limits = f"relative <= {self.tolerance.relative:g}, class map agreement >= {self.tolerance.agreement}"
        lines.append(f"  {verdict} (tolerance: {limits})")
        return "\n".join(lines)


class OnnxModels:
    """ONNX Runtime over the repository's DatasetDM models, called by tensor name, each on the file
    its `cpu` config serves. One session at a time: a call to another model drops the last one,
    so a full-size check holds one model's weights and arena (the feature extractor's UNet:
    3.4 GB in fp32), not all of them."""

    def __init__(self, repository: Path, models: list[str]) -> None:
        self.repository, self.models = repository, list(models)
        self.loaded: tuple[str, object] | None = None

    def session(self, model: str):
        if model not in self.models:
            raise KeyError(model)
        if self.loaded is None or self.loaded[0] != model:
            self.loaded = None  # free the last model before loading the next
            self.loaded = model, cpu_session(cpu_onnx_file(version_dir(self.repository, model)), quiet=True)
        return self.loaded[1]

    def __call__(self, model: str, **feeds: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        session = self.session(model)
        arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in feeds.items()}
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, arrays), strict=True))


@torch.no_grad()
def check(
    diffusion: Diffusion,
    extractor: FeatureExtractor,
    decoders: dict[str, torch.nn.Module],
    repository: Path,
    example: Example,
    precision: str,
) -> ParityReport:
    """`decoders` are the unfolded eager decoders (spectral norm from `u0`, DatasetDM's way)."""
    report = ParityReport(Tolerance.for_precision(precision), precision)
    onnx = OnnxModels(repository, names.model_names(decoders))
    batch = len(example.prompts)
    size = "x".join(map(str, example.images.shape[-2:]))

    ids = diffusion.token_ids(list(example.prompts))
    uncond_ids = diffusion.token_ids([""] * batch)
    text = diffusion.text_encoder(ids)[0]
    uncond = diffusion.text_encoder(uncond_ids)[0]
    ours = onnx(names.TEXT_ENCODER, input_ids=ids)["text_embeddings"]
    report.add(f"text encoder: text_embeddings, batch {batch}", ours, text.numpy())

    vae, scale = diffusion.vae, diffusion.vae.config.scaling_factor
    posterior = vae.encode(example.images).latent_dist
    ours = onnx(names.VAE_ENCODER, image=example.images)
    report.add(f"VAE encoder: latents, {size}", ours["latents"], (posterior.mean * scale).numpy())
    report.add(f"VAE encoder: latents_std, {size}", ours["latents_std"], (posterior.std * scale).numpy())
    latents = posterior.mean * scale
    image = (vae.decode(latents / scale).sample / 2 + 0.5).clamp(0, 1)
    report.add(f"VAE decoder: image, {size}", onnx(names.VAE_DECODER, latents=latents)["image"], image.numpy())

    timestep = torch.tensor(example.timesteps, dtype=torch.int64)
    doubled = dict(
        sample=torch.cat([latents, latents]),
        timestep=torch.cat([timestep, timestep]),
        encoder_hidden_states=torch.cat([uncond, text]),
    )
    noise = diffusion.unet(*doubled.values()).sample  # the feature extractor is the served UNet

    features = onnx(names.FEATURES, latents=latents, timestep=timestep, text_embeddings=text, uncond_embeddings=uncond)
    for half, reference in zip(("uncond", "text"), noise.chunk(2), strict=True):
        what = f"feature extractor: noise_pred_{half} (vs diffusers' UNet)"
        report.add(what, features[f"noise_pred_{half}"], reference.numpy())
    captured = extractor.capture(latents, timestep, text, uncond)
    raw = [captured.group(extractor.layout, group) for group in GROUPS]
    for task, decoder in decoders.items():
        for group, tensor, weight in zip(GROUPS, raw, decoder.projection_weights(), strict=True):
            reference = torch.nn.functional.conv2d(tensor, weight).numpy()
            report.add(
                f"feature extractor: {task}_{group} (vs raw group x 1x1 conv)", features[f"{task}_{group}"], reference
            )

    projected = {task: {group: features[f"{task}_{group}"] for group in GROUPS} for task in decoders}
    if "semantic" in decoders:
        classes = diffusion.embed(list(example.class_names))
        class_map, scores = decoders["semantic"].reference(raw, classes)
        ours = onnx(names.DECODERS["semantic"], class_embeddings=classes, **projected["semantic"])
        what = f"semantic decoder: class_scores, {len(example.class_names)} classes"
        report.add(what, ours["class_scores"], scores.numpy(), report.tolerance.masked)
        report.agree(f"semantic decoder: class_map, {size}", ours["class_map"], class_map.numpy())
    if "depth" in decoders:
        depth = decoders["depth"].reference(raw).numpy()
        report.add(f"depth decoder: depth, {size}", onnx(names.DECODERS["depth"], **projected["depth"])["depth"], depth)
    if "instance" in decoders:
        logits, masks = decoders["instance"].reference(raw)
        ours = onnx(names.DECODERS["instance"], **projected["instance"])
        limit = report.tolerance.masked
        report.add(
            f"instance decoder: class_logits, {logits.shape[1]} queries", ours["class_logits"], logits.numpy(), limit
        )
        report.add(f"instance decoder: mask_logits, {size}", ours["mask_logits"], masks.numpy(), limit)
    if "pose" in decoders:
        heatmaps = decoders["pose"].reference(raw)
        ours = onnx(names.DECODERS["pose"], **projected["pose"])
        report.add(f"pose decoder: heatmaps, {size}", ours["heatmaps"], heatmaps.numpy())
        full = torch.nn.functional.interpolate(heatmaps, size=tuple(example.images.shape[-2:]), mode="bilinear")
        reference = datasetdm_keypoints(full.numpy())
        close = np.abs(ours["keypoints"][..., :2] - reference[..., :2]).max(-1) <= 0.25
        report.agreements.append((f"pose decoder: keypoints within 1/4 pixel, {size}", float(close.mean())))
        report.add(f"pose decoder: keypoint scores, {size}", ours["keypoints"][..., 2], reference[..., 2])
    return report


def datasetdm_keypoints(heatmaps: np.ndarray) -> np.ndarray:
    """DatasetDM's reading of heatmaps already at the image size (`get_max_preds`, then a quarter
    pixel towards the higher neighbour inside the border), in numpy, as its script does:
    (B, K, H, W) -> (B, K, 3) x, y, maximum."""
    batch, joints, height, width = heatmaps.shape
    flat = heatmaps.reshape(batch, joints, -1)
    index, maxvals = flat.argmax(2), flat.max(2)
    coords = np.stack([index % width, np.floor(index / width)], axis=-1).astype(np.float32)
    coords *= (maxvals > 0)[..., None]
    for n in range(batch):
        for p in range(joints):
            hm = heatmaps[n, p]
            px, py = int(np.floor(coords[n, p, 0] + 0.5)), int(np.floor(coords[n, p, 1] + 0.5))
            if 1 < px < width - 1 and 1 < py < height - 1:
                diff = np.array([hm[py][px + 1] - hm[py][px - 1], hm[py + 1][px] - hm[py - 1][px]])
                coords[n, p] += np.sign(diff) * 0.25
    return np.concatenate([coords, maxvals[..., None]], axis=-1)
