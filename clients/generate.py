"""`perceptserve generate (--prompt TEXT | --prompts PATH) --classes a,b --count N [--seed S]
[--concurrency C] [--shard I/N] --out DIR`: a DatasetDM dataset from the served
`datasetdm_generate` model.

Seeds S .. S+N-1, one image each; seed s is made from prompt s mod P of the list (see
`prompt_lists`), `--batch` seeds of one prompt per request, `--concurrency` requests in flight (so
that as many server instances or replicas are busy). Items are written as they finish, in any
order, each durably before its manifest line (see `dataset`); items already in OUT's manifest
are skipped (resume). `--shard I/N` takes the I-th of N blocks of the seeds. A batch the server
refuses as a whole is retried item by item, so one failing seed is reported and the others are
kept; the exit status is 1 when some item failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from tqdm import tqdm

from perceptserve.parsing import comma_list

from . import prompt_lists, retry
from .dataset import Dataset, RunSpec
from .datasetdm import DatasetDMGenerateClient, Generation
from .errors import ClientError
from .shards import Shard


@dataclass
class GenerateResult:
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return len(self.written) / self.seconds if self.seconds else 0.0


def requests_for(spec: RunSpec, seeds: list[int], batch: int) -> list[list[int]]:
    """The seeds grouped by prompt (one prompt per request), `batch` at most per request, in
    seed order of their first seed."""
    by_prompt: dict[int, list[int]] = {}
    for seed in seeds:
        by_prompt.setdefault(seed % len(spec.prompts.prompts), []).append(seed)
    groups = [same[start : start + batch] for same in by_prompt.values() for start in range(0, len(same), batch)]
    return sorted(groups, key=lambda group: group[0])


def _generate(client, spec: RunSpec, group: list[int]) -> tuple[list[Generation], dict[int, str]]:
    """One request; when it is refused, one request per seed, to keep those that succeed."""

    def request(seeds: list[int]) -> list[Generation]:
        return client.generate(
            spec.prompts.for_seed(seeds[0]).text,
            spec.classes,
            seeds,
            steps=spec.steps,
            guidance=spec.guidance,
            negative_prompt=spec.negative_prompt,
            height=spec.height,
            width=spec.width,
            max_instances=spec.max_instances,
            score_threshold=spec.score_threshold,
        )

    try:
        return request(group), {}
    except ClientError:
        if len(group) == 1:
            raise
    items, failed = [], {}
    for seed in group:
        try:
            items += request([seed])
        except ClientError as exc:
            failed[seed] = str(exc)
    return items, failed


def generate_dataset(
    client: DatasetDMGenerateClient,
    dataset: Dataset,
    seeds: list[int],
    batch: int,
    concurrency: int = 1,
    progress: bool = True,
) -> GenerateResult:
    """Keep `concurrency` requests in flight; write each item from this thread as it arrives."""
    pending = dataset.pending(seeds)
    result = GenerateResult(skipped=[seed for seed in seeds if seed not in pending])
    started = time.perf_counter()
    with (
        tqdm(
            total=len(seeds),
            initial=len(result.skipped),
            unit="image",
            disable=not progress,
            desc="generating",
            file=sys.stderr,
            smoothing=0.1,
        ) as bar,
        ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="generate") as pool,
    ):
        futures = {
            pool.submit(_generate, client, dataset.spec, group): group
            for group in requests_for(dataset.spec, pending, batch)
        }
        try:
            for future in as_completed(futures):
                try:
                    items, failed = future.result()
                except ClientError as exc:
                    items, failed = [], {futures[future][0]: str(exc)}
                for seed, error in failed.items():
                    result.failed[seed] = error
                    bar.write(f"seed {seed} failed: {error}")
                    bar.update(1)
                for item in items:
                    dataset.add(item.seed, item.image, item)
                    result.written.append(item.seed)
                    bar.update(1)
                if items:
                    dataset.write_coco()
        except BaseException:  # interrupted: requests not yet sent are dropped; written items stay
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    result.seconds = time.perf_counter() - started
    return result


def run_spec(args: argparse.Namespace, models: dict[str, list[str]]) -> RunSpec:
    classes = list(comma_list(args.classes))
    if args.prompts is not None:
        prompts = prompt_lists.load(args.prompts, classes[0] if classes else None)
    elif classes:
        prompts = prompt_lists.single(args.prompt, classes[0])
    else:
        raise ClientError("--prompt needs --classes (the first names the files)")
    return RunSpec(
        prompts,
        prompt_lists.run_classes(prompts, classes),
        args.steps,
        args.guidance,
        args.negative_prompt,
        args.height,
        args.width,
        args.max_instances,
        args.score_threshold,
        args.keypoint_threshold,
        models=models,
        seeds=(args.seed, args.seed + args.count),
        shard=Shard.parse(args.shard) if args.shard else Shard(),
    )


def generate_command(args: argparse.Namespace) -> int:
    if args.count < 1 or args.batch < 1 or args.concurrency < 1:
        raise ClientError("--count, --batch and --concurrency must be at least 1")
    with DatasetDMGenerateClient(args.url, retry_policy=retry.from_retries(args.retries)) as client:
        if args.wait:
            client.wait_until_ready(args.wait)
        spec = run_spec(args, client.model_versions())
        dataset = Dataset(args.out, spec)
        seeds = spec.shard.seeds(args.seed, args.count)
        result = generate_dataset(client, dataset, seeds, args.batch, args.concurrency)
    shard = f" (shard {spec.shard}: seeds {seeds[0]}..{seeds[-1]})" if spec.shard.count > 1 and seeds else ""
    print(
        f"{len(result.written)} images written{shard}, {len(result.skipped)} already there, "
        f"{len(result.failed)} failed, {result.images_per_second:.3f} images/s "
        f"-> {args.out} (Image/, Mask/, Preview/, annotations/, {spec.shard.manifest_name})"
    )
    for seed, error in result.failed.items():
        print(f"  seed {seed}: {error}", file=sys.stderr)
    return 1 if result.failed else 0
