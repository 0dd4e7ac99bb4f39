"""`perceptserve bench hqsam-automatic`: segment everything, served (`hqsam_automatic`) against
the official eager `SamAutomaticMaskGenerator`, on the same photos, weights and parameters
(the official defaults unless given), in one run, per model type.

Where the time goes: the served model reports its encoder, decoder and post-processing seconds
with each response (`stage_seconds`), the rest of the request is transport and decoding of the
image; the eager split times `SamPredictor.set_image` on the same photo as its encoder share.
Each timed photo is new to the server (the warm-up uses another), so the encoder's response
cache never answers it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from perceptserve.clients import automatic as wire
from perceptserve.clients.hqsam import HQSamClient
from perceptserve.export.hqsam import HQSamExport, load_model
from perceptserve.export.hqsam import run as export_repository
from perceptserve.model_repository.configs import ONNX_FILE
from perceptserve.model_repository.writer import VERSION
from perceptserve.server import TritonServer, free_port
from skimage import data as sample_images

from perceptserve.automatic import rle
from perceptserve.automatic.parameters import GeneratorParameters
from perceptserve.errors import UserError
from perceptserve.hqsam.families import HQSAM
from perceptserve.hqsam.official import SamAutomaticMaskGenerator, SamPredictor
from perceptserve.imaging import encode_png
from perceptserve.settings import Settings

from .records import load_average, machine_info
from .report import write_results
from .statistics import ratio
from .workload import Workload

TARGET = {"vit_b": 0.5}  # served / eager seconds per image, at most (issue 13)
PHOTOS = {"astronaut": sample_images.astronaut, "coffee": sample_images.coffee, "chelsea": sample_images.chelsea}
WARMUP_PHOTO = "camera"  # never timed: warms the server without filling the cache for a timed photo


@dataclass(frozen=True)
class AutomaticBench:
    out: Path
    models: tuple[str, ...] = ("vit_tiny", "vit_b")
    photos: tuple[str, ...] = ("astronaut",)
    parameters: dict = field(default_factory=dict)  # generator parameters; empty: the official defaults
    seed: int = 0
    repositories: Path | None = None  # exports to reuse, one folder per model type (default: OUT/<model>)
    precision: str = "fp32"  # of the export (int8: the served encoder is int8; eager stays fp32)


def _exported(repository: Path) -> bool:
    return all((repository / m / VERSION / ONNX_FILE).exists() for m in (HQSAM.encoder, HQSAM.decoder))


def _warmup_image() -> np.ndarray:
    grey = sample_images.camera()
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _eager(sam, image: np.ndarray, parameters: dict) -> dict:
    chosen = GeneratorParameters(**parameters)
    if chosen.hq_token_only:
        raise UserError("the official generator has no hq_token_only: benchmark without --hq-token-only")
    generator = SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **chosen.official_arguments())
    started = time.perf_counter()
    with torch.no_grad():
        records = generator.generate(image, multimask_output=chosen.multimask_output)
    total = time.perf_counter() - started
    predictor = SamPredictor(sam)
    started = time.perf_counter()
    with torch.no_grad():
        predictor.set_image(image)
    encoder = time.perf_counter() - started
    return {"seconds": total, "encoder_s": encoder, "decoder_and_postprocess_s": total - encoder, "records": records}


def _served(client: HQSamClient, image: np.ndarray, parameters: dict) -> dict:
    data = encode_png(image)
    started = time.perf_counter()
    response = client.generate_masks_response(data, **parameters)
    total = time.perf_counter() - started
    stages = wire.stage_seconds(response)
    return {
        "seconds": total,
        **{f"{stage}_s": seconds for stage, seconds in stages.items()},
        "transport_s": total - sum(stages.values()),
        "records": wire.records(response),
    }


def _agreement(served: list[dict], official: list[dict]) -> dict:
    ious = rle.ious([r["segmentation"] for r in official], [r["segmentation"] for r in served])
    matched = float(np.mean(ious.max(axis=1, initial=0.0) >= 0.95)) if official else 1.0
    return {"official_masks": len(official), "served_masks": len(served), "matched_at_iou_0.95": matched}


def bench_model(model: str, job: AutomaticBench, settings: Settings) -> dict:
    repository = (job.repositories or job.out) / model
    export = HQSamExport(model=model, repository=repository, seed=job.seed, precision=job.precision)
    results = {"photos": {}, "precision": job.precision}
    if not _exported(repository):
        print(f"{model}: exporting random weights (seed {job.seed}, {job.precision}) to {repository}")
        report = export_repository(export, settings)
        results["export_parity"] = {"passed": report.passed, "min_mask_iou": report.min_iou}
    sam = load_model(export)
    ports = dict(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server_settings = dataclasses.replace(settings.server, **ports)
    with TritonServer(repository, "cpu", server_settings, log_file=job.out / f"tritonserver-{model}.log") as server:
        with HQSamClient(server.grpc_url) as client:
            client.generate_masks(_warmup_image(), **{**job.parameters, "points_per_side": 1})  # loads every model
            for name in job.photos:
                # A variant new to the server: its warm-up request (server/warmup.py) is astronaut,
                # and the encoder's response cache would turn the timed photo into a hit.
                image = Workload(PHOTOS[name]()).variants(1)[0]
                print(f"{model} {name}: served")
                served = _served(client, image, job.parameters)
                print(f"{model} {name}: eager (official generator)")
                eager = _eager(sam, image, job.parameters)
                results["photos"][name] = {
                    "served": {k: v for k, v in served.items() if k != "records"},
                    "eager": {k: v for k, v in eager.items() if k != "records"},
                    "agreement": _agreement(served["records"], eager["records"]),
                }
    served_s = sum(p["served"]["seconds"] for p in results["photos"].values())
    eager_s = sum(p["eager"]["seconds"] for p in results["photos"].values())
    results["served_over_eager"] = ratio(served_s, eager_s)
    if model in TARGET:
        results["target"] = TARGET[model]
        results["meets_target"] = results["served_over_eager"] <= TARGET[model]
    return results


def run(job: AutomaticBench, settings: Settings) -> dict:
    job.out.mkdir(parents=True, exist_ok=True)
    results = {
        "config": {k: str(v) for k, v in asdict(job).items()},
        "machine": machine_info(),
        "load_average_start": load_average(),
        "models": {},
    }
    for model in job.models:  # written after each model: a long run keeps what it measured
        results["models"][model] = bench_model(model, job, settings)
        results["load_average_end"] = load_average()
        write_results(job.out, results, markdown(results))
    return results


def markdown(results: dict) -> str:
    lines = [
        "# Segment everything: served `hqsam_automatic` vs the official eager generator",
        "",
        f"Parameters: {results['config']['parameters']} (empty: the official defaults). Load average "
        f"{results['load_average_start']} at start, {results['load_average_end']} at end. Served export "
        f"precision: {results['config']['precision']} (eager: the official model in fp32).",
        "",
        "| model | photo | eager s (encoder / rest) | served s (encoder / decoder / post / transport) | served/eager "
        "| masks official / served, matched |",
        "|---|---|---|---|---|---|",
    ]
    for model, figures in results["models"].items():
        for photo, p in figures["photos"].items():
            e, s, a = p["eager"], p["served"], p["agreement"]
            lines.append(
                f"| {model} | {photo} "
                f"| {e['seconds']:.1f} ({e['encoder_s']:.1f} / {e['decoder_and_postprocess_s']:.1f}) "
                f"| {s['seconds']:.1f} ({s['encoder_s']:.1f} / {s['decoder_s']:.1f} / {s['postprocess_s']:.2f} / "
                f"{s['transport_s']:.2f}) | {s['seconds'] / e['seconds']:.2f}x "
                f"| {a['official_masks']} / {a['served_masks']}, {a['matched_at_iou_0.95']:.0%} |"
            )
        if "target" in figures:
            verdict = "met" if figures["meets_target"] else "NOT met"
            lines.append(f"| {model} | target | | | <= {figures['target']}x: {verdict} | |")
    return "\n".join(lines) + "\n"
