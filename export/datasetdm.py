"""`perceptserve export datasetdm`: Stable Diffusion 1.x + DatasetDM P-Decoders -> the DatasetDM
models of a Triton model repository, checked against their PyTorch sources.

Steps: load a diffusers SD 1.x folder (or build the tiny random pipeline), build the P-Decoders
and load their checkpoints strictly (or seed random weights), export the text encoder, the VAE
encoder and decoder, the feature extractor (the UNet carrying the decoders' 1x1 projections: the
only model holding the UNet, so its weights are written once) and the decoders (spectral norm
folded) to ONNX with dynamic batch and image size, one model at a time, optionally convert to
fp16, write every model's `cpu` and `gpu` configs, then run the parity check.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from perceptserve.model_repository import datasetdm as names
from perceptserve.model_repository import datasetdm_serving as serving
from perceptserve.model_repository.configs import ONNX_FILE, PLAN_FILE
from perceptserve.model_repository.writer import version_dir, write_models
from skimage import data as sample_images
from skimage.transform import resize as resize_image

from perceptserve.datasetdm import checkpoint_loading, export_modules, layers, tiny
from perceptserve.datasetdm.coco_names import COCO_CATEGORIES
from perceptserve.datasetdm.depth_decoder import DepthConfig, DepthDecoder
from perceptserve.datasetdm.features import GROUPS, TASKS, FeatureExtractor
from perceptserve.datasetdm.instance_decoder import InstanceConfig, InstanceDecoder
from perceptserve.datasetdm.pose_decoder import PoseConfig, PoseDecoder
from perceptserve.datasetdm.semantic_decoder import SemanticConfig, SemanticDecoder
from perceptserve.datasetdm.source import Diffusion, load
from perceptserve.errors import UserError
from perceptserve.settings import Settings

from . import datasetdm_parity as parity
from . import onnx_io
from .progress import Steps

HANDOFF_SIZE = 512  # DatasetDM's image size; the hand-off is reported for it


class ExportError(UserError, ValueError):
    """An export job that cannot run as given; one line for the CLI."""


@dataclass(frozen=True)
class DatasetDMExport:
    repository: Path
    tasks: tuple[str, ...] = ("semantic",)
    diffusion: Path | None = None  # a diffusers SD 1.x folder; None: the tiny random pipeline
    tiny_dir: Path | None = None  # the tiny pipeline goes to `tiny_dir/source/`; default: <repository>-tiny-random
    decoders: Mapping[str, Path] = field(default_factory=dict)  # task -> DatasetDM checkpoint; empty: random
    precision: str = "fp32"
    seed: int = 0
    semantic: SemanticConfig | None = None  # None: DatasetDM's (for the tiny pipeline, tiny.SEMANTIC)
    depth: DepthConfig | None = None
    instance: InstanceConfig | None = None
    pose: PoseConfig | None = None
    parity_size: tuple[int, int] = (256, 256)  # image (height, width), multiples of 64
    parity_prompts: tuple[str, ...] = ("a photo of a man on a mountain top at sunset", "a photo of a cat on a sofa")
    parity_classes: tuple[str, ...] = ("person", "cat", "sofa")

    def __post_init__(self) -> None:
        if not self.tasks or any(task not in TASKS for task in self.tasks):
            raise ExportError(f"tasks must be among {', '.join(TASKS)} (got {', '.join(self.tasks) or 'none'})")
        if self.decoders and set(self.decoders) != set(self.tasks):
            raise ExportError(
                f"give a decoder checkpoint for every task ({', '.join(self.tasks)}), or none for random weights"
            )
        missing = [str(path) for path in self.decoders.values() if not Path(path).is_file()]
        if missing:
            raise ExportError(f"decoder checkpoint {', '.join(missing)} does not exist")
        if any(side % 64 for side in self.parity_size):
            raise ExportError(f"parity image sides must be multiples of 64, got {self.parity_size}")

    @property
    def tiny_folder(self) -> Path:
        return self.tiny_dir or self.repository.with_name(self.repository.name + "-tiny-random")

    @property
    def tiny_source(self) -> Path:
        """Where the tiny pipeline is, for `StableDiffusionPipeline.from_pretrained`."""
        return self.tiny_folder / tiny.SOURCE


def decoder_paths(values: list[str], tasks: tuple[str, ...]) -> dict[str, Path]:
    """`--decoder` values: `PATH` when one task is exported, else `TASK=PATH` for each task."""
    paths: dict[str, Path] = {}
    for value in values:
        task, sep, path = value.partition("=")
        if not sep and len(tasks) == 1:
            task, path = tasks[0], value
        elif not sep or task not in tasks:
            raise ExportError(f"--decoder {value}: with --tasks {','.join(tasks)} give TASK=PATH, TASK one of them")
        paths[task] = Path(path)
    return paths


Decoder = SemanticDecoder | DepthDecoder | InstanceDecoder | PoseDecoder
# task -> (decoder class, DatasetDM's config, the tiny pipeline's config)
DECODER_KINDS = {
    "semantic": (SemanticDecoder, SemanticConfig(), tiny.SEMANTIC),
    "depth": (DepthDecoder, DepthConfig(), tiny.DEPTH),
    "instance": (InstanceDecoder, InstanceConfig(), tiny.INSTANCE),
    "pose": (PoseDecoder, PoseConfig(), tiny.POSE),
}


def build_decoder(task: str, diffusion: Diffusion, job: DatasetDMExport) -> Decoder:
    """The task's decoder for this UNet: its checkpoint loaded strictly, or seeded random weights."""
    kind, default, tiny_config = DECODER_KINDS[task]
    config = getattr(job, task) or (tiny_config if job.diffusion is None else default)
    if hasattr(config, "context_dim") and job.diffusion is not None and getattr(job, task) is None:
        config = dataclasses.replace(config, context_dim=diffusion.text_width)
    state = checkpoint_loading.read_state_dict(job.decoders[task], "decoder checkpoint") if job.decoders else None
    if state is not None and hasattr(config, "with_checkpoint_shapes"):
        config = config.with_checkpoint_shapes(state)
    config = dataclasses.replace(config, image_scale=diffusion.vae_scale)
    torch.manual_seed(job.seed + TASKS.index(task))
    decoder = kind(diffusion.layout, config)
    if state is not None:
        checkpoint_loading.load_strict(decoder, state, f"{task} decoder")
    return decoder.eval().requires_grad_(False)


