"""`perceptserve bench hqsam`: its arithmetic, statistics parsing, targets and reports on recorded
figures, and one smoke run of every CPU mode on the small ViT (one request each). No test
asserts how fast anything is."""

from __future__ import annotations

import base64
import json
import struct
import threading
import time

import numpy as np
import pytest
import torch
from perceptserve.benchmarks import targets
from perceptserve.benchmarks.hqsam import BenchJob, run, run_mode
from perceptserve.benchmarks.perf_analyzer import input_data
from perceptserve.benchmarks.plot import write_plot
from perceptserve.benchmarks.records import BenchResult, Record, machine_info, versions
from perceptserve.benchmarks.report import markdown, ratio_to_eager, to_json, write_json, write_markdown
from perceptserve.benchmarks.runners import TorchEncoderRunner, encoder_feed
from perceptserve.benchmarks.statistics import LatencySummary, percentile, ratio
from perceptserve.benchmarks.timing import Stage, measure, run_calls
from perceptserve.benchmarks.triton_statistics import ModelStatistics, delta
from perceptserve.benchmarks.workload import Workload, sample_photo

from perceptserve.cli import main
from perceptserve.settings import Settings

from .conftest import SMALL_VIT

RECORD_FIELDS = {
    "mode",
    "stage",
    "concurrency",
    "batch",
    "latency_ms",
    "requests",
    "wall_s",
    "throughput_images_per_s",
    "warmup",
    "server",
}
LATENCY_FIELDS = {"mean_ms", "min_ms", "max_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms"}
SPLIT_FIELDS = {
    "requests",
    "inference_count",
    "execution_count",
    "average_batch_size",
    "queue_ms",
    "compute_input_ms",
    "compute_infer_ms",
    "compute_output_ms",
    "request_ms",
    "cache_hits",
    "cache_misses",
}


# --- statistics --------------------------------------------------------------------------------


def test_percentiles_interpolate_between_ranks():
    values = [float(v) for v in range(1, 11)]  # 1..10
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 90) == pytest.approx(9.1)
    assert percentile(values, 95) == pytest.approx(9.55)
    assert percentile(values, 99) == pytest.approx(9.91)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_in_milliseconds_with_throughput_per_image():
    summary = LatencySummary.from_seconds([0.1, 0.2, 0.3, 0.4], wall_s=0.5, items_per_request=8)
    assert summary.count == 4
    assert summary.p50_ms == pytest.approx(250.0)
    assert summary.mean_ms == pytest.approx(250.0)
    assert (summary.min_ms, summary.max_ms) == pytest.approx((100.0, 400.0))
    assert summary.p99_ms == pytest.approx(397.0)
    assert summary.throughput_per_s == pytest.approx(4 * 8 / 0.5)


def test_ratio_is_none_when_a_side_is_missing():
    assert ratio(3.0, 4.0) == 0.75
    assert ratio(None, 4.0) is None and ratio(3.0, None) is None and ratio(3.0, 0.0) is None


# --- Triton's statistics -----------------------------------------------------------------------


def _stats(count, queue_ns, infer_ns, executions, hits=0, misses=0) -> dict:
    """A `get_inference_statistics(as_json=True)` answer as Triton 2.51 gives it: 64-bit counters
    as strings, zero counters left out, one entry per version."""
    stats = {
        "success": {"count": str(count), "ns": str(count * 9_000_000)},
        "queue": {"count": str(count), "ns": str(queue_ns)},
        "compute_input": {"count": str(count), "ns": str(count * 1_000_000)},
        "compute_infer": {"count": str(count), "ns": str(infer_ns)},
        "compute_output": {"count": str(count), "ns": str(count * 500_000)},
        "fail": {},
    }
    if hits:
        stats["cache_hit"] = {"count": str(hits), "ns": "1000"}
    if misses:
        stats["cache_miss"] = {"count": str(misses), "ns": "2000"}
    return {
        "model_stats": [
            {
                "name": "hqsam_encoder",
                "version": "1",
                "last_inference": "1700000000000",
                "inference_count": str(count),
                "execution_count": str(executions),
                "inference_stats": stats,
                "batch_stats": [],
            },
            {"name": "other", "version": "1", "inference_count": "99"},
        ]
    }


