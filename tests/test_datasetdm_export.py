"""The DatasetDM export on the tiny random SD 1.x pipeline: parity of every exported model with
its PyTorch source, the feature extractor's grouping against DatasetDM's hook-based capture,
strict loading of checkpoints with DatasetDM's parameter names, several image sizes."""

from __future__ import annotations

import argparse
import shutil

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from perceptserve.clients.triton_io import infer_input
from perceptserve.export import datasetdm_parity as parity
from perceptserve.export import onnx_io
from perceptserve.export.datasetdm import DECODER_KINDS, DatasetDMExport, build_decoder, parity_example
from perceptserve.model_repository import configs
from perceptserve.model_repository import datasetdm as names
from perceptserve.model_repository.writer import version_dir
from skimage import data as sample_images
from skimage.transform import resize as resize_image

from perceptserve import cli
from perceptserve.datasetdm import tiny
from perceptserve.datasetdm.checkpoint_loading import CheckpointError
from perceptserve.datasetdm.features import GROUPS, TASKS, FeatureLayout
from perceptserve.datasetdm.layers import SegBlock, fold_spectral_norm
from perceptserve.datasetdm.pose_decoder import read_keypoints
from perceptserve.onnxruntime_session import cpu_session

from .datasetdm_fixtures import datasetdm_state_shapes, hook_capture, random_state

# CompVis/stable-diffusion-v1-4 unet/config.json, the values the layout reads.
SD14_UNET = {
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}


def relative(ours, reference) -> float:
    ours, reference = np.asarray(ours, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.abs(ours - reference).max() / max(np.abs(reference).max(), 1e-12))


def test_export_parity_numbers(tiny_export):
    report = tiny_export.report
    print(report.format())
    assert report.passed, report.format()
    assert report.relative("text encoder") < 1e-5
    assert report.relative("VAE") < 1e-3  # torch's own fp32 VAE is ~1e-4 off float64 here
    assert report.relative("feature extractor") < 1e-4  # its noise pair against diffusers' UNet too
    assert report.relative("semantic decoder") < 1e-4
    assert report.relative("depth decoder") < 1e-4
    assert report.relative("instance decoder") < 1e-2  # thresholded attention masks, as semantic
    assert report.relative("pose decoder") < 1e-4
    assert report.agreements[0][1] >= 0.9999  # a pixel whose mask logit is ~0 may flip
    assert report.agreements[1] == ("pose decoder: keypoints within 1/4 pixel, 256x256", 1.0)
    # text, VAE, noise pair (the UNet), 4 tasks x 4 groups, semantic, depth, instance x 2, pose x 2
    assert len(report.rows) == 1 + 3 + 2 + 16 + 1 + 1 + 2 + 2


def test_sd14_layout_is_datasetdms(tiny_export):
    """DatasetDM's decoder input widths (`1280*14+8*77`, ...) and its ~100 MiB hand-off."""
    layout = FeatureLayout.from_unet_config(SD14_UNET)
    assert [layout.feature_channels(g) for g in GROUPS] == [1280 * 14, 16640, 9600, (640 + 320 * 6) * 2]
    assert [layout.map_channels(g) for g in GROUPS] == [8 * 77, 40 * 77, 40 * 77, 40 * 77]
    raw = layout.raw_elements(64, 64)
    projected = layout.projected_elements(64, 64, {g: 256 for g in GROUPS})
    assert raw * 2 / 2**20 == pytest.approx(100.72, abs=0.01)  # fp16 MiB per 512x512 image
    assert projected * 2 / 2**20 == pytest.approx(2.66, abs=0.01)  # one task, DatasetDM's 256 widths
    handoff = tiny_export.report.handoff
    assert handoff[1] < handoff[0] / 10


def test_repository_configs_match_the_onnx_files(tiny_export):
    for model in names.model_names(TASKS):
        folder = version_dir(tiny_export.repository, model)
        session = cpu_session(folder / configs.ONNX_FILE)
        for target in ("cpu", "gpu"):
            config = configs.parse((tiny_export.repository / model / "configs" / f"{target}.pbtxt").read_text())
            assert [i.name for i in config.input] == [i.name for i in session.get_inputs()], model
            assert [o.name for o in config.output] == [o.name for o in session.get_outputs()], model
        assert (folder / "model.py").is_file()


