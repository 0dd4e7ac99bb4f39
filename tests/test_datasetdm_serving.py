"""DatasetDM served by the real tritonserver on the tiny random pipeline: generated images against
diffusers' `StableDiffusionPipeline` for the same seeds, annotation against the eager PyTorch
path (VAE sample + noise, feature capture, P-Decoders in DatasetDM's order), the dataset writer's
layout and resume, the CLI, and bad input refused with INVALID_ARGUMENT while the server goes on."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
from perceptserve.clients import NO_RETRY, ClientError, DatasetDMAnnotateClient, DatasetDMGenerateClient, coco
from perceptserve.clients.dataset import MANIFEST, Dataset, RunSpec, mask_of
from perceptserve.clients.generate import generate_dataset
from perceptserve.clients.prompt_lists import single
from perceptserve.server.launcher import TritonServer
from perceptserve.server.memory import PeakSampler, server_rss_mib
from perceptserve.server.stubs import stub_processes
from PIL import Image
from skimage import data as sample_images

from perceptserve import cli
from perceptserve.datasetdm import instances, tiny, validation
from perceptserve.datasetdm.coco_names import COCO_CATEGORIES
from perceptserve.datasetdm.features import GROUPS
from perceptserve.datasetdm.pose_decoder import read_keypoints
from perceptserve.imaging import encode_png

from .chart_server import process_gone
from .conftest import server_settings

pytestmark = pytest.mark.server

PROMPT, CLASSES = "a photo of a cat on a sofa", ["cat", "sofa"]
SMALL = dict(steps=4, height=64, width=64)


@pytest.fixture(scope="module")
def server(datasetdm_server):
    return datasetdm_server


@pytest.fixture(scope="module")
def generator(server):
    with DatasetDMGenerateClient(server.grpc_url) as client:
        yield client


@pytest.fixture(scope="module")
def annotator(server):
    with DatasetDMAnnotateClient(server.grpc_url) as client:
        yield client


def test_generated_images_match_diffusers(tiny_export, generator):
    """Two seeds in one loop, each the image diffusers makes for that seed alone."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(str(tiny_export.job.tiny_source), safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    served = generator.generate(PROMPT, CLASSES, seeds=[3, 11], guidance=7.5, **SMALL)
    for item in served:
        reference = pipeline(
            PROMPT,
            num_inference_steps=SMALL["steps"],
            guidance_scale=7.5,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(item.seed),
            output_type="np",
        ).images[0]
        diff = np.abs(item.image.astype(np.float64) - reference * 255).max()
        print(f"seed {item.seed}: max abs pixel difference {diff:.3f} (of 255)")
        assert diff <= 1.0
        assert item.class_map.shape == (64, 64) and item.class_map.max() <= len(CLASSES)
        assert item.class_scores.shape == (2,) and item.depth.shape == (64, 64)
    assert not np.array_equal(served[0].image, served[1].image)


def eager_features(tiny_export, photo: np.ndarray, prompt: str, seed: int) -> list[torch.Tensor]:
    """DatasetDM's annotation path in PyTorch: VAE sample + noise at t = 1, feature capture; the
    raw groups, for the decoders' `reference`."""
    from diffusers import PNDMScheduler

    models = tiny_export.models
    diffusion, extractor = models.diffusion, models.extractor
    image = torch.from_numpy(photo.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1)
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = diffusion.vae.encode(image).latent_dist.sample(generator=generator) * diffusion.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator)
    scheduler = PNDMScheduler.from_pretrained(str(tiny_export.job.tiny_source), subfolder="scheduler")
    timestep = torch.tensor([1])
    noisy = scheduler.add_noise(latents, noise, timestep)
    captured = extractor.capture(noisy, timestep, diffusion.embed([prompt]), diffusion.embed([""]))
    return [captured.group(extractor.layout, group) for group in GROUPS]


PHOTO = np.ascontiguousarray(sample_images.astronaut()[::4, ::4][:64])  # 64 x 128


