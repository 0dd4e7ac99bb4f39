"""The `triton` mode: the served models over gRPC, at each concurrency, with Triton's own split.

Stages, as the served path runs them:
  encoder  `hqsam_encoder` called directly with the resized, padded image (the input the
           ensemble's preprocessing hands it); a new image each time, so no cache hit. Its
           outputs (12 MB per image) travel back over gRPC: that is part of serving it alone.
  prompt   the `hqsam` ensemble on an image it has seen: the encoder step (its guard, which
           holds the response cache) is a cache hit, so this is decode + preprocessing + prompt
           decoder + postprocessing.
  request  the `hqsam` ensemble on a new PNG with one point: what a client waits for.
"""

from __future__ import annotations

import time

import numpy as np
import tritonclient.grpc as grpcclient
from perceptserve.clients.errors import ClientError
from perceptserve.clients.hqsam import HQSamClient
from perceptserve.clients.triton_io import infer_input, requested_outputs, server_errors
from perceptserve.model_repository import hqsam as names
from tritonclient.utils import InferenceServerException

from perceptserve.hqsam.families import Family

from .runners import Runner, encoder_feed
from .timing import Stage
from .triton_statistics import ModelStatistics, snapshot
from .workload import Workload

SETTLE_READS, SETTLE_INTERVAL_S = 50, 0.05


class TritonRunner(Runner):
    mode = "triton"

    def __init__(self, url: str, workload: Workload, concurrency_levels: tuple[int, ...], family: Family) -> None:
        self.url = url
        self.workload = workload
        self.concurrency_levels = concurrency_levels
        self.family = family
        self.client = HQSamClient(url, model_name=family.ensemble)
        self.triton = grpcclient.InferenceServerClient(url)

    def server_version(self) -> str:
        try:
            return self.triton.get_server_metadata(as_json=True)["version"]
        except InferenceServerException as exc:
            raise ClientError(f"cannot reach Triton at {self.url}: {exc.message()}") from None

    def _encode(self, feed: dict[str, np.ndarray]) -> None:
        inputs = [
            infer_input(grpcclient, "image", feed["image"], "UINT8"),
            infer_input(grpcclient, "input_size", feed["input_size"], "INT64"),
        ]
        outputs = requested_outputs(grpcclient, [t.name for t in names.tensors(self.family).encoder_outputs])
        with server_errors():
            self.triton.infer(self.family.encoder, inputs, outputs=outputs)

    def _segment(self, item: tuple[bytes, dict]) -> None:
        image, prompt = item
        self.client.segment(image, **prompt)

    def _prime(self, count: int) -> list[tuple[bytes, dict]]:
        """One image sent once untimed, so that the timed prompts find its embeddings cached."""
        image = self.workload.png_variants(1)[0]
        self._segment((image, self.workload.point(0)))
        return [(image, self.workload.point(index)) for index in range(1, count + 1)]

    def _requests(self, count: int) -> list[tuple[bytes, dict]]:
        return [(image, self.workload.point(index)) for index, image in enumerate(self.workload.png_variants(count))]

    def stages(self) -> list[Stage]:
        return [
            Stage(
                "encoder", lambda count: [encoder_feed(image) for image in self.workload.variants(count)], self._encode
            ),
            Stage("prompt", self._prime, self._segment),
            Stage("request", self._requests, self._segment),
        ]

    def statistics(self) -> dict[str, ModelStatistics]:
        """Triton counts a request when it releases it, which can be just after the client has
        its response: read until two snapshots agree, so that a run's last request is in."""
        current = snapshot(self.triton, self.family.models)
        for _ in range(SETTLE_READS):
            time.sleep(SETTLE_INTERVAL_S)
            again = snapshot(self.triton, self.family.models)
            if again == current:
                break
            current = again
        return current

    def close(self) -> None:
        self.client.close()
        self.triton.close()
