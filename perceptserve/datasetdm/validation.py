"""Checking the untrusted parts of a DatasetDM request: prompts, class names, steps, guidance,
seeds and sizes. Runs inside Triton's python backend (and in the clients, to fail before a
round trip); every refusal is a `RequestError` whose message says what to change.

Prompts are never truncated silently: CLIP reads 77 tokens (start, 75 text tokens, end), and a
longer prompt is refused with its token count, where diffusers would cut it and warn in a log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from perceptserve.errors import InvalidRequest
from perceptserve.parsing import comma_list


class RequestError(InvalidRequest):
    """A request the models cannot serve as given; INVALID_ARGUMENT on the wire."""


@dataclass(frozen=True)
class Limits:
    max_steps: int
    min_guidance: float
    max_guidance: float
    max_classes: int
    max_generations: int
    max_side: int
    vocabulary: tuple[str, ...] = ()  # empty: any class name
    tasks: tuple[str, ...] = ("semantic",)  # the exported decoders
    max_instances: int = 20  # the default; requests may ask for 0 to max_instances_limit
    max_instances_limit: int = 100
    score_threshold: float = 0.4

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> Limits:
        """The limits as `model_repository.datasetdm_serving` writes them into a config."""
        vocabulary = comma_list(parameters.get("class_vocabulary"))
        return cls(
            tasks=comma_list(parameters["tasks"]),
            max_instances=int(parameters["max_instances"]),
            max_instances_limit=int(parameters["max_instances_limit"]),
            score_threshold=float(parameters["score_threshold"]),
            max_steps=int(parameters["max_steps"]),
            min_guidance=float(parameters["min_guidance"]),
            max_guidance=float(parameters["max_guidance"]),
            max_classes=int(parameters["max_classes"]),
            max_generations=int(parameters["max_generations"]),
            max_side=int(parameters["max_side"]),
            vocabulary=vocabulary,
        )


def text(value: object, what: str) -> str:
    """One string from a Triton BYTES element (bytes) or a client's str."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"{what} is not UTF-8 text") from None
    return str(value)


def token_ids(tokenizer, prompt: str, what: str, allow_empty: bool = False) -> np.ndarray:
    """The prompt's ids padded to the text encoder's length (int64, (length,)); refuses an
    empty prompt (unless allowed) and one longer than the encoder reads."""
    if not prompt.strip() and not allow_empty:
        raise RequestError(f"{what} is empty: describe the image (and name the classes to look for)")
    length = tokenizer.model_max_length
    ids = tokenizer(prompt).input_ids
    if len(ids) > length:
        raise RequestError(
            f"{what} is {len(ids) - 2} tokens long; the text encoder reads at most {length - 2} "
            f"(plus start and end): shorten it (it is not truncated)"
        )
    return np.array(ids + [tokenizer.pad_token_id] * (length - len(ids)), dtype=np.int64)


def class_names(values: Sequence[object], limits: Limits) -> list[str]:
    names = [text(value, "a class name").strip() for value in values]
    if not names:
        raise RequestError("class_names is empty: name at least one class to annotate")
    if len(names) > limits.max_classes:
        raise RequestError(f"{len(names)} class names, over the limit of {limits.max_classes}")
    if any(not name for name in names):
        raise RequestError("a class name is empty")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RequestError(f"class names repeated: {', '.join(duplicates)}")
    unknown = [name for name in names if limits.vocabulary and name not in limits.vocabulary]
    if unknown:
        raise RequestError(
            f"unknown class names {', '.join(unknown)}: this decoder knows {', '.join(limits.vocabulary)}"
        )
    return names


def steps(value: int, limits: Limits) -> int:
    if not 1 <= value <= limits.max_steps:
        raise RequestError(f"steps {value} is out of range: give 1 to {limits.max_steps}")
    return int(value)


def guidance(value: float, limits: Limits) -> float:
    if not limits.min_guidance <= value <= limits.max_guidance:  # also refuses NaN
        raise RequestError(f"guidance {value} is out of range: give {limits.min_guidance:g} to {limits.max_guidance:g}")
    return float(value)


def seeds(values: np.ndarray, limits: Limits) -> list[int]:
    values = np.asarray(values).reshape(-1)
    if not 1 <= values.size <= limits.max_generations:
        raise RequestError(f"{values.size} seeds: give 1 to {limits.max_generations} per request")
    if (values < 0).any() or (values >= 2**63).any():
        raise RequestError("seeds must be non-negative 64-bit integers")
    return [int(seed) for seed in values]


def image_side(value: int, what: str, limits: Limits) -> int:
    if value < 64 or value > limits.max_side or value % 64:
        raise RequestError(f"{what} {value} must be a multiple of 64 from 64 to {limits.max_side}")
    return int(value)


def processing_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The size an annotated image is resized to: within `max_side`, aspect kept, each side a
    multiple of 64 (the UNet's latents must halve three times)."""
    scale = min(1.0, max_side / max(height, width))
    return tuple(max(64, int(round(side * scale / 64)) * 64) for side in (height, width))  # type: ignore[return-value]


def tasks(values: Sequence[object] | None, limits: Limits) -> tuple[str, ...]:
    """The tasks a request asks for (none given: every exported one), in the exported order."""
    if values is None:
        return limits.tasks
    names = [text(value, "a task name").strip() for value in values]
    known = ("semantic", "instance", "depth", "pose")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise RequestError(f"unknown task {', '.join(map(repr, unknown))}: give some of {', '.join(known)}")
    missing = [name for name in names if name not in limits.tasks]
    if missing:
        raise RequestError(
            f"task {', '.join(missing)} was not exported to this repository (it serves {', '.join(limits.tasks)})"
        )
    if not names:
        raise RequestError(f"tasks is empty: give some of {', '.join(limits.tasks)}, or leave it out for all")
    return tuple(task for task in limits.tasks if task in names)


def instance_limits(count, threshold, limits: Limits) -> tuple[int, float]:
    """(max_instances, score_threshold) from a request's optional one-value inputs (None: the
    defaults), each checked."""
    count = limits.max_instances if count is None else _single(count, "max_instances")
    threshold = limits.score_threshold if threshold is None else _single(threshold, "score_threshold")
    if not 0 <= count <= limits.max_instances_limit:
        raise RequestError(f"max_instances {count} is out of range: give 0 to {limits.max_instances_limit}")
    if not 0.0 <= threshold <= 1.0:  # also refuses NaN
        raise RequestError(f"score_threshold {threshold:g} is out of range: give 0 to 1")
    return int(count), float(threshold)


def _single(values, name: str):
    values = np.asarray(values).reshape(-1)
    if values.size != 1:
        raise RequestError(f"{name} must hold one value, got {values.size}")
    return values[0].item()
