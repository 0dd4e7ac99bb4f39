"""Exposure: restricted APIs behind a key, loopback by default, a warning when exposed."""

import dataclasses

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from perceptserve.clients.hqsam import HQSamClient
from perceptserve.server import TritonServer
from perceptserve.server.flags import exposure_warning
from tritonclient.utils import InferenceServerException

from perceptserve.settings import ServerSettings, from_env, grpc_key_metadata

from .conftest import server_settings


@pytest.mark.server
def test_restricted_apis_refuse_callers_without_the_key(small_vit):
    settings = dataclasses.replace(server_settings(), api_key="s3cret-key")
    with TritonServer(small_vit.repository, "cpu", settings) as server:
        with grpcclient.InferenceServerClient(server.grpc_url) as raw:
            for call in (
                lambda **kw: raw.get_inference_statistics("hqsam", **kw),
                lambda **kw: raw.get_model_repository_index(**kw),
                lambda **kw: raw.get_model_config("hqsam", **kw),
            ):
                with pytest.raises(InferenceServerException) as error:
                    call()
                assert "perceptserve-api-key" in error.value.message()
                with pytest.raises(InferenceServerException):
                    call(headers=grpc_key_metadata("wrong"))
                call(headers=grpc_key_metadata("s3cret-key"))
            with pytest.raises(InferenceServerException):
                raw.unload_model("hqsam", headers=grpc_key_metadata("s3cret-key"))  # model control is `none`
        with HQSamClient(server.grpc_url) as client:  # inference stays open
            client.set_image(np.zeros((32, 48, 3), np.uint8))
            masks, _, _ = client.predict(point_coords=[[10.0, 10.0]], point_labels=[1])
            assert masks.shape == (1, 32, 48)


def test_loopback_by_default_and_a_warning_when_exposed_without_a_key():
    assert ServerSettings().host == "127.0.0.1"
    assert exposure_warning(ServerSettings()) is None
    assert "PERCEPTSERVE_API_KEY" in exposure_warning(ServerSettings(host="0.0.0.0"))
    assert exposure_warning(ServerSettings(host="0.0.0.0", api_key="k")) is None
    assert from_env({"PERCEPTSERVE_API_KEY": "k"}).server.api_key == "k"
