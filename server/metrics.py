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


def in_flight(metrics_text: str, entries: dict[str, str]) -> int:
    """Requests Triton holds: queued in any model, plus ensemble requests past their first step
    and not yet answered (first-step completions minus ensemble completions)."""
    values: dict[tuple[str, str], float] = {}
    for line in metrics_text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            key = (match.group(1), match.group(2))
            values[key] = values.get(key, 0.0) + float(match.group(3))

    def completed(model: str) -> float:
        return values.get(("nv_inference_request_success", model), 0.0) + values.get(
            ("nv_inference_request_failure", model), 0.0
        )

    queued = sum(v for (name, _), v in values.items() if name == "nv_inference_pending_request_count")
    between_steps = sum(max(completed(first) - completed(ensemble), 0.0) for ensemble, first in entries.items())
    return int(queued + between_steps)


def read_in_flight(metrics_url: str, entries: dict[str, str]) -> int | None:
    """`in_flight` of the server at `metrics_url`; None when it does not answer."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=2) as response:
            return in_flight(response.read().decode(), entries)
    except (urllib.error.URLError, OSError):
        return None