def test_statistics_delta_gives_the_runs_split():
    before = ModelStatistics.from_json("hqsam_encoder", _stats(2, 2_000_000, 100_000_000, 2, misses=2))
    after = ModelStatistics.from_json("hqsam_encoder", _stats(10, 34_000_000, 900_000_000, 6, hits=3, misses=7))
    split = delta({"hqsam_encoder": before}, {"hqsam_encoder": after})["hqsam_encoder"]
    assert set(split) == SPLIT_FIELDS
    assert split["requests"] == 8 and split["inference_count"] == 8 and split["execution_count"] == 4
    assert split["average_batch_size"] == pytest.approx(2.0)
    assert split["queue_ms"] == pytest.approx(4.0)  # 32 ms over 8 requests
    assert split["compute_infer_ms"] == pytest.approx(100.0)
    assert split["compute_input_ms"] == pytest.approx(1.0) and split["compute_output_ms"] == pytest.approx(0.5)
    assert split["request_ms"] == pytest.approx(9.0)
    assert (split["cache_hits"], split["cache_misses"]) == (3, 5)


def test_statistics_of_an_idle_model_have_no_means():
    idle = ModelStatistics.from_json("hqsam_encoder", {"model_stats": [{"name": "hqsam_encoder", "version": "1"}]})
    split = (idle - idle).split()
    assert split["requests"] == 0 and split["average_batch_size"] is None and split["queue_ms"] is None


# --- timing ------------------------------------------------------------------------------------


def test_concurrent_calls_keep_at_most_n_in_flight():
    lock, in_flight, peak, seen = threading.Lock(), [0], [0], []

    def call(item):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.02)
        with lock:
            in_flight[0] -= 1
            seen.append(item)

    timed = run_calls(call, list(range(6)), concurrency=2)
    assert sorted(seen) == list(range(6)) and len(timed.latencies_s) == 6
    assert 1 <= peak[0] <= 2


def test_measure_reports_warmup_apart_and_snapshots_after_it():
    events = []
    stage = Stage("encoder", lambda n: list(range(n)), lambda item: events.append(("call", item)))

    def snapshot():
        events.append(("snapshot", None))
        return "counters"

    result = measure(stage, requests=3, warmup=2, concurrency=1, snapshot=snapshot)
    assert events == [("call", 0), ("call", 1), ("snapshot", None), ("call", 2), ("call", 3), ("call", 4)]
    assert result.summary.count == 3 and len(result.warmup_ms) == 2 and result.before == "counters"


def test_variants_are_new_images_to_the_encoder_cache():
    workload = Workload(sample_photo(), nonce=5)
    feeds = [encoder_feed(image)["image"] for image in workload.variants(3)]
    assert not np.array_equal(feeds[0], feeds[1]) and not np.array_equal(feeds[1], feeds[2])
    # Another run (another nonce) sends other images at the same indices.
    first_of_another = Workload(sample_photo(), nonce=6).variants(1)[0]
    assert not np.array_equal(Workload(sample_photo(), nonce=5).variants(1)[0], first_of_another)
    assert not np.array_equal(workload.point(0)["point_coords"], workload.point(1)["point_coords"])


# --- targets and reports on recorded figures ----------------------------------------------------


def _record(mode, stage, p50_s, concurrency=1, batch=1, server=None) -> Record:
    latencies = [p50_s * 0.9, p50_s, p50_s * 1.2]
    return Record(
        mode,
        stage,
        concurrency,
        LatencySummary.from_seconds(latencies, sum(latencies) / concurrency, batch),
        warmup_ms=[p50_s * 2000.0],
        batch=batch,
        server=server,
    )


SPLIT = {
    "requests": 3,
    "inference_count": 3,
    "execution_count": 2,
    "average_batch_size": 1.5,
    "queue_ms": 2.0,
    "compute_input_ms": 1.0,
    "compute_infer_ms": 5200.0,
    "compute_output_ms": 3.0,
    "request_ms": 5300.0,
    "cache_hits": 0,
    "cache_misses": 3,
}


