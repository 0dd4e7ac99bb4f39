"""Generation at scale without a server: prompt lists (DatasetDM's `{class}.txt` layout), seeds
round the prompts, shard blocks, requests grouped by prompt, and `dataset merge` on datasets
written by the real writer (arrays in place of served items): what it merges and what it refuses.
The served path (two shards merged == one run, requests in flight) is in
test_datasetdm_serving.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from perceptserve.clients import prompt_lists
from perceptserve.clients.dataset import MANIFEST, Dataset, RunSpec
from perceptserve.clients.datasetdm import Annotation
from perceptserve.clients.errors import ClientError
from perceptserve.clients.generate import requests_for
from perceptserve.clients.merge import merge
from perceptserve.clients.shards import Shard

from perceptserve import cli


@pytest.fixture
def prompt_folder(tmp_path) -> Path:
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "dog.txt").write_text("a dog on grass\n  \na dog in the snow\n")
    (folder / "aeroplane.txt").write_text("an aeroplane in the sky\n")
    return folder


def test_prompt_folder_layout(prompt_folder, tmp_path):
    prompts = prompt_lists.load(prompt_folder, None)
    assert [(p.class_name, p.text) for p in prompts.prompts] == [
        ("aeroplane", "an aeroplane in the sky"),
        ("dog", "a dog on grass"),
        ("dog", "a dog in the snow"),
    ]
    assert [prompts.for_seed(seed).text for seed in (0, 1, 2, 3, 7)] == [
        "an aeroplane in the sky",
        "a dog on grass",
        "a dog in the snow",
        "an aeroplane in the sky",
        "a dog on grass",
    ]
    # --classes come first (mask index k is the same class across the dataset); folder classes join.
    assert prompt_lists.run_classes(prompts, ["person", "dog"]) == ["person", "dog", "aeroplane"]
    assert prompt_lists.run_classes(prompts, []) == ["aeroplane", "dog"]
    # The digest changes with any prompt, class or order change.
    (prompt_folder / "dog.txt").write_text("a dog in the snow\na dog on grass\n")
    assert prompt_lists.load(prompt_folder, None).digest != prompts.digest
    # A plain file's prompts are about --classes' first.
    lines = tmp_path / "lines.txt"
    lines.write_text("a cat\na kitten\n")
    assert [p.class_name for p in prompt_lists.load(lines, "cat").prompts] == ["cat", "cat"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root, "holds no {class}.txt"),
        (
            lambda root: (root / "cat.txt").write_text("a cat\n") and (root / "dog.txt").write_text("\n") and root,
            "dog.txt",
        ),
        (lambda root: (root / "x.txt").write_text("\n\n") and root / "x.txt", "holds no prompt"),
        (lambda root: root / "absent.txt", "cannot read prompts"),
    ],
)
def test_bad_prompt_lists_are_named(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ClientError, match=message.replace("{", r"\{").replace("}", r"\}")):
        prompt_lists.load(path, "cat")


def test_a_prompt_file_needs_classes(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n")
    with pytest.raises(ClientError, match="give --classes"):
        prompt_lists.load(tmp_path / "p.txt", None)


@pytest.mark.parametrize("count", [1, 2, 3, 7])
@pytest.mark.parametrize("total", [0, 1, 5, 10, 13])
def test_shards_partition_the_seeds(count, total):
    blocks = [Shard(index, count).seeds(100, total) for index in range(count)]
    assert [seed for block in blocks for seed in block] == list(range(100, 100 + total))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "0/0", "-1/2"])
def test_bad_shards_are_refused(text):
    with pytest.raises(ClientError, match="--shard"):
        Shard.parse(text)


UNSHARDED = Shard()


def spec(prompts, shard=UNSHARDED, steps=2, seeds=(0, 6)) -> RunSpec:
    return RunSpec(prompts, ["aeroplane", "dog"], steps, 7.5, height=8, width=8, seeds=seeds, shard=shard)


def test_requests_hold_one_prompt_each(prompt_folder):
    prompts = prompt_lists.load(prompt_folder, None)
    groups = requests_for(spec(prompts), list(range(10)), batch=2)
    assert groups == [[0, 3], [1, 4], [2, 5], [6, 9], [7], [8]]
    for group in groups:
        assert len({prompts.for_seed(seed) for seed in group}) == 1


def write(folder: Path, run: RunSpec, seeds) -> Dataset:
    """Items as the writer stores served ones: image, class map and depth from the seed."""
    dataset = Dataset(folder, run)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        annotation = Annotation(rng.integers(0, 3, (8, 8)), None, depth=rng.random((8, 8), dtype=np.float32))
        dataset.add(seed, image, annotation)
    return dataset


def test_merge_puts_shards_back_together(prompt_folder, tmp_path):
    prompts = prompt_lists.load(prompt_folder, None)
    whole = write(tmp_path / "whole", spec(prompts), range(6))
    for index in range(3):  # shard 1 shares shard 0's folder, shard 2 has its own
        shard = Shard(index, 3)
        write(tmp_path / ("b" if index == 2 else "a"), spec(prompts, shard), shard.seeds(0, 6)[::-1])
    result = merge(tmp_path / "merged", [tmp_path / "a", tmp_path / "b"])
    assert (result.items, result.shards, result.missing) == (6, 3, [])
    entries = [json.loads(line) for line in (tmp_path / "merged" / MANIFEST).read_text().splitlines()]
    assert entries == [whole.done[seed] for seed in range(6)]  # seed order, unsharded records
    for entry in entries:
        for path in entry["files"].values():
            assert (tmp_path / "merged" / path).read_bytes() == (tmp_path / "whole" / path).read_bytes()
    # The merged folder is an unsharded run: `generate` resumes it with nothing left to do.
    assert sorted(Dataset(tmp_path / "merged", spec(prompts)).done) == list(range(6))
    with pytest.raises(ClientError, match="already holds a dataset"):
        merge(tmp_path / "merged", [tmp_path / "a", tmp_path / "b"])


def test_merge_refuses_what_is_not_one_run(prompt_folder, tmp_path):
    prompts = prompt_lists.load(prompt_folder, None)
    write(tmp_path / "s0", spec(prompts, Shard(0, 2)), [0, 1])
    write(tmp_path / "s1", spec(prompts, Shard(1, 2), steps=3), [3, 4])
    write(tmp_path / "s1b", spec(prompts, Shard(1, 2)), [3])
    write(tmp_path / "s1c", spec(prompts, Shard(1, 2), seeds=(0, 8)), [4])
    cases = {
        ("s0", "s1"): "steps differ",
        ("s0", "s1c"): "seeds differ",
        ("s0",): r"shards 1/2 are missing",
        ("s0", "s0", "s1b"): "a shard given twice",
        ("s0", "prompts"): "holds no manifest",
    }
    for folders, message in cases.items():
        with pytest.raises(ClientError, match=message):
            merge(tmp_path / "out", [(prompt_folder if f == "prompts" else tmp_path / f) for f in folders])
    # A seed of shard 1 failed: merged without it, and said so.
    assert merge(tmp_path / "out", [tmp_path / "s0", tmp_path / "s1b"]).missing == [2, 4, 5]
    # Another prompt list is another run.
    (prompt_folder / "dog.txt").write_text("a dog\n")
    write(tmp_path / "t1", spec(prompt_lists.load(prompt_folder, None), Shard(1, 2)), [3])
    with pytest.raises(ClientError, match="prompts differ"):
        merge(tmp_path / "out2", [tmp_path / "s0", tmp_path / "t1"])


def test_merge_cli(prompt_folder, tmp_path, capsys):
    prompts = prompt_lists.load(prompt_folder, None)
    for index in range(2):
        shard = Shard(index, 2)
        write(tmp_path / f"s{index}", spec(prompts, shard), shard.seeds(0, 6))
    assert cli.main(["dataset", "merge", str(tmp_path / "m"), str(tmp_path / "s0"), str(tmp_path / "s1")]) == 0
    assert "6 items of 2 shards merged" in capsys.readouterr().out
    assert cli.main(["dataset", "merge", str(tmp_path / "m"), str(tmp_path / "s0"), str(tmp_path / "s1")]) == 2
    assert "already holds a dataset" in capsys.readouterr().err


def test_generate_and_merge_need_only_the_client_packages():
    """The chart's Jobs run these commands in the server image, which has no torch, diffusers,
    scikit-image or onnx (the Dockerfile installs perceptserve with --no-deps)."""
    blocked = ("torch", "diffusers", "transformers", "skimage", "onnx", "onnxruntime", "scipy", "matplotlib")
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "from perceptserve import cli\n"
        "import perceptserve.clients.generate, perceptserve.clients.merge\n"
        "cli.build_parser().parse_args(['generate', '--prompts', 'p', '--count', '1', '--out', 'o'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
