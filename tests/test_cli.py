"""The command line as a user runs it: `segment`, `serve`, and a vit_b export."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from perceptserve.clients import HQSamClient
from perceptserve.server import free_port
from PIL import Image

from .sam_fixtures import official_checkpoint

CLI = [sys.executable, "-m", "perceptserve.cli"]


def run_cli(*args, timeout=300):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def one_line_error(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.server
def test_segment_writes_the_mask_and_overlay(server, photos, tmp_path):
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(photos["astronaut"]).save(photo, quality=92)
    out, overlay = tmp_path / "mask.png", tmp_path / "overlay.png"
    result = run_cli(
        "segment",
        str(photo),
        "--point",
        "260,110",
        "--point",
        "60,400,0",
        "--box",
        "120,20,460,510",
        "--out",
        str(out),
        "--overlay",
        str(overlay),
        "--url",
        server.grpc_url,
    )
    assert result.returncode == 0, result.stderr
    mask = np.asarray(Image.open(out))
    assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 255}
    with HQSamClient(server.grpc_url) as client:
        client.set_image_bytes(photo.read_bytes())
        expected, _, _ = client.predict(
            point_coords=[[260, 110], [60, 400]], point_labels=[1, 0], box=[120, 20, 460, 510]
        )
    assert np.array_equal(mask > 0, expected[0])
    picture = np.asarray(Image.open(overlay))
    assert picture.shape == (512, 512, 3) and not np.array_equal(picture, photos["astronaut"])


@pytest.mark.server
@pytest.mark.parametrize(
    "args, message",
    [
        (["--point", "900,10"], "INVALID_ARGUMENT"),
        (["--point", "1,2,3,4"], "is not X,Y[,LABEL]"),
        (["--point", "10,10,5"], "is not 1 (foreground) or 0"),
        (["--box", "50,50,10,10"], "inverted or empty"),
        ([], "give at least one --point"),
    ],
)
def test_segment_bad_input_is_one_line(server, photos, tmp_path, args, message):
    photo = tmp_path / "p.png"
    Image.fromarray(photos["astronaut"]).save(photo)
    error = one_line_error(
        run_cli("segment", str(photo), *args, "--out", str(tmp_path / "m.png"), "--url", server.grpc_url)
    )
    assert message in error


def test_segment_without_a_server_is_one_line(tmp_path):
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    error = one_line_error(
        run_cli(
            "segment",
            str(photo),
            "--point",
            "1,1",
            "--out",
            str(tmp_path / "m.png"),
            "--url",
            f"127.0.0.1:{free_port()}",
            "--retries",
            "0",
        )
    )
    assert "UNAVAILABLE" in error or "failed to connect" in error.lower()


def test_the_public_clients_import_from_the_package():
    """The documented API: `from perceptserve.clients import HQSamClient` and the others."""
    import perceptserve.clients as clients
    from perceptserve.clients import hqsam

    assert clients.HQSamClient is hqsam.HQSamClient
    assert {name for name in clients.__all__ if not hasattr(clients, name)} == set()
    assert {"HQSamClient", "AsyncHQSamClient", "DatasetDMAnnotateClient", "DatasetDMGenerateClient"} <= set(
        clients.__all__
    )


@pytest.mark.server
def test_serve_prints_endpoints_and_exits_cleanly_on_sigterm(small_vit, tmp_path):
    ports = [free_port() for _ in range(3)]
    process = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--repository",
            str(small_vit.repository),
            "--grpc-port",
            str(ports[0]),
            "--http-port",
            str(ports[1]),
            "--metrics-port",
            str(ports[2]),
            "--log-file",
            str(tmp_path / "server.log"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    ready = ""
    while time.monotonic() < deadline and "ready:" not in ready:
        ready = process.stdout.readline()
        assert process.poll() is None, process.stderr.read()
    assert f"gRPC 127.0.0.1:{ports[0]}" in ready and f"metrics http://127.0.0.1:{ports[2]}/metrics" in ready
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0


@pytest.mark.parametrize("fault", ["corrupt", "missing"])
def test_serve_names_the_model_and_file_that_failed(small_vit, tmp_path, fault):
    import shutil

    repository = tmp_path / "repo"
    shutil.copytree(small_vit.repository, repository)
    model_file = repository / "hqsam_decoder" / "1" / "model.onnx"
    if fault == "corrupt":
        model_file.write_bytes(b"this is not onnx")
    else:
        model_file.unlink()
    result = run_cli(
        "serve",
        "--repository",
        str(repository),
        "--grpc-port",
        str(free_port()),
        "--http-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
        timeout=240,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("perceptserve serve: tritonserver failed to start:") and "hqsam_decoder" in last
    assert "hqsam_decoder/1/model.onnx" in last
    assert "--- last lines of" in result.stderr


def test_serve_without_an_exported_repository(tmp_path):
    error = one_line_error(run_cli("serve", "--repository", str(tmp_path / "nothing")))
    assert "run `perceptserve export` first" in error


@pytest.mark.slow
def test_a_plain_sam_vit_b_checkpoint_exports_and_passes_parity(tmp_path):
    """The one full-size export in `make test`: a `vit_b` checkpoint in segment-anything's format
    (random weights saved as a plain state_dict, as `sam_vit_b_01ec64.pth` is) through the CLI:
    strict loading, parity with segment-anything's `SamPredictor`. HQ-SAM shares the ViT and the
    export; the small test ViT covers its HQ parts, and `test_admission.py` the memory probe (45 s
    more at this size, CI's time)."""
    checkpoint = official_checkpoint(tmp_path / "sam_vit_b.pth", "vit_b", seed=7)
    repository = tmp_path / "repository"
    result = run_cli(
        "export", "sam", "--model-type", "vit_b", "--checkpoint", str(checkpoint), "--repository", str(repository),
        "--no-memory-probe", timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout and "[5/5] parity check" in result.stderr
    size = (repository / "sam_encoder" / "1" / "model.onnx").stat().st_size
    assert 300e6 < size < 400e6  # vit_b's ~90 M encoder parameters in fp32


def test_serve_refuses_ports_in_use(small_vit):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        error = one_line_error(
            run_cli(
                "serve",
                "--repository",
                str(small_vit.repository),
                "--grpc-port",
                str(port),
                "--http-port",
                str(free_port()),
                "--metrics-port",
                str(free_port()),
            )
        )
    assert f"the gRPC port {port} on 127.0.0.1 is already in use" in error
