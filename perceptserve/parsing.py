"""Text values from the command line and the environment: one parser for comma-separated lists,
so `--classes a, b`, `--tasks semantic,depth`, `--modes` and `PERCEPTSERVE_DATASETDM_CLASSES`
all read the same way (spaces around items dropped, empty items ignored)."""

from __future__ import annotations


def comma_list(text: str | None) -> tuple[str, ...]:
    """`"a, b,,c"` -> `("a", "b", "c")`; None or blank -> `()`."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())
