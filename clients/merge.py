"""`perceptserve dataset merge OUT SHARD_DIR...`: the shards of one `generate --shard I/N` run
put back together as the dataset the unsharded run would have written.

Every manifest line of every shard must come from the same run (prompt list, classes, steps,
guidance, sizes, served model versions, seeds and shard count); every shard 0..N-1 must be there,
and each seed once, inside its shard's block. Otherwise the merge refuses, naming the folders.
Files are hard-linked into OUT where they can be (same file system), else copied; the merged
manifest is written last, in seed order, as an unsharded run's (shard 0 of 1), so that
`generate --out OUT` resumes it. Seeds that failed in their shard are listed, not invented.

COCO files (instance and pose tasks) are rebuilt with `coco` from the items' own records
(`annotations/items/`, copied with the items), in seed order: the files the unsharded run writes.
"""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import coco
from .dataset import append_line, different_run_keys, read_manifest
from .errors import ClientError
from .shards import MANIFEST, Shard


@dataclass
class Item:
    folder: Path
    entry: dict


@dataclass
class MergeResult:
    items: int = 0
    shards: int = 0
    missing: list[int] = field(default_factory=list)  # seeds of the run no shard finished
    coco_files: list[str] = field(default_factory=list)


def shard_items(folders: list[Path]) -> list[Item]:
    """Every shard manifest's items; in one manifest a later line for a seed replaces an earlier
    one (a resumed run redoes an item whose files were lost)."""
    items = []
    for folder in folders:
        manifests = sorted(folder.glob("manifest*.jsonl"))
        if not manifests:
            raise ClientError(f"{folder} holds no manifest*.jsonl: not a folder `perceptserve generate` wrote")
        for manifest in manifests:
            latest = {entry["seed"]: entry for entry in read_manifest(manifest)}
            if any(not entry.get("seeds") or "shard" not in entry for entry in latest.values()):
                raise ClientError(f"{manifest} does not say which run and shard its items belong to (an older format)")
            items += [Item(folder, entry) for entry in latest.values()]
    return items


def check_one_run(items: list[Item]) -> tuple[int, int, int]:
    """Refuse items of different runs, missing shards, repeated or misplaced seeds; return the
    run's first seed, its end and its shard count."""
    if not items:
        raise ClientError("the shards hold no finished item")
    reference = items[0]
    first, stop = reference.entry["seeds"]
    count = reference.entry["shard"][1]
    where: dict[int, Path] = {}
    for item in items:
        different = different_run_keys(item.entry, reference.entry)
        different += [key for key in ("seeds",) if item.entry.get(key) != reference.entry.get(key)]
        if item.entry["shard"][1] != count:
            different.append("shard count")
        if different:
            raise ClientError(
                f"{item.folder} and {reference.folder} hold different runs ({', '.join(different)} differ): "
                "merge only the shards of one `generate --shard I/N` run"
            )
        seed, index = item.entry["seed"], item.entry["shard"][0]
        if seed in where:
            raise ClientError(f"seed {seed} is in {where[seed]} and in {item.folder}: a shard given twice?")
        if seed not in Shard(index, count).seeds(first, stop - first):
            raise ClientError(f"seed {seed} in {item.folder} lies outside shard {index}/{count}'s seeds")
        where[seed] = item.folder
    found = {item.entry["shard"][0] for item in items}
    absent = sorted(set(range(count)) - found)
    if absent:
        raise ClientError(f"shards {', '.join(f'{i}/{count}' for i in absent)} are missing (no item of theirs)")
    return first, stop, count


def place(source: Path, target: Path) -> None:
    """Hard link (same file system) or copy, atomically; nothing to do for a file in place."""
    if target.exists() and source.resolve() == target.resolve():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    os.replace(partial, target)


def merge(out: Path, folders: list[Path]) -> MergeResult:
    out = Path(out)
    if (out / MANIFEST).exists():
        raise ClientError(f"{out} already holds a dataset ({MANIFEST}): give an empty or new folder")
    items = shard_items(folders)
    first, stop, count = check_one_run(items)
    items.sort(key=lambda item: item.entry["seed"])
    for item in items:
        for path in item.entry["files"].values():
            place(item.folder / path, out / path)
    result = MergeResult(items=len(items), shards=count)
    done = {item.entry["seed"] for item in items}
    result.missing = [seed for seed in range(first, stop) if seed not in done]
    records = [coco.read_record(out / item.entry["files"]["coco"]) for item in items if "coco" in item.entry["files"]]
    if records:  # rebuilt from the items' records in seed order, as the unsharded run builds them
        result.coco_files = [str(path.relative_to(out)) for path in coco.write(out, records, items[0].entry["classes"])]
    partial = out / f".{MANIFEST}.partial"
    partial.unlink(missing_ok=True)
    for item in items:
        append_line(partial, {**item.entry, "shard": [0, 1]})
    os.replace(partial, out / MANIFEST)
    return result


def merge_command(args: argparse.Namespace) -> int:
    result = merge(args.out, args.shards)
    print(
        f"{result.items} items of {result.shards} shards merged into {args.out} ({MANIFEST}"
        + "".join(f", {name}" for name in result.coco_files)
        + f"); {len(result.missing)} seeds of the run missing"
    )
    if result.missing:
        print(f"  missing seeds (failed in their shard): {result.missing}")
    return 0
