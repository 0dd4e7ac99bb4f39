"""The written repository: every config parses as Triton's ModelConfig and says what we mean
on each target."""

import shutil

import pytest
from perceptserve.model_repository import configs, definitions, hqsam
from perceptserve.model_repository.writer import write_models
from tritonclient.grpc import model_config_pb2 as mc

from perceptserve.hqsam.families import HQSAM
from perceptserve.settings import Settings

MODELS = list(HQSAM.models)
STEPS = [HQSAM.preprocess, HQSAM.encoder_guard, HQSAM.decoder, HQSAM.postprocess]


def load(repository, model, target):
    return configs.parse((repository / model / "configs" / f"{target}.pbtxt").read_text())


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_every_config_parses(small_vit, target):
    for model in MODELS:
        config = load(small_vit.repository, model, target)
        assert config.name == model
        assert (small_vit.repository / model / "1").is_dir()


def test_cpu_target_runs_everything_in_the_python_backend(small_vit):
    for model in MODELS[:-1]:
        config = load(small_vit.repository, model, "cpu")
        assert config.backend == "python"
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        assert (small_vit.repository / model / "1" / "model.py").is_file()
    assert load(small_vit.repository, HQSAM.encoder, "cpu").parameters["onnx_file"].string_value == "model.onnx"


def test_gpu_target_uses_onnxruntime_with_tensorrt_fp16_and_engine_cache(small_vit):
    for model in (HQSAM.encoder, HQSAM.decoder):
        config = load(small_vit.repository, model, "gpu")
        assert config.platform == "onnxruntime_onnx" and config.backend == ""
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert accelerator.name == "tensorrt"
        assert accelerator.parameters["precision_mode"] == "FP16"
        assert accelerator.parameters["trt_engine_cache_enable"] == "1"
        assert accelerator.parameters["trt_engine_cache_path"] == f"/cache/tensorrt/{model}"
    assert load(small_vit.repository, HQSAM.preprocess, "gpu").backend == "python"


def test_encoder_batches_caches_and_warms_up(small_vit):
    """The guard batches, queues and caches (without a memory record: the settings' limits); the
    encoder behind it takes the guard's batches and warms up."""
    settings = Settings().hqsam
    for target in ("cpu", "gpu"):
        guard = load(small_vit.repository, HQSAM.encoder_guard, target)
        config = load(small_vit.repository, HQSAM.encoder, target)
        assert guard.max_batch_size == config.max_batch_size == settings.encoder_batching.max_batch_size
        preferred = list(settings.encoder_batching.preferred_batch_sizes)
        assert list(guard.dynamic_batching.preferred_batch_size) == preferred
        assert guard.dynamic_batching.default_queue_policy.max_queue_size == settings.encoder_batching.max_queue_size
        assert guard.response_cache.enable and guard.parameters["inner_model"].string_value == HQSAM.encoder
        assert not config.HasField("dynamic_batching") and not config.response_cache.enable
        assert [w.name for w in config.model_warmup] == ["zeros"]
        assert config.instance_group[0].count == guard.instance_group[0].count
        assert config.instance_group[0].count == settings.encoder_instances.for_target(target)
    assert load(small_vit.repository, HQSAM.preprocess, "cpu").parameters["max_image_pixels"].string_value == str(
        settings.max_image_pixels
    )


def test_ensemble_wires_every_step(small_vit):
    config = load(small_vit.repository, HQSAM.ensemble, "cpu")
    assert config.platform == "ensemble"
    assert [s.model_name for s in config.ensemble_scheduling.step] == STEPS
    optional = {t.name for t in config.input if t.optional}
    assert optional == {"point_coords", "point_labels", "boxes", "mask_input", "multimask_output", "hq_token_only"}
    assert [t.name for t in config.output] == ["masks", "iou_predictions", "low_res_logits"]


def test_a_built_engine_switches_the_gpu_config_to_tensorrt_plan(small_vit, tmp_path):
    repository = tmp_path / "repo"
    shutil.copytree(small_vit.repository, repository)
    (repository / HQSAM.encoder / "1" / "model.plan").write_bytes(b"engine")
    write_models(repository, hqsam.definitions(Settings()), Settings())
    encoder = load(repository, HQSAM.encoder, "gpu")
    assert encoder.platform == "tensorrt_plan" and encoder.default_model_filename == "model.plan"
    assert load(repository, HQSAM.decoder, "gpu").platform == "onnxruntime_onnx"
    assert load(repository, HQSAM.encoder, "cpu").backend == "python"


def test_an_ensemble_output_from_an_inner_step_is_refused():
    """The wiring that deadlocked a request for `masks` alone: `low_res_logits` both a public
    output and the postprocess step's input (`check_outputs_come_from_the_last_step`)."""
    step = definitions.EnsembleStep
    expected = r"from the last step: \['iou_predictions', 'low_res_logits'\], read by a step: \['low_res_logits'\]"
    with pytest.raises(ValueError, match=expected):
        definitions.ModelDefinition(
            name="broken",
            runtime=definitions.Runtime.ENSEMBLE,
            inputs=hqsam.ENSEMBLE_INPUTS,
            outputs=hqsam.tensors(HQSAM).ensemble_outputs,
            steps=(
                step(HQSAM.decoder, {}, {"low_res_logits": "low_res_logits", "iou_predictions": "iou_predictions"}),
                step(HQSAM.postprocess, {"low_res_logits": "low_res_logits"}, {"masks": "masks"}),
            ),
        )
