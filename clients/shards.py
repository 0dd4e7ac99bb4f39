"""`--shard I/N`: worker I of N takes one contiguous block of a run's seeds.

The blocks differ in size by at most one seed and together are the run's seeds, each once; a
seed's image, prompt and annotation do not depend on which worker makes it, so N shards merged
(`perceptserve dataset merge`) are the unsharded run item for item.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ClientError

MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise ClientError(f"--shard {text}: give I/N, e.g. 0/4 for the first of four workers")
        index, count = int(match[1]), int(match[2])
        if count < 1 or index >= count:
            raise ClientError(f"--shard {text}: I must be in 0 .. N-1 and N at least 1")
        return cls(index, count)

    def seeds(self, first: int, total: int) -> list[int]:
        """This shard's block of the seeds first .. first+total-1."""
        start = first + total * self.index // self.count
        stop = first + total * (self.index + 1) // self.count
        return list(range(start, stop))

    @property
    def manifest_name(self) -> str:
        """Shards may share a folder: each appends to its own manifest."""
        return MANIFEST if self.count == 1 else f"manifest-{self.index}-of-{self.count}.jsonl"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
