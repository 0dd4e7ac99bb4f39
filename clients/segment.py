"""`perceptserve segment IMAGE --point X,Y[,LABEL] --box X0,Y0,X1,Y1 --out FILE [--format ...]`:
the mask as a PNG, COCO RLE, polygons or a COCO file (see `mask_formats`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perceptserve.imaging import ImageError, decode_image

from . import retry
from .errors import ClientError
from .hqsam import HQSamClient
from .mask_formats import format_for, write_masks
from .overlay import draw_overlay

LOCAL_PIXEL_LIMIT = 500_000_000  # only for drawing the overlay here; the server applies its own


@dataclass
class Prompt:
    points: np.ndarray | None
    labels: np.ndarray | None
    box: np.ndarray | None


def _numbers(text: str, option: str, counts: tuple[int, ...], form: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        raise ClientError(f"{option} {text!r} is not {form}")
    return values


def parse_prompt(points: list[str], box: str | None) -> Prompt:
    parsed = [_numbers(p, "--point", (2, 3), "X,Y[,LABEL]") for p in points]
    for values in parsed:
        if len(values) == 3 and values[2] not in (0.0, 1.0):
            raise ClientError(f"--point label {values[2]:g} is not 1 (foreground) or 0 (background)")
    if not parsed and box is None:
        raise ClientError("give at least one --point X,Y[,LABEL] or a --box X0,Y0,X1,Y1")
    return Prompt(
        points=np.array([v[:2] for v in parsed], dtype=np.float32) if parsed else None,
        labels=np.array([int(v[2]) if len(v) == 3 else 1 for v in parsed], dtype=np.int32) if parsed else None,
        box=np.array(_numbers(box, "--box", (4,), "X0,Y0,X1,Y1"), dtype=np.float32) if box else None,
    )


def decode_for_drawing(data: bytes) -> np.ndarray:
    """The image the server was sent, decoded here to draw on (a bad file is one line)."""
    try:
        return decode_image(data, LOCAL_PIXEL_LIMIT)
    except ImageError as exc:
        raise ClientError(str(exc)) from None


def segment_file(
    client: HQSamClient,
    image_path: Path,
    prompt: Prompt,
    multimask: bool,
    hq_token_only: bool,
    out: Path,
    overlay: Path | None = None,
    kind: str = "png",
) -> np.ndarray:
    """Send the file as it is, write the mask in format `kind` (and the overlay); return the mask."""
    try:
        data = image_path.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {image_path}: {exc.strerror}") from None
    client.set_image_bytes(data)
    masks, scores, _ = client.predict(
        point_coords=prompt.points,
        point_labels=prompt.labels,
        box=prompt.box,
        multimask_output=multimask,
        hq_token_only=hq_token_only,
    )
    best = int(np.argmax(scores))  # plain SAM gives 3 candidates with --multimask: the best
    mask = masks[best]
    write_masks(out, kind, masks[best : best + 1], scores[best : best + 1], image_path.name)
    if overlay:
        overlay.parent.mkdir(parents=True, exist_ok=True)
        draw_overlay(decode_for_drawing(data), mask, prompt.points, prompt.labels, prompt.box).save(overlay)
    return mask


def segment_command(args: argparse.Namespace) -> int:
    prompt = parse_prompt(args.point, args.box)
    kind = format_for(args.out, args.format)
    with HQSamClient(args.url, model_name=args.model, retry_policy=retry.from_retries(args.retries)) as client:
        mask = segment_file(
            client, args.image, prompt, args.multimask, args.hq_token_only, args.out, args.overlay, kind
        )
    print(
        f"mask {mask.shape[1]}x{mask.shape[0]}, {int(mask.sum())} pixels set -> {args.out} ({kind})"
        + (f"; overlay -> {args.overlay}" if args.overlay else "")
    )
    return 0
