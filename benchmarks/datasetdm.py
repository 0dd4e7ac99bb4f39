"""`perceptserve bench datasetdm`: seconds per annotated image, served against eager, in one run.

Two uses, each timed per image over the same seeds and photos:
- generate: text -> image + class map, depth, instances, keypoints. Served: `datasetdm_generate`
  (the whole loop in the server, `batch` seeds per request). Eager: diffusers' UNet, VAE and PNDM scheduler in
  PyTorch, driven by the same loop as the served model, with the feature capture on the last
  step and the P-Decoders in PyTorch (DatasetDM's way: capture + decoder in the same run).
- annotate: photo -> class map, depth, instances, keypoints. Served: the `datasetdm_annotate`
  ensemble. Eager: VAE encode, noise, feature capture and P-Decoders in PyTorch.
Then each task's cost on top of generation: served generate with every task against every task
but that one.
The server's breakdown (Triton's per-model statistics over the timed runs: UNet, feature
extractor, VAE, text encoder, decoders, python steps) is written beside the times, to
`results.json` and `results.md`. On the tiny random pipeline only (real checkpoints do not fit
this CPU's time budget); the tiny UNet is small enough that per-call overheads show.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as grpcclient
from perceptserve.clients.datasetdm import DatasetDMAnnotateClient, DatasetDMGenerateClient
from perceptserve.export.datasetdm import DatasetDMExport, prepare
from perceptserve.export.datasetdm import run as export_repository
from perceptserve.model_repository import datasetdm as names
from perceptserve.model_repository import datasetdm_serving as serving
from perceptserve.server.launcher import TritonServer
from skimage import data as sample_images
from skimage.transform import resize

from perceptserve.datasetdm import instances
from perceptserve.datasetdm.coco_names import COCO_CATEGORIES
from perceptserve.datasetdm.features import GROUPS, TASKS
from perceptserve.datasetdm.layers import scaled_size
from perceptserve.datasetdm.pose_decoder import read_keypoints
from perceptserve.datasetdm.sampling import annotation_latents, denoise, initial_latents
from perceptserve.datasetdm.source import load
from perceptserve.imaging import encode_png
from perceptserve.settings import Settings

from . import datasetdm_full_size
from .report import write_results
from .statistics import LatencySummary, ratio
from .triton_statistics import delta, snapshot

PROMPT, CLASSES = "a photo of a cat on a couch", ["cat", "couch"]
TARGET = 0.8  # served seconds per image / eager, at most (issue 7, tiny pipeline on this CPU)
MODELS = (
    serving.GENERATE,
    serving.ANNOTATE,
    serving.ANNOTATE_PREPROCESS,
    serving.ANNOTATE_NOISE,
    serving.ANNOTATE_POSTPROCESS,
    *names.model_names(TASKS),
)


@dataclass(frozen=True)
class DatasetDMBench:
    out: Path
    repository: Path | None = None  # an export to reuse (tiny-random: its source beside it)
    diffusion: Path | None = None  # an SD 1.x folder: the real-size comparison (datasetdm_full_size)
    images: int = 4
    steps: int = 20
    side: int = 128
    batch: int = 2
    guidance: float = 7.5


class Eager:
    """The PyTorch path: diffusers' modules, our feature capture, the unfolded P-Decoders."""

    def __init__(self, job: DatasetDMExport) -> None:
        from diffusers import PNDMScheduler

        self.models = prepare(job, load(job.tiny_source))
        self.scheduler_folder = job.tiny_source / "scheduler"
        self.scheduler = PNDMScheduler.from_pretrained(str(self.scheduler_folder))
        self.diffusion = self.models.diffusion

    def _decode(self, raw, classes):
        """Every decoder, with the instance inference and keypoint reading the served models run."""
        decoders = self.models.decoders
        class_map, _ = decoders["semantic"].reference(raw, classes)
        logits, masks = decoders["instance"].reference(raw)
        size = scaled_size(raw[-1], self.diffusion.vae_scale, 1)
        labels = instances.category_labels(CLASSES, COCO_CATEGORIES)
        found = [instances.infer(lg, mk, labels, size, 20, 0.0) for lg, mk in zip(logits, masks, strict=True)]
        keypoints = read_keypoints(decoders["pose"].reference(raw), size)
        return class_map, decoders["depth"].reference(raw), found, keypoints

    @torch.no_grad()
    def generate(self, seeds: list[int], steps: int, side: int, guidance: float):
        from diffusers import PNDMScheduler

        d, extractor = self.diffusion, self.models.extractor
        text, uncond, classes = d.embed([PROMPT] * len(seeds)), d.embed([""] * len(seeds)), d.embed(CLASSES)
        context = torch.cat([uncond, text])
        latent_side = side // d.vae_scale

        def unet(latents, timesteps):
            return d.unet(torch.cat([latents, latents]), torch.cat([timesteps, timesteps]), context).sample.chunk(2)

        def last(latents, timesteps):
            captured = extractor.capture(latents, timesteps, text, uncond)
            return captured.noise_uncond, captured.noise_text, captured

        latents = initial_latents(seeds, (d.unet.config.in_channels, latent_side, latent_side))
        scheduler = PNDMScheduler.from_pretrained(str(self.scheduler_folder))
        latents, captured = denoise(scheduler, latents, steps, torch.full((len(seeds),), guidance), unet, last)
        image = (d.vae.decode(latents / d.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
        raw = [captured.group(extractor.layout, group) for group in GROUPS]
        return image, self._decode(raw, classes)

    @torch.no_grad()
    def annotate(self, photo: np.ndarray, seed: int):
        d, extractor = self.diffusion, self.models.extractor
        image = torch.from_numpy(photo.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1)
        posterior = d.vae.encode(image).latent_dist
        scale = d.vae.config.scaling_factor
        noisy = annotation_latents(
            posterior.mean * scale, posterior.std * scale, seed, 1, self.scheduler.alphas_cumprod
        )
        timestep = torch.tensor([1])
        captured = extractor.capture(noisy, timestep, d.embed([PROMPT]), d.embed([""]))
        raw = [captured.group(extractor.layout, group) for group in GROUPS]
        return self._decode(raw, d.embed(CLASSES))


def _per_image(call, batches: list[list], warmup: bool = True) -> LatencySummary:
    """Seconds per image: each batch timed as one call, its time shared by its items."""
    if warmup:
        call(batches[0])
    latencies, start = [], time.perf_counter()
    for batch in batches:
        began = time.perf_counter()
        call(batch)
        latencies += [(time.perf_counter() - began) / len(batch)] * len(batch)
    return LatencySummary.from_seconds(latencies, time.perf_counter() - start)


def _photos(count: int, side: int) -> list[np.ndarray]:
    sources = [sample_images.astronaut(), sample_images.chelsea(), sample_images.coffee()]
    return [(resize(sources[i % 3], (side, side), anti_aliasing=True) * 255).astype(np.uint8) for i in range(count)]


def run(job: DatasetDMBench, settings: Settings) -> dict:
    if job.diffusion is not None:
        return datasetdm_full_size.run(job, settings)
    job.out.mkdir(parents=True, exist_ok=True)
    export = DatasetDMExport(repository=job.repository or job.out / "repository", tasks=TASKS)
    if job.repository is None:
        export_repository(export, settings)
    eager = Eager(export)
    seeds = list(range(job.images))
    seed_batches = [seeds[i : i + job.batch] for i in range(0, len(seeds), job.batch)]
    photos = _photos(job.images, job.side)
    results: dict = {"config": {k: str(v) for k, v in asdict(job).items()}, "uses": {}}

    print(f"eager: {job.images} generations ({job.steps} steps, {job.side}x{job.side}) and annotations")
    results["uses"]["generate"] = {
        "eager": _per_image(lambda b: eager.generate(b, job.steps, job.side, job.guidance), seed_batches).to_json()
    }
    results["uses"]["annotate"] = {
        "eager": _per_image(lambda b: eager.annotate(photos[b[0]], 0), [[i] for i in range(job.images)]).to_json()
    }
    with TritonServer(export.repository, "cpu", settings.server, log_file=job.out / "tritonserver.log") as server:
        raw = grpcclient.InferenceServerClient(server.grpc_url)
        with DatasetDMGenerateClient(server.grpc_url) as gen, DatasetDMAnnotateClient(server.grpc_url) as ann:
            calls = {
                "generate": (
                    lambda b: gen.generate(
                        PROMPT,
                        CLASSES,
                        b,
                        steps=job.steps,
                        guidance=job.guidance,
                        height=job.side,
                        width=job.side,
                        score_threshold=0.0,
                    ),
                    seed_batches,
                ),
                "annotate": (
                    lambda b: ann.annotate(encode_png(photos[b[0]]), PROMPT, CLASSES),
                    [[i] for i in range(job.images)],
                ),
            }
            for use, (call, batches) in calls.items():
                call(batches[0])  # warm-up outside the statistics
                before = snapshot(raw, MODELS)
                summary = _per_image(call, batches, warmup=False)
                breakdown = {m: s for m, s in delta(before, snapshot(raw, MODELS)).items() if s["requests"]}
                results["uses"][use]["served"] = summary.to_json()
                results["uses"][use]["server_breakdown"] = breakdown
            results["task_costs"] = task_costs(gen, job, seed_batches)
        raw.close()
    for figures in results["uses"].values():
        figures["served_over_eager"] = ratio(figures["served"]["mean_ms"], figures["eager"]["mean_ms"])
        figures["meets_target"] = figures["served_over_eager"] is not None and figures["served_over_eager"] <= TARGET
    write_results(job.out, results, markdown(results))
    return results


def task_costs(client: DatasetDMGenerateClient, job: DatasetDMBench, batches: list[list[int]]) -> dict:
    """Each task's cost on top of generation: served seconds per image with every task, and
    without each one in turn (the same seeds, one after the other); the difference is the task's
    decoder and its post-processing (instance inference, RLE)."""

    def seconds(tasks) -> float:
        def call(seeds):
            client.generate(
                PROMPT, CLASSES, seeds, steps=job.steps, guidance=job.guidance, height=job.side, width=job.side,
                tasks=tasks, score_threshold=0.0,
            )  # fmt: skip

        return _per_image(call, batches).mean_ms / 1e3

    every = seconds(list(TASKS))
    costs = {"all tasks s/image": every}
    for task in TASKS:
        costs[task] = every - seconds([t for t in TASKS if t != task])
    return costs


def markdown(results: dict) -> str:
    lines = [
        "# DatasetDM: seconds per annotated image, served vs eager (tiny random pipeline)",
        "",
        f"config: {results['config']}",
        "",
        "| use | eager s/image | served s/image | served / eager | target <= 0.8 |",
        "|---|---|---|---|---|",
    ]
    for use, f in results["uses"].items():
        lines.append(
            f"| {use} | {f['eager']['mean_ms'] / 1e3:.3f} | {f['served']['mean_ms'] / 1e3:.3f} | "
            f"{f['served_over_eager']:.2f}x | {'met' if f['meets_target'] else 'missed'} |"
        )
    costs = results.get("task_costs")
    if costs:
        lines += [
            "",
            f"## each task's cost on top of generation (generate, all tasks: {costs['all tasks s/image']:.3f} s/image)",
            "",
            "| task | s/image (all tasks minus all but it) | share of the generation |",
            "|---|---|---|",
        ]
        total = costs["all tasks s/image"]
        lines += [f"| {task} | {costs[task]:.4f} | {costs[task] / total:.1%} |" for task in TASKS]
    for use, f in results["uses"].items():
        lines += [
            "",
            f"## server breakdown, {use} (Triton statistics over the timed run)",
            "",
            "| model | executions | mean request ms | compute infer ms | queue ms |",
            "|---|---|---|---|---|",
        ]
        for model, s in f["server_breakdown"].items():
            lines.append(
                f"| {model} | {s['execution_count']} | {s['request_ms'] or 0:.1f} | "
                f"{s['compute_infer_ms'] or 0:.1f} | {s['queue_ms'] or 0:.2f} |"
            )
    return "\n".join(lines) + "\n"
