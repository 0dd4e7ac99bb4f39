"""`perceptserve annotate IMAGE --prompt TEXT --classes a,b,c --out DIR`: a real photo through the
served `datasetdm_annotate` ensemble -> OUT/{stem}_mask.png (class indices), OUT/{stem}_preview.jpg
(the photo beside its coloured mask) and OUT/{stem}_depth.png where depth is served."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from perceptserve.imaging import ImageError, decode_image

from .dataset import depth_png, preview
from .datasetdm import Annotation, DatasetDMAnnotateClient
from .errors import ClientError
from .generate import csv

LOCAL_PIXEL_LIMIT = 500_000_000  # only for drawing the preview here; the server applies its own


def annotate_file(
    client: DatasetDMAnnotateClient, image_path: Path, prompt: str, classes: list[str], out: Path, seed: int = 0
) -> tuple[Annotation, list[Path]]:
    """Send the file as it is; write the mask, preview (and depth); return them and the paths."""
    try:
        data = image_path.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {image_path}: {exc.strerror}") from None
    result = client.annotate(data, prompt, classes, seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{image_path.stem}_mask.png", out / f"{image_path.stem}_preview.jpg"]
    Image.fromarray(result.class_map.astype("uint8")).save(paths[0])
    try:
        image = decode_image(data, LOCAL_PIXEL_LIMIT)
    except ImageError as exc:
        raise ClientError(str(exc)) from None
    preview(image, result.class_map).save(paths[1], quality=90)
    if result.depth is not None:
        paths.append(out / f"{image_path.stem}_depth.png")
        depth_png(result.depth).save(paths[-1])
    return result, paths


def annotate_command(args: argparse.Namespace) -> int:
    classes = csv(args.classes)
    with DatasetDMAnnotateClient(args.url) as client:
        result, paths = annotate_file(client, args.image, args.prompt, classes, args.out, args.seed)
    found = ", ".join(f"{name} {score:.2f}" for name, score in zip(classes, result.class_scores, strict=True))
    print(
        f"class map {result.class_map.shape[1]}x{result.class_map.shape[0]} (scores: {found}) -> "
        + ", ".join(map(str, paths))
    )
    return 0