def recorded_result(model_type="vit_b", gpu=None) -> BenchResult:
    """Figures shaped like a vit_b run on this 2-core machine."""
    result = BenchResult(
        model_type=model_type,
        weights="random-init (seed 0)",
        command="perceptserve bench hqsam --model-type vit_b --random-init",
        machine={
            "cpu_model": "AMD EPYC",
            "cores": 2,
            "usable_cores": 2,
            "memory_gib": 23.5,
            "load_average_1m": 0.4,
            "load_average_1m_end": 1.9,
            "platform": "Linux",
            "gpu": gpu,
        },
        versions={
            "python": "3.11.7",
            "torch": "2.14.1",
            "onnxruntime": "1.32.0",
            "segment_anything_hq": "0.3",
            "tritonserver": "2.51.0",
            "tritonclient": "2.73.0",
            "perceptserve": "0.1.0",
            "numpy": "1.26.4",
        },
        options={
            "modes": ["eager", "onnxruntime", "triton"],
            "concurrency": [1, 2],
            "requests": 3,
            "warmup": 1,
            "image": "skimage coffee, 600x400",
            "onnxruntime": {"threads": 0, "graph_optimization_level": "all"},
            "server": "the server at 127.0.0.1:8001",
        },
        records=[
            _record("eager", "encoder", 16.0),
            _record("eager", "prompt", 0.2),
            _record("eager", "request", 16.5),
            _record("onnxruntime", "encoder", 8.0),
            _record("onnxruntime", "prompt", 0.1),
            _record("onnxruntime", "request", 8.2),
            _record("triton", "encoder", 8.2, server={"hqsam_encoder": SPLIT}),
            _record("triton", "prompt", 0.6, server={"hqsam_encoder": dict(SPLIT, cache_hits=3, cache_misses=0)}),
            _record("triton", "request", 9.0, server={"hqsam_encoder": SPLIT}),
            _record("triton", "request", 14.0, concurrency=2, server={"hqsam_encoder": SPLIT}),
        ],
        int8={"cases": 4, "mask_iou_mean": 0.97, "mask_iou_min": 0.91, "iou_loss": 0.03, "encoder_speedup": 1.4},
        export_parity={"passed": True, "min_mask_iou": 0.999},
    )
    if gpu:
        result.records += [_record("torch-fp16", "encoder", 0.03), _record("torch-fp16", "encoder", 0.16, batch=8)]
    return result


def test_target_verdicts_say_how_far_each_figure_is():
    by_key = {v.target.key: v for v in targets.verdicts(recorded_result())}
    assert set(by_key) == {"served_request_vs_eager", "served_encoder_overhead", "second_prompt", "cold_start"}
    request = by_key["served_request_vs_eager"]
    assert request.measured == pytest.approx(9.0 / 16.5) and request.status == "met"
    assert request.distance == "9% under the limit" and request.note == ""
    overhead = by_key["served_encoder_overhead"]
    assert overhead.measured == pytest.approx(8.2 / 8.0) and overhead.status == "met"
    second = by_key["second_prompt"]
    assert second.measured == pytest.approx(0.6 / 9.0) and second.status == "missed"
    assert second.distance == "33% over the limit (needs 1.33x less)"


def test_int8_and_cold_start_targets():
    result = recorded_result()
    result.options["precision"] = "int8"
    result.cold_start = {"ratio": 1.02}
    by_key = {v.target.key: v for v in targets.verdicts(result)}
    int8 = by_key["served_request_vs_eager_int8"]
    assert int8.target.limit == 0.30 and int8.measured == pytest.approx(9.0 / 16.5) and int8.status == "missed"
    assert int8.note == ""  # no floor measured
    result.floor = {"over_eager_request": 0.25}
    int8 = {v.target.key: v for v in targets.verdicts(result)}["served_request_vs_eager_int8"]
    assert int8.note == f"{9.0 / 16.5 / 0.25:.2f}x its compute floor (0.250x)"
    assert by_key["cold_start"].measured == 1.02 and by_key["cold_start"].status == "met"


def test_targets_note_another_model_and_missing_figures():
    result = recorded_result(model_type="vit_tiny")
    result.records = [r for r in result.records if r.mode != "onnxruntime"]
    by_key = {v.target.key: v for v in targets.verdicts(result)}
    assert by_key["served_request_vs_eager"].note == "set for vit_b; indicative on vit_tiny"
    assert (
        by_key["served_encoder_overhead"].status == "not measured"
        and by_key["served_encoder_overhead"].measured is None
    )


def test_gpu_targets_only_with_a_gpu():
    by_key = {
        v.target.key: v for v in targets.verdicts(recorded_result(model_type="vit_h", gpu="NVIDIA H100 80GB HBM3"))
    }
    assert by_key["gpu_encoder_fp16_batch1"].measured == pytest.approx(30.0)
    assert by_key["gpu_encoder_fp16_batch1"].status == "met"
    assert by_key["gpu_encoder_fp16_batch8"].measured == pytest.approx(20.0)  # 160 ms for 8 images
    assert by_key["gpu_encoder_fp16_batch8"].note == "2.50x its compute floor (8.0 ms/image)"


