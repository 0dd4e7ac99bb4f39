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


@dataclass
class Reference:
    """What the PyTorch sources compute on the example, as arrays: the ONNX models' inputs and the
    outputs they must match. Computed before any ONNX Runtime session, so that the export can free
    the PyTorch weights first: at SD size they are 4 GB, and holding them beside the feature
    extractor's session made the parity check the export's peak."""

    size: str  # the example's image size, for the report
    input_ids: np.ndarray
    text: np.ndarray  # caption embeddings
    uncond: np.ndarray  # empty-prompt embeddings
    images: np.ndarray
    latents: np.ndarray  # the VAE posterior's mean, scaled
    latents_std: np.ndarray
    decoded: np.ndarray  # the VAE decoder's image of `latents`
    timestep: np.ndarray
    noise: dict[str, np.ndarray]  # "uncond" / "text" -> diffusers' UNet noise prediction
    projected: dict[str, np.ndarray]  # "<task>_<group>" -> DatasetDM's raw group x the 1x1 projection
    classes: np.ndarray | None  # class-name embeddings (semantic)
    decoders: dict[str, dict[str, np.ndarray]]  # task -> output name -> DatasetDM's eval output


@torch.no_grad()
def reference(
    diffusion: Diffusion, extractor: FeatureExtractor, decoders: dict[str, torch.nn.Module], example: Example
) -> Reference:
    """`decoders` are the unfolded eager decoders (spectral norm from `u0`, DatasetDM's way)."""
    batch = len(example.prompts)
    ids = diffusion.token_ids(list(example.prompts))
    text = diffusion.text_encoder(ids)[0]
    uncond = diffusion.text_encoder(diffusion.token_ids([""] * batch))[0]
    vae, scale = diffusion.vae, diffusion.vae.config.scaling_factor
    posterior = vae.encode(example.images).latent_dist
    latents = posterior.mean * scale
    decoded = (vae.decode(latents / scale).sample / 2 + 0.5).clamp(0, 1)
    timestep = torch.tensor(example.timesteps, dtype=torch.int64)
    # The feature extractor is the served UNet: both halves against diffusers' own call.
    noise = diffusion.unet(torch.cat([latents, latents]), torch.cat([timestep, timestep]), torch.cat([uncond, text]))
    captured = extractor.capture(latents, timestep, text, uncond)
    raw = [captured.group(extractor.layout, group) for group in GROUPS]
    projected = {
        f"{task}_{group}": torch.nn.functional.conv2d(tensor, weight).numpy()
        for task, decoder in decoders.items()
        for group, tensor, weight in zip(GROUPS, raw, decoder.projection_weights(), strict=True)
    }
    classes = diffusion.embed(list(example.class_names)) if "semantic" in decoders else None
    outputs: dict[str, dict[str, np.ndarray]] = {}
    if "semantic" in decoders:
        class_map, scores = decoders["semantic"].reference(raw, classes)
        outputs["semantic"] = {"class_map": class_map.numpy(), "class_scores": scores.numpy()}
    if "depth" in decoders:
        outputs["depth"] = {"depth": decoders["depth"].reference(raw).numpy()}
    if "instance" in decoders:
        logits, masks = decoders["instance"].reference(raw)
        outputs["instance"] = {"class_logits": logits.numpy(), "mask_logits": masks.numpy()}
    if "pose" in decoders:
        heatmaps = decoders["pose"].reference(raw)
        full = torch.nn.functional.interpolate(heatmaps, size=tuple(example.images.shape[-2:]), mode="bilinear")
        outputs["pose"] = {"heatmaps": heatmaps.numpy(), "keypoints": datasetdm_keypoints(full.numpy())}
    return Reference(
        size="x".join(map(str, example.images.shape[-2:])),
        input_ids=ids.numpy(),
        text=text.numpy(),
        uncond=uncond.numpy(),
        images=example.images.numpy(),
        latents=latents.numpy(),
        latents_std=(posterior.std * scale).numpy(),
        decoded=decoded.numpy(),
        timestep=timestep.numpy(),
        noise=dict(zip(("uncond", "text"), (half.numpy() for half in noise.sample.chunk(2)), strict=True)),
        projected=projected,
        classes=None if classes is None else classes.numpy(),
        decoders=outputs,
    )


