"""Every serving setting in one place. The model repository's configs, the server's flags and
the Helm chart's defaults are written from these; nothing is edited by hand in two places.

Settings are frozen dataclasses; override them in code with `dataclasses.replace`, or with the
environment variables named in `from_env`, which the CLI reads once at start.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from enum import Enum

from .parsing import comma_list, parse_bytes  # noqa: F401  (parse_bytes: PERCEPTSERVE_MEMORY_BUDGET)


class DeploymentTarget(str, Enum):
    """Where a model repository is served; each model has one config per target
    (`configs/<value>.pbtxt`, chosen at start with `--model-config-name`). A str enum, so the
    value is also the plain name the CLI and the launcher take."""

    CPU = "cpu"  # the embedded tritonserver: python backend + ONNX Runtime
    GPU = "gpu"  # NGC's tritonserver image: onnxruntime backend with TensorRT, or TensorRT plans


# Export precisions. int8 is for the cpu target (ONNX Runtime); the gpu target of an int8 export
# runs the fp32 graph through TensorRT in fp16.
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class InstanceCounts:
    cpu: int
    gpu: int

    def for_target(self, target: DeploymentTarget | str) -> int:
        return self.cpu if DeploymentTarget(target) is DeploymentTarget.CPU else self.gpu


@dataclass(frozen=True)
class EncoderBatching:
    """Dynamic batching of the image encoder: concurrent clients' images share one run."""

    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = (4, 8)
    max_queue_delay_us: int = 2000
    # Back-pressure: beyond this many queued requests Triton refuses at once (UNAVAILABLE)
    # rather than letting latency grow without bound.
    max_queue_size: int = 64


@dataclass(frozen=True)
class HQSamServing:
    encoder_batching: EncoderBatching = field(default_factory=EncoderBatching)
    encoder_instances: InstanceCounts = InstanceCounts(cpu=1, gpu=1)
    decoder_instances: InstanceCounts = InstanceCounts(cpu=1, gpu=1)
    python_instances: InstanceCounts = InstanceCounts(cpu=2, gpu=4)  # pre/post-processing
    # Untrusted-input limits, enforced by the preprocessing model.
    max_image_pixels: int = 40_000_000
    max_prompt_sets: int = 64
    max_points: int = 64
    mask_threshold: float = 0.0
    # Warm-up requests run before a model reports READY, so the first user does not pay them.
    warmup: bool = True
    # The response cache keyed by the preprocessed image is what makes a second prompt on the
    # same image skip the encoder (see README, "Embedding reuse").
    encoder_response_cache: bool = True


@dataclass(frozen=True)
class AutomaticLimits:
    """Untrusted-input limits of the automatic mask generators (`<family>_automatic`): one request
    costs crops x points_per_side^2 decoder prompts, so the grid and crop depth are bounded."""

    max_points_per_side: int = 64  # the official default is 32 (1,024 prompts per crop)
    max_points_per_batch: int = 256  # prompt sets per decoder call
    max_crop_n_layers: int = 3  # 1 + 4 + 16 + 64 = 85 crops, each one encoder run
    max_crop_n_points_downscale_factor: int = 16
    max_stability_score_offset: float = 100.0
    max_min_mask_region_area: int = 1_000_000
    # Full-resolution logits are upscaled this many pixels at a time (memory per step).
    upscale_chunk_pixels: int = 1 << 24


@dataclass(frozen=True)
class AutomaticServing:
    limits: AutomaticLimits = field(default_factory=AutomaticLimits)
    # Each instance runs one image's generation at a time (its BLS calls keep the models busy).
    instances: InstanceCounts = InstanceCounts(cpu=1, gpu=2)


