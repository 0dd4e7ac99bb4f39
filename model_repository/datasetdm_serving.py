"""DatasetDM's two served uses, over the exported models of `datasetdm.py`:

    datasetdm_annotate (ensemble): a real image + its caption + class names
      -> datasetdm_annotate_preprocess  decode (header-checked limits), resize to multiples of 64,
                                        validate and tokenize the caption, the empty prompt and
                                        the class names
      -> datasetdm_text_encoder (x3)    caption, empty prompt, class names
      -> datasetdm_vae_encoder          latent mean and std
      -> datasetdm_annotate_noise       `latent_dist.sample()` + noise at the annotation timestep
      -> datasetdm_features             the projected feature groups
      -> datasetdm_{semantic,depth}_decoder
      -> datasetdm_annotate_postprocess class map (and depth) back at the image's own size; the
                                        scores handed on (every output from the last step)

    datasetdm_generate (python, BLS): prompt, negative prompt, seeds, steps, guidance, class
      names -> text encoder -> PNDM loop (UNet through Triton, the last step through the feature
      extractor) -> VAE decoder -> image, and the annotation from the last step's features.
      One request carries several seeds, denoised together in one loop.

The ensemble's and the generate model's tensors below are the public API (docs/datasetdm-serving.md).
"""

from __future__ import annotations

from perceptserve.datasetdm.coco_names import COCO_CATEGORIES
from perceptserve.settings import Settings

from . import datasetdm as names
from .definitions import EnsembleStep, ModelDefinition, Runtime, Tensor

ANNOTATE = "datasetdm_annotate"
ANNOTATE_PREPROCESS = "datasetdm_annotate_preprocess"
ANNOTATE_NOISE = "datasetdm_annotate_noise"
ANNOTATE_POSTPROCESS = "datasetdm_annotate_postprocess"
GENERATE = "datasetdm_generate"

# Files copied from the diffusers folder into the python models' version folders at export.
TOKENIZER = "tokenizer"
SCHEDULER = "scheduler"
ASSETS = {ANNOTATE_PREPROCESS: (TOKENIZER,), ANNOTATE_NOISE: (SCHEDULER,), GENERATE: (TOKENIZER, SCHEDULER)}

# Optional inputs of both uses: which exported tasks to return (default all), and the instance
# inference's limits (defaults: settings.datasetdm, DatasetDM's 20 and 0.4).
TASK_INPUTS = (
    Tensor("tasks", "STRING", (-1,), optional=True),
    Tensor("max_instances", "INT32", (1,), optional=True),
    Tensor("score_threshold", "FP32", (1,), optional=True),
)
ANNOTATE_INPUTS = (
    Tensor("image", "STRING", (1,)),
    Tensor("prompt", "STRING", (1,)),
    Tensor("class_names", "STRING", (-1,)),
    Tensor("seed", "INT64", (1,), optional=True),  # the annotation noise's seed (default 0)
) + TASK_INPUTS
GENERATE_INPUTS = (
    Tensor("prompt", "STRING", (1,)),
    Tensor("class_names", "STRING", (-1,)),
    Tensor("seeds", "INT64", (-1,)),  # one image per seed
    Tensor("negative_prompt", "STRING", (1,), optional=True),
    Tensor("steps", "INT32", (1,), optional=True),  # default 50
    Tensor("guidance", "FP32", (1,), optional=True),  # default 7.5
    Tensor("height", "INT32", (1,), optional=True),  # default: the UNet's sample size x 8
    Tensor("width", "INT32", (1,), optional=True),
) + TASK_INPUTS

# Each task's outputs, for B images. Instances of all B images are listed together, image by
# image, `instance_counts[b]` of them for image b; masks are COCO RLE (`counts` of
# `pycocotools.mask.encode`, the image's size), classes k the k-th class name (1-based), boxes
# COCO's [x, y, width, height]. Keypoints: one person per image, COCO's 17, (x, y, score).
TASK_OUTPUTS = {
    "semantic": (Tensor("class_map", "INT32", (-1, -1, -1)), Tensor("class_scores", "FP32", (-1, -1))),
    "depth": (Tensor("depth", "FP32", (-1, 1, -1, -1)),),
    "instance": (
        Tensor("instance_counts", "INT32", (-1,)),
        Tensor("instance_rle", "STRING", (-1,)),
        Tensor("instance_classes", "INT32", (-1,)),
        Tensor("instance_scores", "FP32", (-1,)),
        Tensor("instance_boxes", "FP32", (-1, 4)),
    ),
    "pose": (Tensor("keypoints", "FP32", (-1, names.KEYPOINTS, 3)),),
}


def annotation_outputs(tasks) -> tuple[Tensor, ...]:
    return tuple(tensor for task in names.DECODERS if task in tasks for tensor in TASK_OUTPUTS[task])


