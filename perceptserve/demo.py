"""`make demo`: export HQ-SAM, start the server, segment a real photo over gRPC with a point and
with a box, segment everything in it (`hqsam_automatic`), write masks and overlays, stop the
server, say where the files are."""

from __future__ import annotations

import argparse

from PIL import Image
from skimage import data as sample_images

from perceptserve import settings as settings_module
from perceptserve.clients.hqsam import HQSamClient
from perceptserve.clients.segment import parse_prompt, segment_file
from perceptserve.clients.segment_all import segment_image
from perceptserve.export.hqsam import HQSamExport, run
from perceptserve.server.launcher import TritonServer

# Prompts on skimage's astronaut (512 x 512): a point on the helmet, a box around the person.
DEMO_PROMPTS = {"point": (["260,110"], None), "box": ([], "120,20,460,510")}
# Random weights give noise masks that the official thresholds all reject (stability 0, low
# predicted IoU): the demo lowers them so that segment-everything still shows its output. A real
# checkpoint runs with the official defaults.
RANDOM_WEIGHTS_GENERATOR = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


def run_demo(args: argparse.Namespace) -> int:
    settings = settings_module.from_env()
    job = HQSamExport(model=args.model_type, repository=args.repository, checkpoint=args.checkpoint)
    report = run(job, settings)
    print(report.format())
    if not report.passed:
        return 3
    args.out.mkdir(parents=True, exist_ok=True)
    photo = args.out / "astronaut.png"
    Image.fromarray(sample_images.astronaut()).save(photo)
    written = []
    with TritonServer(args.repository, "cpu", settings.server, log_file=args.out / "tritonserver.log") as server:
        print(f"server ready: gRPC {server.grpc_url}")
        with HQSamClient(server.grpc_url) as client:
            for name, (points, box) in DEMO_PROMPTS.items():
                mask_path, overlay_path = args.out / f"mask_{name}.png", args.out / f"overlay_{name}.png"
                mask = segment_file(client, photo, parse_prompt(points, box), False, False, mask_path, overlay_path)
                print(f"segmented with a {name}: {int(mask.sum())} of {mask.size} pixels in the mask")
                written += [mask_path, overlay_path]
            masks_path, overlay_path = args.out / "masks_all.json", args.out / "overlay_all.png"
            parameters = {} if args.checkpoint else RANDOM_WEIGHTS_GENERATOR
            records = segment_image(client, photo, masks_path, overlay_path, parameters)
            print(f"segmented everything ({parameters or 'official defaults'}): {len(records)} masks")
            written += [masks_path, overlay_path]
    print("server stopped. Files:")
    for path in [photo, *written, args.out / "tritonserver.log"]:
        print(f"  {path}")
    return 0
