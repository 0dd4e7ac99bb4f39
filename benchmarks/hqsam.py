"""`perceptserve bench hqsam|sam`: eager vs ONNX Runtime vs served, side by side in one run, for
a SAM family (HQ-SAM, or plain SAM / MobileSAM against their own official predictor).

Steps: export the model repository (unless one is given), load the official model for the
eager mode, then per mode time each stage (at each concurrency for the server), and write
`results.json`, `results.md` and `latency.png` into the output folder.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from perceptserve.export.hqsam import HQSamExport, load_model
from perceptserve.export.hqsam import run as export_repository
from perceptserve.export.progress import Steps
from perceptserve.model_repository.configs import ONNX_FILE
from perceptserve.model_repository.writer import VERSION
from perceptserve.server import TritonServer, free_port

from perceptserve.hqsam import registry
from perceptserve.hqsam.export_modules import INT8_FP32_SCOPES
from perceptserve.hqsam.families import HQSAM, Family
from perceptserve.hqsam.official import predictor_for
from perceptserve.settings import Settings

from . import records
from .cold_start import first_request_ratio
from .floor import vit_encoder_floor
from .onnxruntime_tuning import OPTIMIZATION_LEVELS, OrtTuning, mask_agreement, quantized_repository
from .perf_analyzer import write_input_data
from .plot import write_plot
from .records import BenchResult, Record
from .report import write_json, write_markdown
from .runners import EagerRunner, OnnxRuntimeRunner, Runner, TorchEncoderRunner
from .statistics import ratio
from .timing import measure
from .triton_runner import TritonRunner
from .triton_statistics import delta
from .workload import Workload, sample_photo

MODES = ("eager", "onnxruntime", "onnxruntime-int8", "triton", "torch-fp16")
ONNX_MODES = ("onnxruntime", "onnxruntime-int8")
SAMPLE_IMAGE = "skimage coffee, 600x400"


class BenchConfigError(ValueError):
    """A benchmark that cannot run as asked; the message says what to change."""


def default_modes() -> tuple[str, ...]:
    """eager, onnxruntime and triton; on a GPU machine the fp16 encoder as well."""
    return ("eager", "onnxruntime", "triton") + (("torch-fp16",) if torch.cuda.is_available() else ())


@dataclass(frozen=True)
class BenchJob:
    model: str | registry.Architecture  # a model type, or a config (tests use small ViTs)
    family: Family = HQSAM
    checkpoint: Path | None = None  # None: random weights from `seed`
    seed: int = 0
    modes: tuple[str, ...] = ("eager", "onnxruntime", "triton")
    concurrency: tuple[int, ...] = (1, 2, 4)
    requests: int = 10
    warmup: int = 1
    url: str | None = None  # a running server's gRPC HOST:PORT
    start_server: bool = False
    out: Path = Path("bench-output")
    repository: Path | None = None  # an exported repository to reuse; default: export to out/repository
    onnxruntime: OrtTuning = OrtTuning()
    perf_analyzer_data: Path | None = None
    precision: str = "fp32"  # of the export (int8: the served and `onnxruntime` encoder is int8)

    @property
    def model_type(self) -> str:
        return self.model if isinstance(self.model, str) else repr(self.model)

    @property
    def weights(self) -> str:
        return f"checkpoint {self.checkpoint}" if self.checkpoint else f"random-init (seed {self.seed})"

    @property
    def repository_path(self) -> Path:
        return self.repository or self.out / "repository"

    def check(self) -> None:
        unknown = [mode for mode in self.modes if mode not in MODES]
        if unknown or not self.modes or len(set(self.modes)) != len(self.modes):
            raise BenchConfigError(f"--modes {','.join(self.modes)}: give distinct modes among {', '.join(MODES)}")
        if "triton" in self.modes and not (self.url or self.start_server):
            raise BenchConfigError("the triton mode needs --url HOST:PORT of a running server, or --start-server")
        if self.url and self.start_server:
            raise BenchConfigError("give --url or --start-server, not both")
        if "torch-fp16" in self.modes and not torch.cuda.is_available():
            raise BenchConfigError("the torch-fp16 mode needs a CUDA GPU, and torch sees none")
        if not self.concurrency or min(self.concurrency) < 1:
            raise BenchConfigError("--concurrency takes positive integers, e.g. 1,2,4")
        if self.requests < 1 or self.warmup < 0:
            raise BenchConfigError("--requests must be at least 1 and --warmup at least 0")
        if self.onnxruntime.threads < 0 or self.onnxruntime.optimization not in OPTIMIZATION_LEVELS:
            raise BenchConfigError("--ort-threads must be 0 (one per core) or more, with a known --ort-optimization")

    def command(self) -> str:
        """The command line that runs this job, for the report."""
        parts = [
            f"perceptserve bench {self.family.name}",
            f"--model-type {self.model_type}",
            f"--precision {self.precision}",
        ]
        parts.append(f"--checkpoint {self.checkpoint}" if self.checkpoint else f"--random-init --seed {self.seed}")
        parts += [
            f"--modes {','.join(self.modes)}",
            f"--concurrency {','.join(map(str, self.concurrency))}",
            f"--requests {self.requests}",
            f"--warmup {self.warmup}",
        ]
        if self.url:
            parts.append(f"--url {self.url}")
        if self.start_server:
            parts.append("--start-server")
        parts.append(f"--out {self.out}")
        if self.repository:
            parts.append(f"--repository {self.repository}")
        parts.append(f"--ort-threads {self.onnxruntime.threads} --ort-optimization {self.onnxruntime.optimization}")
        if self.perf_analyzer_data:
            parts.append(f"--perf-analyzer-data {self.perf_analyzer_data}")
        return " ".join(parts)

    def export_job(self) -> HQSamExport:
        return HQSamExport(
            model=self.model,
            repository=self.repository_path,
            family=self.family,
            checkpoint=self.checkpoint,
            seed=self.seed,
            precision=self.precision,
        )


def _exported(repository: Path, family: Family) -> bool:
    return all((repository / model / VERSION / ONNX_FILE).exists() for model in (family.encoder, family.decoder))


@contextmanager
def _server_url(job: BenchJob, settings: Settings) -> Iterator[tuple[str, str]]:
    """(gRPC url, description): the given server, or one started on free ports for the run."""
    if job.url:
        yield job.url, f"the server at {job.url}"
        return
    ports = dict(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with TritonServer(job.repository_path, "cpu", dataclasses.replace(settings.server, **ports)) as server:
        yield server.grpc_url, f"started by the benchmark on {job.repository_path} (cpu configs)"


@contextmanager
def _open_runner(
    mode: str, job: BenchJob, sam, workload: Workload, settings: Settings, result: BenchResult
) -> Iterator[Runner]:
    repository = job.repository_path
    if mode == "eager":
        yield EagerRunner(sam, workload)
    elif mode == "torch-fp16":
        yield TorchEncoderRunner(sam, workload)
    elif mode == "onnxruntime":
        yield OnnxRuntimeRunner(mode, job.onnxruntime.predictor(repository, job.family), workload)
    elif mode == "onnxruntime-int8":
        with tempfile.TemporaryDirectory(prefix="perceptserve-int8-") as folder:
            int8 = job.onnxruntime.predictor(quantized_repository(repository, Path(folder), job.family), job.family)
            result.int8 = mask_agreement(job.onnxruntime.predictor(repository, job.family), int8, workload.image)
            yield OnnxRuntimeRunner(mode, int8, workload)
    elif mode == "triton":
        with _server_url(job, settings) as (url, description):
            runner = TritonRunner(url, workload, job.concurrency, job.family)
            try:
                result.versions["tritonserver"] = runner.server_version()
                result.options["server"] = description
                if job.start_server:  # nothing has been sent to this server yet
                    result.cold_start = first_request_ratio(runner.client, Workload(workload.image))
                if sam is not None:  # what the served masks cost in quality (an int8 encoder)
                    result.served_agreement = mask_agreement(predictor_for(sam), runner.client, workload.image)
                yield runner
            finally:
                runner.close()


def _progress(record: Record) -> None:
    lat = record.latency
    batch = f" batch {record.batch}" if record.batch > 1 else ""
    print(
        f"    {record.mode} {record.stage}{batch}, concurrency {record.concurrency}: p50 {lat.p50_ms:.1f} ms, "
        f"p99 {lat.p99_ms:.1f} ms, {lat.throughput_per_s:.2f} images/s",
        file=sys.stderr,
        flush=True,
    )


def run_mode(runner: Runner, requests: int, warmup: int) -> Iterator[Record]:
    """Every stage at every concurrency level; the server's counters are read after the warm-up
    and after the timed requests, so its split covers exactly the timed ones."""
    for stage in runner.stages():
        for concurrency in runner.concurrency_levels:
            measurement = measure(stage, requests, warmup, concurrency, snapshot=runner.statistics)
            after = runner.statistics()
            record = Record(
                mode=runner.mode,
                stage=stage.name,
                concurrency=concurrency,
                latency=measurement.summary,
                warmup_ms=measurement.warmup_ms,
                batch=stage.items_per_request,
                server=delta(measurement.before, after) if after else None,
            )
            _progress(record)
            yield record


def encoder_floor(sam, precision: str, eager_request: Record | None) -> dict:
    """`floor.vit_encoder_floor` on the official encoder, with the int8 export's linear layers
    (its first block's in fp32, as `INT8_FP32_SCOPES` keeps them), over eager's request p50."""
    int8 = precision == "int8"
    scopes = tuple(scope.removeprefix("image_encoder.") for scope in INT8_FP32_SCOPES) if int8 else ()
    result = vit_encoder_floor(sam.image_encoder, int8=int8, fp32_scopes=scopes)
    eager_ms = eager_request.latency.p50_ms if eager_request else None
    result["over_eager_request"] = ratio(result["seconds"] * 1e3, eager_ms)
    return result


def run(job: BenchJob, settings: Settings) -> BenchResult:
    job.check()
    job.out.mkdir(parents=True, exist_ok=True)
    needs_repository = any(mode in ONNX_MODES for mode in job.modes) or ("triton" in job.modes and job.start_server)
    export = needs_repository and not _exported(job.repository_path, job.family)
    needs_sam = "eager" in job.modes or "torch-fp16" in job.modes
    floor = "eager" in job.modes and isinstance(registry.resolve(job.model, job.family), registry.ViTConfig)
    steps = Steps(total=export + bool(job.perf_analyzer_data) + needs_sam + len(job.modes) + floor + 1)
    workload = Workload(sample_photo())
    result = BenchResult(
        family=job.family.name,
        model_type=job.model_type,
        weights=job.weights,
        command=job.command(),
        machine=records.machine_info(),
        versions=records.versions(tritonserver=None),
        options={
            "modes": list(job.modes),
            "concurrency": list(job.concurrency),
            "requests": job.requests,
            "warmup": job.warmup,
            "image": SAMPLE_IMAGE,
            "precision": job.precision,
            "onnxruntime": job.onnxruntime.to_json(),
            "server": None,
        },
    )
    if export:
        with steps.step(f"exporting {job.model_type} to {job.repository_path}"):
            report = export_repository(job.export_job(), settings)
            result.export_parity = {"passed": report.passed, "min_mask_iou": report.min_iou}
    if job.perf_analyzer_data:
        with steps.step(f"writing perf_analyzer input data to {job.perf_analyzer_data}"):
            write_input_data(workload, job.perf_analyzer_data)
    sam = None
    if needs_sam:
        with steps.step("loading the official model for the eager mode"):
            sam = load_model(job.export_job())
    with torch.no_grad():
        for mode in job.modes:
            with steps.step(f"timing {mode}"), _open_runner(mode, job, sam, workload, settings, result) as runner:
                result.records.extend(run_mode(runner, job.requests, job.warmup))
    if result.int8 is not None:
        fp32, int8 = result.find("onnxruntime", "encoder"), result.find("onnxruntime-int8", "encoder")
        result.int8["encoder_speedup"] = ratio(fp32.latency.p50_ms, int8.latency.p50_ms) if fp32 else None
    if floor:
        with steps.step("timing this CPU's GEMM kernels for the encoder's arithmetic floor"):
            result.floor = encoder_floor(sam, job.precision, result.find("eager", "request"))
    result.machine["load_average_1m_end"] = records.load_average()
    with steps.step(f"writing results.json, results.md and latency.png to {job.out}"):
        write_json(result, job.out / "results.json")
        write_markdown(result, job.out / "results.md")
        write_plot(result, job.out / "latency.png")
    return result
