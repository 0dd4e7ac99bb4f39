"""The TensorRT path: profiles from the serving limits everywhere, engine builds where TensorRT
and a GPU are present."""

import importlib.util

import pytest
from perceptserve.export import tensorrt

from perceptserve.settings import Settings

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_profiles_cover_the_serving_limits():
    serving = Settings().hqsam
    profiles = tensorrt.hqsam_profiles(
        serving.encoder_batching.max_batch_size, serving.max_prompt_sets, serving.max_points
    )
    low, _, high = profiles["encoder"].shapes["image"]
    assert low[0] == 1 and high[0] == serving.encoder_batching.max_batch_size
    low, _, high = profiles["decoder"].shapes["point_coords"]
    assert low[1] == 0 and high == (serving.max_prompt_sets, serving.max_points + 2, 2)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed: the build test below runs instead")
def test_without_tensorrt_the_export_stops_with_a_clear_message():
    with pytest.raises(tensorrt.TensorRTUnavailable, match="needs the `tensorrt` package"):
        tensorrt.require_tensorrt()


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TENSORRT, reason="needs TensorRT and an NVIDIA GPU")
def test_engines_build_and_the_gpu_config_uses_them(tmp_path):
    from perceptserve.export.hqsam import HQSamExport, run
    from perceptserve.model_repository import configs

    from .conftest import SMALL_VIT

    job = HQSamExport(model=SMALL_VIT, repository=tmp_path, precision="fp16", tensorrt=True)
    report = run(job, Settings())
    assert report.passed
    for model in ("hqsam_encoder", "hqsam_decoder"):
        assert (tmp_path / model / "1" / "model.plan").stat().st_size > 0
        config = configs.parse((tmp_path / model / "configs" / "gpu.pbtxt").read_text())
        assert config.platform == "tensorrt_plan"