@dataclass(frozen=True)
class DatasetDMServing:
    """The DatasetDM models' instances: the diffusion parts (UNet, feature extractor, VAE, text
    encoder) are large, the P-Decoders small."""

    diffusion_instances: InstanceCounts = InstanceCounts(cpu=1, gpu=1)
    decoder_instances: InstanceCounts = InstanceCounts(cpu=1, gpu=1)
    python_instances: InstanceCounts = InstanceCounts(cpu=1, gpu=2)  # annotate pre/post-processing
    # One generate instance runs one denoising loop at a time (its BLS calls keep the UNet busy);
    # more instances overlap loops where the UNet has instances to spare.
    generate_instances: InstanceCounts = InstanceCounts(cpu=1, gpu=1)
    # DatasetDM reads the features at the last of 50 PNDM steps, t = 1; annotation noises a real
    # image's latents to the same step.
    annotation_timestep: int = 1
    # Untrusted-input limits, enforced by the python models.
    max_image_pixels: int = 40_000_000
    annotate_max_side: int = 512  # annotated images are resized to fit, sides multiples of 64
    max_generate_side: int = 1024
    max_steps: int = 200
    min_guidance: float = 1.0  # classifier-free guidance always runs the doubled batch
    max_guidance: float = 30.0
    max_classes: int = 32
    max_generations: int = 8  # images (seeds) per generate request, denoised in one loop
    # Class names the decoder was trained for; empty: any name (an open-vocabulary decoder).
    class_vocabulary: tuple[str, ...] = ()
    # The instance decoder's categories, its label order; empty: COCO's 80 (DatasetDM's checkpoint).
    instance_categories: tuple[str, ...] = ()
    # Instance inference (DatasetDM's values): the best `max_instances` by score, none under the
    # threshold; requests may change both, up to `max_instances_limit`.
    max_instances: int = 20
    max_instances_limit: int = 100
    score_threshold: float = 0.4


@dataclass(frozen=True)
class CpuOnnxRuntime:
    """ONNX Runtime inside the python backend, for every ONNX model on the `cpu` target."""

    threads: int = 0  # intra-op threads per model instance (0: one per core)
    # Idle intra-op threads spin-wait (ONNX Runtime's default). Where several model instances share
    # few cores, spinning threads can steal time from busy ones: PERCEPTSERVE_ORT_SPINNING=0.
    allow_spinning: bool = True
    # ONNX Runtime's CPU arena keeps the peak of the largest run for the session's life: on for
    # every model with True, else only where a definition asks for it (`ModelDefinition.memory_arena`:
    # the HQ-SAM decoder). Off, each run's activations go back to the system: a served 512x512
    # DatasetDM generate left 8.6 GB held in its models' arenas (`onnxruntime_session.cpu_session`).
    memory_arena: bool = False


@dataclass(frozen=True)
class MemoryBudget:
    """What the batched models may use, for their batch limits (`model_repository/memory.py`).

    Args:
        budget_bytes: the server's memory; None: the container's cgroup limit, else the machine's
            (PERCEPTSERVE_MEMORY_BUDGET, the chart's `memoryBudget`; "12G" and "512Mi" are read too).
        reserve_bytes: kept out of the budget for tritonserver, the python stubs and the unbatched
            models (the decoders), which are not measured.
    """

    budget_bytes: int | None = None
    reserve_bytes: int = 2 << 30


@dataclass(frozen=True)
class GpuOnnxRuntime:
    """The ONNX Runtime backend's TensorRT execution provider in the `gpu` configs."""

    precision_mode: str = "FP16"
    max_workspace_size_bytes: int = 4 << 30
    engine_cache_path: str = "/cache/tensorrt"


# Triton APIs that let a caller read or change the server itself, not run inference. With an API
# key they answer only requests carrying it (the Helm chart always sets one).
RESTRICTED_APIS = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")
API_KEY_HEADER = "perceptserve-api-key"


def grpc_key_metadata(key: str) -> dict[str, str]:
    """The gRPC metadata that carries the key: Triton reads it as `triton-grpc-protocol-<header>`."""
    return {f"triton-grpc-protocol-{API_KEY_HEADER}": key}


