"""One tritonserver process: start it on a model repository, wait until ready, stop it.

`TritonServer` runs the `cpu` or `gpu` configs of a repository; a server that fails to start is
reported with a one-line reason from its log. The binary is the one `installation.py` finds (the
NGC image's, else the bundled one) or the one given. Its flags come from `flags.py`, the binary and
environment from `installation.py`; `supervisor.py` keeps it running for `perceptserve serve`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from perceptserve.settings import DeploymentTarget, ServerSettings

from .failure import ServerError, reason_from_log
from .flags import tritonserver_command
from .installation import TritonInstallation
from .ports import check_free
from .warmup import warm_up_ensembles

LOG_TAIL_LINES = 25


def _copy_log(output: BinaryIO, log: BinaryIO) -> None:
    """tritonserver's output into its log file and onto our standard output (a container's log)."""
    with output, log:
        for line in iter(output.readline, b""):
            log.write(line)
            log.flush()
            sys.stdout.buffer.write(line)
            sys.stdout.flush()


class TritonServer:
    def __init__(
        self,
        repository: Path,
        config: DeploymentTarget | str = DeploymentTarget.CPU,
        settings: ServerSettings | None = None,
        log_file: Path | None = None,
        tritonserver: Path | None = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.config = DeploymentTarget(config).value  # the configs' file name: configs/<config>.pbtxt
        self.settings = settings or ServerSettings()
        self.log_file = Path(log_file) if log_file else Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self.tritonserver = tritonserver  # its installation folder; None: found (installation.py)
        self.process: subprocess.Popen | None = None
        self._copier: threading.Thread | None = None

    @property
    def client_host(self) -> str:
        return "127.0.0.1" if self.settings.host in ("0.0.0.0", "::", "") else self.settings.host

    @property
    def grpc_url(self) -> str:
        return f"{self.client_host}:{self.settings.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.client_host}:{self.settings.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.client_host}:{self.settings.metrics_port}/metrics"

    def _check_repository(self) -> None:
        if not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} does not exist: run `perceptserve export` first")
        models = [p.parent.parent.name for p in self.repository.glob(f"*/configs/{self.config}.pbtxt")]
        if not models:
            raise ServerError(
                f"no model in {self.repository} has a {self.config!r} config (configs/{self.config}.pbtxt): "
                "run `perceptserve export` first"
            )

    def start(self) -> TritonServer:
        self._check_repository()
        s = self.settings
        check_free(s.host, {"gRPC": s.grpc_port, "HTTP": s.http_port, "metrics": s.metrics_port})
        installation = TritonInstallation.locate(self.tritonserver)
        log = open(self.log_file, "wb")
        self.process = subprocess.Popen(
            tritonserver_command(installation, self.repository, self.config, s),
            stdout=subprocess.PIPE if s.log_to_stdout else log,
            stderr=subprocess.STDOUT,
            env=installation.environment(huge_pages=s.malloc_huge_pages),
            start_new_session=True,
        )
        if s.log_to_stdout:
            self._copier = threading.Thread(target=_copy_log, args=(self.process.stdout, log), daemon=True)
            self._copier.start()
        else:
            log.close()
        return self

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _healthy(self, check: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/{check}", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def is_ready(self) -> bool:
        return self._healthy("ready")

    def is_live(self) -> bool:
        return self._healthy("live")

    def wait_ready(self, timeout: float | None = None) -> TritonServer:
        deadline = time.monotonic() + (timeout or self.settings.startup_timeout_s)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if self._copier is not None:
                    self._copier.join(5)  # the log's last lines
                reason = reason_from_log(self.log_file.read_text(errors="replace"))
                raise ServerError(f"tritonserver failed to start: {reason} (log: {self.log_file})")
            if self.is_ready():
                warm_up_ensembles(Path(self.repository), self.grpc_url)
                return self
            time.sleep(0.25)
        self.stop()
        raise ServerError(
            f"tritonserver was not ready within {timeout or self.settings.startup_timeout_s:.0f} s "
            f"(log: {self.log_file})"
        )

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(self.settings.exit_timeout_s + 15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> TritonServer:
        try:
            return self.start().wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
