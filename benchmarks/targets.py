"""The issue's performance targets and how far a run is from each. Reported, never asserted:
a figure measured on a busy machine is still worth reading beside its target.

Every target is a ratio of two figures measured side by side in the same run (or, on a GPU,
ms per image against published figures), so machine speed mostly cancels out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .records import BenchResult
from .statistics import ratio

GPU_FLOOR_MS = 8.0  # ViT-H's ~3 TMAC per image at H100 dense fp16 throughput
SAM_FAST_A100_MS = 48.0  # segment-anything-fast's published ViT-H encoder figure on an A100


@dataclass(frozen=True)
class Target:
    key: str
    title: str
    limit: float
    unit: str  # "x" (a ratio) or "ms/image"
    measure: Callable[[BenchResult], float | None]
    model_type: str | None = None  # the model the target is set for; None: any
    gpu: bool = False
    precision: str | None = None  # the export precision the target is set for; None: any
    floor: Callable[[BenchResult], float | None] | None = None  # the least the measure can be here

    def format(self, value: float) -> str:
        return f"{value:.3f}x" if self.unit == "x" else f"{value:.1f} ms/image"


@dataclass(frozen=True)
class Verdict:
    target: Target
    measured: float | None
    status: str  # "met", "missed" or "not measured"
    distance: str
    note: str

    def to_json(self) -> dict:
        return {
            "key": self.target.key,
            "title": self.target.title,
            "limit": self.target.limit,
            "unit": self.target.unit,
            "model_type": self.target.model_type,
            "measured": self.measured,
            "status": self.status,
            "distance": self.distance,
            "note": self.note,
        }


def _p50(result: BenchResult, mode: str, stage: str, batch: int = 1) -> float | None:
    record = result.find(mode, stage, 1, batch)
    return None if record is None else record.p50_per_image_ms


def _served_request_ratio(result: BenchResult) -> float | None:
    return ratio(_p50(result, "triton", "request"), _p50(result, "eager", "request"))


def _floor_ratio(result: BenchResult) -> float | None:
    """The encoder's arithmetic floor (`floor.vit_encoder_floor`) over eager's request p50."""
    return result.floor["over_eager_request"] if result.floor else None


def _cold_start_ratio(result: BenchResult) -> float | None:
    return result.cold_start["ratio"] if result.cold_start else None


TARGETS = (
    Target(
        "served_request_vs_eager",
        "served request p50 / eager set_image + predict p50 (concurrency 1)",
        0.6,
        "x",
        _served_request_ratio,
        model_type="vit_b",
        floor=_floor_ratio,
    ),
    Target(  # issue 15: an int8 encoder on the cpu target
        "served_request_vs_eager_int8",
        "served request p50 / eager set_image + predict p50, int8 encoder (concurrency 1)",
        0.30,
        "x",
        _served_request_ratio,
        model_type="vit_b",
        precision="int8",
        floor=_floor_ratio,
    ),
    Target(
        "served_encoder_overhead",
        "served encoder p50 / direct ONNX Runtime encoder p50 (concurrency 1)",
        1.05,
        "x",
        lambda r: ratio(_p50(r, "triton", "encoder"), _p50(r, "onnxruntime", "encoder")),
    ),
    Target(
        "second_prompt",
        "second prompt on the same image / first request, served p50 (concurrency 1)",
        0.05,
        "x",
        lambda r: ratio(_p50(r, "triton", "prompt"), _p50(r, "triton", "request")),
    ),
    Target(
        "cold_start",
        "first request after ready / median of the next five (new images)",
        1.15,
        "x",
        _cold_start_ratio,
    ),
    *(
        Target(
            f"gpu_encoder_fp16_batch{batch}",
            f"torch fp16 encoder ms/image at batch {batch}, "
            f"against segment-anything-fast's A100 {SAM_FAST_A100_MS:g} ms",
            SAM_FAST_A100_MS,
            "ms/image",
            lambda r, b=batch: _p50(r, "torch-fp16", "encoder", b),
            model_type="vit_h",
            gpu=True,
            floor=lambda r: GPU_FLOOR_MS,
        )
        for batch in (1, 8)
    ),
)


def _distance(measured: float, limit: float) -> str:
    if measured <= limit:
        return f"{1 - measured / limit:.0%} under the limit"
    return f"{measured / limit - 1:.0%} over the limit (needs {measured / limit:.2f}x less)"


def verdicts(result: BenchResult) -> list[Verdict]:
    """A verdict per target; GPU targets only when the run had a GPU."""
    out = []
    for target in TARGETS:
        if (target.gpu and not result.has_gpu) or target.precision not in (None, result.options.get("precision")):
            continue
        measured = target.measure(result)
        notes = []
        if target.model_type and target.model_type != result.model_type:
            notes.append(f"set for {target.model_type}; indicative on {result.model_type}")
        floor = target.floor(result) if target.floor else None
        if floor and measured is not None:
            notes.append(f"{measured / floor:.2f}x its compute floor ({target.format(floor)})")
        if measured is None:
            out.append(Verdict(target, None, "not measured", "", "; ".join(notes)))
        else:
            status = "met" if measured <= target.limit else "missed"
            out.append(Verdict(target, measured, status, _distance(measured, target.limit), "; ".join(notes)))
    return out
