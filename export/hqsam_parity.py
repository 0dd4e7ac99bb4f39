"""Parity of our ONNX pipeline with a SAM family's official `SamPredictor` on real photos
(`segment_anything_hq`'s, or `segment_anything`'s / `mobile_sam`'s for plain SAM and MobileSAM).

Compared: image embeddings and, for HQ-SAM, `hq_features` (max abs difference, relative to the
reference's largest magnitude), low-resolution logits, and the final masks (IoU), for points, a
negative point, a box, box + point, under every `multimask_output` (x `hq_token_only`) setting.
fp32 and fp16 are checked on one photo; int8, whose error depends on the image's activations,
on several, and is judged by the worst mask IoU alone (its embeddings differ by design).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import product

import numpy as np
import torch
from skimage import data as sample_images

from perceptserve.hqsam.families import HQSAM, Family
from perceptserve.hqsam.official import Sam, SamPredictor, package_of, predictor_for
from perceptserve.hqsam.onnx_predictor import OnnxPredictor


@dataclass(frozen=True)
class Tolerance:
    relative: float  # max |ours - ref| / max |ref|
    mask_iou: float

    @classmethod
    def for_precision(cls, precision: str) -> Tolerance:
        return {"fp32": cls(1e-3, 0.99), "fp16": cls(5e-2, 0.95), "int8": cls(math.inf, 0.97)}[precision]


def photos(precision: str) -> dict[str, np.ndarray]:
    """The parity check's photos (they ship with scikit-image): coffee alone, or for int8 four
    of different content and shape."""
    if precision != "int8":
        return {"coffee": sample_images.coffee()}
    return {
        "coffee": sample_images.coffee(),
        "astronaut": sample_images.astronaut(),
        "chelsea": sample_images.chelsea(),
        "rocket": sample_images.rocket(),
    }


@dataclass
class ParityReport:
    tolerance: Tolerance
    reference: str = "segment_anything_hq"  # the official package compared with
    rows: list[tuple[str, float, float]] = field(default_factory=list)  # (what, max abs diff, relative)
    ious: list[tuple[str, float]] = field(default_factory=list)

    def add(self, what: str, ours: np.ndarray, reference: np.ndarray) -> None:
        diff = float(np.abs(ours.astype(np.float64) - reference).max())
        self.rows.append((what, diff, diff / max(float(np.abs(reference).max()), 1e-12)))

    @property
    def min_iou(self) -> float:
        return min(iou for _, iou in self.ious)

    @property
    def passed(self) -> bool:
        return all(rel <= self.tolerance.relative for *_, rel in self.rows) and self.min_iou >= self.tolerance.mask_iou

    def format(self) -> str:
        lines = [f"parity against the official {self.reference} SamPredictor:"]
        lines += [f"  {what:<44} max abs diff {diff:.3e}  relative {rel:.3e}" for what, diff, rel in self.rows]
        worst = min(self.ious, key=lambda item: item[1])
        lines.append(f"  mask IoU over {len(self.ious)} cases: min {self.min_iou:.5f} ({worst[0]})")
        verdict = "PASS" if self.passed else "FAIL"
        relative = "reported only" if math.isinf(self.tolerance.relative) else f"<= {self.tolerance.relative:g}"
        lines.append(f"  {verdict} (tolerance: relative {relative}, mask IoU >= {self.tolerance.mask_iou})")
        return "\n".join(lines)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def prompt_cases(height: int, width: int) -> dict[str, dict]:
    """Prompts placed relative to the image size."""
    cx, cy = width * 0.5, height * 0.45
    box = np.array([width * 0.2, height * 0.15, width * 0.8, height * 0.85])
    return {
        "point": {"point_coords": np.array([[cx, cy]]), "point_labels": np.array([1])},
        "points + negative": {
            "point_coords": np.array([[cx, cy], [width * 0.1, height * 0.1], [cx + width * 0.1, cy]]),
            "point_labels": np.array([1, 0, 1]),
        },
        "box": {"box": box},
        "box + point": {"box": box, "point_coords": np.array([[cx, cy]]), "point_labels": np.array([1])},
    }


def reference_hq_features(sam: Sam, predictor: SamPredictor) -> np.ndarray:
    decoder = sam.mask_decoder
    early = predictor.interm_features[0].permute(0, 3, 1, 2)
    with torch.no_grad():
        return (decoder.embedding_encoder(predictor.features) + decoder.compress_vit_feat(early)).numpy()


def check_photo(
    report: ParityReport, sam: Sam, ours: OnnxPredictor, image: np.ndarray, family: Family, label: str = ""
) -> None:
    """Add one photo's rows and IoU cases to `report` (`label` prefixes them)."""
    reference = predictor_for(sam)
    reference.set_image(image)
    ours.set_image(image)
    report.add(
        f"{label}image_embeddings [1, 256, 64, 64]", ours.features["image_embeddings"], reference.features.numpy()
    )
    if family.hq:
        hq_features = reference_hq_features(sam, reference)
        report.add(f"{label}hq_features [1, 32, 256, 256]", ours.features["hq_features"], hq_features)
    worst: dict[str, tuple[float, float]] = {}
    cases = 0
    hq_settings = ({"hq_token_only": False}, {"hq_token_only": True}) if family.hq else ({},)
    for (name, prompt), multimask, hq in product(prompt_cases(*image.shape[:2]).items(), (False, True), hq_settings):
        ref_masks, ref_scores, ref_low = reference.predict(**prompt, multimask_output=multimask, **hq)
        masks, scores, low = ours.predict(**prompt, multimask_output=multimask, **hq)
        case = ", ".join([f"{label}{name}", f"multimask={multimask}", *(f"{k}={v}" for k, v in hq.items())])
        report.ious.append((case, mask_iou(masks, ref_masks)))
        cases += 1
        for what, mine, theirs in (("low_res_logits", low, ref_low), ("iou_predictions", scores, ref_scores)):
            diff = float(np.abs(mine - theirs).max())
            relative = diff / max(float(np.abs(theirs).max()), 1e-12)
            worst[what] = max(worst.get(what, (0.0, 0.0)), (relative, diff))
    for what, (relative, diff) in worst.items():
        report.rows.append((f"{label}{what}, worst of {cases} prompt cases", diff, relative))


def check(
    sam: Sam, ours: OnnxPredictor, images: dict[str, np.ndarray], precision: str = "fp32", family: Family = HQSAM
) -> ParityReport:
    """Every photo of `images` (name -> HWC uint8), each under every prompt case, against the
    `SamPredictor` of the official package that built `sam`."""
    report = ParityReport(Tolerance.for_precision(precision), reference=package_of(sam).__name__)
    for name, image in images.items():
        check_photo(report, sam, ours, image, family, f"{name}: " if len(images) > 1 else "")
    return report
