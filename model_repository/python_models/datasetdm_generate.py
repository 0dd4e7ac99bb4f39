"""DatasetDM generate (BLS): prompt, seeds, steps, guidance and class names -> images and their
annotations, the whole loop inside the server.

    text encoder (one call for every prompt, negative prompt and class name of the batch)
    -> PNDM loop in Python (diffusers' scheduler, the folder's config), every step through the
       feature extractor (the one model that holds the UNet), which runs it on the doubled batch
       and yields both noise predictions; the last step also takes the feature groups DatasetDM
       reads there
    -> VAE decoder -> image; the P-Decoders each request asks for (`tasks`, default all exported)
       on the last step's groups, instance inference (`perceptserve.datasetdm.instances`) in Python.

Requests handed over together, and the seeds within each, that share steps and size are
denoised in one loop (guidance is per image). A request that fails validation gets
INVALID_ARGUMENT and does not hold up the others; a failing model call fails its loop's
requests with the model's message.
"""

import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import PNDMScheduler
from perceptserve.model_repository import datasetdm as names
from perceptserve.model_repository.python_models import bls, inputs
from perceptserve.model_repository.python_models.responses import respond, respond_each
from transformers import CLIPTokenizer

from perceptserve.datasetdm import instances, validation
from perceptserve.datasetdm.sampling import denoise, initial_latents
from perceptserve.parsing import comma_list

GROUPS = names.GROUPS
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 7.5


@dataclass
class Job:
    """One request, validated and tokenized."""

    prompt_ids: np.ndarray  # (77,)
    negative_ids: np.ndarray  # (77,)
    class_ids: np.ndarray  # (K, 77)
    seeds: list
    steps: int
    guidance: float
    size: tuple
    tasks: tuple  # the decoders to run, in the exported order
    instance_labels: np.ndarray  # (K,) the instance decoder's label per class name, -1: none
    instance_limits: tuple  # (max_instances, score_threshold)


