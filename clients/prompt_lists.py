"""The prompts of a generation run: one `--prompt`, a text file of prompts, or a folder of
`{class}.txt` files (DatasetDM's layout: an LLM writes many prompts per class, one file per class).

Seed `s` is generated from prompt `s mod P` (P prompts, in file order; class files in name order).
The mapping depends on the seed alone, so a resumed run, a run with another first seed, and every
shard of a run give a seed the same prompt. The list's digest goes into the manifest: a resumed
run, or a shard merged with others, must have read the same list.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ClientError


@dataclass(frozen=True)
class Prompt:
    text: str
    class_name: str  # the class the prompt is about: names the item's files, goes in the manifest


@dataclass(frozen=True)
class PromptList:
    prompts: tuple[Prompt, ...]

    def for_seed(self, seed: int) -> Prompt:
        return self.prompts[seed % len(self.prompts)]

    @property
    def class_names(self) -> list[str]:
        """The classes the prompts are about, first-seen order, without repeats."""
        return list(dict.fromkeys(prompt.class_name for prompt in self.prompts))

    @property
    def digest(self) -> str:
        """Identifies the list (texts, classes, order): equal digests, equal seed -> prompt maps."""
        text = json.dumps([[prompt.text, prompt.class_name] for prompt in self.prompts])
        return f"sha256:{hashlib.sha256(text.encode('utf-8')).hexdigest()} ({len(self.prompts)} prompts)"


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read prompts from {path}: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def load(path: Path, default_class: str | None) -> PromptList:
    """A text file (one prompt a line, about `default_class`) or a folder of `{class}.txt` files."""
    path = Path(path)
    if path.is_dir():
        files = {file.stem: _lines(file) for file in sorted(path.glob("*.txt"))}
        if not files:
            raise ClientError(f"{path} holds no {{class}}.txt prompt files")
        empty = [f"{name}.txt" for name, lines in files.items() if not lines]
        if empty:
            raise ClientError(f"prompt files without a prompt in {path}: {', '.join(empty)}")
        return PromptList(tuple(Prompt(line, name) for name, lines in files.items() for line in lines))
    if default_class is None:
        raise ClientError(f"{path} is one prompt file: give --classes (its first class names the files)")
    prompts = tuple(Prompt(line, default_class) for line in _lines(path))
    if not prompts:
        raise ClientError(f"{path} holds no prompt (one a line; blank lines are skipped)")
    return PromptList(prompts)


def single(text: str, class_name: str) -> PromptList:
    return PromptList((Prompt(text, class_name),))


def run_classes(prompts: PromptList, classes: list[str]) -> list[str]:
    """The run's class list, the same for every request so that mask index k means one class
    throughout the dataset: `--classes` first, then the prompt folder's classes not among them."""
    names = list(dict.fromkeys(classes + prompts.class_names))
    if not names:
        raise ClientError("no class names: give --classes, or a folder of {class}.txt prompt files")
    return names
