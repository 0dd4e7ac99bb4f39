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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from perceptserve.model_repository import datasetdm_serving as api
from tritonclient.utils import InferenceServerException

from .errors import ClientError
from .hqsam import _input, _to_client_error


@dataclass
class Annotation:
    class_map: np.ndarray  # (H, W) int32: 0 background, k the k-th class name
    class_scores: np.ndarray  # (K,) float32
    depth: np.ndarray | None  # (H, W) float32 where the depth decoder was exported


@dataclass
class Generation(Annotation):
    seed: int
    image: np.ndarray  # (H, W, 3) uint8 RGB


def _strings(values: Sequence[str]) -> np.ndarray:
    return np.array([value.encode("utf-8") for value in values], dtype=np.object_)


class _Client:
    def __init__(self, url: str, model_name: str, timeout_s: float | None) -> None:
        self.url = url
        self.model_name = model_name
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url)

    def _infer(self, inputs) -> dict[str, np.ndarray]:
        try:
            config = self._outputs()
            response = self._client.infer(
                self.model_name,
                inputs,
                client_timeout=self.timeout_s,
                outputs=[grpcclient.InferRequestedOutput(n) for n in config],
            )
        except InferenceServerException as exc:
            raise _to_client_error(exc) from None
        return {name: response.as_numpy(name) for name in config}

    def _outputs(self) -> list[str]:
        """The model's outputs as served (depth only where it was exported), read once."""
        if not hasattr(self, "_output_names"):
            metadata = self._client.get_model_metadata(self.model_name)
            self._output_names = [output.name for output in metadata.outputs]
        return self._output_names

    def model_versions(self) -> dict[str, list[str]]:
        """The served versions of this model, for a dataset's manifest."""
        try:
            return {self.model_name: list(self._client.get_model_metadata(self.model_name).versions)}
        except InferenceServerException as exc:
            raise _to_client_error(exc) from None

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DatasetDMAnnotateClient(_Client):
    """The `datasetdm_annotate` ensemble: a real image -> its class map (and depth)."""

    def __init__(
        self, url: str = "127.0.0.1:8001", model_name: str = api.ANNOTATE, timeout_s: float | None = None
    ) -> None:
        super().__init__(url, model_name, timeout_s)

    def annotate(self, image: bytes, prompt: str, class_names: Sequence[str], seed: int = 0) -> Annotation:
        """`image`: PNG / JPEG / WebP bytes as they are; `prompt`: the caption (DatasetDM's
        training prompts name the classes); `seed`: the annotation noise's."""
        inputs = [
            _input(grpcclient, "image", np.array([bytes(image)], dtype=np.object_), "BYTES"),
            _input(grpcclient, "prompt", _strings([prompt]), "BYTES"),
            _input(grpcclient, "class_names", _strings(class_names), "BYTES"),
            _input(grpcclient, "seed", np.array([seed], dtype=np.int64), "INT64"),
        ]
        out = self._infer(inputs)
        depth = out.get("depth")
        return Annotation(out["class_map"][0], out["class_scores"][0], None if depth is None else depth[0, 0])


class DatasetDMGenerateClient(_Client):
    """The `datasetdm_generate` model: text -> images with their annotations, one loop per call."""

    def __init__(
        self, url: str = "127.0.0.1:8001", model_name: str = api.GENERATE, timeout_s: float | None = None
    ) -> None:
        super().__init__(url, model_name, timeout_s)

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
    ) -> list[Generation]:
        """One image per seed, denoised together; the image for a seed is diffusers'
        `StableDiffusionPipeline` image for `torch.Generator("cpu").manual_seed(seed)`."""
        inputs = [
            _input(grpcclient, "prompt", _strings([prompt]), "BYTES"),
            _input(grpcclient, "class_names", _strings(class_names), "BYTES"),
            _input(grpcclient, "seeds", np.array(seeds, dtype=np.int64), "INT64"),
            _input(grpcclient, "negative_prompt", _strings([negative_prompt]), "BYTES"),
            _input(grpcclient, "steps", np.array([steps], dtype=np.int32), "INT32"),
            _input(grpcclient, "guidance", np.array([guidance], dtype=np.float32), "FP32"),
        ]
        for name, value in (("height", height), ("width", width)):
            if value is not None:
                inputs.append(_input(grpcclient, name, np.array([value], dtype=np.int32), "INT32"))
        out = self._infer(inputs)
        depth = out.get("depth")
        return [
            Generation(
                out["class_map"][i],
                out["class_scores"][i],
                None if depth is None else depth[i, 0],
                seed=int(seed),
                image=out["image"][i],
            )
            for i, seed in enumerate(seeds)
        ]


__all__ = ["Annotation", "ClientError", "DatasetDMAnnotateClient", "DatasetDMGenerateClient", "Generation"]
