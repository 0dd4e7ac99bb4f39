"""Strict checkpoint loading: every wrong file fails with one line naming what is wrong."""

import os
import pickle
import subprocess
import sys

import pytest
import torch

from perceptserve.hqsam import checkpoint_loading
from perceptserve.hqsam.checkpoint_loading import CheckpointError
from perceptserve.hqsam.registry import ViTConfig, build_reference, randomize_

from .conftest import SMALL_VIT


@pytest.fixture(scope="module")
def state():
    return randomize_(build_reference(SMALL_VIT), seed=3).state_dict()


def save(tmp_path, state, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_official_format_round_trip(tmp_path, state):
    sam = build_reference(SMALL_VIT)
    checkpoint_loading.load_strict(sam, checkpoint_loading.read_state_dict(save(tmp_path, state)))
    assert all(torch.equal(sam.state_dict()[k], v) for k, v in state.items())


def test_plain_sam_checkpoint_is_refused(tmp_path, state):
    plain = {k: v for k, v in state.items() if not k.startswith(checkpoint_loading.HQ_PREFIXES)}
    with pytest.raises(
        CheckpointError, match="plain SAM checkpoint \\(no HQ-SAM parts: missing .*hf_token.*`perceptserve export sam`"
    ):
        checkpoint_loading.load_strict(
            build_reference(SMALL_VIT), checkpoint_loading.read_state_dict(save(tmp_path, plain))
        )


def test_plain_sam_checkpoint_with_allow_missing_hq_warns(tmp_path, state):
    plain = {k: v for k, v in state.items() if not k.startswith(checkpoint_loading.HQ_PREFIXES)}
    with pytest.warns(UserWarning, match="HQ-SAM PARTS ARE RANDOM"):
        checkpoint_loading.load_strict(build_reference(SMALL_VIT), plain, allow_missing_hq=True)


def test_missing_encoder_tensor(state):
    broken = dict(state)
    del broken["image_encoder.blocks.0.attn.qkv.weight"]
    with pytest.raises(
        CheckpointError, match="truncated or for another model: missing image_encoder.blocks.0.attn.qkv.weight"
    ):
        checkpoint_loading.load_strict(build_reference(SMALL_VIT), broken)


def test_other_model_size(state):
    wider = ViTConfig(96, 2, 2, (1,))
    with pytest.raises(CheckpointError, match="another model size"):
        checkpoint_loading.load_strict(build_reference(wider), state)


def test_unexpected_tensor(state):
    with pytest.raises(CheckpointError, match="tensors this model lacks: extra.weight"):
        checkpoint_loading.load_strict(build_reference(SMALL_VIT), {**state, "extra.weight": torch.zeros(1)})


def test_truncated_file(tmp_path, state):
    path = save(tmp_path, state)
    path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        checkpoint_loading.read_state_dict(path)


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/perceptserve-pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": Exploit()}))
    with pytest.raises(CheckpointError, match="not a plain weights file"):
        checkpoint_loading.read_state_dict(path)
    assert not os.path.exists("/tmp/perceptserve-pwned")


def test_cli_prints_one_line_and_no_traceback(tmp_path, state):
    plain = {k: v for k, v in state.items() if not k.startswith(checkpoint_loading.HQ_PREFIXES)}
    path = save(tmp_path, plain)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "perceptserve.cli",
            "export",
            "hqsam",
            "--model-type",
            "vit_b",
            "--checkpoint",
            str(path),
            "--repository",
            str(tmp_path / "repo"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("perceptserve")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "another model size" in errors[0]