def generate_outputs(tasks) -> tuple[Tensor, ...]:
    return (Tensor("image", "UINT8", (-1, -1, -1, 3)),) + annotation_outputs(tasks)


def _limits(settings: Settings, max_side: int, tasks) -> dict[str, str]:
    serving = settings.datasetdm
    return {
        "max_steps": str(serving.max_steps),
        "min_guidance": str(serving.min_guidance),
        "max_guidance": str(serving.max_guidance),
        "max_classes": str(serving.max_classes),
        "max_generations": str(serving.max_generations),
        "max_side": str(max_side),
        "class_vocabulary": ",".join(serving.class_vocabulary),
        "tasks": ",".join(task for task in names.DECODERS if task in tasks),
        "max_instances": str(serving.max_instances),
        "max_instances_limit": str(serving.max_instances_limit),
        "score_threshold": str(serving.score_threshold),
        "instance_categories": ",".join(serving.instance_categories or COCO_CATEGORIES),
    }


def _annotate_steps(shapes: names.ExportedShapes) -> tuple[EnsembleStep, ...]:
    tasks = shapes.widths
    groups = {f"{task}_{group}": f"{task}_{group}" for task in tasks for group in names.GROUPS}
    steps = [
        EnsembleStep(
            ANNOTATE_PREPROCESS,
            inputs={t.name: t.name for t in ANNOTATE_INPUTS},
            outputs={
                name: name
                for name in (
                    "vae_image",
                    "input_ids",
                    "uncond_ids",
                    "class_ids",
                    "noise_seed",
                    "timestep",
                    "original_size",
                    *(("instance_labels", "instance_limits") if "instance" in tasks else ()),
                )
            },
        ),
        EnsembleStep(names.TEXT_ENCODER, {"input_ids": "input_ids"}, {"text_embeddings": "text_embeddings"}),
        EnsembleStep(names.TEXT_ENCODER, {"input_ids": "uncond_ids"}, {"text_embeddings": "uncond_embeddings"}),
        EnsembleStep(names.TEXT_ENCODER, {"input_ids": "class_ids"}, {"text_embeddings": "class_embeddings"}),
        EnsembleStep(
            names.VAE_ENCODER, {"image": "vae_image"}, {"latents": "clean_latents", "latents_std": "latents_std"}
        ),
        EnsembleStep(
            ANNOTATE_NOISE,
            {
                "latents": "clean_latents",
                "latents_std": "latents_std",
                "noise_seed": "noise_seed",
                "timestep": "timestep",
            },
            {"noisy_latents": "noisy_latents"},
        ),
        EnsembleStep(
            names.FEATURES_GUARD,
            {
                "latents": "noisy_latents",
                "timestep": "timestep",
                "text_embeddings": "text_embeddings",
                "uncond_embeddings": "uncond_embeddings",
            },
            groups,
        ),
    ]
    # Every output from the last step (`definitions.check_outputs_come_from_the_last_step`).
    post_inputs = {
        "class_map_raw": "class_map_raw",
        "class_scores": "class_scores_raw",
        "original_size": "original_size",
    }
    post_outputs = {"class_map": "class_map", "class_scores": "class_scores"}
    if "semantic" in tasks:
        inputs = {group: f"semantic_{group}" for group in names.GROUPS} | {"class_embeddings": "class_embeddings"}
        outputs = {"class_map": "class_map_raw", "class_scores": "class_scores_raw"}
        steps.append(EnsembleStep(names.DECODERS["semantic"], inputs, outputs))
    if "depth" in tasks:
        inputs = {group: f"depth_{group}" for group in names.GROUPS}
        steps.append(EnsembleStep(names.DECODERS["depth"], inputs, {"depth": "depth_raw"}))
        post_inputs["depth_raw"] = "depth_raw"
        post_outputs["depth"] = "depth"
    if "instance" in tasks:
        inputs = {group: f"instance_{group}" for group in names.GROUPS}
        outputs = {"class_logits": "instance_class_logits", "mask_logits": "instance_mask_logits"}
        steps.append(EnsembleStep(names.DECODERS["instance"], inputs, outputs))
        post_inputs |= {name: name for name in (*outputs.values(), "instance_labels", "instance_limits")}
        post_outputs |= {t.name: t.name for t in TASK_OUTPUTS["instance"]}
    if "pose" in tasks:
        inputs = {group: f"pose_{group}" for group in names.GROUPS}
        steps.append(EnsembleStep(names.DECODERS["pose"], inputs, {"keypoints": "keypoints_raw"}))
        post_inputs["keypoints_raw"] = "keypoints_raw"
        post_outputs["keypoints"] = "keypoints"
    steps.append(EnsembleStep(ANNOTATE_POSTPROCESS, post_inputs, post_outputs))
    return tuple(steps)


