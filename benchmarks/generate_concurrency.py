"""`perceptserve bench generate`: images/s of `perceptserve generate` with requests in flight
(`--concurrency 2`) against one at a time (`--concurrency 1`), side by side in one run, on a
server whose `datasetdm_generate` model has as many instances as the highest level.

Each round generates the same seeds at each level into a fresh dataset folder (files written,
manifest synced: what the CLI does), levels alternating so that load from elsewhere falls on all
of them alike; the ratio of each round's rates is reported, and their median. On the tiny random
pipeline on this CPU the UNet (one instance, all cores) is shared by both loops: what a second
request in flight overlaps is the rest (python steps, VAE, decoders, writing files). On a GPU
fleet the same client keeps every replica's instances busy (README, "Generating at scale").
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import tritonclient.grpc as grpcclient
from perceptserve.clients.dataset import Dataset, RunSpec
from perceptserve.clients.datasetdm import DatasetDMGenerateClient
from perceptserve.clients.generate import generate_dataset
from perceptserve.clients.prompt_lists import single
from perceptserve.export.datasetdm import DatasetDMExport
from perceptserve.export.datasetdm import run as export_repository
from perceptserve.model_repository import datasetdm_serving as serving
from perceptserve.server.launcher import TritonServer

from perceptserve.settings import InstanceCounts, Settings

from .datasetdm import CLASSES, PROMPT
from .records import load_average

TARGET = 1.0  # images/s at the highest level over level 1, at least (issue 17: not slower)


@dataclass(frozen=True)
class GenerateConcurrencyBench:
    out: Path
    repository: Path | None = None  # a tiny-random export with enough generate instances
    images: int = 8
    rounds: int = 3
    steps: int = 20
    side: int = 128
    batch: int = 1
    levels: tuple[int, ...] = (1, 2)


def with_generate_instances(settings: Settings, count: int) -> Settings:
    instances = InstanceCounts(cpu=count, gpu=count)
    return dataclasses.replace(
        settings, datasetdm=dataclasses.replace(settings.datasetdm, generate_instances=instances)
    )


def served_instances(url: str) -> int:
    client = grpcclient.InferenceServerClient(url)
    try:
        config = client.get_model_config(serving.GENERATE).config
        return sum(group.count for group in config.instance_group)
    finally:
        client.close()


def run(job: GenerateConcurrencyBench, settings: Settings) -> dict:
    job.out.mkdir(parents=True, exist_ok=True)
    settings = with_generate_instances(settings, max(job.levels))
    export = DatasetDMExport(repository=job.repository or job.out / "repository", tasks=("semantic", "depth"))
    if job.repository is None:
        export_repository(export, settings)
    seeds = list(range(job.images))
    rates: dict[int, list[float]] = {level: [] for level in job.levels}
    results: dict = {"config": {k: str(v) for k, v in asdict(job).items()}, "load_average_1m": load_average()}
    with (
        TritonServer(export.repository, "cpu", settings.server, log_file=job.out / "tritonserver.log") as server,
        DatasetDMGenerateClient(server.grpc_url) as client,
    ):
        results["generate_instances"] = served_instances(server.grpc_url)
        spec = RunSpec(
            single(PROMPT, CLASSES[0]),
            CLASSES,
            job.steps,
            7.5,
            height=job.side,
            width=job.side,
            models=client.model_versions(),
        )
        folders = job.out / "datasets"
        shutil.rmtree(folders, ignore_errors=True)
        warm = max(job.levels)  # every instance runs once before timing
        generate_dataset(client, Dataset(folders / "warmup", spec), list(range(warm)), 1, warm, progress=False)
        for round_index in range(job.rounds):
            for level in job.levels:
                dataset = Dataset(folders / f"round{round_index}-concurrency{level}", spec)
                result = generate_dataset(client, dataset, seeds, job.batch, level, progress=False)
                if result.failed:
                    raise RuntimeError(f"generation failed at concurrency {level}: {result.failed}")
                rates[level].append(result.images_per_second)
                print(f"round {round_index}, concurrency {level}: {result.images_per_second:.3f} images/s")
    top, base = max(job.levels), min(job.levels)
    ratios = [high / low for high, low in zip(rates[top], rates[base], strict=True)]
    results["images_per_second"] = rates
    results["ratios"] = ratios
    results["median_ratio"] = statistics.median(ratios)
    results["meets_target"] = results["median_ratio"] >= TARGET
    results["load_average_1m_end"] = load_average()
    (job.out / "results.json").write_text(json.dumps(results, indent=2))
    (job.out / "results.md").write_text(markdown(results, top, base))
    print(markdown(results, top, base))
    return results


def markdown(results: dict, top: int, base: int) -> str:
    rates = results["images_per_second"]
    lines = [
        f"# perceptserve generate: --concurrency {top} vs {base}, side by side (tiny random pipeline)",
        "",
        f"config: {results['config']}; generate instances served: {results['generate_instances']}; "
        f"load average {results['load_average_1m']} -> {results['load_average_1m_end']}",
        "",
        f"| round | images/s at {base} | images/s at {top} | ratio |",
        "|---|---|---|---|",
    ]
    for index, ratio in enumerate(results["ratios"]):
        lines.append(f"| {index} | {rates[base][index]:.3f} | {rates[top][index]:.3f} | {ratio:.2f}x |")
    verdict = "met" if results["meets_target"] else "missed"
    lines += ["", f"median ratio {results['median_ratio']:.2f}x (target >= {TARGET:.1f}: {verdict})"]
    return "\n".join(lines) + "\n"
