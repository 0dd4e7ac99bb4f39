"""Plain SAM and MobileSAM exports shared by the session: random weights saved in the official
checkpoint formats (a plain `state_dict`, as segment-anything and MobileSAM release theirs),
exported through `export sam`'s code path into a copy of the small HQ-SAM repository, so that
every repository serves both families."""

from __future__ import annotations

import contextlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from perceptserve.export.hqsam import HQSamExport, load_model, run
from perceptserve.export.hqsam_parity import ParityReport

from perceptserve.hqsam.families import SAM
from perceptserve.hqsam.registry import Architecture, build_reference, randomize_
from perceptserve.settings import Settings


@dataclass
class FamilyExport:
    repository: Path
    checkpoint: Path
    sam: torch.nn.Module  # the official model holding the checkpoint's weights
    report: ParityReport
    log: str  # what the export printed on stderr


def official_checkpoint(path: Path, model: str | Architecture, seed: int) -> Path:
    torch.save(randomize_(build_reference(model, SAM), seed).state_dict(), path)
    return path


def export_sam(folder: Path, base_repository: Path, model: str | Architecture, seed: int) -> FamilyExport:
    repository = folder / "repository"
    shutil.copytree(base_repository, repository)
    checkpoint = official_checkpoint(folder / "checkpoint.pth", model, seed)
    job = HQSamExport(model=model, repository=repository, family=SAM, checkpoint=checkpoint)
    log = io.StringIO()
    with contextlib.redirect_stderr(log), torch.no_grad():
        report = run(job, Settings())
    return FamilyExport(repository, checkpoint, load_model(job), report, log.getvalue())


@pytest.fixture(scope="session")
def sam_vit_t(small_vit, tmp_path_factory) -> FamilyExport:
    """MobileSAM's full `vit_t` (TinyViT) beside the small HQ-SAM."""
    return export_sam(tmp_path_factory.mktemp("sam_vit_t"), small_vit.repository, "vit_t", seed=4)


@pytest.fixture(scope="session")
def sam_small_vit(small_vit, sam_vit_t, tmp_path_factory) -> FamilyExport:
    """segment-anything's ViT (`_build_sam`, two blocks) exported over `sam_vit_t`'s repository:
    it replaces the `sam` models (and says so) and keeps the HQ-SAM ones."""
    folder = tmp_path_factory.mktemp("sam_small_vit")
    return export_sam(folder, sam_vit_t.repository, small_vit.job.model, seed=5)  # conftest's SMALL_VIT
