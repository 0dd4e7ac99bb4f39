"""Plain SAM (segment-anything) and MobileSAM served as the `sam` ensemble beside HQ-SAM, from
random weights in the official checkpoint formats, against each family's official SamPredictor
through the real tritonserver."""

from __future__ import annotations

from itertools import product

import numpy as np
import pytest
import torch
from perceptserve.clients.errors import ClientError
from perceptserve.clients.hqsam import HQSamClient
from perceptserve.export.hqsam_parity import mask_iou
from perceptserve.model_repository import configs
from perceptserve.server import TritonServer
from PIL import Image

from perceptserve.hqsam import checkpoint_loading
from perceptserve.hqsam.families import HQSAM, SAM
from perceptserve.hqsam.official import predictor_for
from perceptserve.hqsam.registry import build_reference, randomize_
from perceptserve.imaging import encode_png

from .conftest import official_batched, server_settings
from .test_cli import one_line_error, run_cli
from .test_serving import PROMPTS, close

pytestmark = pytest.mark.server

MODELS = ["sam_small_vit", "sam_vit_t"]


@pytest.mark.parametrize("model, package", [("sam_small_vit", "segment_anything"), ("sam_vit_t", "mobile_sam")])
def test_export_report_passes_against_the_familys_predictor(model, package, request):
    exported = request.getfixturevalue(model)
    assert exported.report.passed, exported.report.format()
    assert f"official {package} SamPredictor" in exported.report.format()
    assert not any("hq_features" in what for what, *_ in exported.report.rows)


def test_the_repository_keeps_hqsam_and_reports_the_replaced_model_type(sam_small_vit):
    models = {path.name for path in sam_small_vit.repository.iterdir()}
    assert models == {*HQSAM.models, *SAM.models, "hqsam_automatic", "sam_automatic"}
    assert "holds sam vit_t: replacing it with a custom-size model" in sam_small_vit.log
    decoder = configs.parse((sam_small_vit.repository / SAM.decoder / "configs" / "cpu.pbtxt").read_text())
    assert [t.name for t in decoder.input] == [
        "image_embeddings",
        "point_coords",
        "point_labels",
        "mask_input",
        "has_mask_input",
        "mask_slots",
    ]
    encoder = configs.parse((sam_small_vit.repository / SAM.encoder / "configs" / "gpu.pbtxt").read_text())
    assert [t.name for t in encoder.output] == ["image_embeddings"]


def _mismatched_checkpoint(tmp_path, family, model_type) -> str:
    path = tmp_path / f"{family.name}.pth"
    torch.save(randomize_(build_reference(model_type, family), seed=6).state_dict(), path)
    return str(path)


