"""The floor under a speed target: a model's arithmetic at the best rate this CPU's kernels reach.

A model's FLOPs by kind (PyTorch's FLOP counter over the official forward) divided by the best
rate ONNX Runtime's kernels reach for that kind on this CPU (timed in the same run as the figures
they bound, at the model's own shapes) is the least time any implementation that computes the
same products can take here, served or not. A target below its floor cannot be met by serving
work, only by less arithmetic (other numerics, fewer steps) or other hardware. Every other op
(softmax, normalisation, activation quantisation, data movement) counts as free, so the floor is
a lower bound, not an estimate. ONNX Runtime's kernels are the ones timed: PyTorch's own were
measured slower here at these shapes (benchmarks/README.md).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper
from torch.utils.flop_counter import FlopCounterMode

from perceptserve.onnxruntime_session import cpu_session

# aten ops by the kind of kernel that runs them in the exported graphs: a linear layer is a MatMul
# with constant weights (int8 in an int8 export), an attention product (and the relative-position
# einsums) a MatMul of two activations (fp32 in every export), a convolution a Conv.
LINEAR, ATTENTION, CONVOLUTION = "linear", "attention", "convolution"
KINDS = {"aten.addmm": LINEAR, "aten.mm": LINEAR, "aten.bmm": ATTENTION, "aten.convolution": CONVOLUTION}


def best_seconds(call: Callable[[], object], runs: int) -> float:
    """The fastest of `runs` calls after one untimed call: the rate the kernel can reach."""
    call()
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - began)
    return min(seconds)


def matmul_rate(m: int, k: int, n: int, batch: int = 0, int8: bool = False, runs: int = 8) -> float:
    """FLOP/s of ONNX Runtime's [m, k] x [k, n] on this CPU, the best of `runs`: fp32 MatMul of
    two inputs ([batch, m, k] x [batch, k, n] when `batch`), or with `int8` the quantised linear
    layer's kernel (DynamicQuantizeMatMul: int8 weights, activations quantised as it runs)."""
    rng = np.random.default_rng(0)
    lead = [batch] if batch else []
    inputs = {"a": rng.standard_normal((*lead, m, k), dtype=np.float32)}
    initializers = []
    if int8:
        weights = rng.integers(-127, 128, (k, n), dtype=np.int8)
        initializers = [
            numpy_helper.from_array(weights, "b"),
            numpy_helper.from_array(np.array([0.01], np.float32), "scale"),
            numpy_helper.from_array(np.array([0], np.int8), "zero_point"),
        ]
        node = helper.make_node(
            "DynamicQuantizeMatMul", ["a", "b", "scale", "zero_point"], ["c"], domain="com.microsoft"
        )
    else:
        inputs["b"] = rng.standard_normal((*lead, k, n), dtype=np.float32)
        node = helper.make_node("MatMul", ["a", "b"], ["c"])
    graph = helper.make_graph(
        [node],
        "matmul",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, array.shape) for name, array in inputs.items()],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    session = cpu_session(helper.make_model(graph, opset_imports=opsets).SerializeToString())
    return 2 * max(batch, 1) * m * k * n / best_seconds(lambda: session.run(None, inputs), runs)


def fp32_gemm_peak(side: int = 2048, runs: int = 10) -> float:
    """FLOP/s of ONNX Runtime's fp32 MatMul at `side`^3: the ceiling for a large fp32 model."""
    return matmul_rate(side, side, side, runs=runs)


def counted_flops(call: Callable[[], object]) -> FlopCounterMode:
    """PyTorch's FLOP counter over `call()` run on fake tensors: shapes only, no arithmetic (a
    second or two even for vit_h or a full-size UNet), the same counts as a real run."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True), FlopCounterMode(display=False) as counter:
        call()
    return counter


def flops_by_kind(module: torch.nn.Module, *inputs: torch.Tensor, fp32_scopes: tuple[str, ...] = ()) -> dict:
    """FLOPs of `module(*inputs)` by kernel kind (`KINDS`), the linear layers inside the
    submodules `fp32_scopes` (dotted paths under `module`) apart as `linear_fp32`."""
    counts = counted_flops(lambda: module(*inputs)).get_flop_counts()
    kinds: dict[str, int] = defaultdict(int)
    for op, flops in counts["Global"].items():
        kinds[KINDS.get(str(op), "other")] += flops
    root = type(module).__name__
    for scope in fp32_scopes:
        fp32 = sum(v for op, v in counts.get(f"{root}.{scope}", {}).items() if KINDS.get(str(op)) == LINEAR)
        kinds[LINEAR] -= fp32
        kinds["linear_fp32"] += fp32
    return dict(kinds)


def vit_encoder_floor(encoder: torch.nn.Module, int8: bool, fp32_scopes: tuple[str, ...] = (), runs: int = 8) -> dict:
    """A SAM ViT image encoder's floor on this CPU: its FLOPs by kind at the best rates timed at
    its own shapes (the qkv and MLP linear layers over its tokens, one head-batched q.kT of the
    global attention). With `int8` the linear layers (less those of `fp32_scopes`) run at the
    int8 kernel's rate, as the int8 export's `cpu` config runs them; attention is fp32 in every
    export. Returns the FLOPs, the rates (FLOP/s) and `seconds`."""
    side = encoder.img_size
    block = encoder.blocks[0]
    dim, heads = block.norm1.normalized_shape[0], block.attn.num_heads
    tokens = (side // encoder.patch_embed.proj.kernel_size[0]) ** 2
    flops = flops_by_kind(encoder, torch.zeros(1, 3, side, side), fp32_scopes=fp32_scopes)
    shapes = [(tokens, dim, 3 * dim), (tokens, dim, 4 * dim), (tokens, 4 * dim, dim)]
    fp32 = max(matmul_rate(*shape, runs=runs) for shape in shapes)
    rates = {
        "fp32": fp32,
        "int8": max(matmul_rate(*shape, int8=True, runs=runs) for shape in shapes) if int8 else fp32,
        "attention": max(fp32, matmul_rate(tokens, dim // heads, tokens, batch=heads, runs=max(2, runs // 2))),
    }
    rate_of_kind = {
        LINEAR: rates["int8"],
        "linear_fp32": fp32,
        ATTENTION: rates["attention"],
        CONVOLUTION: fp32,
    }
    seconds = sum(flops[kind] / rate for kind, rate in rate_of_kind.items() if kind in flops)
    return {"flops": flops, "rates": rates, "seconds": seconds}
