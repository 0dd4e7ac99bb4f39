"""Prompt validation: every kind of bad prompt is refused with a message naming it, and good
prompts become exactly what `PromptEncoder` builds."""

import numpy as np
import pytest

from perceptserve.hqsam.prompts import PromptError, PromptLimits, as_prompt_batch, build_decoder_prompts

LIMITS = PromptLimits(max_prompt_sets=8, max_points=4)
SIZE = (480, 640)  # H, W


def build(**prompts):
    return build_decoder_prompts(SIZE, LIMITS, **{k: None if v is None else np.asarray(v) for k, v in prompts.items()})


@pytest.mark.parametrize(
    "prompts, message",
    [
        ({}, "no prompt"),
        ({"point_coords": np.zeros((1, 0, 2), np.float32), "point_labels": np.zeros((1, 0), np.int32)}, "no prompt"),
        ({"point_coords": [[[1.0, 2.0]]]}, "point_coords was given without point_labels"),
        ({"point_labels": [[1]]}, "point_labels was given without point_coords"),
        ({"point_coords": [[1.0, 2.0]], "point_labels": [1]}, "expected [N, P, 2]"),
        ({"point_coords": [[[1.0, 2.0]]], "point_labels": [[1, 1]]}, "point_labels has shape"),
        ({"point_coords": [[[np.nan, 2.0]]], "point_labels": [[1]]}, "NaN or infinite"),
        ({"point_coords": [[[np.inf, 2.0]]], "point_labels": [[1]]}, "NaN or infinite"),
        ({"point_coords": [[[641.0, 2.0]]], "point_labels": [[1]]}, "outside the 640x480 image"),
        ({"point_coords": [[[1.0, -0.5]]], "point_labels": [[1]]}, "outside"),
        ({"point_coords": [[[1.0, 2.0]]], "point_labels": [[4]]}, "labels must be in -1..3"),
        ({"point_coords": [[[1.0, 2.0]]], "point_labels": [[-2]]}, "labels must be in -1..3"),
        ({"boxes": [[10.0, 10.0, 5.0, 20.0]]}, "inverted or empty"),
        ({"boxes": [[10.0, 10.0, 10.0, 20.0]]}, "inverted or empty"),
        ({"boxes": [[10.0, 10.0, 700.0, 20.0]]}, "outside"),
        ({"boxes": [[10.0, 10.0, 20.0]]}, "expected [N, 4]"),
        ({"boxes": [[0.0, 0.0, 1.0, np.nan]]}, "NaN"),
        (
            {"boxes": [[1.0, 1.0, 5.0, 5.0]] * 2, "point_coords": [[[1.0, 2.0]]], "point_labels": [[1]]},
            "disagree in number",
        ),
        ({"mask_input": np.zeros((1, 1, 64, 64))}, "expected [N, 1, 256, 256]"),
        ({"boxes": np.zeros((0, 4))}, "N = 0"),
        ({"boxes": [[1.0, 1.0, 5.0, 5.0]] * 9}, "limit is 8"),
        ({"point_coords": np.ones((1, 5, 2)), "point_labels": np.ones((1, 5))}, "limit is 4"),
    ],
)
def test_bad_prompts_are_named(prompts, message):
    with pytest.raises(PromptError, match=None) as error:
        build(**prompts)
    assert message in str(error.value)


def test_points_get_a_padding_point_boxes_become_corners():
    points = build(point_coords=[[[64.0, 48.0]]], point_labels=[[1]])
    assert points.point_labels.tolist() == [[1.0, -1.0]]
    assert np.allclose(points.point_coords[0, 0], [102.4, 76.8])  # 640x480 -> 1024x768
    both = build(point_coords=[[[64.0, 48.0]]], point_labels=[[0]], boxes=[[0.0, 0.0, 640.0, 480.0]])
    assert both.point_labels.tolist() == [[0.0, 2.0, 3.0]]
    assert np.allclose(both.point_coords[0, 1:], [[0, 0], [1024, 768]])
    assert both.has_mask_input.tolist() == [0.0] and both.mask_input.shape == (1, 1, 256, 256)


def test_mask_alone_has_no_sparse_tokens():
    prompts = build(mask_input=np.ones((2, 1, 256, 256)))
    assert prompts.point_coords.shape == (2, 0, 2) and prompts.has_mask_input.tolist() == [1.0]


def test_single_and_batched_prompt_forms():
    single = as_prompt_batch(point_coords=[[1, 2]], point_labels=[1], box=[0, 0, 5, 5])
    assert single.single and single.point_coords.shape == (1, 1, 2) and single.boxes.shape == (1, 4)
    batched = as_prompt_batch(box=np.zeros((3, 4)))
    assert not batched.single and batched.boxes.shape == (3, 4)