class TritonPythonModel:
    def initialize(self, args):
        parameters = inputs.parameters(inputs.model_config(args))
        self.limits = validation.Limits.from_parameters(parameters)
        self.default_side = int(parameters["default_side"])
        self.vae_scale = int(parameters["vae_scale"])
        self.latent_channels = int(parameters["latent_channels"])
        self.categories = comma_list(parameters["instance_categories"])
        self.candidates = int(parameters["instance_candidates"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
        self.scheduler_config = PNDMScheduler.load_config(os.path.join(folder, "scheduler"))

    def _job(self, request) -> Job:
        limits = self.limits
        prompt = validation.text(inputs.one(request, "prompt", b""), "prompt")
        negative = validation.text(inputs.one(request, "negative_prompt", b""), "negative_prompt")
        class_names = validation.class_names(inputs.required(request, "class_names").reshape(-1), limits)
        tasks = inputs.optional(request, "tasks")
        count, threshold = (inputs.optional(request, name) for name in ("max_instances", "score_threshold"))
        height = validation.image_side(int(inputs.one(request, "height", self.default_side)), "height", limits)
        width = validation.image_side(int(inputs.one(request, "width", self.default_side)), "width", limits)
        return Job(
            prompt_ids=validation.token_ids(self.tokenizer, prompt, "prompt"),
            negative_ids=validation.token_ids(self.tokenizer, negative, "negative_prompt", allow_empty=True),
            class_ids=np.stack([validation.token_ids(self.tokenizer, n, f"class name {n!r}") for n in class_names]),
            seeds=validation.seeds(inputs.required(request, "seeds"), limits),
            steps=validation.steps(int(inputs.one(request, "steps", DEFAULT_STEPS)), limits),
            guidance=validation.guidance(float(inputs.one(request, "guidance", DEFAULT_GUIDANCE)), limits),
            size=(height, width),
            tasks=validation.tasks(None if tasks is None else tasks.reshape(-1), limits),
            instance_labels=instances.category_labels(class_names, self.categories),
            instance_limits=validation.instance_limits(count, threshold, limits),
        )

    def _generate(self, jobs):
        """One loop for `jobs` (same steps and size) -> one response per job."""
        counts = [len(job.seeds) for job in jobs]
        ids = np.concatenate(
            [np.stack([j.negative_ids for j in jobs]), np.stack([j.prompt_ids for j in jobs])]
            + [j.class_ids for j in jobs]
        )
        embeddings = torch.from_numpy(
            bls.call(names.TEXT_ENCODER, {"input_ids": ids}, ["text_embeddings"])["text_embeddings"]
        )
        per_image = torch.tensor(np.repeat(np.arange(len(jobs)), counts))
        uncond, text = embeddings[per_image].numpy(), embeddings[len(jobs) + per_image].numpy()
        class_embeddings = embeddings[2 * len(jobs) :].split([len(j.class_ids) for j in jobs])
        noise_names = ["noise_pred_uncond", "noise_pred_text"]
        group_names = [f"{task}_{group}" for task in self.limits.tasks for group in GROUPS]

        def features(latents, timesteps, outputs):
            """One pass of the feature extractor, the only model holding the UNet (one copy of its
            weights): every step asks it for the noise alone, the last for the feature groups too."""
            feeds = {"latents": latents.numpy(), "timestep": timesteps.numpy()}
            return bls.call(names.FEATURES, feeds | {"text_embeddings": text, "uncond_embeddings": uncond}, outputs)

        def unet(latents, timesteps):
            out = features(latents, timesteps, noise_names)
            return tuple(torch.from_numpy(out[name]) for name in noise_names)

        def last(latents, timesteps):
            out = features(latents, timesteps, noise_names + group_names)
            extras = {name: out[name] for name in group_names}
            return torch.from_numpy(out[noise_names[0]]), torch.from_numpy(out[noise_names[1]]), extras

        height, width = jobs[0].size
        seeds = [seed for job in jobs for seed in job.seeds]
        latents = initial_latents(seeds, (self.latent_channels, height // self.vae_scale, width // self.vae_scale))
        guidance = torch.tensor(np.repeat([j.guidance for j in jobs], counts), dtype=torch.float32)
        scheduler = PNDMScheduler.from_config(self.scheduler_config)
        latents, groups = denoise(scheduler, latents, jobs[0].steps, guidance, unet, last)
        images = bls.call(names.VAE_DECODER, {"latents": latents.numpy()}, ["image"])["image"]
        images = (images.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)

        responses, start = [], 0
        for job, count, classes in zip(jobs, counts, class_embeddings, strict=True):
            part = slice(start, start + count)
            start += count
            tensors = {"image": images[part], **self._annotate(job, {n: g[part] for n, g in groups.items()}, classes)}
            responses.append(respond(tensors))
        return responses

    def _annotate(self, job, groups, class_embeddings):
        """The decoders `job` asks for on its images' feature groups -> their outputs."""
        outputs = {}
        for task in job.tasks:
            feeds = {group: groups[f"{task}_{group}"] for group in GROUPS}
            if task == "semantic":
                feeds["class_embeddings"] = class_embeddings.numpy()
                outputs.update(bls.call(names.DECODERS[task], feeds, ["class_map", "class_scores"]))
            elif task == "depth":
                outputs.update(bls.call(names.DECODERS[task], feeds, ["depth"]))
            elif task == "pose":
                outputs.update(bls.call(names.DECODERS[task], feeds, ["keypoints"]))
            else:
                raw = bls.call(names.DECODERS[task], feeds, ["class_logits", "mask_logits"])
                count, threshold = job.instance_limits
                found = [
                    instances.infer(
                        torch.from_numpy(logits),
                        torch.from_numpy(masks),
                        job.instance_labels,
                        job.size,
                        count,
                        threshold,
                        self.candidates,
                    )
                    for logits, masks in zip(raw["class_logits"], raw["mask_logits"], strict=True)
                ]
                outputs.update(instances.served_outputs(found))
        return outputs

    def execute(self, requests):
        responses = respond_each(requests, self._job)  # a Job, or INVALID_ARGUMENT for a bad request
        loops = defaultdict(list)  # (steps, size) -> [(request index, job)]
        for index, job in enumerate(responses):
            if isinstance(job, Job):
                loops[job.steps, job.size].append((index, job))
        for members in loops.values():
            indices, jobs = zip(*members, strict=True)
            try:
                results = self._generate(list(jobs))
            except bls.ModelCallError as exc:
                results = [exc.response() for _ in jobs]
            for index, response in zip(indices, results, strict=True):
                responses[index] = response
        return responses
