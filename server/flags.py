"""tritonserver's command line from `ServerSettings`, kept apart from running the process.

Every flag a served repository depends on is set here: model control `none`, strict readiness,
the response cache, the python backend's shared memory, and the restricted APIs behind a key.
`tritonserver_args` (`perceptserve serve ... -- ARGS`) adds others; it may replace our python
backend settings, never the flags supervision relies on.
"""

from __future__ import annotations

from pathlib import Path

from perceptserve.settings import ServerSettings

from .failure import ServerError
from .installation import TritonInstallation

LOOPBACK = ("127.0.0.1", "localhost", "::1")

# Flags `perceptserve serve` sets itself and reads back (ports for readiness and the drain's
# metrics, the repository for its ensembles) or that keep the server safe: given after `--`
# they would silently break supervision, so they are refused with the option to use instead.
OWNED_FLAGS = {
    "--model-repository": "--repository",
    "--model-config-name": "--config",
    "--model-control-mode": None,
    "--http-port": "--http-port",
    "--grpc-port": "--grpc-port",
    "--metrics-port": "--metrics-port",
    "--http-address": "--host",
    "--grpc-address": "--host",
    "--metrics-address": "--host",
    "--allow-metrics": None,
    "--allow-http": None,
    "--allow-grpc": None,
    "--backend-directory": "--tritonserver",
    "--cache-directory": "--tritonserver",
    "--cache-config": "--response-cache-bytes",
    "--exit-timeout-secs": "--exit-timeout",
    "--strict-readiness": None,
    "--exit-on-error": None,
    "--grpc-restricted-protocol": "PERCEPTSERVE_API_KEY, PERCEPTSERVE_API_KEY_HEADER, PERCEPTSERVE_RESTRICTED_APIS",
    "--http-restricted-api": "PERCEPTSERVE_API_KEY, PERCEPTSERVE_API_KEY_HEADER, PERCEPTSERVE_RESTRICTED_APIS",
}


def _flag(argument: str) -> str:
    return argument.split("=", 1)[0]


def _backend_setting(argument: str) -> str:
    """`--backend-config=python,shm-default-byte-size=X` -> "python,shm-default-byte-size"."""
    return argument.split("=", 1)[1].rsplit("=", 1)[0]


def check_extra_arguments(arguments: tuple[str, ...]) -> None:
    for argument in arguments:
        if _flag(argument) in OWNED_FLAGS:
            instead = OWNED_FLAGS[_flag(argument)]
            raise ServerError(
                f"{_flag(argument)} is set by perceptserve serve"
                + (f": use {instead}" if instead else " and cannot be changed")
            )


def tritonserver_command(
    installation: TritonInstallation, repository: Path, config: str, settings: ServerSettings
) -> list[str]:
    s = settings
    check_extra_arguments(s.tritonserver_args)
    restricted = []
    if s.api_key:
        rule = f"{','.join(s.restricted_apis)}:{s.api_key_header}={s.api_key}"
        restricted = [f"--grpc-restricted-protocol={rule}", f"--http-restricted-api={rule}"]
    replaced = {_backend_setting(a) for a in s.tritonserver_args if a.startswith("--backend-config=")}
    python_shm = [
        f"--backend-config={setting}={value}"
        for setting, value in (
            ("python,shm-default-byte-size", s.python_shm_default_bytes),
            ("python,shm-growth-byte-size", s.python_shm_growth_bytes),
        )
        if setting not in replaced
    ]
    return [
        str(installation.binary),
        f"--model-repository={repository}",
        f"--model-config-name={config}",
        "--model-control-mode=none",
        f"--backend-directory={installation.backends}",
        f"--cache-directory={installation.caches}",
        f"--cache-config=local,size={s.response_cache_bytes}",
        *python_shm,
        f"--http-address={s.host}",
        f"--http-port={s.http_port}",
        f"--grpc-address={s.host}",
        f"--grpc-port={s.grpc_port}",
        f"--metrics-address={s.host}",
        f"--metrics-port={s.metrics_port}",
        f"--exit-timeout-secs={s.exit_timeout_s}",
        "--strict-readiness=true",
        "--exit-on-error=true",
        *restricted,
        *s.tritonserver_args,
    ]


def exposure_warning(settings: ServerSettings) -> str | None:
    """What to tell an operator who exposes the server beyond loopback without an API key."""
    if settings.host in LOOPBACK or settings.api_key:
        return None
    return (
        f"listening on {settings.host} with no key on the restricted APIs ({', '.join(settings.restricted_apis)}): "
        "anyone who can reach it can use them; set PERCEPTSERVE_API_KEY"
    )
