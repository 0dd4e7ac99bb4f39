"""`perceptserve bench datasetdm --diffusion DIR`: DatasetDM at the real size, in one run.

Served: `datasetdm_generate` on an SD 1.x folder's export (semantic + depth), the image and its
annotations. Eager: diffusers' `StableDiffusionPipeline` from the same folder generating the
image alone, the same seeds, steps, guidance and size (its PNDM scheduler, CPU generator per
seed). Eager runs first and is freed before the server starts: both at once would not fit a
24 GB machine beside the export's 3.4 GB UNet. Besides seconds per image, the server's memory
(tritonserver and its python stubs, from /proc): ready, after the timed requests, and the peak
sampled during them; and Triton's per-model time (where a generate request's time goes).

And the floor: the image's arithmetic (PyTorch's FLOP counter over one UNet call, times the
calls diffusers made, and the VAE decode) at this CPU's fp32 GEMM peak (ONNX Runtime's MatMul,
measured in the same run): the least time any fp32 implementation that computes the same
products takes on this CPU, served or not. (Winograd-style convolutions trade multiplications
for additions; ONNX Runtime's CPU kernels and PyTorch's here do not use them.)
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict
from pathlib import Path

import torch
import tritonclient.grpc as grpcclient
from perceptserve.clients.datasetdm import DatasetDMGenerateClient
from perceptserve.export.datasetdm import DatasetDMExport
from perceptserve.export.datasetdm import run as export_repository
from perceptserve.model_repository import datasetdm as exported
from perceptserve.model_repository import datasetdm_serving as serving
from perceptserve.server.launcher import TritonServer
from perceptserve.server.memory import PeakSampler, by_process_mib, server_rss_mib

from perceptserve.settings import Settings

from .floor import counted_flops, fp32_gemm_peak
from .report import write_results
from .statistics import LatencySummary, ratio
from .triton_statistics import delta, snapshot

TASKS = ("semantic", "depth")
PROMPT, CLASSES = "a photo of a cat on a couch", ["cat", "couch"]
TARGET = 0.7  # served generate + annotations / diffusers' image alone, at most (issue 20)
MODELS = (serving.GENERATE, *exported.model_names(TASKS))


def _timed(call, seeds: list[int]) -> LatencySummary:
    latencies, start = [], time.perf_counter()
    for seed in seeds:
        began = time.perf_counter()
        call(seed)
        latencies.append(time.perf_counter() - began)
    return LatencySummary.from_seconds(latencies, time.perf_counter() - start)


def diffusers_seconds(
    folder: Path, seeds: list[int], steps: int, side: int, guidance: float
) -> tuple[LatencySummary, dict]:
    """diffusers' pipeline, image only, one seed per call, after a one-step warm-up; and the
    image's arithmetic (`image_flops`)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    unet_calls = []

    def call(seed: int, steps: int = steps) -> None:
        generator = torch.Generator("cpu").manual_seed(seed)
        pipe(
            PROMPT, height=side, width=side, num_inference_steps=steps, guidance_scale=guidance,
            generator=generator, output_type="np",
        )  # fmt: skip

    with torch.no_grad():
        call(seeds[0], 1)
        hook = pipe.unet.register_forward_pre_hook(lambda *_: unet_calls.append(1))
        summary = _timed(call, seeds)
        hook.remove()
        return summary, image_flops(pipe, side, len(unet_calls) // len(seeds), guidance > 1)


def image_flops(pipe, side: int, unet_calls: int, guided: bool) -> dict:
    """FLOPs of one image: `unet_calls` UNet calls (batch 2 with guidance) and one VAE decode."""
    latent = side // pipe.vae_scale_factor
    batch = 2 if guided else 1
    text = torch.zeros(batch, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size)
    sample = torch.zeros(batch, pipe.unet.config.in_channels, latent, latent)
    per_call = counted_flops(lambda: pipe.unet(sample, 500, text)).get_total_flops()
    latents = torch.zeros(1, pipe.vae.config.latent_channels, latent, latent)
    decode = counted_flops(lambda: pipe.vae.decode(latents)).get_total_flops()
    return {
        "unet_call": per_call,
        "unet_calls": unet_calls,
        "vae_decode": decode,
        "image": unet_calls * per_call + decode,
    }


def served(repository: Path, out: Path, settings: Settings, seeds, steps, side, guidance) -> dict:
    """Generate with annotations through the server; seconds, memory and per-model time."""
    with TritonServer(repository, "cpu", settings.server, log_file=out / "tritonserver.log") as server:
        pid = server.process.pid
        ready_by_process = by_process_mib(pid)
        ready = sum(ready_by_process.values())
        raw = grpcclient.InferenceServerClient(server.grpc_url)
        with DatasetDMGenerateClient(server.grpc_url) as client:

            def call(seed: int, steps: int = steps) -> None:
                client.generate(
                    PROMPT, CLASSES, [seed], steps=steps, guidance=guidance, height=side, width=side, tasks=TASKS
                )

            with PeakSampler(pid) as first:
                call(seeds[0], 1)  # warm-up: the arenas grow to this size's peak here
            before = snapshot(raw, MODELS)
            with PeakSampler(pid) as timed:
                summary = _timed(call, seeds)
            breakdown = {m: s for m, s in delta(before, snapshot(raw, MODELS)).items() if s["requests"]}
        after, peaks = server_rss_mib(pid), by_process_mib(pid, "VmHWM")
        raw.close()
    return {
        "seconds": summary.to_json(),
        "memory_mib": {
            "ready": ready,
            "peak_first_request": first.peak_mib,
            "peak_timed_requests": timed.peak_mib,
            "after": after,
            "rise_over_ready": max(first.peak_mib, timed.peak_mib) - ready,
            # Each process at ready and its own peak (VmHWM) by the end: where the rise went.
            "by_process": {name: (ready_by_process.get(name, 0.0), peak) for name, peak in peaks.items()},
        },
        "server_breakdown": breakdown,
    }


def run(job, settings: Settings) -> dict:
    """`job`: a `DatasetDMBench` with `diffusion` set (its `images`, `steps`, `side`, `guidance`)."""
    job.out.mkdir(parents=True, exist_ok=True)
    export = DatasetDMExport(repository=job.repository or job.out / "repository", tasks=TASKS, diffusion=job.diffusion)
    if job.repository is None:
        export_repository(export, settings)
    seeds = list(range(job.images))
    results: dict = {"config": {k: str(v) for k, v in asdict(job).items()}}
    print(f"diffusers: {job.images} images ({job.steps} steps, {job.side}x{job.side}), image only")
    eager, flops = diffusers_seconds(job.diffusion, seeds, job.steps, job.side, job.guidance)
    gc.collect()
    peak = fp32_gemm_peak()
    print("served: the same seeds, image + semantic + depth")
    results["served"] = served(export.repository, job.out, settings, seeds, job.steps, job.side, job.guidance)
    results["diffusers"] = eager.to_json()
    results["served_over_diffusers"] = ratio(results["served"]["seconds"]["mean_ms"], eager.mean_ms)
    results["meets_target"] = (results["served_over_diffusers"] or 99) <= TARGET
    results["floor"] = dict(flops, gemm_peak_flops=peak, image_seconds=flops["image"] / peak)
    results["floor_over_diffusers"] = ratio(results["floor"]["image_seconds"] * 1e3, eager.mean_ms)
    write_results(job.out, results, markdown(results))
    return results


def markdown(results: dict) -> str:
    served, memory, floor = results["served"], results["served"]["memory_mib"], results["floor"]
    lines = [
        "# DatasetDM at the real size: served generate + annotations vs diffusers (image only)",
        "",
        f"config: {results['config']}",
        "",
        f"| diffusers s/image | served s/image | served / diffusers | target <= {TARGET} |",
        "|---|---|---|---|",
        f"| {results['diffusers']['mean_ms'] / 1e3:.1f} | {served['seconds']['mean_ms'] / 1e3:.1f} | "
        f"{results['served_over_diffusers']:.2f}x | {'met' if results['meets_target'] else 'missed'} |",
        "",
        "## the floor: the image's arithmetic at this CPU's fp32 GEMM peak",
        "",
        "| UNet call TFLOP | UNet calls | VAE decode TFLOP | image TFLOP | fp32 GEMM peak GFLOP/s | image at peak s "
        "| / diffusers |",
        "|---|---|---|---|---|---|---|",
        f"| {floor['unet_call'] / 1e12:.3f} | {floor['unet_calls']} | {floor['vae_decode'] / 1e12:.3f} | "
        f"{floor['image'] / 1e12:.3f} | {floor['gemm_peak_flops'] / 1e9:.0f} | {floor['image_seconds']:.1f} | "
        f"{results['floor_over_diffusers']:.2f}x |",
        "",
        "## server memory (tritonserver + python stubs, MiB)",
        "",
        "| ready | peak, first request | peak, timed requests | after | rise over ready |",
        "|---|---|---|---|---|",
        f"| {memory['ready']:.0f} | {memory['peak_first_request']:.0f} | {memory['peak_timed_requests']:.0f} | "
        f"{memory['after']:.0f} | {memory['rise_over_ready']:.0f} |",
        "",
        "| process | ready MiB | its peak MiB | rise |",
        "|---|---|---|---|",
        *(
            f"| {name} | {ready:.0f} | {peak:.0f} | {peak - ready:.0f} |"
            for name, (ready, peak) in sorted(memory["by_process"].items(), key=lambda item: -item[1][1])
        ),
        "",
        "## where a generate request's time goes (Triton statistics over the timed requests)",
        "",
        "| model | executions | mean request ms | compute infer ms |",
        "|---|---|---|---|",
    ]
    for model, s in served["server_breakdown"].items():
        request, infer = s["request_ms"] or 0, s["compute_infer_ms"] or 0
        lines.append(f"| {model} | {s['execution_count']} | {request:.0f} | {infer:.0f} |")
    return "\n".join(lines) + "\n"
