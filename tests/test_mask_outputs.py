"""Masks out of the command line: `segment --out` in each format and `segment-all` for an image
and a folder (COCO file, resume), through the real server."""

from __future__ import annotations

import json

import numpy as np
import pytest
from perceptserve.clients.hqsam import HQSamClient
from perceptserve.clients.mask_formats import polygons
from PIL import Image, ImageDraw
from pycocotools.coco import COCO

from perceptserve.automatic import rle

from .test_cli import run_cli

pytestmark = pytest.mark.server

KEEP_ALL = ["--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--box-nms-thresh", "1"]


@pytest.fixture(scope="module")
def photo(photos, tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(photos["astronaut"]).save(path)
    return path


@pytest.fixture(scope="module")
def served_mask(server, photo):
    with HQSamClient(server.grpc_url) as client:
        client.set_image_bytes(photo.read_bytes())
        masks, scores, _ = client.predict(box=[120, 20, 460, 510])
    return masks[0], float(scores[0])


@pytest.mark.parametrize("name", ["mask.rle.json", "mask.polygons.json", "mask.coco.json", "mask.json"])
def test_segment_writes_each_format(server, photo, served_mask, tmp_path, name):
    out = tmp_path / name
    extra = ["--format", "rle"] if name == "mask.json" else []
    result = run_cli(
        "segment", str(photo), "--box", "120,20,460,510", "--out", str(out), *extra, "--url", server.grpc_url
    )
    assert result.returncode == 0, result.stderr
    mask, score = served_mask
    written = json.loads(out.read_text())
    if name.endswith("polygons.json"):
        drawn = Image.new("1", mask.shape[::-1])
        for polygon in written[0]:
            ImageDraw.Draw(drawn).polygon([tuple(p) for p in polygon["exterior"]], fill=1)
            for hole in polygon["holes"]:
                ImageDraw.Draw(drawn).polygon([tuple(p) for p in hole], fill=0)
        redrawn = np.asarray(drawn)
        assert (redrawn & mask).sum() / (redrawn | mask).sum() >= 0.9  # contours run through edge pixels
    elif name.endswith("coco.json"):
        coco = COCO(str(out))
        (annotation,) = coco.loadAnns(coco.getAnnIds())
        assert np.array_equal(coco.annToMask(annotation).astype(bool), mask)
        assert annotation["score"] == pytest.approx(score, rel=1e-6)
    else:
        assert np.array_equal(rle.decode(written[0]), mask)


def test_polygons_keep_holes():
    ring = np.zeros((40, 40), bool)
    ring[5:35, 5:35] = True
    ring[15:25, 15:25] = False
    (polygon,) = polygons(ring)
    assert len(polygon["holes"]) == 1
    xs = [x for x, _ in polygon["exterior"]]
    assert (min(xs), max(xs)) == (5, 34)


def test_segment_all_writes_records_and_overlay(server, photo, tmp_path):
    out, overlay = tmp_path / "masks.json", tmp_path / "overlay.png"
    args = ["--points-per-side", "3", *KEEP_ALL, "--overlay", str(overlay), "--url", server.grpc_url]
    result = run_cli("segment-all", str(photo), "--out", str(out), *args)
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert len(records) == 9
    for record in records:
        assert rle.decode(record["segmentation"]).sum() == record["area"]
    assert np.asarray(Image.open(overlay)).shape == (512, 512, 3)


def test_segment_all_folder_writes_one_coco_file_and_resumes(server, photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut", "coffee", "chelsea_portrait"):
        Image.fromarray(photos[name]).save(folder / f"{name}.jpg", quality=90)
    out = tmp_path / "coco.json"
    args = ["--points-per-side", "2", *KEEP_ALL, "--concurrency", "2", "--url", server.grpc_url]
    assert run_cli("segment-all", str(folder), "--out", str(out), *args).returncode == 0
    coco = COCO(str(out))
    assert sorted(i["file_name"] for i in coco.dataset["images"]) == [
        "astronaut.jpg",
        "chelsea_portrait.jpg",
        "coffee.jpg",
    ]
    assert len(coco.getAnnIds()) == 12 and coco.loadCats(1)[0]["name"] == "object"
    for annotation in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs(annotation["image_id"])[0]
        assert coco.annToMask(annotation).shape == (image["height"], image["width"])
        assert 0 <= annotation["score"] == annotation["predicted_iou"]

    document = json.loads(out.read_text())
    dropped = next(i["id"] for i in document["images"] if i["file_name"] == "coffee.jpg")
    document["images"] = [i for i in document["images"] if i["id"] != dropped]
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] != dropped]
    out.write_text(json.dumps(document))
    result = run_cli("segment-all", str(folder), "--out", str(out), *args)
    assert result.returncode == 0 and "1 images segmented" in result.stdout, result.stdout
    resumed = COCO(str(out))
    assert len(resumed.dataset["images"]) == 3 and len(resumed.getAnnIds()) == 12
    assert len({a["id"] for a in resumed.dataset["annotations"]}) == 12
