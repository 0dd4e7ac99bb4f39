"""tritonserver's command line from `ServerSettings`, kept apart from running the process.

Every flag a served repository depends on is set here: model control `none`, strict readiness,
the response cache, the python backend's shared memory, and the restricted APIs behind a key.
"""

from __future__ import annotations

from pathlib import Path

from perceptserve.settings import API_KEY_HEADER, RESTRICTED_APIS, ServerSettings

from .installation import TritonInstallation

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def tritonserver_command(
    installation: TritonInstallation, repository: Path, config: str, settings: ServerSettings
) -> list[str]:
    s = settings
    restricted = []
    if s.api_key:
        rule = f"{','.join(RESTRICTED_APIS)}:{API_KEY_HEADER}={s.api_key}"
        restricted = [f"--grpc-restricted-protocol={rule}", f"--http-restricted-api={rule}"]
    return [
        str(installation.binary),
        f"--model-repository={repository}",
        f"--model-config-name={config}",
        "--model-control-mode=none",
        f"--backend-directory={installation.backends}",
        f"--cache-directory={installation.caches}",
        f"--cache-config=local,size={s.response_cache_bytes}",
        f"--backend-config=python,shm-default-byte-size={s.python_shm_default_bytes}",
        f"--backend-config=python,shm-growth-byte-size={s.python_shm_growth_bytes}",
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
    ]


def exposure_warning(settings: ServerSettings) -> str | None:
    """What to tell an operator who exposes the server beyond loopback without an API key."""
    if settings.host in LOOPBACK or settings.api_key:
        return None
    return (
        f"listening on {settings.host} with no key on the restricted APIs ({', '.join(RESTRICTED_APIS)}): "
        "anyone who can reach it can use them; set PERCEPTSERVE_API_KEY"
    )
