"""The COCO writer without a server: keypoint visibility at DatasetDM's threshold, RLE records that
pycocotools reads back at the image's size, and merging shards with fresh ids."""

from __future__ import annotations

import numpy as np
from perceptserve.clients import coco
from perceptserve.clients.datasetdm import Annotation, Instance


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as rle

    encoded = rle.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": encoded["counts"].decode("ascii")}


def test_records_build_coco_files_that_pycocotools_reads(tmp_path):
    from pycocotools.coco import COCO

    mask = np.zeros((48, 80), bool)
    mask[10:20, 30:50] = True
    keypoints = np.zeros((17, 3), np.float32)
    keypoints[:, :2] = 5.0
    keypoints[:5, 2] = 0.2  # exactly the threshold: visible
    keypoints[5:, 2] = 0.19
    annotation = Annotation(None, None, instances=[Instance(_rle(mask), 2, 0.9, [30, 10, 20, 10])], keypoints=keypoints)
    records = [coco.item_record(f"Image/x_{i}.jpg", annotation, (48, 80), 0.2) for i in range(2)]
    written = coco.write(tmp_path, records, ["person", "dog"])
    assert written == [tmp_path / coco.INSTANCES, tmp_path / coco.PERSON_KEYPOINTS]
    instances = COCO(str(tmp_path / coco.INSTANCES))
    assert [a["id"] for a in instances.loadAnns(instances.getAnnIds())] == [1, 2]
    decoded = instances.annToMask(instances.loadAnns([1])[0])
    assert decoded.shape == (48, 80) and (decoded.astype(bool) == mask).all()
    assert instances.loadAnns([1])[0]["area"] == 200 and instances.loadCats([2])[0]["name"] == "dog"
    person = COCO(str(tmp_path / coco.PERSON_KEYPOINTS)).loadAnns([1])[0]
    assert (
        person["num_keypoints"] == 5
        and person["keypoints"][:3] == [5.0, 5.0, 2]
        and person["keypoints"][15:18] == [0, 0, 0]
    )


def test_merge_renumbers_images_and_annotations():
    shard = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [{"id": 1, "image_id": 2}, {"id": 2, "image_id": 1}],
        "categories": [{"id": 1, "name": "cat"}],
    }
    merged = coco.merge([shard, shard])
    assert [i["id"] for i in merged["images"]] == [1, 2, 3, 4]
    assert [(a["id"], a["image_id"]) for a in merged["annotations"]] == [(1, 2), (2, 1), (3, 4), (4, 3)]
