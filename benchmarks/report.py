"""`results.json` (every figure, for tools) and `results.md` (the tables a person reads, with
ratios to eager and the distance to each target)."""

from __future__ import annotations

import json
from pathlib import Path

from perceptserve.hqsam.families import by_name

from .records import SCHEMA_VERSION, BenchResult, Record
from .statistics import ratio
from .targets import verdicts


def write_results(out: Path, results: dict, text: str) -> None:
    """A benchmark's figures as `results.json` and its tables as `results.md` in `out`, and the
    tables on stdout."""
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(text)
    print(text)


SERVER_COLUMNS = ("queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms")


def to_json(result: BenchResult) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "created": result.created,
        "command": result.command,
        "family": result.family,
        "model_type": result.model_type,
        "weights": result.weights,
        "machine": result.machine,
        "versions": result.versions,
        "options": result.options,
        "records": [record.to_json() for record in result.records],
        "int8": result.int8,
        "export_parity": result.export_parity,
        "served_agreement": result.served_agreement,
        "cold_start": result.cold_start,
        "floor": result.floor,
        "targets": [verdict.to_json() for verdict in verdicts(result)],
    }


def write_json(result: BenchResult, path: Path) -> Path:
    path.write_text(json.dumps(to_json(result), indent=2) + "\n")
    return path


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def ratio_to_eager(result: BenchResult, record: Record) -> float | None:
    """p50 per image against eager's p50 for the same stage, one request at a time."""
    eager = result.find("eager", record.stage)
    return ratio(record.p50_per_image_ms, None if eager is None else eager.p50_per_image_ms)


def _header(result: BenchResult) -> list[str]:
    machine, versions, options = result.machine, result.versions, result.options
    ort = options.get("onnxruntime", {})
    threads = ort.get("threads", 0)
    return [
        f"# {by_name(result.family).title} benchmark: {result.model_type}",
        "",
        f"Made by `{result.command}` on {result.created}.",
        "",
        f"- Machine: {machine['cpu_model']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['memory_gib']} GiB, load average {machine['load_average_1m']} at the start and "
        f"{machine['load_average_1m_end']} at the end; "
        f"GPU: {machine['gpu'] or 'none'}.",
        f"- Versions: torch {versions['torch']}, onnxruntime {versions['onnxruntime']}, "
        f"tritonserver {versions['tritonserver'] or '(not run)'}, "
        f"segment-anything-hq {versions['segment_anything_hq']}, "
        f"perceptserve {versions['perceptserve']}, Python {versions['python']}.",
        f"- Weights: {result.weights}. Image: {options['image']}.",
        f"- {options['requests']} timed requests per row after {options['warmup']} warm-up request(s) "
        "(excluded from the figures; their latencies are in results.json).",
        f"- Direct ONNX Runtime: {threads or 'one per core'} intra-op threads, graph optimisation "
        f"`{ort.get('graph_optimization_level')}`. Triton: {options.get('server') or 'not run'}.",
        "",
    ]