def _export_error(result) -> str:
    """The one error line (after the progress line of the step that failed), no traceback."""
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("perceptserve export:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_a_checkpoint_of_the_other_family_names_the_right_command(tmp_path, sam_vit_t):
    hq = _mismatched_checkpoint(tmp_path, HQSAM, "vit_tiny")
    args = ("--repository", str(tmp_path / "repo"))
    error = _export_error(run_cli("export", "sam", "--model-type", "vit_t", "--checkpoint", hq, *args))
    assert "HQ-SAM checkpoint" in error and "`perceptserve export hqsam --model-type vit_tiny`" in error
    plain = str(sam_vit_t.checkpoint)
    error = _export_error(run_cli("export", "hqsam", "--model-type", "vit_tiny", "--checkpoint", plain, *args))
    assert "plain SAM checkpoint" in error and "`perceptserve export sam --model-type vit_t`" in error
    assert not (tmp_path / "repo").exists()


def test_strict_loading_refuses_a_truncated_plain_checkpoint(small_vit, sam_small_vit):
    state = checkpoint_loading.read_state_dict(sam_small_vit.checkpoint)
    del state["mask_decoder.iou_token.weight"]
    with pytest.raises(checkpoint_loading.CheckpointError, match="missing mask_decoder.iou_token.weight"):
        checkpoint_loading.load_strict(build_reference(small_vit.job.model, SAM), state, family=SAM)


@pytest.fixture(scope="module", params=MODELS)
def served(request):
    """(export, client) with a server on the export's repository, which holds both families."""
    exported = request.getfixturevalue(request.param)
    with TritonServer(exported.repository, "cpu", server_settings()) as server:
        with HQSamClient(server.grpc_url, model_name=SAM.ensemble) as client:
            yield exported, client, server


def test_served_masks_match_the_official_predictor(served, photos):
    exported, client, _ = served
    for photo in ("astronaut", "coffee"):
        reference = predictor_for(exported.sam)
        reference.set_image(photos[photo])
        client.set_image(photos[photo])
        for (name, prompt), multimask in product(PROMPTS.items(), (False, True)):
            expected = reference.predict(**prompt, multimask_output=multimask)
            got = client.predict(**prompt, multimask_output=multimask)
            assert [g.shape for g in got] == [e.shape for e in expected], name  # 3 masks with multimask
            assert all(mask_iou(g, e) >= 0.99 for g, e in zip(got[0], expected[0], strict=True)), (name, multimask)
            assert close(got[2], expected[2]) and close(got[1], expected[1]), (name, multimask)


@pytest.mark.parametrize("multimask", [False, True])
def test_several_prompt_sets_in_one_request(served, photos, multimask):
    exported, client, _ = served
    image = photos["coffee"]
    points = np.array(
        [[[100.0, 100.0], [150.0, 200.0]], [[400.0, 200.0], [500.0, 300.0]], [[50.0, 50.0], [90.0, 20.0]]]
    )
    labels = np.array([[1, 0], [1, 1], [1, 0]])
    boxes = np.array([[50.0, 40.0, 300.0, 350.0], [200.0, 10.0, 590.0, 390.0], [10.0, 10.0, 100.0, 100.0]])
    expected = official_batched(exported.sam, image, points, labels, boxes, multimask)
    result = client.segment(
        encode_png(image), point_coords=points, point_labels=labels, box=boxes, multimask_output=multimask
    )
    masks = 3 if multimask else 1
    assert result.masks.shape == (3, masks, 400, 600) and result.scores.shape == (3, masks)
    for index, slot in product(range(3), range(masks)):
        assert mask_iou(result.masks[index, slot], expected[0][index, slot]) >= 0.99
    assert close(result.low_res_logits, expected[2]) and close(result.scores, expected[1])


def test_mask_input_refines_like_the_official_predictor(served, photos):
    exported, client, _ = served
    reference = predictor_for(exported.sam)
    reference.set_image(photos["astronaut"])
    client.set_image(photos["astronaut"])
    _, _, previous = reference.predict(**PROMPTS["point"], multimask_output=False)
    for extra in ({}, PROMPTS["point"]):
        expected = reference.predict(mask_input=previous, multimask_output=False, **extra)
        got = client.predict(mask_input=previous, **extra)
        assert mask_iou(got[0], expected[0]) >= 0.99 and close(got[2], expected[2])


def test_hq_token_only_is_refused_by_sam_and_hqsam_serves_beside_it(served, small_vit, photos):
    _, client, server = served
    client.set_image(photos["coffee"])
    with pytest.raises(ClientError) as error:
        client.predict(**PROMPTS["box"], hq_token_only=True)
    assert error.value.status == "INVALID_ARGUMENT" and "hq_token_only is an HQ-SAM option" in error.value.message
    assert client.predict(**PROMPTS["box"], hq_token_only=False)[0].shape == (1, 400, 600)
    reference = predictor_for(small_vit.sam)
    reference.set_image(photos["coffee"])
    with HQSamClient(server.grpc_url) as hqsam:  # the default model, from the same server
        hqsam.set_image(photos["coffee"])
        got = hqsam.predict(**PROMPTS["box"], hq_token_only=True)
    expected = reference.predict(**PROMPTS["box"], multimask_output=False, hq_token_only=True)
    assert mask_iou(got[0], expected[0]) >= 0.99 and close(got[2], expected[2])


def test_segment_cli_takes_the_model(served, photos, tmp_path):
    _, client, server = served
    photo, out = tmp_path / "astronaut.png", tmp_path / "mask.png"
    Image.fromarray(photos["astronaut"]).save(photo)
    args = ("segment", str(photo), "--box", "120,20,460,510", "--out", str(out), "--url", server.grpc_url)
    result = run_cli(*args, "--model", "sam")
    assert result.returncode == 0, result.stderr
    client.set_image_bytes(photo.read_bytes())
    expected, _, _ = client.predict(box=[120, 20, 460, 510])
    assert np.array_equal(np.asarray(Image.open(out)) > 0, expected[0])
    error = one_line_error(run_cli(*args, "--model", "sam", "--hq-token-only"))
    assert "INVALID_ARGUMENT" in error and "hq_token_only" in error
