"""The `<family>_automatic` model's wire format on the client side: generator parameters ->
request inputs, response -> the official `SamAutomaticMaskGenerator` records (coco_rle mode).
Shared by the blocking and asyncio clients."""

from __future__ import annotations

import numpy as np
from perceptserve.model_repository import automatic as names

from perceptserve.automatic import parameters
from perceptserve.imaging import encode_png

from .errors import ClientError
from .triton_io import infer_input

OUTPUTS = [t.name for t in names.OUTPUTS]
model_name = names.model_name  # "<family>_automatic"
NUMPY_TYPES = {"BOOL": np.bool_, "INT32": np.int32, "FP32": np.float32}


def image_bytes(image) -> bytes:
    """Encoded bytes as they are, or an HWC uint8 RGB array encoded losslessly as PNG."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ClientError(
            f"generate_masks takes encoded image bytes or an HWC uint8 RGB array, got {array.dtype} {list(array.shape)}"
        )
    return encode_png(array)


def build_inputs(module, image, values: dict) -> list:
    """The request's inputs; `module` is `tritonclient.grpc` or its `aio` twin. Parameters left
    out (or None) take the official defaults in the server."""
    unknown = set(values) - set(parameters.NAMES)
    if unknown:
        raise ClientError(f"unknown generator parameters: {', '.join(sorted(unknown))}")
    inputs = [infer_input(module, "image", np.array([image_bytes(image)], dtype=np.object_), "BYTES")]
    for name, value in values.items():
        if value is not None:
            kind = parameters.wire_type(name)
            inputs.append(infer_input(module, name, np.array([value], dtype=NUMPY_TYPES[kind]), kind))
    return inputs


def _xywh(box) -> list[int]:
    x0, y0, x1, y1 = (int(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def records(response) -> list[dict]:
    """The response -> one official record per mask: segmentation (COCO RLE with a str
    `counts`, loadable with `pycocotools.mask.decode`), area, bbox (XYWH), predicted_iou,
    point_coords, stability_score, crop_box (XYWH)."""
    out = {name: response.as_numpy(name) for name in OUTPUTS}
    size = [int(side) for side in out["image_size"]]
    return [
        {
            "segmentation": {
                "size": size,
                "counts": counts.decode("ascii") if isinstance(counts, bytes) else str(counts),
            },
            "area": int(area),
            "bbox": _xywh(box),
            "predicted_iou": float(iou),
            "point_coords": [[float(x), float(y)]],
            "stability_score": float(stability),
            "crop_box": _xywh(crop),
        }
        for counts, area, box, iou, stability, (x, y), crop in zip(
            out["rle_counts"].reshape(-1),
            out["areas"],
            out["boxes"].reshape(-1, 4),
            out["predicted_iou"],
            out["stability_score"],
            out["point_coords"].reshape(-1, 2),
            out["crop_boxes"].reshape(-1, 4),
            strict=True,
        )
    ]


def stage_seconds(response) -> dict[str, float]:
    """Where the server spent the request: encoder, decoder, post-processing (seconds)."""
    encoder, decoder, postprocess = (float(v) for v in response.as_numpy("stage_seconds"))
    return {"encoder": encoder, "decoder": decoder, "postprocess": postprocess}