def _latency_table(result: BenchResult) -> list[str]:
    lines = [
        "## Latency and throughput",
        "",
        "Latency in ms per request, throughput in images per second over the run's wall time; "
        "`vs eager` is p50 per image against eager's p50 for the same stage.",
        "",
        "| mode | stage | concurrency | batch | p50 | p90 | p95 | p99 | images/s | vs eager | warm-up (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result.records:
        warm = ", ".join(_ms(value) for value in r.warmup_ms) or "-"
        lat = r.latency
        lines.append(
            f"| {r.mode} | {r.stage} | {r.concurrency} | {r.batch} | {_ms(lat.p50_ms)} | {_ms(lat.p90_ms)} | "
            f"{_ms(lat.p95_ms)} | {_ms(lat.p99_ms)} | {lat.throughput_per_s:.2f} | {_x(ratio_to_eager(result, r))} | "
            f"{warm} |"
        )
    return lines + [""]


def _server_table(result: BenchResult) -> list[str]:
    served = [r for r in result.records if r.server]
    if not served:
        return []
    lines = [
        "## Triton's split (statistics API, timed requests only)",
        "",
        "Per-request means in ms as Triton measured them; `batch` is inference count / execution "
        "count (dynamic batching at work when above 1); cache hits skip the model.",
        "",
        "| stage | concurrency | model | requests | batch | queue | compute input | infer | compute output "
        "| cache hits / misses |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in served:
        for model, split in r.server.items():
            if not split["requests"]:
                continue
            batch = "-" if split["average_batch_size"] is None else f"{split['average_batch_size']:.2f}"
            times = " | ".join(_ms(split[column]) for column in SERVER_COLUMNS)
            lines.append(
                f"| {r.stage} | {r.concurrency} | {model} | {split['requests']} | {batch} | {times} | "
                f"{split['cache_hits']} / {split['cache_misses']} |"
            )
    return lines + [""]


def _targets_table(result: BenchResult) -> list[str]:
    lines = [
        "## Targets",
        "",
        "Ratios of figures measured side by side in this run; reported, not asserted.",
        "",
        "| target | limit | measured | verdict | distance | note |",
        "|---|---:|---:|---|---|---|",
    ]
    for v in verdicts(result):
        measured = "-" if v.measured is None else v.target.format(v.measured)
        lines.append(
            f"| {v.target.title} | {v.target.format(v.target.limit)} | {measured} | {v.status} | "
            f"{v.distance or '-'} | {v.note or '-'} |"
        )
    return lines + [""]


def _int8_bullets(q: dict) -> list[str]:
    return [
        f"Encoder p50 speed-up against fp32: {_x(q['encoder_speedup'])}.",
        f"Mask IoU against fp32 over {q['cases']} prompt cases: mean {q['mask_iou_mean']:.4f}, "
        f"min {q['mask_iou_min']:.4f} (loss {q['iou_loss']:.4f}).",
    ]


def _served_agreement_bullets(a: dict) -> list[str]:
    return [
        f"Mask IoU of the served `hqsam` ensemble against the official `SamPredictor` (fp32, eager) over "
        f"{a['cases']} prompt cases: mean {a['mask_iou_mean']:.4f}, min {a['mask_iou_min']:.4f}."
    ]


def _cold_start_bullets(c: dict) -> list[str]:
    return [
        f"New image + one point, one at a time on the freshly started server: first {c['first_ms']:,.0f} ms, "
        f"median of the {len(c['latencies_ms']) - 1} after it {c['warm_median_ms']:,.0f} ms: {_x(c['ratio'])}."
    ]


def _floor_bullets(f: dict) -> list[str]:
    flops, rates = f["flops"], f["rates"]
    kinds = ", ".join(f"{kind.replace('_', ' ')} {value / 1e9:,.1f}" for kind, value in flops.items())
    return [
        f"The encoder's FLOPs by kernel (PyTorch's FLOP counter, GFLOP): {kinds}.",
        f"The best rates of ONNX Runtime's kernels at its shapes, timed in this run (GFLOP/s): "
        f"fp32 linear {rates['fp32'] / 1e9:.0f}, int8 linear {rates['int8'] / 1e9:.0f}, "
        f"attention {rates['attention'] / 1e9:.0f}.",
        f"So the encoder's products alone take at least {f['seconds'] * 1e3:,.0f} ms here, every other op free: "
        f"{f['over_eager_request']:.3f}x eager's request p50.",
    ]


# (BenchResult field, heading, its bullets): sections present only when the run measured them.
OPTIONAL_SECTIONS = (
    ("int8", "ONNX Runtime int8 encoder (dynamic quantisation)", _int8_bullets),
    ("served_agreement", "Served masks against the official predictor", _served_agreement_bullets),
    ("cold_start", "First request after ready", _cold_start_bullets),
    ("floor", "The encoder's arithmetic floor on this CPU", _floor_bullets),
)


def _optional_sections(result: BenchResult) -> list[str]:
    lines = []
    for field, title, bullets in OPTIONAL_SECTIONS:
        value = getattr(result, field)
        if value:
            lines += [f"## {title}", "", *(f"- {bullet}" for bullet in bullets(value)), ""]
    return lines


def markdown(result: BenchResult) -> str:
    return "\n".join(
        _header(result)
        + _latency_table(result)
        + _server_table(result)
        + _targets_table(result)
        + _optional_sections(result)
    )


def write_markdown(result: BenchResult, path: Path) -> Path:
    path.write_text(markdown(result))
    return path