def compare(expected: Reference, repository: Path, precision: str) -> ParityReport:
    """The repository's ONNX models (one session at a time) against `expected`."""
    report = ParityReport(Tolerance.for_precision(precision), precision)
    onnx = OnnxModels(repository, names.model_names(expected.decoders))
    size = expected.size
    ours = onnx(names.TEXT_ENCODER, input_ids=expected.input_ids)["text_embeddings"]
    report.add(f"text encoder: text_embeddings, batch {len(expected.input_ids)}", ours, expected.text)
    ours = onnx(names.VAE_ENCODER, image=expected.images)
    report.add(f"VAE encoder: latents, {size}", ours["latents"], expected.latents)
    report.add(f"VAE encoder: latents_std, {size}", ours["latents_std"], expected.latents_std)
    ours = onnx(names.VAE_DECODER, latents=expected.latents)["image"]
    report.add(f"VAE decoder: image, {size}", ours, expected.decoded)

    features = onnx(
        names.FEATURES,
        latents=expected.latents,
        timestep=expected.timestep,
        text_embeddings=expected.text,
        uncond_embeddings=expected.uncond,
    )
    for half, noise in expected.noise.items():
        report.add(f"feature extractor: noise_pred_{half} (vs diffusers' UNet)", features[f"noise_pred_{half}"], noise)
    for name, projected in expected.projected.items():
        report.add(f"feature extractor: {name} (vs raw group x 1x1 conv)", features[name], projected)

    projected = {task: {group: features[f"{task}_{group}"] for group in GROUPS} for task in expected.decoders}
    limit = report.tolerance.masked
    if "semantic" in expected.decoders:
        reference = expected.decoders["semantic"]
        ours = onnx(names.DECODERS["semantic"], class_embeddings=expected.classes, **projected["semantic"])
        what = f"semantic decoder: class_scores, {len(expected.classes)} classes"
        report.add(what, ours["class_scores"], reference["class_scores"], limit)
        report.agree(f"semantic decoder: class_map, {size}", ours["class_map"], reference["class_map"])
    if "depth" in expected.decoders:
        ours = onnx(names.DECODERS["depth"], **projected["depth"])["depth"]
        report.add(f"depth decoder: depth, {size}", ours, expected.decoders["depth"]["depth"])
    if "instance" in expected.decoders:
        reference = expected.decoders["instance"]
        ours = onnx(names.DECODERS["instance"], **projected["instance"])
        what = f"instance decoder: class_logits, {reference['class_logits'].shape[1]} queries"
        report.add(what, ours["class_logits"], reference["class_logits"], limit)
        report.add(f"instance decoder: mask_logits, {size}", ours["mask_logits"], reference["mask_logits"], limit)
    if "pose" in expected.decoders:
        reference = expected.decoders["pose"]
        ours = onnx(names.DECODERS["pose"], **projected["pose"])
        report.add(f"pose decoder: heatmaps, {size}", ours["heatmaps"], reference["heatmaps"])
        keypoints = reference["keypoints"]
        close = np.abs(ours["keypoints"][..., :2] - keypoints[..., :2]).max(-1) <= 0.25
        report.agreements.append((f"pose decoder: keypoints within 1/4 pixel, {size}", float(close.mean())))
        report.add(f"pose decoder: keypoint scores, {size}", ours["keypoints"][..., 2], keypoints[..., 2])
    return report


def check(
    diffusion: Diffusion,
    extractor: FeatureExtractor,
    decoders: dict[str, torch.nn.Module],
    repository: Path,
    example: Example,
    precision: str,
) -> ParityReport:
    """`reference` then `compare`, for a caller that keeps the PyTorch sources anyway (the tests)."""
    return compare(reference(diffusion, extractor, decoders, example), repository, precision)


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
