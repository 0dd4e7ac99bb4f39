"""How many requests a tritonserver holds, from its Prometheus metrics and its ensembles.

Triton has no in-flight gauge for ensembles: a request between two steps is in no queue. We
count it as first-step completions not yet matched by an ensemble completion."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

_SAMPLE = re.compile(r'^(nv_inference_\w+)\{.*model="([^"]+)".*\} ([0-9.e+]+)$')


def ensemble_entries(repository: Path, config: str) -> dict[str, str]:
    """{ensemble: the model of its first step}, from the repository's configs."""
    from perceptserve.model_repository.configs import parse

    entries = {}
    for path in Path(repository).glob(f"*/configs/{config}.pbtxt"):
        parsed = parse(path.read_text())
        if parsed.platform == "ensemble" and parsed.ensemble_scheduling.step:
            entries[parsed.name] = parsed.ensemble_scheduling.step[0].model_name
    return entries


def samples(metrics_text: str) -> dict[tuple[str, str], float]:
    """{(metric, model): value} of Triton's per-model samples, summed over versions."""
    values: dict[tuple[str, str], float] = {}
    for line in metrics_text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            key = (match.group(1), match.group(2))
            values[key] = values.get(key, 0.0) + float(match.group(3))
    return values


def completed(values: dict[tuple[str, str], float], model: str) -> float:
    """Requests `model` has answered, successfully or not."""
    return values.get(("nv_inference_request_success", model), 0.0) + values.get(
        ("nv_inference_request_failure", model), 0.0
    )


def in_flight(metrics_text: str, entries: dict[str, str]) -> int:
    """Requests Triton holds: queued in any model, plus ensemble requests past their first step
    and not yet answered (first-step completions minus ensemble completions).

    Not counted, because no metric shows them: requests still on the wire, and requests executing
    in an ensemble's first step. The drain's two quiet polls in a row cover a short first step
    (decoding and resizing an image)."""
    values = samples(metrics_text)
    queued = sum(v for (name, _), v in values.items() if name == "nv_inference_pending_request_count")
    between_steps = sum(
        max(completed(values, first) - completed(values, ensemble), 0.0) for ensemble, first in entries.items()
    )
    return int(queued + between_steps)


def read_in_flight(metrics_url: str, entries: dict[str, str]) -> int | None:
    """`in_flight` of the server at `metrics_url`; None when it does not answer."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            return in_flight(response.read().decode(), entries)
    except (urllib.error.URLError, OSError):
        return None
