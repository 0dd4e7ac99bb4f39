"""`perceptserve annotate IMAGE --prompt TEXT --classes a,b,c --out DIR`: a real photo through the
served `datasetdm_annotate` ensemble -> OUT/{stem}_mask.png (class indices), OUT/{stem}_preview.jpg
(the photo beside its coloured mask), OUT/{stem}_depth.png where depth is served, and where
instances or keypoints are served their previews and OUT/annotations/ (COCO files over every
photo annotated into OUT with the same classes, rebuilt from per-photo records)."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from perceptserve.imaging import ImageError, decode_image
from perceptserve.parsing import comma_list

from . import coco, retry
from .dataset import depth_png, mask_of, preview
from .datasetdm import Annotation, DatasetDMAnnotateClient
from .errors import ClientError
from .overlay import draw_instances, draw_pose

LOCAL_PIXEL_LIMIT = 500_000_000  # only for drawing the preview here; the server applies its own


def annotate_file(
    client: DatasetDMAnnotateClient,
    image_path: Path,
    prompt: str,
    classes: list[str],
    out: Path,
    seed: int = 0,
    max_instances: int | None = None,
    score_threshold: float | None = None,
    keypoint_threshold: float = coco.KEYPOINT_THRESHOLD,
) -> tuple[Annotation, list[Path]]:
    """Send the file as it is; write the mask, preview, depth, instance and pose previews and the
    COCO files (those served); return the annotation and the paths."""
    try:
        data = image_path.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {image_path}: {exc.strerror}") from None
    result = client.annotate(data, prompt, classes, seed, max_instances=max_instances, score_threshold=score_threshold)
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
    if result.instances is not None:
        paths.append(out / f"{image_path.stem}_instances.jpg")
        masks = [mask_of(instance.rle) for instance in result.instances]
        draw_instances(image, masks, [i.box for i in result.instances]).save(paths[-1], quality=90)
    if result.keypoints is not None:
        paths.append(out / f"{image_path.stem}_pose.jpg")
        draw_pose(image, result.keypoints, coco.SKELETON, keypoint_threshold).save(paths[-1], quality=90)
    if result.instances is not None or result.keypoints is not None:
        record = coco.item_record(image_path.name, result, image.shape[:2], keypoint_threshold)
        coco.write_record(out / coco.record_path(image_path.stem), record)
        records = sorted((out / coco.RECORDS).glob("*.json"))
        paths += coco.write(out, [coco.read_record(path) for path in records], classes)
    return result, paths


def annotate_command(args: argparse.Namespace) -> int:
    classes = list(comma_list(args.classes))
    with DatasetDMAnnotateClient(args.url, retry_policy=retry.from_retries(args.retries)) as client:
        result, paths = annotate_file(
            client,
            args.image,
            args.prompt,
            classes,
            args.out,
            args.seed,
            args.max_instances,
            args.score_threshold,
            args.keypoint_threshold,
        )
    found = ", ".join(f"{name} {score:.2f}" for name, score in zip(classes, result.class_scores, strict=True))
    print(
        f"class map {result.class_map.shape[1]}x{result.class_map.shape[0]} (scores: {found}) -> "
        + ", ".join(map(str, paths))
    )
    return 0
