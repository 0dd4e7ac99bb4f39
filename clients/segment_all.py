"""`perceptserve segment-all IMAGE --out MASKS.json [--overlay PNG]` and
`perceptserve segment-all DIR --out COCO.json [--concurrency N]`: segment everything with the
server's `<family>_automatic` model.

For an image, MASKS.json is the list of the official generator's records (coco_rle mode). For a
folder, the images go out `--concurrency` at a time, a progress bar counts them, and one COCO
instances file collects them all; images already in an existing file are skipped (resume), and
the file is rewritten as results come in, so an interrupted run loses little.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from perceptserve.automatic import rle
from perceptserve.automatic.parameters import FLAGS, NAMES

from . import retry
from .errors import ClientError
from .hqsam import HQSamClient
from .mask_formats import add_image, coco_document, write_json
from .overlay import draw_masks
from .segment import decode_for_drawing

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SAVE_EVERY_S = 5.0


def parameters_from_args(args: argparse.Namespace) -> dict:
    """The generator parameters given on the command line (the rest take the server's defaults)."""
    values = {name: getattr(args, name) for name in NAMES if name not in FLAGS and getattr(args, name) is not None}
    if args.no_multimask:
        values["multimask_output"] = False
    if args.hq_token_only:
        values["hq_token_only"] = True
    return values


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from None


def segment_image(client: HQSamClient, path: Path, out: Path, overlay: Path | None, parameters: dict) -> list[dict]:
    data = _read(path)
    records = client.generate_masks(data, **parameters)
    write_json(out, records)
    if overlay:
        overlay.parent.mkdir(parents=True, exist_ok=True)
        draw_masks(decode_for_drawing(data), [rle.decode(r["segmentation"]) for r in records]).save(overlay)
    return records


def _load_document(out: Path) -> dict:
    if not out.exists():
        return coco_document()
    try:
        document = json.loads(out.read_text())
    except (OSError, ValueError) as exc:
        raise ClientError(f"{out} exists but is not a COCO file to resume ({exc}); move it away") from None
    if not all(key in document for key in ("images", "annotations", "categories")):
        raise ClientError(f"{out} exists but is not a COCO instances file; move it away")
    return document


def segment_folder(
    client: HQSamClient, folder: Path, out: Path, concurrency: int, parameters: dict
) -> tuple[int, list[str]]:
    """Returns (images segmented now, failures as 'name: reason')."""
    document = _load_document(out)
    done = {image["file_name"] for image in document["images"]}
    todo = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in done)
    failures, finished, last_save = [], 0, time.monotonic()

    def one(path: Path):
        data = _read(path)
        return path, Image.open(path).size[::-1], client.generate_masks(data, **parameters)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {pool.submit(one, path): path for path in todo}
        try:
            for future in tqdm(as_completed(futures), total=len(futures), unit="image", desc="segment-all"):
                try:
                    path, size, records = future.result()
                except (ClientError, OSError) as exc:
                    failures.append(f"{futures[future].name}: {exc}")
                    continue
                add_image(document, path.name, size, records)
                finished += 1
                if time.monotonic() - last_save >= SAVE_EVERY_S:
                    write_json(out, document)
                    last_save = time.monotonic()
        finally:
            for future in futures:
                future.cancel()
            write_json(out, document)
    return finished, failures


def segment_all_command(args: argparse.Namespace) -> int:
    parameters = parameters_from_args(args)
    with HQSamClient(args.url, retry_policy=retry.from_retries(args.retries)) as client:
        if args.image.is_dir():
            if args.overlay:
                raise ClientError("--overlay draws one image; leave it out for a folder")
            finished, failures = segment_folder(client, args.image, args.out, args.concurrency, parameters)
            for failure in failures:
                print(f"failed: {failure}")
            print(f"{finished} images segmented -> {args.out}" + (f"; {len(failures)} failed" if failures else ""))
            return 1 if failures else 0
        records = segment_image(client, args.image, args.out, args.overlay, parameters)
    areas = np.array([r["area"] for r in records])
    print(
        f"{len(records)} masks (median area {int(np.median(areas)) if len(areas) else 0} pixels) -> {args.out}"
        + (f"; overlay -> {args.overlay}" if args.overlay else "")
    )
    return 0