def test_annotation_matches_the_eager_path(tiny_export, annotator):
    served = annotator.annotate(encode_png(PHOTO), "a photo of a man", ["person", "car"], seed=5)
    models = tiny_export.models
    raw = eager_features(tiny_export, PHOTO, "a photo of a man", 5)
    class_map, scores = models.decoders["semantic"].reference(raw, models.diffusion.embed(["person", "car"]))
    depth = models.decoders["depth"].reference(raw)

    assert served.class_map.shape == (64, 128)
    agreement = (served.class_map == class_map[0].numpy()).mean()
    print(f"class map agreement {agreement:.5f}, scores {served.class_scores} vs {scores[0].numpy()}")
    assert agreement >= 0.99
    np.testing.assert_allclose(served.class_scores, scores[0].numpy(), rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(served.depth, depth[0, 0].numpy(), rtol=1e-3, atol=1e-3 * float(depth.max()))


def test_instances_and_keypoints_match_the_eager_path(tiny_export, annotator):
    """The served instance inference and keypoint reading against DatasetDM's decoders in PyTorch
    (its order: raw groups, then the projections) and the same inference on their outputs."""
    names = ["person", "dog", "sofa"]  # sofa is not a COCO category: no instances of it
    served = annotator.annotate(encode_png(PHOTO), "a photo of a man", names, seed=5, score_threshold=0.0)
    decoders = tiny_export.models.decoders
    raw = eager_features(tiny_export, PHOTO, "a photo of a man", 5)
    logits, masks = decoders["instance"].reference(raw)
    labels = instances.category_labels(names, COCO_CATEGORIES)
    expected = instances.infer(logits[0], masks[0], labels, (64, 128), 20, 0.0, tiny.INSTANCE.top_k)
    print(f"{len(served.instances)} instances, scores {[round(i.score, 3) for i in served.instances]}")
    assert len(served.instances) == len(expected.scores) > 0
    unmatched = list(range(len(expected.scores)))  # matched by category, score and mask: near-equal scores may swap
    for instance in served.instances:
        decoded = mask_of(instance.rle)
        assert decoded.shape == (64, 128) and instance.category != 3
        match = next(
            j
            for j in unmatched
            if expected.classes[j] == instance.category
            and abs(expected.scores[j] - instance.score) <= 1e-2 * expected.scores[j] + 1e-4
            and (decoded & expected.masks[j]).sum() >= 0.99 * (decoded | expected.masks[j]).sum()
        )
        assert instance.box == pytest.approx(expected.boxes[match].tolist(), abs=1.0)
        unmatched.remove(match)
    keypoints = read_keypoints(decoders["pose"].reference(raw), (64, 128))[0].numpy()
    assert served.keypoints.shape == (17, 3)
    assert np.abs(served.keypoints[:, :2] - keypoints[:, :2]).max() <= 0.25
    np.testing.assert_allclose(served.keypoints[:, 2], keypoints[:, 2], rtol=1e-3, atol=1e-4)
    few = annotator.annotate(encode_png(PHOTO), "a photo of a man", names, seed=5, max_instances=2, score_threshold=0.0)
    assert [i.score for i in few.instances] == pytest.approx([i.score for i in served.instances[:2]])
    only = annotator.annotate(encode_png(PHOTO), "a photo of a man", names, seed=5, tasks=["pose"])
    assert only.class_map is None and only.instances is None and only.keypoints.shape == (17, 3)


def test_annotation_comes_back_at_the_image_size(annotator):
    photo = np.ascontiguousarray(sample_images.chelsea()[::5, ::5])  # 60 x 90: resized to 64 x 128 and back
    result = annotator.annotate(encode_png(photo), "a photo of a cat", ["cat"])
    assert result.class_map.shape == photo.shape[:2] and result.depth.shape == photo.shape[:2]


LONG = " ".join(["cat"] * 80)
GENERATE_CASES = {
    "empty prompt": dict(prompt="  "),
    "over-long prompt": dict(prompt=LONG),
    "no class names": dict(class_names=[]),
    "repeated class names": dict(class_names=["cat", "cat"]),
    "steps 0": dict(steps=0),
    "too many steps": dict(steps=10_000),
    "guidance too high": dict(guidance=1000.0),
    "guidance NaN": dict(guidance=float("nan")),
    "too many seeds": dict(seeds=list(range(100))),
    "height not a multiple of 64": dict(height=100),
    "unknown task": dict(tasks=["semantic", "panoptic"]),
    "max_instances negative": dict(max_instances=-1),
    "max_instances over the limit": dict(max_instances=1000),
    "score_threshold over 1": dict(score_threshold=1.5),
    "score_threshold NaN": dict(score_threshold=float("nan")),
}


@pytest.mark.parametrize("case", GENERATE_CASES)
def test_bad_generate_requests_are_invalid_argument(generator, case):
    request = dict(prompt=PROMPT, class_names=CLASSES, seeds=[0], **SMALL) | GENERATE_CASES[case]
    with pytest.raises(ClientError) as raised:
        generator.generate(**request)
    assert raised.value.status == "INVALID_ARGUMENT", raised.value
    print(f"{case}: {raised.value.message}")


def test_bad_annotate_requests_are_invalid_argument_and_the_server_goes_on(annotator):
    good = encode_png(np.zeros((64, 64, 3), np.uint8))
    cases = [(b"GIF89a not an image", PROMPT, CLASSES), (good, "", CLASSES), (good, LONG, CLASSES), (good, PROMPT, [])]
    messages = []
    for image, prompt, classes in cases:
        with pytest.raises(ClientError) as raised:
            annotator.annotate(image, prompt, classes)
        assert raised.value.status == "INVALID_ARGUMENT"
        messages.append(raised.value.message)
    assert "not a PNG, JPEG or WebP" in messages[0] and "prompt is empty" in messages[1]
    assert "tokens long; the text encoder reads at most 75" in messages[2] and "not truncated" in messages[2]
    for options, message in (
        (dict(tasks=["depth", "keypoints"]), "unknown task 'keypoints': give some of semantic, instance, depth, pose"),
        (dict(max_instances=101), "max_instances 101 is out of range: give 0 to 100"),
        (dict(score_threshold=-0.1), "score_threshold -0.1 is out of range: give 0 to 1"),
    ):
        with pytest.raises(ClientError) as raised:
            annotator.annotate(good, PROMPT, CLASSES, **options)
        assert raised.value.status == "INVALID_ARGUMENT" and message in raised.value.message, raised.value
    assert annotator.annotate(good, PROMPT, CLASSES).class_map.shape == (64, 64)


def test_a_task_not_exported_is_refused_by_name():
    limits = validation.Limits(50, 1, 20, 4, 4, 512, tasks=("semantic", "depth"))
    with pytest.raises(validation.RequestError, match=r"task pose was not exported .* serves semantic, depth\)"):
        validation.tasks([b"semantic", b"pose"], limits)
    assert validation.tasks([b"depth", b"semantic"], limits) == ("semantic", "depth")


def test_unknown_class_names_are_refused():
    """With a vocabulary configured (a decoder trained on fixed classes), other names are refused."""
    limits = validation.Limits(50, 1, 20, 4, 4, 512, vocabulary=("cat", "dog"))
    with pytest.raises(validation.RequestError, match="unknown class names horse: this decoder knows cat, dog"):
        validation.class_names([b"cat", b"horse"], limits)
    assert validation.class_names([b"dog"], limits) == ["dog"]


class FailingSeed:
    """The real client, with one seed refused by the 'server'."""

    def __init__(self, client: DatasetDMGenerateClient, bad_seed: int) -> None:
        self.client, self.bad_seed, self.requests = client, bad_seed, []

    def generate(self, *args, **kwargs):
        seeds = args[2]
        self.requests.append(list(seeds))
        if self.bad_seed in seeds:
            raise ClientError("refused for the test", "INTERNAL")
        return self.client.generate(*args, **kwargs)


def test_dataset_layout_resume_and_failures(generator, tmp_path):
    spec = RunSpec(single(PROMPT, "cat"), CLASSES, 2, 5.0, height=64, width=64, models=generator.model_versions())
    client = FailingSeed(generator, bad_seed=2)
    result = generate_dataset(client, Dataset(tmp_path, spec), seeds=[0, 1, 2, 3], batch=2, progress=False)
    assert result.written == [0, 1, 3] and list(result.failed) == [2]
    for stem in ("cat_0", "cat_1", "cat_3"):
        assert Image.open(tmp_path / "Image" / f"{stem}.jpg").size == (64, 64)
        assert np.asarray(Image.open(tmp_path / "Mask" / f"{stem}.png")).max() <= 2
        assert (tmp_path / "Depth" / f"{stem}.png").exists() and (tmp_path / "Preview" / f"{stem}.jpg").exists()
    entries = [json.loads(line) for line in (tmp_path / MANIFEST).read_text().splitlines()]
    assert [e["seed"] for e in entries] == [0, 1, 3]
    assert entries[0]["models"] == {"datasetdm_generate": ["1"]} and entries[0]["classes"] == CLASSES
    assert (entries[0]["prompt"], entries[0]["class"]) == (PROMPT, "cat")

    # Interrupted: seed 3's line torn mid-write, seed 1's image lost. Resume redoes those and 2 only.
    lines = (tmp_path / MANIFEST).read_text().splitlines()
    (tmp_path / MANIFEST).write_text("\n".join(lines[:2] + [lines[2][:20]]) + "\n")
    (tmp_path / "Image" / "cat_1.jpg").unlink()
    client = FailingSeed(generator, bad_seed=-1)
    result = generate_dataset(client, Dataset(tmp_path, spec), seeds=[0, 1, 2, 3], batch=4, progress=False)
    assert client.requests == [[1, 2, 3]] and result.skipped == [0] and not result.failed
    assert sorted(Dataset(tmp_path, spec).done) == [0, 1, 2, 3]

    with pytest.raises(ClientError, match="other settings"):
        Dataset(tmp_path, RunSpec(single(PROMPT, "dog"), ["dog"], steps=2, guidance=5.0, height=64, width=64))


def test_cli_annotate_and_generate(server, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.ascontiguousarray(sample_images.coffee()[::8, ::8])).save(photo)
    url = server.grpc_url
    assert (
        cli.main(
            [
                "annotate",
                str(photo),
                "--prompt",
                "a cup",
                "--classes",
                "cat,dog",
                "--out",
                str(tmp_path / "a"),
                "--url",
                url,
            ]
        )
        == 0
    )
    assert {p.name for p in (tmp_path / "a").iterdir()} == {
        "photo_mask.png",
        "photo_preview.jpg",
        "photo_depth.png",
        "photo_instances.jpg",
        "photo_pose.jpg",
        "annotations",
    }
    assert {p.name for p in (tmp_path / "a" / "annotations").iterdir()} == {
        "instances.json",
        "person_keypoints.json",
        "items",
    }

    def generate(out: str, steps: str) -> int:
        return cli.main(
            [
                "generate",
                "--prompt",
                PROMPT,
                "--classes",
                "cat",
                "--count",
                "2",
                "--seed",
                "7",
                "--steps",
                steps,
                "--height",
                "64",
                "--width",
                "64",
                "--out",
                str(tmp_path / out),
                "--url",
                url,
            ]
        )

    assert generate("g", "2") == 0
    assert sorted(p.name for p in (tmp_path / "g" / "Image").iterdir()) == ["cat_7.jpg", "cat_8.jpg"]
    assert generate("g", "2") == 0
    assert "0 images written, 2 already there" in capsys.readouterr().out
    assert generate("bad", "0") == 1  # every item refused: each reported, the run ends with status 1
    assert "steps 0 is out of range" in capsys.readouterr().err


def test_coco_files_load_in_pycocotools_and_resume_to_the_same_bytes(generator, tmp_path):
    """instances.json and person_keypoints.json of a generated dataset: pycocotools reads them,
    every mask decodes at its image's size; a run interrupted (a seed failing, a torn manifest
    line) and resumed writes the same files as an uninterrupted one."""
    from pycocotools.coco import COCO

    classes = ["person", "dog"]
    prompts = single("a photo of a man with a dog", "person")
    spec = RunSpec(prompts, classes, 2, 5.0, height=64, width=128, score_threshold=0.0, models={})
    whole = tmp_path / "whole"
    generate_dataset(generator, Dataset(whole, spec), seeds=[4, 5, 6], batch=2, progress=False)
    instances_file = COCO(str(whole / coco.INSTANCES))
    assert [c["name"] for c in instances_file.loadCats(instances_file.getCatIds())] == classes
    assert sorted(image["file_name"] for image in instances_file.dataset["images"]) == [
        f"Image/person_{seed}.jpg" for seed in (4, 5, 6)
    ]
    assert instances_file.getAnnIds(), "random-init instance decoder with threshold 0 finds instances"
    for annotation in instances_file.loadAnns(instances_file.getAnnIds()):
        image = instances_file.loadImgs(annotation["image_id"])[0]
        assert instances_file.annToMask(annotation).shape == (image["height"], image["width"]) == (64, 128)
        assert annotation["category_id"] in (1, 2) and annotation["area"] > 0
    people = COCO(str(whole / coco.PERSON_KEYPOINTS))
    assert len(people.getAnnIds()) == 3
    for annotation in people.loadAnns(people.getAnnIds()):
        assert len(annotation["keypoints"]) == 51 and annotation["num_keypoints"] <= 17

    resumed = tmp_path / "resumed"
    generate_dataset(FailingSeed(generator, bad_seed=6), Dataset(resumed, spec), [4, 5, 6], batch=2, progress=False)
    lines = (resumed / MANIFEST).read_text().splitlines()
    (resumed / MANIFEST).write_text(lines[0] + "\n" + lines[1][:30])  # killed while writing seed 5's line
    interrupted = COCO(str(resumed / coco.INSTANCES))
    assert len(interrupted.dataset["images"]) == 2  # rebuilt after the batch, before the tear
    Dataset(resumed, spec)  # opening the torn dataset rebuilds its COCO files from the manifest
    assert len(json.loads((resumed / coco.INSTANCES).read_text())["images"]) == 1
    generate_dataset(generator, Dataset(resumed, spec), [4, 5, 6], batch=2, progress=False)
    for name in (coco.INSTANCES, coco.PERSON_KEYPOINTS):
        assert (resumed / name).read_bytes() == (whole / name).read_bytes()


class InFlight:
    """The real client, counting the requests it has outstanding at once."""

    def __init__(self, client: DatasetDMGenerateClient) -> None:
        self.client, self.lock, self.now, self.most = client, threading.Lock(), 0, 0

    def generate(self, *args, **kwargs):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return self.client.generate(*args, **kwargs)
        finally:
            with self.lock:
                self.now -= 1


def test_concurrency_keeps_requests_in_flight(generator, tmp_path):
    spec = RunSpec(single(PROMPT, "cat"), CLASSES, 2, 5.0, height=64, width=64, models=generator.model_versions())
    client = InFlight(generator)
    result = generate_dataset(client, Dataset(tmp_path, spec), list(range(6)), batch=1, concurrency=3, progress=False)
    assert client.most == 3 and sorted(result.written) == list(range(6)) and not result.failed
    assert sorted(json.loads(line)["seed"] for line in (tmp_path / MANIFEST).read_text().splitlines()) == list(range(6))


def test_prompt_folder_two_shards_merged_equal_one_run(server, tmp_path, capsys):
    """DatasetDM's prompt layout drives a run; its two shards, written into one folder and merged,
    are the unsharded run item for item; a changed prompt list is refused on resume."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "cat.txt").write_text("a photo of a cat\n\na cat asleep on a sofa\n")
    (prompts / "sofa.txt").write_text("a red sofa in a room\n")
    texts = ["a photo of a cat", "a cat asleep on a sofa", "a red sofa in a room"]

    def generate(out: str, *extra: str) -> int:
        common = ["--count", "5", "--seed", "3", "--steps", "2", "--height", "64", "--width", "64", "--batch", "2"]
        return cli.main(
            ["generate", "--prompts", str(prompts), *common, "--out", str(tmp_path / out), "--url", server.grpc_url]
            + list(extra)
        )

    assert generate("whole", "--concurrency", "2") == 0
    assert generate("shards", "--shard", "0/2") == 0 and generate("shards", "--shard", "1/2") == 0
    assert "images/s" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "shards").glob("manifest*")} == {
        "manifest-0-of-2.jsonl",
        "manifest-1-of-2.jsonl",
    }
    assert cli.main(["dataset", "merge", str(tmp_path / "merged"), str(tmp_path / "shards")]) == 0

    def items(folder: str) -> dict[int, dict]:
        return {e["seed"]: e for e in map(json.loads, (tmp_path / folder / MANIFEST).read_text().splitlines())}

    whole, merged = items("whole"), items("merged")
    assert sorted(whole) == sorted(merged) == [3, 4, 5, 6, 7]
    for seed, entry in whole.items():
        assert entry["prompt"] == texts[seed % 3] and entry["class"] == ("sofa" if seed % 3 == 2 else "cat")
        assert entry["classes"] == ["cat", "sofa"]
        assert merged[seed] == entry  # prompt, class, files, run settings: the same record
        for kind in ("image", "mask", "depth"):
            ours = np.asarray(Image.open(tmp_path / "whole" / entry["files"][kind]), dtype=np.int16)
            theirs = np.asarray(Image.open(tmp_path / "merged" / entry["files"][kind]), dtype=np.int16)
            assert np.abs(ours - theirs).max() <= (0 if kind == "mask" else 2), (seed, kind)

    # Shards of different runs are refused (an unsharded run is not a shard of a 2-shard one).
    assert (
        cli.main(["dataset", "merge", str(tmp_path / "mixed"), str(tmp_path / "whole"), str(tmp_path / "shards")]) == 2
    )
    assert "hold different runs" in capsys.readouterr().err
    (prompts / "sofa.txt").write_text("a red sofa in a room\na green sofa\n")
    assert generate("whole") == 2
    assert "prompts differ" in capsys.readouterr().err


def test_a_512_generate_keeps_the_server_memory_bounded(server, generator):
    """512x512 images are 64x64 latents, 4096-token self-attention: the plain exported graph
    holds (batch x heads x 4096 x 4096) matrices, 1 GiB each for SD 1.x. The CPU graph's fused
    MultiHeadAttention does not, so one such request raises the server's memory (tritonserver
    and its stubs, sampled every 0.1 s) by a bounded amount, here on the tiny pipeline (whose
    plain graph's matrices alone would take about 0.8 GiB)."""
    pid = server.process.pid
    before = server_rss_mib(pid)
    with PeakSampler(pid, interval_s=0.1) as peak:
        (item,) = generator.generate(PROMPT, CLASSES, seeds=[0], steps=2, height=512, width=512)
    print(f"server memory: {before:.0f} MiB before, peak {peak.peak_mib:.0f} MiB during a 512x512 generate")
    assert item.image.shape == (512, 512, 3) and item.depth.shape == (512, 512)
    assert peak.peak_mib - before < 600


def test_a_lost_feature_extractor_is_unavailable_to_annotate_and_generate(tiny_export):
    """Its stub killed (as the OOM killer would): both requests that needed it come back
    UNAVAILABLE, which our clients retry, not INTERNAL; annotate through the extractor's guard,
    generate through its own BLS call."""
    with TritonServer(tiny_export.repository, "cpu", server_settings()) as server:
        stubs = stub_processes(server.process.pid)
        victim = next(pid for pid, name in stubs.items() if name.startswith("datasetdm_features_0"))
        os.kill(victim, signal.SIGKILL)
        while not process_gone(victim):
            time.sleep(0.01)
        image = encode_png(np.ascontiguousarray(sample_images.coffee()[::4, ::4]))
        with DatasetDMAnnotateClient(server.grpc_url, retry_policy=NO_RETRY) as annotator:
            with pytest.raises(ClientError) as annotate:
                annotator.annotate(image, PROMPT, CLASSES)
        with DatasetDMGenerateClient(server.grpc_url, retry_policy=NO_RETRY) as generator:
            with pytest.raises(ClientError) as generate:
                generator.generate(PROMPT, CLASSES, seeds=[1], **SMALL)
    for caught in (annotate, generate):
        assert caught.value.status == "UNAVAILABLE", caught.value
        assert "datasetdm_features failed" in str(caught.value) and "is not healthy" in str(caught.value)
