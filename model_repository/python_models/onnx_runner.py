"""Runs the version folder's ONNX file in ONNX Runtime on the CPU: the body of every ONNX model
on the `cpu` target, where the embedded tritonserver has only the python backend.

With `max_batch_size > 0` the requests Triton's dynamic batcher hands over are concatenated
into one run and split back, which is what makes dynamic batching pay on this backend too.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], parameters["onnx_file"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_num_threads", "0"))
        options.add_session_config_entry("session.intra_op.allow_spinning", parameters.get("allow_spinning", "1"))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        self.batched = config.get("max_batch_size", 0) > 0

    def _run(self, feeds):
        return self.session.run(self.output_names, feeds)

    def _respond(self, outputs):
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(n, np.ascontiguousarray(o)) for n, o in zip(self.output_names, outputs, strict=True)
            ]
        )

    def execute(self, requests):
        inputs = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.input_names} for r in requests]
        try:
            if not self.batched:
                return [self._respond(self._run(feeds)) for feeds in inputs]
            sizes = [feeds[self.input_names[0]].shape[0] for feeds in inputs]
            joined = {n: np.concatenate([feeds[n] for feeds in inputs]) for n in self.input_names}
            outputs = self._run(joined)
            bounds = np.cumsum([0] + sizes)
            return [self._respond([o[a:b] for o in outputs]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        except Exception as exc:  # a model failure is the server's fault, not the caller's
            error = pb_utils.TritonError(f"ONNX Runtime failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