def stored_weights(repository) -> dict[bytes, set]:
    """Every initializer of every ONNX file under `repository`, by content -> where it is stored
    (an external file and offset, or the ONNX file and name): two graphs that reference one
    external file hold one copy."""
    stored: dict[bytes, set] = {}
    for path in sorted(repository.rglob("*.onnx")):
        for tensor in onnx.load(str(path), load_external_data=False).graph.initializer:
            info = {entry.key: entry.value for entry in tensor.external_data}
            if info:
                offset, length = int(info.get("offset", 0)), int(info["length"])
                with open(path.parent / info["location"], "rb") as data:
                    data.seek(offset)
                    content, place = data.read(length), (path.parent / info["location"], offset)
            else:
                content, place = tensor.raw_data, (path, tensor.name)
            if len(content) >= 1024:  # weights, not shape constants
                stored.setdefault(content, set()).add(place)
    return stored


def test_repository_holds_the_unet_weights_once(tiny_export):
    """The UNet is in the feature extractor only (no separate UNet model), and its CPU graph
    (ONNX Runtime's fused attention) references the same external data file: every UNet
    convolution weight is stored exactly once, and the CPU graph adds no weights of its own."""
    unet = tiny_export.diffusion().unet
    stored = stored_weights(tiny_export.repository)
    convs = [m.weight for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.numel() * 4 >= 1024]
    assert len(convs) > 30
    assert all(len(stored.get(w.detach().numpy().tobytes(), ())) == 1 for w in convs)
    folder = version_dir(tiny_export.repository, names.FEATURES)
    assert configs.cpu_onnx_file(folder).name == configs.CPU_ONNX_FILE
    graph = onnx.load(str(folder / configs.CPU_ONNX_FILE), load_external_data=False).graph
    assert sum(n.op_type == "MultiHeadAttention" for n in graph.node) == 10  # every self-attention
    inline = sum(len(t.raw_data) for t in graph.initializer)
    assert inline < 0.01 * (folder / (configs.ONNX_FILE + ".data")).stat().st_size


def test_the_depth_decoders_first_convolution_runs_at_the_latent_size(tiny_export):
    """DatasetDM's 3x3 convolution over the resized image-size map (4.9 TFLOP at 512x512) is
    exported as one 1x1 convolution of its nine taps at the latent size, then two resize
    matrices: the only 4w -> 4w 3x3 kernels left are the mixing block's two at the latent size
    (before, one more per strip)."""
    width = 4 * tiny.DEPTH.width
    path = version_dir(tiny_export.repository, names.DECODERS["depth"]) / configs.ONNX_FILE
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    shapes |= {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim) for v in graph.value_info}
    kernels = [shapes.get(n.input[1]) for n in graph.node if n.op_type == "Conv"]
    assert kernels.count((width, width, 3, 3)) == 2
    assert kernels.count((9 * width, width, 1, 1)) == 1


def test_feature_groups_match_datasetdm_hook_capture(tiny_export):
    """Our explicit UNet walk + attention processor against forward hooks on a plain diffusers
    call, grouped as DatasetDM groups them; one image, as DatasetDM's reshape assumes."""
    reference_unet = tiny_export.diffusion().unet
    models = tiny_export.models
    diffusion, layout = models.diffusion, models.extractor.layout
    latents = torch.randn(1, 4, 40, 32, generator=torch.Generator().manual_seed(3))
    timestep = torch.tensor([1])
    text, uncond = diffusion.embed(["a photo of a cat on a sofa"]), diffusion.embed([""])
    with torch.no_grad():
        groups, noise = hook_capture(reference_unet, latents, timestep, text, uncond)
        captured = models.extractor.capture(latents, timestep, text, uncond)
    for group in GROUPS:
        ours = captured.group(layout, group)
        assert ours.shape == groups[group].shape
        assert ours.shape[1] == layout.channels(group)
        assert ours.shape[-2:] == (40 // 2 ** layout.level(group), 32 // 2 ** layout.level(group))
        assert relative(ours, groups[group]) < 1e-5, group
    assert relative(torch.cat([captured.noise_uncond, captured.noise_text]), noise) < 1e-5


def test_batched_capture_is_per_image_capture(tiny_export):
    """DatasetDM's reshape stacks [uncond; cond] for one image; for a batch each image keeps
    its own pair."""
    models = tiny_export.models
    diffusion, extractor = models.diffusion, models.extractor
    latents = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(4))
    timestep = torch.tensor([1, 501])
    text, uncond = diffusion.embed(["a cat", "a dog on a sofa"]), diffusion.embed(["", ""])
    with torch.no_grad():
        both = extractor.capture(latents, timestep, text, uncond)
        for index in range(2):
            one = extractor.capture(
                latents[index : index + 1],
                timestep[index : index + 1],
                text[index : index + 1],
                uncond[index : index + 1],
            )
            for group in GROUPS:
                assert (
                    relative(both.group(extractor.layout, group)[index], one.group(extractor.layout, group)[0]) < 1e-5
                )


