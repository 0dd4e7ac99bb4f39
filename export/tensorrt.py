"""TensorRT engines from the exported ONNX files, with one optimisation profile per model.

Needs the `tensorrt` package and an NVIDIA GPU; the engine must be built by the same TensorRT
version as the serving image's and on the GPU architecture it will run on. Where either is
missing this stops with a message that says so. The `gpu` configs switch a model to
`tensorrt_plan` when its version folder holds `model.plan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from perceptserve.errors import UserError


class TensorRTUnavailable(UserError, RuntimeError):
    pass


@dataclass(frozen=True)
class Profile:
    """min / opt / max shape of each dynamic input."""

    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def hqsam_profiles(max_batch_size: int, max_prompt_sets: int, max_points: int, hq: bool = True) -> dict[str, Profile]:
    """Profiles for a SAM family's encoder and decoder from the serving limits.

    Decoder points: P' = points + 2 (box corners, or the padding point) per prompt set. Plain
    SAM's decoder also takes the mask tokens to return: 1, or 3 with multimask_output.
    """
    encoder = Profile(
        {
            "image": (
                (1, 1024, 1024, 3),
                (max(1, max_batch_size // 2), 1024, 1024, 3),
                (max_batch_size, 1024, 1024, 3),
            ),
            "input_size": ((1, 2), (max(1, max_batch_size // 2), 2), (max_batch_size, 2)),
        }
    )
    sets, points = max_prompt_sets, max_points + 2
    decoder = Profile(
        {
            "point_coords": ((1, 0, 2), (1, 2, 2), (sets, points, 2)),
            "point_labels": ((1, 0), (1, 2), (sets, points)),
            "mask_input": ((1, 1, 256, 256), (1, 1, 256, 256), (sets, 1, 256, 256)),
            **({} if hq else {"mask_slots": ((1,), (1,), (3,))}),
        }
    )
    return {"encoder": encoder, "decoder": decoder}


def require_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise TensorRTUnavailable(
            "--tensorrt needs the `tensorrt` package (pip install 'perceptserve[gpu]', or run in the NGC "
            "Triton image) and an NVIDIA GPU; none is installed here"
        ) from None
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        raise TensorRTUnavailable("--tensorrt needs an NVIDIA GPU to build engines for; none is visible")
    return tensorrt


def build_engine(
    onnx_path: Path, plan_path: Path, profile: Profile, fp16: bool, workspace_bytes: int = 4 << 30
) -> Path:
    """Parse `onnx_path`, build a serialized engine with `profile`, write it to `plan_path`."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    optimisation = builder.create_optimization_profile()
    for name, (low, opt, high) in profile.shapes.items():
        optimisation.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimisation)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    plan_path.write_bytes(bytes(serialized))
    return plan_path
