"""`make demo-datasetdm`: export the tiny random Stable Diffusion pipeline with random semantic,
instance, depth and pose P-Decoders, start the server, generate a few annotated images into DatasetDM's layout,
annotate a real photo, stop the server, say where the files are. The images are noise-like:
the weights are random; the plumbing is the real one (docs/datasetdm-serving.md shows the same
with a Stable Diffusion 1.x folder and a DatasetDM checkpoint)."""

from __future__ import annotations

import argparse

from PIL import Image
from skimage import data as sample_images

from perceptserve import settings as settings_module
from perceptserve.clients import prompt_lists
from perceptserve.clients.annotate import annotate_file
from perceptserve.clients.dataset import Dataset, RunSpec
from perceptserve.clients.datasetdm import DatasetDMAnnotateClient, DatasetDMGenerateClient
from perceptserve.clients.generate import generate_dataset
from perceptserve.export.datasetdm import DatasetDMExport, run
from perceptserve.server.launcher import TritonServer

PROMPT, CLASSES = "a photo of a man with a dog", ["person", "dog"]


def run_demo(args: argparse.Namespace) -> int:
    settings = settings_module.from_env()
    report = run(DatasetDMExport(repository=args.repository, tasks=("semantic", "instance", "depth", "pose")), settings)
    print(report.format())
    if not report.passed:
        return 3
    args.out.mkdir(parents=True, exist_ok=True)
    photo = args.out / "chelsea.png"
    Image.fromarray(sample_images.chelsea()).save(photo)
    with TritonServer(args.repository, "cpu", settings.server, log_file=args.out / "tritonserver.log") as server:
        print(f"server ready: gRPC {server.grpc_url}")
        with DatasetDMGenerateClient(server.grpc_url) as client:
            # Random decoders score their instances far under DatasetDM's 0.4: keep them all.
            spec = RunSpec(
                prompt_lists.single(PROMPT, CLASSES[0]),
                CLASSES,
                steps=10,
                guidance=7.5,
                height=128,
                width=128,
                score_threshold=0.0,
                models=client.model_versions(),
            )
            dataset = Dataset(args.out / "dataset", spec)
            result = generate_dataset(client, dataset, seeds=[0, 1, 2, 3], batch=2)
        print(f"generated {len(result.written)} annotated images ({len(result.skipped)} already there)")
        with DatasetDMAnnotateClient(server.grpc_url) as client:
            annotation, paths = annotate_file(
                client, photo, "a photo of a cat", ["cat"], args.out / "annotate", max_instances=5, score_threshold=0.0
            )
        print(
            f"annotated {photo}: cat score {annotation.class_scores[0]:.2f}, {len(annotation.instances)} instances, "
            f"{int((annotation.keypoints[:, 2] >= 0.2).sum())} of 17 keypoints visible"
        )
    print("server stopped. Files:")
    for path in [
        args.out / "dataset" / "manifest.jsonl",
        args.out / "dataset" / "Image",
        args.out / "dataset" / "Mask",
        args.out / "dataset" / "Depth",
        args.out / "dataset" / "Preview",
        args.out / "dataset" / "annotations",
        *paths,
        args.out / "tritonserver.log",
    ]:
        print(f"  {path}")
    return 0 if not result.failed else 1
