"""Input data for `perf_analyzer`, Triton's own load generator, on the `hqsam` ensemble: the
external yardstick for our `triton` figures (recipe in benchmarks/README.md).

perf_analyzer takes a BYTES tensor as base64 of Triton's serialised form: each element is a
4-byte little-endian length followed by its bytes. The prompts are given with explicit shapes
because their dimensions are variable; the optional inputs left out keep their defaults.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

from .workload import Workload

IMAGES = 4  # distinct photos; perf_analyzer sends its data entries round-robin


def serialized_bytes_element(data: bytes) -> str:
    return base64.b64encode(struct.pack("<I", len(data)) + data).decode("ascii")


def input_data(workload: Workload, images: int = IMAGES) -> dict:
    entries = []
    for index, png in enumerate(workload.png_variants(images)):
        prompt = workload.point(index)
        entries.append(
            {
                "image": {"content": {"b64": serialized_bytes_element(png)}, "shape": [1]},
                "point_coords": {"content": prompt["point_coords"].reshape(-1).tolist(), "shape": [1, 1, 2]},
                "point_labels": {"content": prompt["point_labels"].astype(int).tolist(), "shape": [1, 1]},
            }
        )
    return {"data": entries}


def write_input_data(workload: Workload, path: Path, images: int = IMAGES) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(input_data(workload, images)))
    return path