def parity_example(job: DatasetDMExport) -> parity.Example:
    """Two real photos at the parity size, in [-1, 1], with a caption each."""
    photos = [sample_images.astronaut(), sample_images.chelsea()]
    images = np.stack([resize_image(photo, job.parity_size, anti_aliasing=True) * 2 - 1 for photo in photos])
    images = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32))
    # t = 1: DatasetDM's annotation step (the last of 50 PNDM steps); 501: mid-way through denoising.
    return parity.Example(images, job.parity_prompts, job.parity_classes, (1, 501))


@dataclass
class Models:
    """The PyTorch sources of the exported models; the decoders unfolded (DatasetDM's eval)."""

    diffusion: Diffusion
    extractor: FeatureExtractor
    decoders: dict[str, Decoder]


def prepare(job: DatasetDMExport, diffusion: Diffusion) -> Models:
    """Decoders for `job.tasks` and the feature extractor carrying their projections."""
    decoders = {task: build_decoder(task, diffusion, job) for task in TASKS if task in job.tasks}
    projections = {task: decoder.projection_weights() for task, decoder in decoders.items()}
    extractor = FeatureExtractor(diffusion.unet, diffusion.layout, projections).eval()
    if not job.decoders:
        calibrate(decoders, extractor, diffusion, parity_example(job))
    return Models(diffusion, extractor, decoders)


