"""`<model>_guard`: the admission point of a large model, and the process that outlives it.

Clients (and ensembles) call the guard; it hands each batch its dynamic batcher formed (at most
`max_batch_size` requests, the limit written from the model's measured memory, see
`model_repository/memory.py`) to the guarded model `inner_model` as one BLS request, and splits
the answer back. Why a second model: when the guarded model's python stub dies (the kernel's OOM
killer, a crash), Triton 2.51 answers its requests INTERNAL "Stub process ... is not healthy",
which tells a client nothing about retrying. The guard's own stub holds no model, so it survives
and answers those requests UNAVAILABLE, which our clients retry (the request is idempotent, and
`perceptserve serve` restarts the server meanwhile). A failure that retrying cannot cure stays
INTERNAL.

Seen with Triton 2.51 here: the response cache stores a failed response as an empty one, so the
same image sent again to this server before it restarts fails in the decoder step; a restart
empties the cache, and our clients' first retry waits longer than the supervisor takes to see
the dead stub (`clients/retry.py`).
"""

import triton_python_backend_utils as pb_utils
from perceptserve.model_repository.python_models import batching
from perceptserve.model_repository.python_models.bls import failure
from perceptserve.model_repository.python_models.inputs import model_config, parameters, required
from perceptserve.model_repository.python_models.responses import respond


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args)
        self.inner = parameters(config)["inner_model"]
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        self.batched = config.get("max_batch_size", 0) > 0
        # The error of the guarded model's dead stub: it stays dead until `perceptserve serve`
        # restarts the server, so later requests are answered at once.
        self.lost = None

    def execute(self, requests):
        if self.lost is not None:
            return [pb_utils.InferenceResponse(error=failure(self.inner, self.lost)) for _ in requests]
        if not self.batched:  # each request is its own run of the inner model
            return [response for request in requests for response in self._run([request])]
        return self._run(requests)

    def _run(self, requests):
        feeds = [{name: required(request, name) for name in self.input_names} for request in requests]
        joined, bounds = batching.join(feeds, self.input_names)
        response = pb_utils.InferenceRequest(
            model_name=self.inner,
            inputs=[pb_utils.Tensor(name, value) for name, value in joined.items()],
            requested_output_names=self.output_names,
        ).exec()
        if response.has_error():
            error = response.error()
            if "is not healthy" in error.message():
                self.lost = error
            # one TritonError per response: Triton 2.51 crashed (SIGSEGV) on one shared by several
            return [pb_utils.InferenceResponse(error=failure(self.inner, error)) for _ in requests]
        outputs = [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in self.output_names]
        if not self.batched:
            return [respond(dict(zip(self.output_names, outputs, strict=True)))]
        return [respond(dict(zip(self.output_names, rows, strict=True))) for rows in batching.split(outputs, bounds)]
