"""Triton's own account of where a run's time went, from its statistics API.

Triton keeps cumulative counters per model (requests, executions, and the nanoseconds spent
queued, gathering inputs, inferring and returning outputs, cache hits and misses). The
benchmark snapshots them before and after each timed run and keeps the difference, so the
split covers that run only (not the warm-up, the model warm-up at load, or another run).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

PHASES = ("success", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


@dataclass(frozen=True)
class Duration:
    count: int = 0
    ns: int = 0

    def __add__(self, other: Duration) -> Duration:
        return Duration(self.count + other.count, self.ns + other.ns)

    def __sub__(self, other: Duration) -> Duration:
        return Duration(self.count - other.count, self.ns - other.ns)

    @property
    def mean_ms(self) -> float | None:
        return self.ns / self.count / 1e6 if self.count else None


@dataclass(frozen=True)
class ModelStatistics:
    """One model's counters (summed over its versions) as Triton reports them."""

    model: str
    inference_count: int = 0  # requests' items (a batch of 4 counts 4)
    execution_count: int = 0  # model executions (a batch of 4 counts 1)
    success: Duration = Duration()
    queue: Duration = Duration()
    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()
    cache_hit: Duration = Duration()
    cache_miss: Duration = Duration()

    @classmethod
    def from_json(cls, model: str, response: dict) -> ModelStatistics:
        """From `get_inference_statistics(model, as_json=True)`: protobuf JSON, where 64-bit
        counters are strings and zero counters are left out."""
        totals = {"inference_count": 0, "execution_count": 0, **{phase: Duration() for phase in PHASES}}
        for entry in response.get("model_stats", []):
            if entry.get("name") != model:
                continue
            totals["inference_count"] += int(entry.get("inference_count", 0))
            totals["execution_count"] += int(entry.get("execution_count", 0))
            stats = entry.get("inference_stats", {})
            for phase in PHASES:
                value = stats.get(phase, {})
                totals[phase] = totals[phase] + Duration(int(value.get("count", 0)), int(value.get("ns", 0)))
        return cls(model=model, **totals)

    def __sub__(self, before: ModelStatistics) -> ModelStatistics:
        values = {f.name: getattr(self, f.name) - getattr(before, f.name) for f in fields(self) if f.name != "model"}
        return ModelStatistics(model=self.model, **values)

    def split(self) -> dict:
        """Per-request means in ms, the average batch size and the cache counts: the figures
        the report shows beside the client-side latency."""
        return {
            "requests": self.success.count,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "average_batch_size": self.inference_count / self.execution_count if self.execution_count else None,
            "queue_ms": self.queue.mean_ms,
            "compute_input_ms": self.compute_input.mean_ms,
            "compute_infer_ms": self.compute_infer.mean_ms,
            "compute_output_ms": self.compute_output.mean_ms,
            "request_ms": self.success.mean_ms,
            "cache_hits": self.cache_hit.count,
            "cache_misses": self.cache_miss.count,
        }


def snapshot(client, models: tuple[str, ...]) -> dict[str, ModelStatistics]:
    """Every named model's counters now; `client` is a `tritonclient.grpc.InferenceServerClient`."""
    return {
        model: ModelStatistics.from_json(model, client.get_inference_statistics(model, as_json=True))
        for model in models
    }


def delta(before: dict[str, ModelStatistics], after: dict[str, ModelStatistics]) -> dict[str, dict]:
    """The split of what happened between two snapshots, per model."""
    return {model: (after[model] - before[model]).split() for model in after}
