"""Batch limits from memory: each batched model's measured memory line, the budget it must fit,
and the `max_batch_size` / preferred sizes written into its configs.

Why: one `max_batch_size` for every model size and machine let the dynamic batcher join 7 vit_h
images into one encoder run that needed 23 GB on a 24 GB machine, and the kernel killed the stub.
Now the export measures `peak(n) = fixed + n * per_item` (`export/memory_probe.py`) and records
it in `<repo>/<model>/memory.json`; `fit_repository` then writes, for each recorded model and the
guard in front of it (`guard.py`), the largest batch that fits

    budget - reserve - sum(every recorded model's fixed) >= sum over recorded models of n_i * per_item_i

with the room shared equally between the recorded models (so all of them may run their largest
batch at once), capped by the settings' `max_batch_size`. A request beyond that waits in the
guard's queue, or is refused UNAVAILABLE when the queue is full: admission, not an OOM.

The budget: `MemoryBudget.budget_bytes` (settings, PERCEPTSERVE_MEMORY_BUDGET, the chart's
`memoryBudget`), else the container's cgroup limit (a pod's `resources.limits.memory`), else the
machine's memory. The `gpu` configs keep the settings' limits: the same arithmetic would take a
record measured on the GPU (the probe's batches of 1 and 2 under the CUDA/TensorRT provider, read
as the device's peak used memory) and the GPU's memory as the budget; this machine has no GPU to
measure on (README, "Memory-aware batching").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from perceptserve.parsing import comma_list
from perceptserve.settings import MemoryBudget

from . import configs

RECORD_FILE = "memory.json"
GIB = 1 << 30
CGROUP_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
_UNLIMITED = 1 << 60  # cgroup v1 writes a huge number for "no limit"


@dataclass(frozen=True)
class MemoryRecord:
    """A model's measured memory: `fixed_bytes + n * per_item_bytes` at batch n (peaks: as measured)."""

    model: str
    fixed_bytes: int
    per_item_bytes: int
    peaks: dict[int, int]

    def write(self, repository: Path) -> Path:
        path = Path(repository) / self.model / RECORD_FILE
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> MemoryRecord:
        data = json.loads(Path(path).read_text())
        data["peaks"] = {int(batch): int(peak) for batch, peak in data["peaks"].items()}
        return cls(**data)


def records(repository: Path) -> dict[str, MemoryRecord]:
    return {path.parent.name: MemoryRecord.read(path) for path in sorted(Path(repository).glob(f"*/{RECORD_FILE}"))}


def container_limit(files=CGROUP_FILES) -> int | None:
    """The cgroup's memory limit (v2, else v1), None where there is none."""
    for name in files:
        try:
            text = Path(name).read_text().strip()
        except OSError:
            continue
        if text != "max" and int(text) < _UNLIMITED:
            return int(text)
    return None


def machine_memory(meminfo: str = "/proc/meminfo") -> int:
    for line in Path(meminfo).read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no MemTotal in {meminfo}")


def budget_bytes(settings: MemoryBudget) -> int:
    """The memory the server may use: the setting, else the container's limit, else the machine's."""
    return settings.budget_bytes or container_limit() or machine_memory()


def batch_limits(found: dict[str, MemoryRecord], budget: int, reserve: int, cap: int) -> dict[str, int]:
    """{model: largest batch} so that all recorded models' largest batches fit `budget` at once;
    at least 1 (a model that cannot run one item is still served one request at a time, and the
    caller warns)."""
    room = budget - reserve - sum(record.fixed_bytes for record in found.values())
    share = room / max(1, len(found))
    return {name: max(1, min(cap, int(share // record.per_item_bytes))) for name, record in found.items()}


def preferred_sizes(preferred: tuple[int, ...], limit: int) -> list[int]:
    return sorted({size for size in preferred if size < limit} | {limit})


def _fit(path: Path, limit: int, preferred: tuple[int, ...] | None) -> None:
    config = configs.parse(path.read_text())
    config.max_batch_size = limit
    if preferred is not None:
        del config.dynamic_batching.preferred_batch_size[:]
        config.dynamic_batching.preferred_batch_size.extend(preferred_sizes(preferred, limit))
    path.write_text(configs.to_text(config))


def fit_repository(repository: Path, settings: MemoryBudget) -> dict[str, int]:
    """Rewrite the `cpu` configs of every guard whose model has a memory record, and of that model,
    with the batch limits the budget allows (never above the settings' limits the guard's config
    carries); returns {model: limit} ({} where nothing is recorded)."""
    found = records(repository)
    guards = {}
    for path in sorted(Path(repository).glob("*/configs/cpu.pbtxt")):
        parameters = {key: value.string_value for key, value in configs.parse(path.read_text()).parameters.items()}
        if parameters.get("inner_model") in found:
            guards[parameters["inner_model"]] = (path, parameters)
    if not guards:
        return {}
    found = {model: found[model] for model in guards}
    cap = max(int(parameters["settings_max_batch_size"]) for _, parameters in guards.values())
    limits = batch_limits(found, budget_bytes(settings), settings.reserve_bytes, cap)
    for model, (path, parameters) in guards.items():
        limit = min(limits[model], int(parameters["settings_max_batch_size"]))
        limits[model] = limit
        preferred = tuple(int(size) for size in comma_list(parameters["settings_preferred_batch_sizes"]))
        _fit(path, limit, preferred)
        _fit(Path(repository) / model / "configs" / "cpu.pbtxt", limit, None)
    return limits


def describe(repository: Path, settings: MemoryBudget, limits: dict[str, int]) -> str:
    """One line per fitted model: its memory line, the budget and the batch limit written."""
    budget = budget_bytes(settings)
    found = records(repository)
    lines = [
        f"{model}: {found[model].fixed_bytes / GIB:.2f} GiB + {found[model].per_item_bytes / GIB:.2f} GiB per image; "
        f"budget {budget / GIB:.1f} GiB (reserve {settings.reserve_bytes / GIB:.1f}): max_batch_size {limit}"
        for model, limit in limits.items()
    ]
    return "\n".join(lines) or f"no memory records in {repository}: batch limits as in the settings"
