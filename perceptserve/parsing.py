"""Text values from the command line and the environment: one parser for comma-separated lists,
so `--classes a, b`, `--tasks semantic,depth`, `--modes` and `PERCEPTSERVE_DATASETDM_CLASSES`
all read the same way (spaces around items dropped, empty items ignored); and byte sizes."""

from __future__ import annotations


def comma_list(text: str | None) -> tuple[str, ...]:
    """`"a, b,,c"` -> `("a", "b", "c")`; None or blank -> `()`."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str) -> int:
    """Bytes from "25769803776", "24G", "24Gi", "24GiB" or "512M" (binary units, as Kubernetes' Mi/Gi)."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    if value and value[-1] in _UNITS:
        return int(float(value[:-1]) * _UNITS[value[-1]])
    return int(float(value))  # Helm renders a large integer from a values file as 1.2884901888e+10
