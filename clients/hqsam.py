"""`HQSamClient`: HQ-SAM over Triton's gRPC API with `SamPredictor`'s two-phase interface; plain
SAM and MobileSAM with `model_name="sam"` (the same inputs, 3 masks with `multimask_output`).

    client = HQSamClient("127.0.0.1:8001")
    client.set_image(image)                       # HWC uint8 RGB
    masks, scores, low_res = client.predict(point_coords=[[500, 375]], point_labels=[1])

`predict` returns the official shapes: [1, H, W] bool, [1], [1, 256, 256] for one prompt set;
with batched prompts (points [N, P, 2], boxes [N, 4]) a leading N: many prompt sets cost one
request. The image travels with every request; the server's response cache on the encoder step
means only the first request for an image runs the encoder.

`generate_masks(image, **parameters)` segments everything, as
`SamAutomaticMaskGenerator(..., output_mode="coco_rle").generate(image)` does, in the server.

A request the server could not serve now (UNAVAILABLE: queue full, a lost model stub, a restart)
is sent again with bounded backoff, each retry announced on standard error (`retry.RetryPolicy`;
`retry=retry.NO_RETRY` turns it off).

`set_image` / `predict` keep per-client state like the official predictor; `segment` and
`generate_masks` are stateless and safe to call from many threads on one client. `AsyncHQSamClient` is the asyncio
variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from perceptserve.model_repository import hqsam as names

from perceptserve.hqsam.families import HQSAM
from perceptserve.hqsam.prompts import as_prompt_batch
from perceptserve.imaging import encode_png

from . import automatic, retry
from .errors import ClientError
from .triton_io import infer_input, requested_outputs, server_errors

OUTPUTS = names.tensors(HQSAM).output_names  # the same names in every family


@dataclass
class Segmentation:
    masks: np.ndarray  # [N, C, H, W] bool: C is 1, or 3 for plain SAM with multimask_output
    scores: np.ndarray  # [N, C]
    low_res_logits: np.ndarray  # [N, C, 256, 256]

    def as_predictor_output(self, single: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if single:
            return self.masks[0], self.scores[0], self.low_res_logits[0]
        return self.masks, self.scores, self.low_res_logits


def build_inputs(
    module,
    image: bytes,
    point_coords=None,
    point_labels=None,
    box=None,
    mask_input=None,
    multimask_output: bool = False,
    hq_token_only: bool = False,
):
    """The `hqsam` ensemble's inputs (see README, "The hqsam API"); `module` is
    `tritonclient.grpc` or its `aio` twin. Returns (inputs, single)."""
    batch = as_prompt_batch(point_coords, point_labels, box, mask_input)
    inputs = [infer_input(module, "image", np.array([image], dtype=np.object_), "BYTES")]
    for name, value, dtype in (
        ("point_coords", batch.point_coords, "FP32"),
        ("point_labels", batch.point_labels, "INT32"),
        ("boxes", batch.boxes, "FP32"),
        ("mask_input", batch.mask_input, "FP32"),
    ):
        if value is not None:
            inputs.append(infer_input(module, name, value, dtype))
    inputs.append(infer_input(module, "multimask_output", np.array([multimask_output]), "BOOL"))
    inputs.append(infer_input(module, "hq_token_only", np.array([hq_token_only]), "BOOL"))
    return inputs, batch.single


def _result(response) -> Segmentation:
    return Segmentation(*(response.as_numpy(name) for name in OUTPUTS))


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ClientError(f"set_image takes an HWC uint8 RGB array, got {image.dtype} {list(image.shape)}")
    return image


class HQSamClient:
    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        model_name: str = HQSAM.ensemble,
        timeout_s: float | None = None,
        retry_policy: retry.RetryPolicy = retry.DEFAULT,
    ) -> None:
        self.url = url
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.retry_policy = retry_policy
        self._client = grpcclient.InferenceServerClient(url)
        self._image: bytes | None = None

    def set_image(self, image: np.ndarray) -> None:
        """Take the image for the following `predict` calls (encoded losslessly as PNG)."""
        self._image = encode_png(_check_image(image))

    def set_image_bytes(self, data: bytes) -> None:
        """Take an already encoded PNG / JPEG / WebP file as it is."""
        self._image = bytes(data)

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output: bool = False,
        hq_token_only: bool = False,
    ):
        """(masks, scores, low_res_logits), as `SamPredictor.predict` returns them."""
        if self._image is None:
            raise ClientError("call set_image before predict")
        inputs, single = build_inputs(
            grpcclient, self._image, point_coords, point_labels, box, mask_input, multimask_output, hq_token_only
        )
        return self._infer(inputs).as_predictor_output(single)

    def segment(self, image: bytes, **prompts) -> Segmentation:
        """One stateless request (thread-safe): encoded image bytes + `predict`'s prompt arguments."""
        inputs, _ = build_inputs(grpcclient, image, **prompts)
        return self._infer(inputs)

    def generate_masks(self, image, **parameters) -> list[dict]:
        """Segment everything: encoded image bytes or an HWC uint8 RGB array, and any of
        `SamAutomaticMaskGenerator`'s parameters (plus `multimask_output`, `hq_token_only`) ->
        its records (coco_rle mode), computed in the server's `<model>_automatic`."""
        return automatic.records(self.generate_masks_response(image, **parameters))

    def generate_masks_response(self, image, **parameters):
        """The raw response (for `automatic.stage_seconds`, or to read the tensors)."""
        inputs = automatic.build_inputs(grpcclient, image, parameters)
        return self._request(automatic.model_name(self.model_name), inputs, automatic.OUTPUTS)

    def _request(self, model: str, inputs, outputs):
        def send():
            with server_errors():
                return self._client.infer(
                    model, inputs, outputs=requested_outputs(grpcclient, outputs), client_timeout=self.timeout_s
                )

        return retry.call(self.retry_policy, send)

    def _infer(self, inputs) -> Segmentation:
        return _result(self._request(self.model_name, inputs, OUTPUTS))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HQSamClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncHQSamClient:
    """asyncio variant: `await client.segment(image_bytes, point_coords=..., ...)`."""

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        model_name: str = HQSAM.ensemble,
        timeout_s: float | None = None,
        retry_policy: retry.RetryPolicy = retry.DEFAULT,
    ) -> None:
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.retry_policy = retry_policy
        self._client = aioclient.InferenceServerClient(url)

    async def segment(self, image: bytes, **prompts) -> Segmentation:
        inputs, _ = build_inputs(aioclient, image, **prompts)
        return _result(await self._request(self.model_name, inputs, OUTPUTS))

    async def generate_masks(self, image, **parameters) -> list[dict]:
        """`HQSamClient.generate_masks`, awaited."""
        inputs = automatic.build_inputs(aioclient, image, parameters)
        return automatic.records(await self._request(automatic.model_name(self.model_name), inputs, automatic.OUTPUTS))

    async def _request(self, model: str, inputs, outputs):
        async def send():
            with server_errors():
                return await self._client.infer(
                    model, inputs, outputs=requested_outputs(aioclient, outputs), client_timeout=self.timeout_s
                )

        return await retry.call_async(self.retry_policy, send)

    async def close(self) -> None:
        await self._client.close()
