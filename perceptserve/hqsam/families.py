"""The SAM model families perceptserve serves, torch-free (the CLI, the model repository, the
python-backend models and the clients read it without importing torch).

A family is a parameter of one export and serving path, not a copy of it:
  - `hqsam`: HQ-SAM (`segment_anything_hq`): SAM's encoder and decoder plus the HQ output token
    and its fusion features (`hq_features`, `hq_token_only`).
  - `sam`: plain SAM (`segment_anything`, vit_b/l/h) and MobileSAM (`mobile_sam`, vit_t): the
    encoder returns the image embedding alone and the decoder has no HQ inputs.
Each family is served as the ensemble named after it, over `<name>_preprocess`, `<name>_encoder`,
`<name>_decoder` and `<name>_postprocess`, with `<name>_encoder_guard` in front of the encoder
(`model_repository.admission`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from perceptserve.model_repository.admission import guard_name
from perceptserve.model_types import HQSAM_MODEL_TYPES, SAM_MODEL_TYPES, TINY_MODEL_TYPES

PARTS = ("preprocess", "encoder", "decoder", "postprocess")


@dataclass(frozen=True)
class Family:
    name: str  # the ensemble clients call, and the prefix of its models
    title: str  # for messages
    model_types: tuple[str, ...]  # as the official registries name them
    hq: bool  # HQ-SAM's HQ token and fusion features
    # The step models' names, `<name>_<part>` for each of PARTS (set from `name`).
    preprocess: str = field(init=False)
    encoder: str = field(init=False)
    decoder: str = field(init=False)
    postprocess: str = field(init=False)

    def __post_init__(self) -> None:
        for part in PARTS:
            object.__setattr__(self, part, f"{self.name}_{part}")

    @property
    def ensemble(self) -> str:
        return self.name

    @property
    def encoder_guard(self) -> str:
        """The python model that admits the encoder's batches (`model_repository.admission`)."""
        return guard_name(self.encoder)

    @property
    def models(self) -> tuple[str, ...]:
        """Every model of the family in a repository, the ensemble last."""
        return (*(getattr(self, part) for part in PARTS), self.encoder_guard, self.ensemble)


HQSAM = Family("hqsam", "HQ-SAM", HQSAM_MODEL_TYPES, hq=True)
SAM = Family("sam", "SAM / MobileSAM", SAM_MODEL_TYPES, hq=False)
FAMILIES = {family.name: family for family in (HQSAM, SAM)}


def by_name(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}") from None


def model_type_in(model_type: str, family: Family) -> str:
    """`model_type` of one family under `family`'s name for the same architecture."""
    return TINY_MODEL_TYPES[family.name] if model_type in TINY_MODEL_TYPES.values() else model_type
