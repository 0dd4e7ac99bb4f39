"""Each step of the automatic generator against the official function it reproduces, on the
same inputs (no server; milliseconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything_hq.utils import amg

from perceptserve.automatic import grid, masks, rle
from perceptserve.automatic.parameters import GeneratorParameters, ParameterError, validated
from perceptserve.settings import AutomaticLimits


@pytest.mark.parametrize("size", [(512, 512), (400, 600), (681, 250)])
@pytest.mark.parametrize("layers, overlap", [(0, 512 / 1500), (1, 512 / 1500), (2, 0.2)])
def test_crop_boxes_and_grids_are_the_official_ones(size, layers, overlap):
    boxes, layer_ids = amg.generate_crop_boxes(size, layers, overlap)
    assert grid.crop_boxes(*size, layers, overlap) == list(zip(boxes, layer_ids, strict=True))
    for ours, theirs in zip(grid.layer_grids(7, layers, 2), amg.build_all_layer_point_grids(7, layers, 2), strict=True):
        assert np.array_equal(ours, theirs)


def _random_masks(seed: int, count: int = 12, size=(60, 80)) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(count, *size)).astype(np.float32)
    blurred = np.cumsum(np.cumsum(logits, axis=1), axis=2)  # large smooth blobs with holes
    return blurred


def test_boxes_stability_and_edges_match_the_official_ones():
    logits = _random_masks(0)
    binary = logits > 0
    binary[3] = False  # an empty mask: box of zeros
    official_boxes = amg.batched_mask_to_box(torch.from_numpy(binary)).numpy()
    assert np.array_equal(masks.boxes_of(binary), official_boxes)
    official_stability = amg.calculate_stability_score(torch.from_numpy(logits), 0.0, 1.0).numpy()
    assert np.allclose(masks.stability_scores(logits, 0.0, 1.0), official_stability)
    crop, image = [10, 0, 70, 50], [0, 0, 90, 60]
    official_edges = amg.is_box_near_crop_edge(torch.from_numpy(official_boxes), crop, image).numpy()
    ours = masks.near_crop_edge(official_boxes + np.array([10, 0, 10, 0]), crop, image)
    assert np.array_equal(ours, official_edges)


@pytest.mark.parametrize("holes", [True, False])
def test_small_region_removal_matches_the_official_one(holes):
    mode = "holes" if holes else "islands"
    for mask in _random_masks(1) > 0:
        expected, expected_changed = amg.remove_small_regions(mask, 40, mode)
        got, changed = masks.remove_small_regions(mask, 40, holes)
        assert changed == expected_changed and np.array_equal(got, expected)


def test_rle_is_the_official_coco_encoding():
    binary = _random_masks(2) > 0
    official = [amg.coco_encode_rle(r) for r in amg.mask_to_rle_pytorch(torch.from_numpy(binary))]
    ours = rle.encode(binary)
    assert ours == [{"size": r["size"], "counts": r["counts"]} for r in official]
    assert list(rle.areas(ours)) == [int(m.sum()) for m in binary]
    assert all(np.array_equal(rle.decode(r), m) for r, m in zip(ours, binary, strict=True))


def test_parameters_default_and_refuse_by_name():
    assert validated({}, AutomaticLimits()) == GeneratorParameters()
    assert validated({"points_per_side": np.int32(8)}, AutomaticLimits()).points_per_side == 8
    for name, value in [
        ("points_per_side", 65),
        ("crop_n_layers", 4),
        ("box_nms_thresh", 1.01),
        ("points_per_batch", 2.5),
    ]:
        with pytest.raises(ParameterError, match=name):
            validated({name: value}, AutomaticLimits())
