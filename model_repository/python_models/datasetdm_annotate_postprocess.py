"""DatasetDM annotate, last step: the decoders' outputs at the processing size (multiples of
64) -> at the image's own size: the class map by nearest neighbour (indices must not blend),
depth bilinearly, the instance inference (`perceptserve.datasetdm.instances`) with the mask logits
resized straight to the image size, keypoints scaled. Each output is there when its decoder was
exported. The class scores are handed on as they are (the ensemble's last step)."""

import torch
import torch.nn.functional as F
from perceptserve.model_repository.python_models import inputs
from perceptserve.model_repository.python_models.responses import respond

from perceptserve.datasetdm import instances


def _input(request, name):
    value = inputs.optional(request, name)
    return None if value is None else torch.from_numpy(value)


class TritonPythonModel:
    def initialize(self, args):
        config = inputs.model_config(args)
        self.candidates = int(inputs.parameters(config)["instance_candidates"])
        self.passed = inputs.pass_through_names(config)

    def _process(self, request):
        size = tuple(int(side) for side in _input(request, "original_size"))
        class_map = _input(request, "class_map_raw")
        processing_size = tuple(class_map.shape[-2:])
        if processing_size != size:
            class_map = F.interpolate(class_map[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(torch.int32)
        outputs = {"class_map": class_map.numpy()}
        depth = _input(request, "depth_raw")
        if depth is not None:
            if depth.shape[-2:] != size:
                depth = F.interpolate(depth, size=size, mode="bilinear", align_corners=False)
            outputs["depth"] = depth.numpy()
        logits = _input(request, "instance_class_logits")
        if logits is not None:
            count, threshold = _input(request, "instance_limits").tolist()
            labels = _input(request, "instance_labels").numpy()
            masks = _input(request, "instance_mask_logits")
            found = instances.infer(logits[0], masks[0], labels, size, int(count), threshold, self.candidates)
            outputs.update(instances.served_outputs([found]))
        keypoints = _input(request, "keypoints_raw")
        if keypoints is not None:
            outputs["keypoints"] = instances.scale_keypoints(keypoints.numpy(), processing_size, size)
        return respond({**outputs, **inputs.passed_through(request, self.passed)})

    def execute(self, requests):
        return [self._process(request) for request in requests]
