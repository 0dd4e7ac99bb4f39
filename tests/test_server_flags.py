"""`perceptserve serve`'s tritonserver: which one it runs and with which flags (no server started)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from perceptserve.server import ServerError
from perceptserve.server.flags import tritonserver_command
from perceptserve.server.installation import HUGE_PAGES_TUNABLE, STUB, TritonInstallation

from perceptserve.cli import _server_settings, build_parser
from perceptserve.settings import ServerSettings, from_env


def ngc_layout(root: Path, stub: bool = True) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tritonserver").write_text("")
    (root / "backends" / "python").mkdir(parents=True)
    if stub:
        (root / "backends" / "python" / STUB).write_text("")
    (root / "lib").mkdir()
    return root


def test_an_installed_tritonserver_uses_its_own_backends_and_libraries(tmp_path):
    root = ngc_layout(tmp_path / "opt-tritonserver")
    for given in (root, root / "bin" / "tritonserver"):
        found = TritonInstallation.locate(given)
        assert found == TritonInstallation(
            root / "bin" / "tritonserver", root / "backends", root / "caches", (root / "lib",)
        )
    assert found.environment({"PATH": "/usr/bin"})["LD_LIBRARY_PATH"].startswith(f"{root / 'lib'}:")
    with pytest.raises(ServerError, match="no tritonserver at"):
        TritonInstallation.locate(tmp_path)
    with pytest.raises(ServerError, match="has no python backend"):
        TritonInstallation.locate(ngc_layout(tmp_path / "no-stub", stub=False))


def test_huge_pages_are_added_to_the_servers_glibc_tunables(tmp_path):
    assert not from_env({}).server.malloc_huge_pages  # opt-in: see ServerSettings
    assert from_env({"PERCEPTSERVE_MALLOC_HUGE_PAGES": "1"}).server.malloc_huge_pages
    found = TritonInstallation.locate(ngc_layout(tmp_path / "opt-tritonserver"))
    assert "GLIBC_TUNABLES" not in found.environment({"PATH": "/usr/bin"})
    assert found.environment({}, huge_pages=True)["GLIBC_TUNABLES"] == HUGE_PAGES_TUNABLE
    merged = found.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, huge_pages=True)
    assert merged["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{HUGE_PAGES_TUNABLE}"


@pytest.mark.skipif(Path("/opt/tritonserver").exists(), reason="an installed tritonserver is found first")
def test_without_an_installed_tritonserver_the_bundled_one_runs():
    assert TritonInstallation.locate() == TritonInstallation.bundled()


def serve_settings(*argv: str) -> ServerSettings:
    return _server_settings(build_parser().parse_args(["serve", "--repository", "/models", *argv]))


def command(settings: ServerSettings) -> list[str]:
    installation = TritonInstallation(Path("tritonserver"), Path("backends"), Path("caches"), ())
    return tritonserver_command(installation, Path("/models"), "gpu", settings)


def test_arguments_after_the_separator_go_to_tritonserver_and_replace_our_python_settings():
    settings = serve_settings("--", "--log-verbose=1", "--backend-config=python,shm-default-byte-size=1048576")
    argv = command(settings)
    assert argv[-2:] == ["--log-verbose=1", "--backend-config=python,shm-default-byte-size=1048576"]
    shm = [a for a in argv if a.startswith("--backend-config=python,shm-")]
    assert shm == [
        f"--backend-config=python,shm-growth-byte-size={settings.python_shm_growth_bytes}",
        "--backend-config=python,shm-default-byte-size=1048576",
    ]


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--http-port=9000", "use --http-port"),
        ("--model-control-mode=explicit", "cannot be changed"),
        ("--grpc-restricted-protocol=trace:k=v", "PERCEPTSERVE_API_KEY"),
        ("--cache-config=local,size=1", "use --response-cache-bytes"),
    ],
)
def test_flags_the_supervisor_relies_on_are_refused_after_the_separator(argument, message):
    with pytest.raises(ServerError, match=message):
        command(serve_settings("--", argument))


def test_restricted_apis_header_and_key_come_from_the_environment():
    server = from_env(
        {
            "PERCEPTSERVE_API_KEY": "k3y",
            "PERCEPTSERVE_API_KEY_HEADER": "x-key",
            "PERCEPTSERVE_RESTRICTED_APIS": "statistics, trace",
        }
    ).server
    argv = command(dataclasses.replace(server, tritonserver_args=()))
    assert "--grpc-restricted-protocol=statistics,trace:x-key=k3y" in argv
    assert "--http-restricted-api=statistics,trace:x-key=k3y" in argv
