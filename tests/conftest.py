"""Shared fixtures: small random-initialised HQ-SAM models of the real architectures, exported
once per session, and a real tritonserver serving them on free loopback ports."""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from perceptserve.export.hqsam import HQSamExport, apply_precision, load_model, run
from perceptserve.export.hqsam_parity import ParityReport
from perceptserve.model_repository import configs
from perceptserve.model_repository import hqsam as names
from perceptserve.model_repository.writer import version_dir, write_models
from perceptserve.server import TritonServer, free_port
from skimage import data as sample_images

from perceptserve.hqsam.families import HQSAM
from perceptserve.hqsam.registry import ViTConfig
from perceptserve.settings import ServerSettings, Settings

from .background import EXPORTS
from .datasetdm_fixtures import (
    TINY_EXPORT,
    export_tiny,
    tiny_export,  # noqa: F401  (one session fixture for every DatasetDM test file)
)
from .sam_fixtures import sam_small_vit, sam_vit_t  # noqa: F401  (the plain SAM / MobileSAM exports)

# `_build_sam` with two blocks, the second a global-attention block (HQ-SAM's early feature).
SMALL_VIT = ViTConfig(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,))

warnings.filterwarnings("ignore", category=FutureWarning)


def vit_tiny_job(repository: Path) -> HQSamExport:
    return HQSamExport(model="vit_tiny", repository=repository, seed=2)


def export_report(job: HQSamExport) -> ParityReport:
    with torch.no_grad():
        return run(job, Settings())


def export_vit_tiny(repository: Path) -> tuple[HQSamExport, ParityReport]:
    job = vit_tiny_job(repository)
    return job, export_report(job)


# Session exports a worker process starts at collection (tests/background.py), in the order their
# first users run: a test needs one when it asks for the fixture (directly or through another,
# as `datasetdm_server`), or names it in its parameters (the parametrised tests that ask for
# their fixture by name at run time: `[datasetdm_annotate-grpc]`, `[vit_tiny]`).
BACKGROUND = {
    TINY_EXPORT: ("[datasetdm_", export_tiny),
    "vit_tiny": ("[vit_tiny]", export_vit_tiny),
}


@pytest.hookimpl(trylast=True)  # after `-k` and `-m` have deselected
def pytest_collection_modifyitems(config, items) -> None:
    if config.option.collectonly:
        return
    for name, (in_parameters, export) in BACKGROUND.items():
        if any(name in item.fixturenames or in_parameters in item.name for item in items):
            root = Path(tempfile.mkdtemp(prefix=f"perceptserve-{name}-"))
            config.add_cleanup(lambda root=root: shutil.rmtree(root, ignore_errors=True))
            EXPORTS.start(name, export, root)
    config.add_cleanup(EXPORTS.shutdown)


def server_settings() -> ServerSettings:
    ports = dict(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    return ServerSettings(**ports, startup_timeout_s=180, malloc_huge_pages=True)


class Exported:
    """An exported repository and the official torch model it came from."""

    def __init__(self, job: HQSamExport, report: ParityReport | None = None) -> None:
        self.job = job
        self.report = report or export_report(job)
        self.sam = load_model(job)
        self.repository = job.repository


@pytest.fixture(scope="session")
def small_vit(tmp_path_factory) -> Exported:
    return Exported(HQSamExport(model=SMALL_VIT, repository=tmp_path_factory.mktemp("small_vit"), seed=1))


@pytest.fixture(scope="session")
def small_vit_int8(small_vit, tmp_path_factory) -> Exported:
    """small_vit's repository with the export's `--precision int8` step applied to a copy (the
    same graphs, so no second export): the encoder gets its int8 copy, the configs are rewritten."""
    repository = tmp_path_factory.mktemp("small_vit_int8") / "repository"
    shutil.copytree(small_vit.repository, repository)
    paths = {model: version_dir(repository, model) / configs.ONNX_FILE for model in (HQSAM.encoder, HQSAM.decoder)}
    apply_precision(paths, HQSAM, "int8")
    write_models(repository, names.definitions(Settings()), Settings())
    exported = copy.copy(small_vit)
    exported.repository = repository
    exported.job = dataclasses.replace(small_vit.job, repository=repository, precision="int8")
    return exported


@pytest.fixture(scope="session")
def vit_tiny(tmp_path_factory) -> Exported:
    """Started in the background at collection when some test needs it (`BACKGROUND`)."""
    exported = EXPORTS.result("vit_tiny")
    return Exported(*exported) if exported else Exported(vit_tiny_job(tmp_path_factory.mktemp("vit_tiny")))


@pytest.fixture(scope="session")
def server(small_vit):
    with TritonServer(small_vit.repository, "cpu", server_settings()) as running:
        yield running


@pytest.fixture(scope="session")
def datasetdm_server(tiny_export):  # noqa: F811  (the session export imported above)
    """One server for every DatasetDM test that calls the served models."""
    with TritonServer(tiny_export.repository, "cpu", server_settings()) as running:
        yield running


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photographs of different shapes (square, landscape, portrait crop)."""
    return {
        "astronaut": sample_images.astronaut(),
        "coffee": sample_images.coffee(),
        "chelsea_portrait": np.ascontiguousarray(sample_images.chelsea()[:, 100:350]),
    }


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def official_batched(sam, image: np.ndarray, points=None, labels=None, boxes=None, multimask=False, hq_only=False):
    """The official predictor of `sam`'s package on N prompt sets at once (`predict_torch` with
    transformed prompts): masks [N, C, H, W], scores [N, C], low-res logits [N, C, 256, 256]."""
    from perceptserve.hqsam.official import ResizeLongestSide, predictor_for

    predictor = predictor_for(sam)
    predictor.set_image(image)
    transform = ResizeLongestSide(1024)
    size = image.shape[:2]
    coords = None if points is None else torch.as_tensor(transform.apply_coords(points, size), dtype=torch.float)
    label_tensor = None if labels is None else torch.as_tensor(labels, dtype=torch.int)
    box_tensor = None if boxes is None else torch.as_tensor(transform.apply_boxes(boxes, size), dtype=torch.float)
    with torch.no_grad():
        hq = {"hq_token_only": True} if hq_only else {}  # plain SAM's predictor has no such argument
        outputs = predictor.predict_torch(coords, label_tensor, box_tensor, multimask_output=multimask, **hq)
    return [o.numpy() for o in outputs]