@torch.no_grad()
def calibrate(decoders: dict, extractor: FeatureExtractor, diffusion: Diffusion, example: parity.Example) -> None:
    """Random-init decoders: batch-norm statistics from the example's features (see
    `layers.calibrate_batch_norms_`)."""
    latents = diffusion.vae.encode(example.images).latent_dist.mean * diffusion.vae.config.scaling_factor
    text, uncond = diffusion.embed(list(example.prompts)), diffusion.embed([""] * len(example.prompts))
    captured = extractor.capture(latents, torch.tensor(example.timesteps), text, uncond)
    raw = [captured.group(extractor.layout, group) for group in GROUPS]
    classes = diffusion.embed(list(example.class_names))
    for task, decoder in decoders.items():
        inputs = (raw, classes) if task == "semantic" else (raw,)
        layers.calibrate_batch_norms_(decoder, lambda d=decoder, i=inputs: d.reference(*i))
        if task == "instance":
            decoder.sharpen_random_logits_(decoder.reference(raw)[0])


def export_models(models: Models, job: DatasetDMExport, steps: Steps) -> dict[str, Path]:
    """Every model to `<repository>/<model>/1/model.onnx`, batch and image size dynamic."""
    diffusion, extractor, decoders = models.diffusion, models.extractor, models.decoders
    shapes = exported_shapes(diffusion, decoders)
    height, width = (side // diffusion.vae_scale for side in job.parity_size)
    latents = torch.randn(2, shapes.latent_channels, height, width)
    # Distinct tensors for distinct inputs: the exporter merges inputs given the same tensor.
    text, uncond = (torch.randn(2, diffusion.tokens, diffusion.text_width) for _ in range(2))
    timestep = torch.tensor([1, 501])
    # Example inputs by name; their names, and the dynamic axes (every -1 dim: batch, image
    # size), come from the model repository's definitions (`names.io`).
    modules = {
        names.TEXT_ENCODER: (
            export_modules.TextEncoder(diffusion.text_encoder),
            {"input_ids": diffusion.token_ids(["a cat", "a dog"])},
        ),
        names.VAE_ENCODER: (export_modules.VaeEncoder(diffusion.vae), {"image": torch.randn(2, 3, *job.parity_size)}),
        names.VAE_DECODER: (export_modules.VaeDecoder(diffusion.vae), {"latents": latents}),
        names.FEATURES: (
            extractor,
            {"latents": latents, "timestep": timestep, "text_embeddings": text, "uncond_embeddings": uncond},
        ),
    }
    for task, decoder in decoders.items():
        example = {}
        for group in GROUPS:
            level = 2 ** extractor.layout.level(group)
            example[group] = torch.randn(2, decoder.config.width, height // level, width // level)
        if task == "semantic":  # three class names, so that the exporter keeps them apart from the batch
            example["class_embeddings"] = torch.randn(3, diffusion.tokens, diffusion.text_width)
        modules[names.DECODERS[task]] = (layers.fold_spectral_norm(copy.deepcopy(decoder)), example)

    paths = {}
    with torch.no_grad():
        for model, (module, example) in modules.items():
            inputs, outputs = names.io(model, shapes)
            path = version_dir(job.repository, model) / ONNX_FILE
            with steps.step(f"exporting {model} to ONNX"):
                # The UNet's weights always in an external file: the CPU graph shares it.
                external = True if model == names.FEATURES else None
                onnx_io.export(module.eval(), example, path, inputs, outputs, external_data=external)
            (path.parent / PLAN_FILE).unlink(missing_ok=True)  # a stale engine must not outlive its model
            paths[model] = path
            gc.collect()  # the exported program's copy of the graph, before the next model
    return paths


def exported_shapes(diffusion: Diffusion, decoders: dict) -> names.ExportedShapes:
    return names.ExportedShapes(
        tokens=diffusion.tokens,
        text_width=diffusion.text_width,
        latent_channels=diffusion.unet.config.in_channels,
        widths={task: decoder.config.width for task, decoder in decoders.items()},
    )


def handoff(diffusion: Diffusion, decoders: dict) -> tuple[int, int]:
    """Elements per 512x512 image between the UNet and the decoders: DatasetDM's raw groups,
    and the projected groups of every exported task."""
    layout, side = diffusion.layout, HANDOFF_SIZE // diffusion.vae_scale
    widths = [{group: decoder.config.width for group in GROUPS} for decoder in decoders.values()]
    return layout.raw_elements(side, side), sum(layout.projected_elements(side, side, w) for w in widths)


def copy_serving_assets(source: Path, repository: Path) -> None:
    """The tokenizer and the scheduler config, from the diffusers folder into the version folders
    of the python models that tokenize and denoise (a served repository needs nothing else)."""
    for model, assets in serving.ASSETS.items():
        for asset in assets:
            target = version_dir(repository, model) / asset
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            if (source / asset).is_dir():
                shutil.copytree(source / asset, target)
            elif asset == serving.SCHEDULER:  # a folder without one: SD 1.x's own PNDM config
                from diffusers import PNDMScheduler

                PNDMScheduler(**tiny.SCHEDULER).save_pretrained(str(target))
            else:
                raise ExportError(f"{source} has no {asset}/ folder")


def write_repository(job: DatasetDMExport, diffusion: Diffusion, decoders: dict, settings: Settings) -> None:
    """Configs of the exported models, then the serving models (annotate ensemble, generate),
    which need the semantic decoder."""
    default_side = diffusion.unet.config.sample_size * diffusion.vae_scale
    shapes = exported_shapes(diffusion, decoders)
    definitions = names.definitions(settings, shapes)
    if "semantic" in shapes.widths:  # both served uses return the semantic class map
        copy_serving_assets(job.diffusion or job.tiny_source, job.repository)
        candidates = 0
        if "instance" in decoders:
            config, categories = decoders["instance"].config, settings.datasetdm.instance_categories
            if len(categories or COCO_CATEGORIES) != config.num_classes:
                raise ExportError(
                    f"the instance decoder has {config.num_classes} categories: name them, in its label order, "
                    "in PERCEPTSERVE_DATASETDM_INSTANCE_CATEGORIES (comma-separated; COCO's 80 by default)"
                )
            candidates = config.top_k
        definitions += serving.definitions(settings, shapes, default_side, diffusion.vae_scale, candidates)
    write_models(job.repository, definitions, settings)


def run(job: DatasetDMExport, settings: Settings) -> parity.ParityReport:
    """Export, write the repository, check parity; returns the report (the CLI sets the exit code)."""
    steps = Steps(total=5 + 4 + len(job.tasks) + (job.precision == "fp16"))
    if job.diffusion is None:
        with steps.step(f"building the tiny random Stable Diffusion pipeline in {job.tiny_source}"):
            diffusion = load(tiny.build(job.tiny_folder, seed=job.seed))
    else:
        with steps.step(f"loading Stable Diffusion from {job.diffusion}"):
            diffusion = load(job.diffusion)
    weights = "from " + ", ".join(map(str, job.decoders.values())) if job.decoders else "random weights"
    with steps.step(f"building the {' and '.join(job.tasks)} P-Decoders ({weights})"):
        models = prepare(job, diffusion)
    paths = export_models(models, job, steps)
    if job.precision == "fp16":
        with steps.step("converting to fp16 (norms, softmax and erf kept in fp32)"):
            for path in paths.values():
                onnx_io.to_fp16(path)
    with steps.step("fusing the feature extractor for ONNX Runtime on the CPU (same weights file)"):
        onnx_io.write_cpu_graph(paths[names.FEATURES])
    with steps.step("writing the model repository configs (cpu and gpu) and the serving models"):
        write_repository(job, diffusion, models.decoders, settings)
    with steps.step("parity check against diffusers, transformers and DatasetDM's decoder order"):
        expected = parity.reference(diffusion, models.extractor, models.decoders, parity_example(job))
        elements = handoff(diffusion, models.decoders)
        # The PyTorch weights go before ONNX Runtime loads the same ones: held beside the feature
        # extractor's session they made this step the export's peak (SD size: 4 GB of 11).
        del diffusion, models
        gc.collect()
        report = parity.compare(expected, job.repository, job.precision)
    report.handoff = elements
    return report