def test_ratio_to_eager_uses_the_same_stage():
    result = recorded_result()
    assert ratio_to_eager(result, result.find("triton", "request", 2)) == pytest.approx(14.0 / 16.5)
    assert ratio_to_eager(result, result.find("onnxruntime", "prompt")) == pytest.approx(0.5)


def test_report_files_have_every_field(tmp_path):
    result = recorded_result()
    write_json(result, tmp_path / "results.json")
    write_markdown(result, tmp_path / "results.md")
    write_plot(result, tmp_path / "latency.png")
    document = json.loads((tmp_path / "results.json").read_text())
    assert document == to_json(result)
    assert set(document) == {
        "schema_version",
        "created",
        "command",
        "family",
        "model_type",
        "weights",
        "machine",
        "versions",
        "options",
        "records",
        "int8",
        "export_parity",
        "served_agreement",
        "cold_start",
        "floor",
        "targets",
    }
    assert set(document["machine"]) == {
        "cpu_model",
        "cores",
        "usable_cores",
        "memory_gib",
        "load_average_1m",
        "load_average_1m_end",
        "platform",
        "gpu",
    }
    assert {"torch", "onnxruntime", "tritonserver", "perceptserve"} <= set(document["versions"])
    for record in document["records"]:
        assert set(record) == RECORD_FIELDS
        assert set(record["latency_ms"]) == LATENCY_FIELDS
        assert record["warmup"]["requests"] == 1
    assert document["records"][6]["server"]["hqsam_encoder"]["average_batch_size"] == 1.5
    assert [t["status"] for t in document["targets"]] == ["met", "met", "missed", "not measured"]
    text = (tmp_path / "results.md").read_text()
    for heading in (
        "# HQ-SAM benchmark: vit_b",
        "## Latency and throughput",
        "## Triton's split",
        "## Targets",
        "## ONNX Runtime int8 encoder",
    ):
        assert heading in text
    assert "| triton | request | 2 | 1 | 14000.0 |" in text and "| 0.85x |" in text
    assert "| request | 1 | hqsam_encoder | 3 | 1.50 | 2.00 | 1.00 | 5200.0 | 3.00 | 0 / 3 |" in text
    assert (
        "tritonserver 2.51.0" in text and "AMD EPYC, 2 cores" in text and "0.4 at the start and 1.9 at the end" in text
    )
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_machine_and_versions_are_filled():
    machine, found = machine_info(), versions("2.51.0")
    assert (
        machine["cores"] >= 1
        and machine["cpu_model"]
        and machine["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    )
    assert found["torch"] == torch.__version__ and found["tritonserver"] == "2.51.0" and found["perceptserve"]


def test_perf_analyzer_data_serialises_bytes_as_triton_does():
    data = input_data(Workload(sample_photo(), nonce=1), images=2)["data"]
    assert len(data) == 2 and set(data[0]) == {"image", "point_coords", "point_labels"}
    raw = base64.b64decode(data[0]["image"]["content"]["b64"])
    (length,) = struct.unpack("<I", raw[:4])
    assert length == len(raw) - 4 and raw[4:12] == b"\x89PNG\r\n\x1a\n"
    assert data[0]["image"]["shape"] == [1]
    assert data[0]["point_coords"]["shape"] == [1, 1, 2] and len(data[0]["point_coords"]["content"]) == 2
    assert data[0]["point_labels"] == {"content": [1], "shape": [1, 1]}
    assert data[0]["image"] != data[1]["image"]


# --- the command line and the runners ------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--modes", "eager,triton"], "the triton mode needs --url HOST:PORT"),
        (["--modes", "eager,nope"], "give distinct modes among"),
        (["--concurrency", "1,x"], "--concurrency 1,x: give integers"),
        (["--modes", "eager", "--requests", "0"], "--requests must be at least 1"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(arguments, message, capsys, tmp_path):
    code = main(["bench", "hqsam", "--model-type", "vit_tiny", "--random-init", "--out", str(tmp_path), *arguments])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and error.startswith("perceptserve bench: ") and message in error


def test_torch_encoder_runner_times_batches(small_vit):
    """The GPU mode's code path, run on the CPU in fp32 (no GPU here)."""
    runner = TorchEncoderRunner(
        small_vit.sam, Workload(sample_photo()), device="cpu", dtype=torch.float32, batch_sizes=(1, 2)
    )
    records = list(run_mode(runner, requests=1, warmup=0))
    assert [(r.mode, r.stage, r.batch) for r in records] == [("torch-fp16", "encoder", 1), ("torch-fp16", "encoder", 2)]
    assert next(small_vit.sam.parameters()).device.type == "cpu"  # the eager model is left alone


@pytest.mark.server
def test_smoke_run_of_every_cpu_mode(small_vit, server, tmp_path):
    job = BenchJob(
        model=SMALL_VIT,
        seed=1,
        modes=("eager", "onnxruntime", "onnxruntime-int8", "triton"),
        concurrency=(1, 2),
        requests=1,
        warmup=0,
        url=server.grpc_url,
        repository=small_vit.repository,
        out=tmp_path,
        perf_analyzer_data=tmp_path / "perf_analyzer.json",
    )
    result = run(job, Settings())
    assert {p.name for p in tmp_path.iterdir()} >= {"results.json", "results.md", "latency.png", "perf_analyzer.json"}
    document = json.loads((tmp_path / "results.json").read_text())
    stages = ("encoder", "prompt", "request")
    expected = [(m, s, 1) for m in ("eager", "onnxruntime", "onnxruntime-int8") for s in stages]
    expected += [("triton", s, c) for s in stages for c in (1, 2)]
    assert [(r["mode"], r["stage"], r["concurrency"]) for r in document["records"]] == expected
    for record in document["records"]:
        assert set(record) == RECORD_FIELDS and set(record["latency_ms"]) == LATENCY_FIELDS
        assert record["requests"] == 1 and record["warmup"]["requests"] == 0
        assert (record["server"] is not None) == (record["mode"] == "triton")
    served = {(r["stage"], r["concurrency"]): r["server"] for r in document["records"] if r["mode"] == "triton"}
    for split in served.values():
        assert set(split) == {
            "hqsam",
            "hqsam_preprocess",
            "hqsam_encoder_guard",
            "hqsam_encoder",
            "hqsam_decoder",
            "hqsam_postprocess",
        }
        assert all(set(model) == SPLIT_FIELDS for model in split.values())
    # The response cache in front of the encoder (its guard's): a new image misses, a second prompt on a seen
    # image hits, and only the miss reaches the encoder.
    assert served[("request", 1)]["hqsam_encoder_guard"]["cache_misses"] == 1
    assert served[("prompt", 1)]["hqsam_encoder_guard"]["cache_hits"] == 1
    assert served[("request", 1)]["hqsam_encoder"]["requests"] == 1
    assert served[("request", 1)]["hqsam"]["requests"] == 1
    assert served[("encoder", 1)]["hqsam_encoder"]["compute_infer_ms"] > 0
    assert document["versions"]["tritonserver"].startswith("2.51")
    assert document["machine"]["load_average_1m_end"] is not None
    assert document["int8"]["cases"] == 4 and 0.0 <= document["int8"]["iou_loss"] <= 1.0
    assert document["int8"]["encoder_speedup"] > 0
    assert document["served_agreement"]["cases"] == 4 and document["served_agreement"]["mask_iou_min"] >= 0.99
    assert document["cold_start"] is None  # measured only on a server the benchmark starts
    assert [t["key"] for t in document["targets"]] == [
        "served_request_vs_eager",
        "served_encoder_overhead",
        "second_prompt",
        "cold_start",
    ]
    assert all(t["status"] in ("met", "missed") for t in document["targets"][:3])
    floor, eager = document["floor"], result.find("eager", "request").latency.p50_ms
    assert set(floor["flops"]) == {"linear", "attention", "convolution"}  # an fp32 export: no fp32 scopes
    assert floor["rates"]["int8"] == floor["rates"]["fp32"] <= floor["rates"]["attention"]
    assert floor["over_eager_request"] == pytest.approx(floor["seconds"] * 1e3 / eager)
    assert document["targets"][0]["note"].endswith(f"its compute floor ({floor['over_eager_request']:.3f}x)")
    text = (tmp_path / "results.md").read_text()
    assert text == markdown(result)
    for heading in (
        "## Latency and throughput",
        "## Triton's split",
        "## Targets",
        "## ONNX Runtime int8 encoder",
        "## Served masks against the official predictor",
        "## The encoder's arithmetic floor on this CPU",
    ):
        assert heading in text


# --- bench datasetdm --diffusion: the floor ----------------------------------------------------


def test_the_datasetdm_floor_counts_every_unet_call_of_the_image(tiny_export):
    """The floor's arithmetic on the tiny pipeline: the hook counts one UNet call per scheduler
    timestep (PNDM takes one more than the steps asked), a guided call is the batch of two (twice
    the FLOPs of an unguided one), and the image adds one VAE decode."""
    from diffusers import StableDiffusionPipeline
    from perceptserve.benchmarks.datasetdm_full_size import diffusers_seconds, fp32_gemm_peak, image_flops

    folder, steps, side = tiny_export.job.tiny_source, 3, 128
    summary, flops = diffusers_seconds(folder, [0, 1], steps, side, guidance=7.5)
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)
    pipe.scheduler.set_timesteps(steps)
    with torch.no_grad():
        unguided = image_flops(pipe, side, 1, guided=False)
    assert summary.count == 2
    assert flops["unet_calls"] == len(pipe.scheduler.timesteps) == steps + 1
    assert flops["unet_call"] == 2 * unguided["unet_call"] > 0
    assert flops["vae_decode"] == unguided["vae_decode"] > 0
    assert flops["image"] == (steps + 1) * flops["unet_call"] + flops["vae_decode"]
    assert 1e9 < fp32_gemm_peak(side=256, runs=2) < 1e13  # FLOP/s: 2 * 256^3 per run, timed


def test_the_encoder_floor_counts_each_kernels_flops():
    """`flops_by_kind` on the small ViT against a count by hand: 64 x 64 tokens of width 64, two
    heads, block 0 windowed (14 x 14, the grid padded to 70 x 70 for qkv and proj) and block 1
    global; block 0's linear layers apart when it is an fp32 scope."""
    from perceptserve.benchmarks.floor import flops_by_kind

    from perceptserve.hqsam import registry

    encoder = registry.build_reference(SMALL_VIT).image_encoder
    dim, heads, tokens, padded, windows, window = 64, 2, 64 * 64, 70 * 70, 25, 14 * 14
    head_dim = dim // heads

    def linears(qkv_tokens: int) -> int:
        return 2 * qkv_tokens * dim * (3 * dim + dim) + 2 * 2 * tokens * dim * 4 * dim

    def attention(batch: int, side: int) -> int:
        products = 2 * 2 * batch * side**2 * head_dim * side**2  # q.kT and attn.v
        return products + 2 * 2 * batch * side**3 * head_dim  # the two relative-position einsums

    convolutions = 2 * tokens * dim * 3 * 16 * 16 + 2 * tokens * 256 * dim + 2 * tokens * 256 * 256 * 9
    counted = flops_by_kind(encoder, torch.zeros(1, 3, 1024, 1024), fp32_scopes=("blocks.0",))
    assert counted == {
        "linear": linears(tokens),
        "linear_fp32": linears(padded),
        "attention": attention(windows * heads, 14) + attention(heads, 64),
        "convolution": convolutions,
    }
    assert windows * window == padded


# --- bench hqsam-automatic ---------------------------------------------------------------------


@pytest.mark.server
def test_bench_hqsam_automatic_times_both_generators_on_the_same_photo(vit_tiny, tmp_path):
    """One photo through the served `hqsam_automatic` and the official generator on the same
    weights (the given export is reused): the same masks, each side's split, the ratio."""
    from perceptserve.benchmarks.hqsam_automatic import AutomaticBench
    from perceptserve.benchmarks.hqsam_automatic import run as run_automatic

    repositories = tmp_path / "repositories"
    repositories.mkdir()
    (repositories / "vit_tiny").symlink_to(vit_tiny.repository, target_is_directory=True)
    keep_all = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0, crop_nms_thresh=1.0)
    job = AutomaticBench(
        out=tmp_path / "out",
        models=("vit_tiny",),
        photos=("coffee",),
        parameters=dict(points_per_side=4, **keep_all),
        seed=vit_tiny.job.seed,
        repositories=repositories,
    )
    figures = run_automatic(job, Settings())["models"]["vit_tiny"]
    photo = figures["photos"]["coffee"]
    assert "export_parity" not in figures and "target" not in figures  # reused; the target is vit_b's
    agreement = photo["agreement"]
    assert agreement["official_masks"] == agreement["served_masks"] >= 12
    assert agreement["matched_at_iou_0.95"] >= 0.95
    served, eager = photo["served"], photo["eager"]
    assert min(served["encoder_s"], served["decoder_s"], served["postprocess_s"]) > 0
    assert 0 <= served["transport_s"] < served["seconds"]
    assert 0 < eager["encoder_s"] < eager["seconds"]
    assert figures["served_over_eager"] == pytest.approx(served["seconds"] / eager["seconds"])
    assert (job.out / "results.md").read_text().count("| vit_tiny | coffee |") == 1
