"""One real request through each served SAM-family ensemble (`hqsam`, `sam`) before the server counts as ready.

Triton's own warm-up runs each model alone with made-up inputs; what it leaves cold is the path
between them: the ensemble scheduler's first request, the python stubs' first real inputs and
outputs in shared memory, the response cache's first insert. On the small model that was still
1.34x the following requests after every model had its own warm-up. A photo of another size than
users' is used, so no image size's resize matrices are prepared for them by accident.
"""

from __future__ import annotations

import numpy as np
from skimage import data as sample_images

from perceptserve.hqsam.families import FAMILIES
from perceptserve.imaging import encode_png


def warm_up_ensembles(repository, grpc_url: str) -> None:
    served = [family.ensemble for family in FAMILIES.values() if (repository / family.ensemble).is_dir()]
    if not served:
        return
    from perceptserve.clients.hqsam import HQSamClient

    photo = encode_png(sample_images.astronaut())  # 512 x 512
    for ensemble in served:
        with HQSamClient(grpc_url, model_name=ensemble) as client:
            client.segment(photo, point_coords=np.array([[256.0, 200.0]]), point_labels=np.array([1]))
