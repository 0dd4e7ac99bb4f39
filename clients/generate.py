"""`perceptserve generate --prompt TEXT --classes a,b --count N [--seed S] --out DIR`: a DatasetDM
dataset from the served `datasetdm_generate` model, `--batch` seeds per request.

Seeds S .. S+N-1, one image each. Items already in OUT's manifest are skipped (resume). A batch
the server refuses as a whole is retried item by item, so one failing seed is reported and the
others are kept; the exit status is 1 when some item failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from tqdm import tqdm

from .dataset import Dataset, RunSpec
from .datasetdm import DatasetDMGenerateClient
from .errors import ClientError


def csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass
class GenerateResult:
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


def generate_dataset(
    client: DatasetDMGenerateClient, dataset: Dataset, seeds: list[int], batch: int, progress: bool = True
) -> GenerateResult:
    spec = dataset.spec
    pending = dataset.pending(seeds)
    result = GenerateResult(skipped=[seed for seed in seeds if seed not in pending])

    def request(group: list[int]):
        return client.generate(
            spec.prompt,
            spec.classes,
            group,
            steps=spec.steps,
            guidance=spec.guidance,
            negative_prompt=spec.negative_prompt,
            height=spec.height,
            width=spec.width,
            max_instances=spec.max_instances,
            score_threshold=spec.score_threshold,
        )

    with tqdm(
        total=len(seeds),
        initial=len(result.skipped),
        unit="image",
        disable=not progress,
        desc="generating",
        file=sys.stderr,
    ) as bar:
        for start in range(0, len(pending), batch):
            group = pending[start : start + batch]
            try:
                items = request(group)
            except ClientError:  # find which seeds fail: the rest are still worth keeping
                items = []
                for seed in group:
                    try:
                        items += request([seed])
                    except ClientError as exc:
                        result.failed[seed] = str(exc)
                        bar.write(f"seed {seed} failed: {exc}")
                        bar.update(1)
            for item in items:
                dataset.add(item.seed, item.image, item)
                result.written.append(item.seed)
                bar.update(1)
            dataset.write_coco()
    return result


def generate_command(args: argparse.Namespace) -> int:
    if args.count < 1 or args.batch < 1:
        raise ClientError("--count and --batch must be at least 1")
    classes = csv(args.classes)
    with DatasetDMGenerateClient(args.url) as client:
        spec = RunSpec(
            args.prompt,
            classes,
            args.steps,
            args.guidance,
            args.negative_prompt,
            args.height,
            args.width,
            args.max_instances,
            args.score_threshold,
            args.keypoint_threshold,
            models=client.model_versions(),
        )
        dataset = Dataset(args.out, spec)
        seeds = list(range(args.seed, args.seed + args.count))
        result = generate_dataset(client, dataset, seeds, args.batch)
    print(
        f"{len(result.written)} images written, {len(result.skipped)} already there, {len(result.failed)} failed "
        f"-> {args.out} (Image/, Mask/, Preview/, annotations/, manifest.jsonl)"
    )
    for seed, error in result.failed.items():
        print(f"  seed {seed}: {error}", file=sys.stderr)
    return 1 if result.failed else 0
