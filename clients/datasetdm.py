"""Clients of DatasetDM's served models over Triton's gRPC API, in `HQSamClient`'s style.

    with DatasetDMAnnotateClient("127.0.0.1:8001") as client:
        result = client.annotate(jpeg_bytes, "a photo of a cat on a sofa", ["cat", "sofa"])
        result.class_map  # (H, W) int32 at the image's size: 0 background, k the k-th class

    with DatasetDMGenerateClient("127.0.0.1:8001") as client:
        for item in client.generate("a photo of a cat", ["cat"], seeds=[1, 2], steps=50):
            item.image, item.class_map, item.depth

Both are stateless and thread-safe. A refused request raises `ClientError` with the server's
status (INVALID_ARGUMENT for bad input) and message.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from perceptserve.model_repository import datasetdm_serving as serving
from tritonclient.utils import InferenceServerException

from . import retry
from .errors import ClientError
from .triton_io import infer_input, requested_outputs, server_errors, utf8_strings


@dataclass
class Instance:
    rle: dict  # COCO RLE: {"size": [H, W], "counts": str}, `pycocotools.mask.decode`s to the mask
    category: int  # k: the k-th class name (1-based, as in the class map)
    score: float
    box: list[float]  # COCO's [x, y, width, height]


@dataclass
class Annotation:
    """One image's annotations; a task not asked for (or not served) is None."""

    class_map: np.ndarray | None  # (H, W) int32: 0 background, k the k-th class name
    class_scores: np.ndarray | None  # (K,) float32
    depth: np.ndarray | None = None  # (H, W) float32
    instances: list[Instance] | None = None
    keypoints: np.ndarray | None = None  # (17, 3): x, y, score in image pixels, COCO's order


@dataclass
class Generation(Annotation):
    seed: int = 0
    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB


def _annotations(out: dict[str, np.ndarray], count: int, size: tuple[int, int]) -> list[Annotation]:
    """The outputs of `count` images (`TASK_OUTPUTS` of the tasks asked for) -> one Annotation each."""

    def per_image(name: str, index: int):
        return None if name not in out else out[name][index]

    instances: list[list[Instance] | None] = [None] * count
    if "instance_counts" in out:
        bounds = np.concatenate([[0], np.cumsum(out["instance_counts"])])
        instances = [
            [
                Instance(
                    rle={"size": list(size), "counts": out["instance_rle"][i].decode("ascii")},
                    category=int(out["instance_classes"][i]),
                    score=float(out["instance_scores"][i]),
                    box=[float(v) for v in out["instance_boxes"][i]],
                )
                for i in range(bounds[b], bounds[b + 1])
            ]
            for b in range(count)
        ]
    return [
        Annotation(
            class_map=per_image("class_map", b),
            class_scores=per_image("class_scores", b),
            depth=None if "depth" not in out else out["depth"][b, 0],
            instances=instances[b],
            keypoints=per_image("keypoints", b),
        )
        for b in range(count)
    ]


