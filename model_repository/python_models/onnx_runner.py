"""Runs the version folder's ONNX file in ONNX Runtime on the CPU: the body of every ONNX model
on the `cpu` target, where the embedded tritonserver has only the python backend.

With `max_batch_size > 0` the requests Triton's dynamic batcher hands over are concatenated
into one run and split back, which is what makes dynamic batching pay on this backend too.
"""

import os

from perceptserve.model_repository.python_models import batching, inputs
from perceptserve.model_repository.python_models.responses import respond, server_error

from perceptserve.onnxruntime_session import cpu_session


class TritonPythonModel:
    def initialize(self, args):
        config = inputs.model_config(args)
        parameters = inputs.parameters(config)
        path = os.path.join(args["model_repository"], args["model_version"], parameters["onnx_file"])
        self.session = cpu_session(
            path,
            threads=int(parameters.get("intra_op_num_threads", "0")),
            allow_spinning=parameters.get("allow_spinning", "1") == "1",
            memory_arena=parameters.get("memory_arena", "0") == "1",
        )
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        self.batched = config.get("max_batch_size", 0) > 0

    def _run(self, feeds):
        return self.session.run(self.output_names, feeds)

    def _respond(self, outputs):
        return respond(dict(zip(self.output_names, outputs, strict=True)))

    def execute(self, requests):
        each = [{name: inputs.required(request, name) for name in self.input_names} for request in requests]
        try:
            if not self.batched:
                return [self._respond(self._run(feeds)) for feeds in each]
            joined, bounds = batching.join(each, self.input_names)
            return [self._respond(outputs) for outputs in batching.split(self._run(joined), bounds)]
        except Exception as exc:  # a model failure is the server's fault, not the caller's
            return [server_error(f"ONNX Runtime failed: {exc}") for _ in requests]