def definitions(
    settings: Settings,
    shapes: names.ExportedShapes,
    default_side: int,
    vae_scale: int,
    instance_candidates: int = 100,
) -> list[ModelDefinition]:
    """The serving models for the exported `shapes` (the semantic decoder is required: both
    uses return its class map); `default_side` is the generated image's default side,
    `vae_scale` the image pixels per latent pixel, `instance_candidates` the (query, category)
    pairs the instance inference scores (DatasetDM's test_topk_per_image)."""
    if "semantic" not in shapes.widths:
        raise ValueError("serving DatasetDM needs the semantic decoder (export --tasks semantic[,depth])")
    serving = settings.datasetdm
    tokens, width = shapes.tokens, shapes.text_width
    latents = (-1, shapes.latent_channels, -1, -1)
    tasks = shapes.widths
    scores = Tensor("class_scores", "FP32", (-1, -1))
    post_inputs = (Tensor("class_map_raw", "INT32", (-1, -1, -1)), scores, Tensor("original_size", "INT64", (2,)))
    post_outputs = (Tensor("class_map", "INT32", (-1, -1, -1)), scores)  # the scores passed through
    if "depth" in tasks:
        post_inputs += (Tensor("depth_raw", "FP32", (-1, 1, -1, -1)),)
        post_outputs += TASK_OUTPUTS["depth"]
    if "instance" in tasks:
        post_inputs += (
            Tensor("instance_class_logits", "FP32", (-1, -1, -1)),
            Tensor("instance_mask_logits", "FP32", (-1, -1, -1, -1)),
            Tensor("instance_labels", "INT32", (-1,)),
            Tensor("instance_limits", "FP32", (2,)),
        )
        post_outputs += TASK_OUTPUTS["instance"]
    if "pose" in tasks:
        post_inputs += (Tensor("keypoints_raw", "FP32", (-1, names.KEYPOINTS, 3)),)
        post_outputs += TASK_OUTPUTS["pose"]
    return [
        ModelDefinition(
            name=ANNOTATE_PREPROCESS,
            runtime=Runtime.PYTHON,
            python_source="datasetdm_annotate_preprocess.py",
            inputs=ANNOTATE_INPUTS,
            outputs=(
                Tensor("vae_image", "FP32", (1, 3, -1, -1)),
                Tensor("input_ids", "INT64", (1, tokens)),
                Tensor("uncond_ids", "INT64", (1, tokens)),
                Tensor("class_ids", "INT64", (-1, tokens)),
                Tensor("noise_seed", "INT64", (1,)),
                Tensor("timestep", "INT64", (1,)),
                Tensor("original_size", "INT64", (2,)),
                Tensor("instance_labels", "INT32", (-1,)),  # the decoder label per class name, -1: none
                Tensor("instance_limits", "FP32", (2,)),  # max_instances, score_threshold
            ),
            instances=serving.python_instances,
            parameters=_limits(settings, serving.annotate_max_side, tasks)
            | {
                "max_image_pixels": str(serving.max_image_pixels),
                "annotation_timestep": str(serving.annotation_timestep),
            },
        ),
        ModelDefinition(
            name=ANNOTATE_NOISE,
            runtime=Runtime.PYTHON,
            python_source="datasetdm_annotate_noise.py",
            inputs=(
                Tensor("latents", "FP32", latents),
                Tensor("latents_std", "FP32", latents),
                Tensor("noise_seed", "INT64", (1,)),
                Tensor("timestep", "INT64", (1,)),
            ),
            outputs=(Tensor("noisy_latents", "FP32", latents),),
            instances=serving.python_instances,
        ),
        ModelDefinition(
            name=ANNOTATE_POSTPROCESS,
            runtime=Runtime.PYTHON,
            python_source="datasetdm_annotate_postprocess.py",
            inputs=post_inputs,
            outputs=post_outputs,
            instances=serving.python_instances,
            parameters={"instance_candidates": str(instance_candidates)},
        ),
        ModelDefinition(
            name=ANNOTATE,
            runtime=Runtime.ENSEMBLE,
            inputs=ANNOTATE_INPUTS,
            outputs=annotation_outputs(shapes.widths),
            steps=_annotate_steps(shapes),
        ),
        ModelDefinition(
            name=GENERATE,
            runtime=Runtime.PYTHON,
            python_source="datasetdm_generate.py",
            inputs=GENERATE_INPUTS,
            outputs=generate_outputs(shapes.widths),
            instances=serving.generate_instances,
            parameters=_limits(settings, serving.max_generate_side, tasks)
            | {
                "instance_candidates": str(instance_candidates),
                "default_side": str(default_side),
                "text_width": str(width),
                "latent_channels": str(shapes.latent_channels),
                "vae_scale": str(vae_scale),
            },
        ),
    ]