class _Client:
    def __init__(
        self, url: str, model_name: str, timeout_s: float | None, retry_policy: retry.RetryPolicy = retry.DEFAULT
    ) -> None:
        self.url = url
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.retry_policy = retry_policy  # UNAVAILABLE is retried with bounded backoff, as HQSamClient does
        self._client = grpcclient.InferenceServerClient(url)

    def _infer(self, inputs, tasks: Sequence[str] | None, max_instances, score_threshold) -> dict[str, np.ndarray]:
        """Run with the task options; reads the outputs of `tasks` (None: every served task).
        A task not served is sent as asked, for the server to refuse by name."""
        if tasks is not None:
            inputs.append(infer_input(grpcclient, "tasks", utf8_strings(tasks), "BYTES"))
        if max_instances is not None:
            inputs.append(infer_input(grpcclient, "max_instances", np.array([max_instances], dtype=np.int32), "INT32"))
        if score_threshold is not None:
            inputs.append(
                infer_input(grpcclient, "score_threshold", np.array([score_threshold], dtype=np.float32), "FP32")
            )
        served = retry.call(self.retry_policy, self.served_tasks)
        asked = served if tasks is None else tasks
        names = [t.name for task in asked if task in served for t in serving.TASK_OUTPUTS[task]]

        def send():
            with server_errors():
                return self._client.infer(
                    self.model_name,
                    inputs,
                    client_timeout=self.timeout_s,
                    outputs=requested_outputs(grpcclient, [*self._leading_outputs, *names]),
                )

        response = retry.call(self.retry_policy, send)
        return {name: response.as_numpy(name) for name in [*self._leading_outputs, *names]}

    _leading_outputs: tuple[str, ...] = ()  # outputs read whatever the tasks

    def served_tasks(self) -> list[str]:
        """The tasks this model serves (the decoders exported), from its outputs, read once."""
        if not hasattr(self, "_served"):
            with server_errors():
                metadata = self._client.get_model_metadata(self.model_name)
            outputs = {output.name for output in metadata.outputs}
            self._served = [task for task, tensors in serving.TASK_OUTPUTS.items() if tensors[0].name in outputs]
        return self._served

    def model_versions(self) -> dict[str, list[str]]:
        """The served versions of this model, for a dataset's manifest."""
        with server_errors():
            return {self.model_name: list(self._client.get_model_metadata(self.model_name).versions)}

    def wait_until_ready(self, timeout_s: float, poll_s: float = 2.0) -> None:
        """Return once the model is ready; a worker may start before the server it calls."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._client.is_model_ready(self.model_name):
                    return
            except InferenceServerException:
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise ClientError(f"{self.model_name} at {self.url} not ready after {timeout_s:g} s", "UNAVAILABLE")
            time.sleep(poll_s)

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DatasetDMAnnotateClient(_Client):
    """The `datasetdm_annotate` ensemble: a real image -> its class map (and depth)."""

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        model_name: str = serving.ANNOTATE,
        timeout_s: float | None = None,
        retry_policy: retry.RetryPolicy = retry.DEFAULT,
    ) -> None:
        super().__init__(url, model_name, timeout_s, retry_policy)

    def annotate(
        self,
        image: bytes,
        prompt: str,
        class_names: Sequence[str],
        seed: int = 0,
        tasks: Sequence[str] | None = None,
        max_instances: int | None = None,
        score_threshold: float | None = None,
    ) -> Annotation:
        """`image`: PNG / JPEG / WebP bytes as they are; `prompt`: the caption (DatasetDM's
        training prompts name the classes); `seed`: the annotation noise's; `tasks`: the
        annotations to return (None: every served one); the instance limits (None: the server's,
        DatasetDM's 20 and 0.4)."""
        inputs = [
            infer_input(grpcclient, "image", np.array([bytes(image)], dtype=np.object_), "BYTES"),
            infer_input(grpcclient, "prompt", utf8_strings([prompt]), "BYTES"),
            infer_input(grpcclient, "class_names", utf8_strings(class_names), "BYTES"),
            infer_input(grpcclient, "seed", np.array([seed], dtype=np.int64), "INT64"),
        ]
        out = self._infer(inputs, tasks, max_instances, score_threshold)
        size = _image_size(image)
        return _annotations(out, 1, size)[0]


class DatasetDMGenerateClient(_Client):
    """The `datasetdm_generate` model: text -> images with their annotations, one loop per call."""

    _leading_outputs = ("image",)

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        model_name: str = serving.GENERATE,
        timeout_s: float | None = None,
        retry_policy: retry.RetryPolicy = retry.DEFAULT,
    ) -> None:
        super().__init__(url, model_name, timeout_s, retry_policy)

    def generate(
        self,
        prompt: str,
        class_names: Sequence[str],
        seeds: Sequence[int],
        steps: int = 50,
        guidance: float = 7.5,
        negative_prompt: str = "",
        height: int | None = None,
        width: int | None = None,
        tasks: Sequence[str] | None = None,
        max_instances: int | None = None,
        score_threshold: float | None = None,
    ) -> list[Generation]:
        """One image per seed, denoised together; the image for a seed is diffusers'
        `StableDiffusionPipeline` image for `torch.Generator("cpu").manual_seed(seed)`."""
        inputs = [
            infer_input(grpcclient, "prompt", utf8_strings([prompt]), "BYTES"),
            infer_input(grpcclient, "class_names", utf8_strings(class_names), "BYTES"),
            infer_input(grpcclient, "seeds", np.array(seeds, dtype=np.int64), "INT64"),
            infer_input(grpcclient, "negative_prompt", utf8_strings([negative_prompt]), "BYTES"),
            infer_input(grpcclient, "steps", np.array([steps], dtype=np.int32), "INT32"),
            infer_input(grpcclient, "guidance", np.array([guidance], dtype=np.float32), "FP32"),
        ]
        for name, value in (("height", height), ("width", width)):
            if value is not None:
                inputs.append(infer_input(grpcclient, name, np.array([value], dtype=np.int32), "INT32"))
        out = self._infer(inputs, tasks, max_instances, score_threshold)
        size = out["image"].shape[1:3]
        return [
            Generation(**vars(annotation), seed=int(seed), image=out["image"][i])
            for i, (seed, annotation) in enumerate(zip(seeds, _annotations(out, len(seeds), size), strict=True))
        ]


def _image_size(data: bytes) -> tuple[int, int]:
    """(height, width) of encoded image bytes, from the header."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.height, image.width


__all__ = [
    "Annotation",
    "ClientError",
    "DatasetDMAnnotateClient",
    "DatasetDMGenerateClient",
    "Generation",
    "Instance",
]
