"""`helm test` for perceptserve: readiness, the restricted APIs, one inference on the ensemble.

Runs in the server image (python3, numpy, Pillow and tritonclient[http] are installed there).
Configuration comes from the environment set by templates/tests/test-inference.yaml.
"""

import io
import os
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from PIL import Image

URL = os.environ["PERCEPTSERVE_URL"]  # host:port of the HTTP endpoint
MODEL = os.environ.get("PERCEPTSERVE_MODEL", "hqsam")
TIMEOUT = float(os.environ.get("PERCEPTSERVE_TIMEOUT", "300"))
API_KEY = os.environ.get("PERCEPTSERVE_API_KEY", "")
API_KEY_HEADER = os.environ.get("PERCEPTSERVE_API_KEY_HEADER", "")
RESTRICTED = set(filter(None, os.environ.get("PERCEPTSERVE_RESTRICTED_APIS", "").split(",")))
SIZE = 64  # the test image is SIZE x SIZE pixels


def fail(message: str) -> None:
    print(f"FAIL: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def http_status(path: str, headers: dict | None = None) -> int | None:
    request = urllib.request.Request(f"http://{URL}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def wait_ready() -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        status = http_status("/v2/health/ready")
        if status == 200:
            break
        if time.monotonic() > deadline:
            fail(f"/v2/health/ready on {URL} answered {status} for {TIMEOUT:.0f} s")
        time.sleep(5)
    status = http_status(f"/v2/models/{MODEL}/ready")
    if status != 200:
        fail(f"model {MODEL} is not ready (HTTP {status})")
    print(f"ok: server and model {MODEL} ready", flush=True)


def check_restricted_api() -> None:
    if "statistics" not in RESTRICTED:
        print("skip: statistics API not restricted", flush=True)
        return
    path = f"/v2/models/{MODEL}/stats"
    without_key = http_status(path)
    if without_key in (200, None):
        fail(f"{path} answered {without_key} without the API key: the restricted API is open")
    with_key = http_status(path, {API_KEY_HEADER: API_KEY})
    if with_key != 200:
        fail(f"{path} answered {with_key} with the API key from the Secret")
    print(f"ok: statistics refused without the key ({without_key}), served with it", flush=True)


def test_image() -> bytes:
    """A dark picture with a bright square in the middle: something to segment."""
    pixels = np.full((SIZE, SIZE, 3), 20, dtype=np.uint8)
    pixels[SIZE // 4 : 3 * SIZE // 4, SIZE // 4 : 3 * SIZE // 4] = (230, 200, 40)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def run_inference() -> None:
    image = np.array([test_image()], dtype=np.object_)
    coords = np.array([[[SIZE / 2, SIZE / 2]]], dtype=np.float32)  # N=1 prompt set, P=1 point
    labels = np.array([[1]], dtype=np.int32)  # 1 = foreground
    inputs = [
        httpclient.InferInput("image", list(image.shape), "BYTES"),
        httpclient.InferInput("point_coords", list(coords.shape), "FP32"),
        httpclient.InferInput("point_labels", list(labels.shape), "INT32"),
    ]
    inputs[0].set_data_from_numpy(image)
    inputs[1].set_data_from_numpy(coords)
    inputs[2].set_data_from_numpy(labels)
    outputs = [httpclient.InferRequestedOutput(name) for name in ("masks", "iou_predictions", "low_res_logits")]
    client = httpclient.InferenceServerClient(URL, connection_timeout=30.0, network_timeout=TIMEOUT)
    try:
        result = client.infer(MODEL, inputs, outputs=outputs)
    except Exception as error:  # tritonclient raises InferenceServerException and socket errors
        fail(f"inference on {MODEL} failed: {error}")
    masks = result.as_numpy("masks")
    iou = result.as_numpy("iou_predictions")
    logits = result.as_numpy("low_res_logits")
    if masks is None or iou is None or logits is None:
        fail("an output is missing from the response")
    if masks.dtype != np.bool_ or masks.shape != (1, 1, SIZE, SIZE):
        fail(f"masks: expected bool (1, 1, {SIZE}, {SIZE}), got {masks.dtype} {masks.shape}")
    if iou.shape != (1, 1) or not np.all(np.isfinite(iou)):
        fail(f"iou_predictions: expected finite (1, 1), got {iou.dtype} {iou.shape} {iou}")
    if logits.shape != (1, 1, 256, 256) or not np.all(np.isfinite(logits)):
        fail(f"low_res_logits: expected finite (1, 1, 256, 256), got {logits.shape}")
    print(f"ok: {MODEL} answered; mask covers {int(masks.sum())} px, iou {float(iou[0, 0]):.3f}", flush=True)


def main() -> None:
    wait_ready()
    check_restricted_api()
    run_inference()
    print("PASS", flush=True)


main()
