"""The one way perceptserve opens an ONNX file in ONNX Runtime on the CPU: the served `cpu`
target's runner, the offline predictor, the parity checks and the benchmarks all build their
sessions here, so a setting (threads, spinning, optimization level) means the same everywhere."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def cpu_session(
    path: str | Path | bytes,
    threads: int = 0,
    allow_spinning: bool = True,
    optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    quiet: bool = False,
    memory_arena: bool = True,
) -> ort.InferenceSession:
    """A CPU session on `path` (or a serialised model); `threads` 0 is one per core; spinning
    threads can steal time from busy ones on few cores (`settings.CpuOnnxRuntime`); `quiet` drops
    ONNX Runtime's warnings.

    `memory_arena` False (what the server's models run with, `CpuOnnxRuntime.memory_arena`): ONNX
    Runtime's CPU arena keeps the peak of the largest batch it ever ran for the session's life (a
    vit_h encoder batch of 7 is over 20 GB); without it each run's activations go back to the
    system (large blocks are mmap'ed), for a few per cent of run time on these graphs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", str(int(allow_spinning)))
    options.graph_optimization_level = optimization
    options.enable_cpu_mem_arena = memory_arena
    if quiet:
        options.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