@dataclass(frozen=True)
class ServerSettings:
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    response_cache_bytes: int = 1 << 30
    exit_timeout_s: int = 30
    startup_timeout_s: float = 600.0
    # Initial shared-memory region per python-backend model instance; it grows on demand.
    python_shm_default_bytes: int = 16 << 20
    python_shm_growth_bytes: int = 16 << 20
    api_key: str | None = None  # restricts `restricted_apis` when set
    api_key_header: str = API_KEY_HEADER
    restricted_apis: tuple[str, ...] = RESTRICTED_APIS
    # `perceptserve serve` restarts the server when a python-backend stub dies, this many times.
    stub_restart_limit: int = 5
    # On SIGTERM `perceptserve serve` waits at most this long for Triton to hold no request, then
    # passes the signal on; Triton then waits up to exit_timeout_s. A pod's grace period covers both.
    drain_timeout_s: int = 60
    # `perceptserve serve`'s own health endpoint (/ready sees dead python stubs); None: none.
    health_port: int | None = None
    # Copy tritonserver's log to standard output too (in a container, where `kubectl logs` reads).
    log_to_stdout: bool = False
    # Further tritonserver arguments, appended to those built from the fields above.
    tritonserver_args: tuple[str, ...] = ()
    # glibc's malloc asks for transparent huge pages on what it maps (GLIBC_TUNABLES
    # glibc.malloc.hugetlb=1 in tritonserver's environment, which the python stubs inherit). With
    # ONNX Runtime's arena off each run's large activations are mapped anew: on 4 KiB pages the
    # int8 vit_b encoder took 188k page faults a run, on 2 MiB pages 870, and 12% less time. Off by
    # default: the full-size DatasetDM server then held 150 MiB more at ready (8.13 GiB, over its
    # 8 GiB target) and its generate ran no faster. PERCEPTSERVE_MALLOC_HUGE_PAGES=1 for HQ-SAM.
    malloc_huge_pages: bool = False


@dataclass(frozen=True)
class Settings:
    hqsam: HQSamServing = field(default_factory=HQSamServing)
    datasetdm: DatasetDMServing = field(default_factory=DatasetDMServing)
    automatic: AutomaticServing = field(default_factory=AutomaticServing)
    cpu_onnxruntime: CpuOnnxRuntime = field(default_factory=CpuOnnxRuntime)
    gpu_onnxruntime: GpuOnnxRuntime = field(default_factory=GpuOnnxRuntime)
    memory: MemoryBudget = field(default_factory=MemoryBudget)
    server: ServerSettings = field(default_factory=ServerSettings)


def yes(value: str) -> bool:
    """An environment flag: 1, true or yes (any case) is on; anything else is off."""
    return value.lower() in ("1", "true", "yes")


ENV_OVERRIDES = {
    "PERCEPTSERVE_MAX_IMAGE_PIXELS": ("hqsam", "max_image_pixels", int),
    "PERCEPTSERVE_ORT_THREADS": ("cpu_onnxruntime", "threads", int),
    "PERCEPTSERVE_ORT_SPINNING": ("cpu_onnxruntime", "allow_spinning", yes),
    "PERCEPTSERVE_MALLOC_HUGE_PAGES": ("server", "malloc_huge_pages", yes),
    "PERCEPTSERVE_MEMORY_BUDGET": ("memory", "budget_bytes", parse_bytes),
    "PERCEPTSERVE_RESPONSE_CACHE_BYTES": ("server", "response_cache_bytes", int),
    "PERCEPTSERVE_API_KEY": ("server", "api_key", str),
    "PERCEPTSERVE_API_KEY_HEADER": ("server", "api_key_header", str),
    "PERCEPTSERVE_RESTRICTED_APIS": ("server", "restricted_apis", comma_list),
    "PERCEPTSERVE_DATASETDM_CLASSES": (
        "datasetdm",
        "class_vocabulary",
        comma_list,
    ),
    "PERCEPTSERVE_DATASETDM_INSTANCE_CATEGORIES": (
        "datasetdm",
        "instance_categories",
        comma_list,
    ),
}


def from_env(environ: dict[str, str] | None = None) -> Settings:
    """Defaults, with the few values operators tune per deployment taken from the environment."""
    environ = os.environ if environ is None else environ
    settings = Settings()
    for variable, (section, name, parse) in ENV_OVERRIDES.items():
        if variable in environ:
            part = dataclasses.replace(getattr(settings, section), **{name: parse(environ[variable])})
            settings = dataclasses.replace(settings, **{section: part})
    return settings