@pytest.mark.parametrize("size, batch", [((256, 256), 1), ((320, 256), 3)])
def test_onnx_chain_at_other_sizes_and_batches(tiny_export, size, batch):
    """VAE encoder -> feature extractor -> decoders, and the VAE decoder, at an image size and
    batch the export never saw; against the eager DatasetDM path."""
    height, width = size
    models = tiny_export.models
    diffusion = models.diffusion
    onnx_models = parity.OnnxModels(tiny_export.repository, names.model_names(TASKS))
    photos = [sample_images.astronaut(), sample_images.chelsea(), sample_images.coffee()][:batch]
    images = np.stack([resize_image(p, size, anti_aliasing=True) * 2 - 1 for p in photos]).transpose(0, 3, 1, 2)
    images = torch.from_numpy(images.astype(np.float32))
    prompts = ["a photo of a man", "a photo of a cat", "a cup on a table"][:batch]
    classes = ["person", "cat", "table", "sofa"]
    ids = diffusion.token_ids(prompts)
    text = torch.from_numpy(onnx_models(names.TEXT_ENCODER, input_ids=ids)["text_embeddings"])
    uncond = torch.from_numpy(
        onnx_models(names.TEXT_ENCODER, input_ids=diffusion.token_ids([""] * batch))["text_embeddings"]
    )
    class_embeddings = diffusion.embed(classes)
    latents = torch.from_numpy(onnx_models(names.VAE_ENCODER, image=images)["latents"])
    assert latents.shape == (batch, 4, height // 8, width // 8)
    timestep = torch.ones(batch, dtype=torch.int64)
    features = onnx_models(
        names.FEATURES, latents=latents, timestep=timestep, text_embeddings=text, uncond_embeddings=uncond
    )
    for task in TASKS:
        for group in GROUPS:
            level = models.extractor.layout.level(group)
            width_ = models.decoders[task].config.width
            assert features[f"{task}_{group}"].shape == (batch, width_, height // 8 // 2**level, width // 8 // 2**level)
    semantic = onnx_models(
        names.DECODERS["semantic"], class_embeddings=class_embeddings, **{g: features[f"semantic_{g}"] for g in GROUPS}
    )
    depth = onnx_models(names.DECODERS["depth"], **{g: features[f"depth_{g}"] for g in GROUPS})["depth"]
    instance = onnx_models(names.DECODERS["instance"], **{g: features[f"instance_{g}"] for g in GROUPS})
    pose = onnx_models(names.DECODERS["pose"], **{g: features[f"pose_{g}"] for g in GROUPS})
    image = onnx_models(names.VAE_DECODER, latents=latents)["image"]
    assert semantic["class_map"].shape == (batch, height, width) and semantic["class_map"].dtype == np.int32
    assert semantic["class_map"].min() >= 0 and semantic["class_map"].max() <= len(classes)
    assert semantic["class_scores"].shape == (batch, len(classes))
    assert depth.shape == (batch, 1, height, width) and image.shape == (batch, 3, height, width)

    with torch.no_grad():
        captured = models.extractor.capture(latents, timestep, text, uncond)
        raw = [captured.group(models.extractor.layout, g) for g in GROUPS]
        class_map, scores = models.decoders["semantic"].reference(raw, class_embeddings)
        reference_depth = models.decoders["depth"].reference(raw)
        logits, masks = models.decoders["instance"].reference(raw)
        heatmaps = models.decoders["pose"].reference(raw)
    assert instance["mask_logits"].shape == (batch, tiny.INSTANCE.num_queries, height * 5 // 16, width * 5 // 16)
    assert relative(instance["class_logits"], logits) < 1e-2 and relative(instance["mask_logits"], masks) < 1e-2
    assert relative(pose["heatmaps"], heatmaps) < 1e-4 and pose["keypoints"].shape == (batch, 17, 3)
    keypoints = read_keypoints(heatmaps, (height, width)).numpy()
    assert np.abs(pose["keypoints"][..., :2] - keypoints[..., :2]).max() <= 0.25
    assert relative(semantic["class_scores"], scores) < 1e-4
    assert (semantic["class_map"] == class_map.numpy()).mean() >= 0.999
    assert relative(depth, reference_depth) < 1e-4
    with torch.no_grad():
        doubled = torch.cat([latents, latents]), torch.cat([timestep, timestep]), torch.cat([uncond, text])
        noise_uncond, noise_text = diffusion.unet(*doubled).sample.chunk(2)
    assert relative(features["noise_pred_uncond"], noise_uncond) < 1e-4
    assert relative(features["noise_pred_text"], noise_text) < 1e-4


def test_served_path_equals_datasetdm_order_eagerly(tiny_export):
    """A 1x1 projection and a bilinear resize commute: projecting in the feature extractor and
    resizing in the decoder gives DatasetDM's resize-then-project, before any export."""
    models = tiny_export.models
    example = parity_example(tiny_export.job)
    diffusion = models.diffusion
    latents = diffusion.vae.encode(example.images).latent_dist.mean * diffusion.vae.config.scaling_factor
    with torch.no_grad():
        captured = models.extractor.capture(
            latents, torch.tensor([1, 1]), diffusion.embed(list(example.prompts)), diffusion.embed(["", ""])
        )
        raw = [captured.group(models.extractor.layout, g) for g in GROUPS]
        semantic = models.decoders["semantic"]
        classes = diffusion.embed(list(example.class_names))
        ours = semantic.targets_from_projected(models.extractor.project(captured)["semantic"])
        theirs = semantic.targets_from_raw(raw)
        for mine, reference in zip(ours, theirs, strict=True):
            assert relative(mine, reference) < 1e-5
        # Mask2Former's attention masks threshold mask logits: a logit within rounding of 0 can
        # flip a mask bit, so the predictions agree less tightly than their inputs.
        for mine, reference in zip(
            semantic.predictions(ours, classes), semantic.predictions(theirs, classes), strict=True
        ):
            assert relative(mine, reference) < 1e-2
        depth = models.decoders["depth"]
        assert relative(depth(*models.extractor.project(captured)["depth"]), depth.reference(raw)) < 1e-5


@pytest.mark.parametrize("task", ["semantic", "depth", "instance", "pose"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_checkpoint_with_datasetdm_names_loads_strictly(tiny_export, tmp_path, task, prefix):
    """A state dict written with DatasetDM's parameter names (and DataParallel's prefix)."""
    diffusion = tiny_export.diffusion()
    config = DECODER_KINDS[task][2]
    state = random_state(datasetdm_state_shapes(task, diffusion.layout, config))
    path = tmp_path / f"{task}.pth"
    torch.save({prefix + key: value for key, value in state.items()}, path)
    job = DatasetDMExport(repository=tmp_path / "repository", tasks=(task,), decoders={task: path})
    loaded = build_decoder(task, diffusion, job).state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def test_checkpoint_shapes_set_queries_and_classes(tiny_export, tmp_path):
    """COCO's decoder has 100 queries and 80 classes, VOC's 20 and 2: read from the checkpoint."""
    import dataclasses

    diffusion = tiny_export.diffusion()
    config = dataclasses.replace(tiny.SEMANTIC, num_queries=12, num_classes=5)
    path = tmp_path / "coco.pth"
    torch.save(random_state(datasetdm_state_shapes("semantic", diffusion.layout, config)), path)
    job = DatasetDMExport(repository=tmp_path / "repository", decoders={"semantic": path})
    decoder = build_decoder("semantic", diffusion, job)
    assert (decoder.config.num_queries, decoder.config.num_classes) == (12, 5)


def _write(tmp_path, state, name="bad.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_mismatched_checkpoints_fail_in_one_line(tiny_export, tmp_path):
    diffusion = tiny_export.diffusion()
    semantic = random_state(datasetdm_state_shapes("semantic", diffusion.layout, tiny.SEMANTIC))
    depth = random_state(datasetdm_state_shapes("depth", diffusion.layout, tiny.DEPTH))
    other_unet = dict(semantic, **{"low_feature_conv.0.weight": torch.zeros(16, 999, 1, 1)})
    cases = {
        "missing tensors: class_embed.bias": {k: v for k, v in semantic.items() if k != "class_embed.bias"},
        "lacks (another task's decoder?): last_layer_depth": depth,
        f"does not fit this model (another UNet or decoder size?): low_feature_conv.0.weight (16, 999, 1, 1) "
        f"!= (16, {diffusion.layout.channels('low')}, 1, 1)": other_unet,
        "is not a plain weights file": {"args": argparse.Namespace(lr=1e-4)},
    }
    for expected, state in cases.items():
        path = _write(tmp_path, state)
        job = DatasetDMExport(repository=tmp_path / "repository", decoders={"semantic": path})
        with pytest.raises(CheckpointError) as error:
            build_decoder("semantic", diffusion, job)
        assert expected in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_spectral_norm_folds_into_plain_weights():
    torch.manual_seed(0)
    block = SegBlock(8, 4).eval()
    x = torch.randn(2, 8, 6, 5)
    with torch.no_grad():
        sigma = block.conv1.sigma()
        matrix = block.conv1.weight.reshape(4, -1).double()
        v = block.conv1.u0.double() @ matrix
        v = v / v.norm()
        u = v @ matrix.T
        u = u / u.norm()
        assert float(sigma) == pytest.approx(float(v @ matrix.T @ u.T), rel=1e-5)  # one power iteration from u0
        before = block(x)
        fold_spectral_norm(block)
        assert torch.allclose(block(x), before, atol=1e-6)


def test_segblock_keeps_datasetdms_inplace_relu_shortcut():
    """DatasetDM's `h = ReLU(inplace=True)(x)` also rewrites x: the shortcut is relu(bn(x))."""
    torch.manual_seed(1)
    for in_channels, out_channels in ((8, 8), (8, 4)):
        block = SegBlock(in_channels, out_channels).eval()
        block.stored_mean1.uniform_(-1, 1)
        x = torch.randn(2, in_channels, 5, 5)
        with torch.no_grad():
            expected = F.batch_norm(x, block.stored_mean1, block.stored_var1, None, None, False, 0.1, 1e-4)
            h = torch.nn.ReLU(inplace=True)(expected)  # DatasetDM's line; `expected` is now relu'd too
            h = block.conv1(h)
            h = F.batch_norm(h, block.stored_mean2, block.stored_var2, None, None, False, 0.1, 1e-4)
            h = block.conv2(torch.nn.ReLU(inplace=True)(h))
            expected = h + (block.conv_sc(expected) if block.learnable_sc else expected)
            assert torch.allclose(block(x), expected, atol=1e-6)


def test_fp16_error_is_reported_and_bounded(tiny_export, tmp_path):
    repository = tmp_path / "fp16"
    shutil.copytree(tiny_export.repository, repository)
    for model in names.model_names(("semantic", "depth")):
        onnx_io.to_fp16(version_dir(repository, model) / configs.ONNX_FILE)
        assert any(
            t.data_type == onnx.TensorProto.FLOAT16
            for t in onnx.load(str(version_dir(repository, model) / configs.ONNX_FILE)).graph.initializer
        )
    models = tiny_export.models
    decoders = {task: models.decoders[task] for task in ("semantic", "depth")}
    report = parity.check(
        models.diffusion, models.extractor, decoders, repository, parity_example(tiny_export.job), "fp16"
    )
    print(report.format())
    assert report.passed, report.format()
    assert max(rel for what, _, rel, _ in report.rows if not what.startswith("semantic")) < 5e-2


def test_tiny_pipeline_is_a_diffusers_folder(tiny_export):
    from diffusers import StableDiffusionPipeline

    source = tiny_export.job.tiny_source
    assert (source / "tokenizer" / "vocab.json").is_file() and (source / "tokenizer" / "merges.txt").is_file()
    pipeline = StableDiffusionPipeline.from_pretrained(str(source))
    ids = pipeline.tokenizer("a photo of a cat on a sofa").input_ids
    assert pipeline.tokenizer.decode(ids, skip_special_tokens=True) == "a photo of a cat on a sofa"
    assert pipeline.tokenizer.tokenize("photo") == ["photo</w>"]
    image = pipeline("a photo of a cat", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3)


def test_cli_rejects_ambiguous_decoders_before_exporting(tmp_path, capsys):
    argv = [
        "export",
        "datasetdm",
        "--tiny-random",
        "--decoder",
        str(tmp_path / "x.pth"),
        "--tasks",
        "semantic,depth",
        "--repository",
        str(tmp_path / "r"),
    ]
    assert cli.main(argv) == 2
    assert "give TASK=PATH" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.server
def test_repository_serves_on_tritonserver(tiny_export, datasetdm_server):
    """Every exported model loads in the bundled tritonserver (cpu configs) and answers."""
    import tritonclient.grpc as grpcclient

    models = names.model_names(("semantic", "depth"))
    groups = {
        g: np.random.rand(1, 8, 32 // 2**level, 32 // 2**level).astype(np.float32)
        for g, level in zip(GROUPS, (3, 2, 1, 0), strict=True)
    }
    with grpcclient.InferenceServerClient(datasetdm_server.grpc_url) as client:
        assert all(client.is_model_ready(model) for model in models)
        inputs = [infer_input(grpcclient, name, value, "FP32") for name, value in groups.items()]
        depth = client.infer(names.DECODERS["depth"], inputs).as_numpy("depth")
    assert depth.shape == (1, 1, 256, 256)
    assert np.allclose(
        depth,
        parity.OnnxModels(tiny_export.repository, [names.DECODERS["depth"]])(names.DECODERS["depth"], **groups)[
            "depth"
        ],
    )
