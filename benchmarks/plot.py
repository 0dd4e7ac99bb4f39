"""`latency.png`: latency percentiles and throughput against concurrency, one line per mode and
stage. Drawn on a bare Agg canvas, not pyplot, so that no global backend or figure state is
touched (the benchmark may run inside another program)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from perceptserve.hqsam.families import by_name

from .records import BenchResult, Record

PERCENTILE_STYLES = (("p50_ms", "-", "p50"), ("p90_ms", "--", "p90"), ("p99_ms", ":", "p99"))


def _series(result: BenchResult) -> dict[str, list[Record]]:
    series: dict[str, list[Record]] = defaultdict(list)
    for record in result.records:
        label = f"{record.mode} {record.stage}" + (f" (batch {record.batch})" if record.batch > 1 else "")
        series[label].append(record)
    return {label: sorted(records, key=lambda r: r.concurrency) for label, records in series.items()}


def write_plot(result: BenchResult, path: Path) -> Path:
    figure = Figure(figsize=(13, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    latency, throughput = figure.subplots(1, 2)
    for index, (label, records) in enumerate(_series(result).items()):
        colour = f"C{index % 10}"
        levels = [r.concurrency for r in records]
        for field, style, name in PERCENTILE_STYLES:
            values = [getattr(r.latency, field) for r in records]
            legend = f"{label} {name}" if name == "p50" else None
            latency.plot(levels, values, linestyle=style, marker="o", color=colour, label=legend)
        throughput.plot(levels, [r.latency.throughput_per_s for r in records], marker="o", color=colour, label=label)
    latency.set(
        xlabel="concurrent requests",
        ylabel="latency (ms; p50 solid, p90 dashed, p99 dotted)",
        yscale="log",
        title=f"{by_name(result.family).title} {result.model_type}: latency",
    )
    throughput.set(xlabel="concurrent requests", ylabel="images / s", yscale="log", title="throughput")
    levels = sorted({r.concurrency for r in result.records})
    for axes in (latency, throughput):
        axes.set_xticks(levels)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
    figure.savefig(path, dpi=110)
    return path
