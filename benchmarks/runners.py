"""The in-process modes: the official PyTorch predictor (`eager`), our exported models in ONNX
Runtime (`onnxruntime`, `onnxruntime-int8`), and on a GPU the official encoder in fp16
(`torch-fp16`).

Each runner lists its stages (see `timing.Stage`):
  encoder  image -> embeddings. eager: `SamPredictor.set_image`, the official call, with its own
           resize; onnxruntime: the encoder session on the resized, padded image, the same input
           the served encoder gets, so that the two compare like for like.
  prompt   one prompt on an image whose embeddings are already computed (`predict`).
  request  a new image and one prompt (`set_image` + `predict`), what a user waits for.
The in-process predictors keep one image's state, so they run one request at a time.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from perceptserve.hqsam.geometry import resize_and_pad
from perceptserve.hqsam.official import predictor_for

from .timing import Stage
from .triton_statistics import ModelStatistics
from .workload import Workload


class Runner:
    """A mode: its stages, the concurrency levels it runs them at, and (for a server) the
    server's counters, snapshotted around each timed run."""

    mode: str
    concurrency_levels: tuple[int, ...] = (1,)

    def stages(self) -> list[Stage]:
        raise NotImplementedError

    def statistics(self) -> dict[str, ModelStatistics] | None:
        return None


class PredictorRunner(Runner):
    """eager and onnxruntime: a `SamPredictor`-like object in this process."""

    def __init__(self, mode: str, predictor, workload: Workload) -> None:
        self.mode = mode
        self.predictor = predictor
        self.workload = workload

    def _encoder_stage(self) -> Stage:
        return Stage("encoder", self.workload.variants, self.predictor.set_image)

    def _prime(self, count: int) -> list[dict]:
        self.predictor.set_image(self.workload.variants(1)[0])
        return [self.workload.point(index) for index in range(count)]

    def _request(self, item: tuple[np.ndarray, dict]) -> None:
        image, prompt = item
        self.predictor.set_image(image)
        self.predictor.predict(**prompt)

    def _requests(self, count: int) -> list[tuple[np.ndarray, dict]]:
        return [(image, self.workload.point(index)) for index, image in enumerate(self.workload.variants(count))]

    def stages(self) -> list[Stage]:
        return [
            self._encoder_stage(),
            Stage("prompt", self._prime, lambda prompt: self.predictor.predict(**prompt)),
            Stage("request", self._requests, self._request),
        ]


class EagerRunner(PredictorRunner):
    def __init__(self, sam, workload: Workload) -> None:
        super().__init__("eager", predictor_for(sam), workload)


def encoder_feed(image: np.ndarray) -> dict[str, np.ndarray]:
    """The encoder's inputs for one image: resized and padded to 1024, and its resized size."""
    padded, size = resize_and_pad(image)
    return {"image": padded[None], "input_size": np.array([size], dtype=np.int64)}


class OnnxRuntimeRunner(PredictorRunner):
    """`OnnxRuntimeRunner(mode, OnnxPredictor(...), workload)`."""

    def _encoder_stage(self) -> Stage:
        return Stage(
            "encoder",
            lambda count: [encoder_feed(image) for image in self.workload.variants(count)],
            lambda feed: self.predictor.encoder.run(None, feed),
        )


class TorchEncoderRunner(Runner):
    """The official image encoder on an accelerator in reduced precision, batch by batch: the
    GPU figures (ms per image at batch 1 and 8) set against the compute-bound floor."""

    def __init__(
        self,
        sam,
        workload: Workload,
        device: str = "cuda",
        dtype: torch.dtype = torch.float16,
        batch_sizes: tuple[int, ...] = (1, 8),
        mode: str = "torch-fp16",
    ) -> None:
        self.mode = mode
        self.device = torch.device(device)
        self.dtype = dtype
        # A copy: the eager mode keeps using the fp32 CPU model.
        self.sam = copy.deepcopy(sam).to(device=self.device, dtype=dtype).eval()
        self.workload = workload
        self.batch_sizes = batch_sizes

    def _batches(self, batch: int, count: int) -> list[torch.Tensor]:
        batches = []
        for _ in range(count):
            tensors = []
            for image in self.workload.variants(batch):
                padded, (height, width) = resize_and_pad(image)
                pixels = torch.from_numpy(np.ascontiguousarray(padded[:height, :width])).permute(2, 0, 1)
                tensors.append(self.sam.preprocess(pixels.to(self.device, self.dtype)))
            batches.append(torch.stack(tensors))
        return batches

    def _encode(self, batch: torch.Tensor) -> None:
        with torch.inference_mode():
            self.sam.image_encoder(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def stages(self) -> list[Stage]:
        return [
            Stage("encoder", lambda count, b=batch: self._batches(b, count), self._encode, items_per_request=batch)
            for batch in self.batch_sizes
        ]
