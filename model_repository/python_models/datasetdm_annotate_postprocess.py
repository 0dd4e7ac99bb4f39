"""DatasetDM annotate, last step: the decoders' outputs at the processing size (multiples of
64) -> at the image's own size: the class map by nearest neighbour (indices must not blend),
depth bilinearly. Depth is there when the depth decoder was exported."""

import numpy as np
import torch
import torch.nn.functional as F
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def _process(self, request):
        size = tuple(int(side) for side in pb_utils.get_input_tensor_by_name(request, "original_size").as_numpy())
        class_map = torch.from_numpy(pb_utils.get_input_tensor_by_name(request, "class_map_raw").as_numpy())
        if class_map.shape[-2:] != size:
            class_map = F.interpolate(class_map[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(torch.int32)
        outputs = [pb_utils.Tensor("class_map", np.ascontiguousarray(class_map.numpy()))]
        depth = pb_utils.get_input_tensor_by_name(request, "depth_raw")
        if depth is not None:
            depth = torch.from_numpy(depth.as_numpy())
            if depth.shape[-2:] != size:
                depth = F.interpolate(depth, size=size, mode="bilinear", align_corners=False)
            outputs.append(pb_utils.Tensor("depth", np.ascontiguousarray(depth.numpy())))
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def execute(self, requests):
        return [self._process(request) for request in requests]
