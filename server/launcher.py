"""Running the tritonserver that `nvidia-pytriton` ships (2.51, python backend only).

`TritonServer` starts it on a model repository with the `cpu` or `gpu` configs, waits until it
is ready, and stops it; `serve_forever` is `perceptserve serve`: it prints the endpoints,
forwards SIGINT/SIGTERM and exits with the server's status. A server that fails to start is
reported with a one-line reason and the tail of its log.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from perceptserve.errors import UserError
from perceptserve.settings import API_KEY_HEADER, RESTRICTED_APIS, ServerSettings

LOG_TAIL_LINES = 25


class ServerError(UserError, RuntimeError):
    """The server could not start or stopped unexpectedly; the message is one line."""


@dataclass(frozen=True)
class BundledTriton:
    binary: Path
    backends: Path  # a backend folder holding the python backend and the stub for this Python
    caches: Path
    libraries: Path

    @classmethod
    def locate(cls) -> BundledTriton:
        try:
            import pytriton
        except ImportError:
            raise ServerError("nvidia-pytriton is not installed: run `make install`") from None
        root = Path(pytriton.__file__).parent / "tritonserver"
        libraries = root.parent.parent / "nvidia_pytriton.libs"
        return cls(root / "bin" / "tritonserver", _python_backend_folder(root), root / "caches", libraries)


def _python_backend_folder(root: Path) -> Path:
    """A backend folder with the python backend and the stub built for the running Python.

    The wheel keeps one stub per Python version beside the backend; Triton looks for it inside
    the backend's folder, so we assemble that folder once per environment.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    folder = Path(sys.prefix) / "var" / "perceptserve" / f"triton-backends-py{version}"
    python = folder / "python"
    stub = python / "triton_python_backend_stub"
    if not stub.exists():
        python.mkdir(parents=True, exist_ok=True)
        for item in (root / "backends" / "python").iterdir():
            if item.is_file():
                shutil.copy2(item, python / item.name)
        shutil.copy2(root / "python_backend_stubs" / version / "triton_python_backend_stub", stub)
    return folder


def _reason(log: str) -> str:
    """The most telling error line of a failed start, without Triton's log prefix."""
    errors = [line for line in log.splitlines() if re.match(r"^E\d{4} ", line) or line.startswith("error:")]
    errors = [
        e for e in errors if "NVML" not in e and "DCGM" not in e and "CUDA driver" not in e and "stream for" not in e
    ]
    if not errors:
        return "tritonserver exited during start-up"
    naming_a_model = [e for e in errors if "failed to load '" in e]
    line = (naming_a_model or errors)[0 if naming_a_model else -1]
    line = re.sub(r"^E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ", "", line).strip().strip('"')
    return line.split("\\n")[0].replace('\\"', '"')  # the log escapes newlines; keep the first line


class TritonServer:
    def __init__(
        self,
        repository: Path,
        config: str = "cpu",
        settings: ServerSettings | None = None,
        log_file: Path | None = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.config = config
        self.settings = settings or ServerSettings()
        self.log_file = Path(log_file) if log_file else Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.settings.host in ("0.0.0.0", "::", "") else self.settings.host

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.settings.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.settings.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.settings.metrics_port}/metrics"

    def command(self, triton: BundledTriton) -> list[str]:
        s = self.settings
        restricted = []
        if s.api_key:
            rule = f"{','.join(RESTRICTED_APIS)}:{API_KEY_HEADER}={s.api_key}"
            restricted = [f"--grpc-restricted-protocol={rule}", f"--http-restricted-api={rule}"]
        return [
            str(triton.binary),
            f"--model-repository={self.repository}",
            f"--model-config-name={self.config}",
            "--model-control-mode=none",
            f"--backend-directory={triton.backends}",
            f"--cache-directory={triton.caches}",
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

    def _check_repository(self) -> None:
        if not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} does not exist: run `perceptserve export` first")
        models = [p.parent.parent.name for p in self.repository.glob(f"*/configs/{self.config}.pbtxt")]
        if not models:
            raise ServerError(
                f"no model in {self.repository} has a {self.config!r} config (configs/{self.config}.pbtxt): "
                "run `perceptserve export` first"
            )

    def _check_ports(self) -> None:
        """A port already taken would let another server answer our readiness check."""
        s = self.settings
        for role, port in (("gRPC", s.grpc_port), ("HTTP", s.http_port), ("metrics", s.metrics_port)):
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((s.host, port))
                except OSError:
                    raise ServerError(f"the {role} port {port} on {s.host} is already in use") from None

    def start(self) -> TritonServer:
        self._check_repository()
        self._check_ports()
        triton = BundledTriton.locate()
        env = dict(os.environ)
        # The python stub finds this environment's packages through PATH's first python.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # The stub links libpython3.x by name; this interpreter's own comes first, so that its
        # extension modules (_ssl, which torch, transformers and diffusers import) find the
        # symbols they were built against rather than another build's (a system libpython).
        libraries = [str(triton.libraries), str(Path(sys.base_prefix) / "lib"), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libraries)
        log = open(self.log_file, "wb")
        self.process = subprocess.Popen(
            self.command(triton), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        return self

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float | None = None) -> TritonServer:
        deadline = time.monotonic() + (timeout or self.settings.startup_timeout_s)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                reason = _reason(self.log_file.read_text(errors="replace"))
                raise ServerError(f"tritonserver failed to start: {reason} (log: {self.log_file})")
            if self.is_ready():
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


def exposure_warning(settings: ServerSettings) -> str | None:
    """What to tell an operator who exposes the server beyond loopback without an API key."""
    if settings.host in ("127.0.0.1", "localhost", "::1") or settings.api_key:
        return None
    return (
        f"listening on {settings.host} with no key on the restricted APIs ({', '.join(RESTRICTED_APIS)}): "
        "anyone who can reach it can use them; set PERCEPTSERVE_API_KEY"
    )


def stub_processes(server_pid: int) -> dict[int, str]:
    """The python-backend stubs of a tritonserver: {pid: model instance name}.

    Triton 2.51 does not restart a stub that dies: every later request to that model fails with
    INTERNAL "Stub process ... is not healthy" while the server still reports ready. So we watch
    them ourselves."""
    stubs = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent != server_pid:
                continue
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        if argv and argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 3:
            stubs[int(stat.parent.name)] = argv[-3].decode()  # argv ends with: name, "DEFAULT", ""
    return stubs


def _start(server: TritonServer) -> None:
    server.start()
    try:
        server.wait_ready()
    except ServerError:
        tail = server.log_tail()
        if tail:
            print(f"--- last lines of {server.log_file} ---\n{tail}\n---", file=sys.stderr)
        raise


def ensemble_entries(repository: Path, config: str) -> dict[str, str]:
    """{ensemble: the model of its first step}, from the repository's configs."""
    from perceptserve.model_repository.configs import parse

    entries = {}
    for path in Path(repository).glob(f"*/configs/{config}.pbtxt"):
        parsed = parse(path.read_text())
        if parsed.platform == "ensemble" and parsed.ensemble_scheduling.step:
            entries[parsed.name] = parsed.ensemble_scheduling.step[0].model_name
    return entries


def in_flight(metrics_text: str, entries: dict[str, str]) -> int:
    """Requests Triton holds: queued in any model, plus ensemble requests past their first step
    and not yet answered (first-step completions minus ensemble completions)."""
    values: dict[tuple[str, str], float] = {}
    for line in metrics_text.splitlines():
        match = re.match(r'^(nv_inference_\w+)\{.*model="([^"]+)".*\} ([0-9.e+]+)$', line)
        if match:
            key = (match.group(1), match.group(2))
            values[key] = values.get(key, 0.0) + float(match.group(3))

    def completed(model: str) -> float:
        return values.get(("nv_inference_request_success", model), 0.0) + values.get(
            ("nv_inference_request_failure", model), 0.0
        )

    queued = sum(v for (name, _), v in values.items() if name == "nv_inference_pending_request_count")
    between_steps = sum(max(completed(first) - completed(ensemble), 0.0) for ensemble, first in entries.items())
    return int(queued + between_steps)


def _drain_then_stop(server: TritonServer, signum: int, poll_s: float = 0.1) -> None:
    """Let accepted requests finish, then pass the signal on.

    Triton stops every model's scheduler at once when signalled, so an ensemble request between
    two steps would fail with "Server is stopping". We wait (at most the exit timeout) until
    Triton holds no request on two polls in a row, then signal it.
    """
    entries = ensemble_entries(server.repository, server.config)
    deadline = time.monotonic() + server.settings.exit_timeout_s
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline and server.process.poll() is None:
        try:
            with urllib.request.urlopen(server.metrics_url, timeout=2) as response:
                quiet = quiet + 1 if in_flight(response.read().decode(), entries) == 0 else 0
        except (urllib.error.URLError, OSError):
            break
        time.sleep(poll_s)
    if server.process.poll() is None:
        server.process.send_signal(signum)


def _watch(server: TritonServer, stopping: list[int], poll_s: float = 0.5) -> str | None:
    """Wait until the server exits (None) or one of its python stubs dies (the stub's name);
    a signal in `stopping` drains and stops the server."""
    stubs = stub_processes(server.process.pid)
    drained = False
    while server.process.poll() is None:
        time.sleep(poll_s)
        if stopping:
            if not drained:
                _drain_then_stop(server, stopping[0])
                drained = True
            continue
        alive = stub_processes(server.process.pid)
        dead = [name for pid, name in stubs.items() if pid not in alive]
        if dead and server.process.poll() is None:
            return dead[0]
    return None


def serve_forever(repository: Path, config: str, settings: ServerSettings, log_file: Path | None = None) -> int:
    """`perceptserve serve`: run until a signal, restarting the server if a python stub dies."""
    server = TritonServer(repository, config, settings, log_file)
    stopping: list[int] = []

    def forward(signum, _frame):
        if stopping and server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGKILL if len(stopping) > 1 else signum)  # asked again: stop now
        stopping.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    print(f"starting tritonserver on {repository} ({config} configs); log: {server.log_file}", flush=True)
    warning = exposure_warning(settings)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    for restart in range(settings.stub_restart_limit + 1):
        _start(server)
        print(f"ready: gRPC {server.grpc_url}  HTTP {server.http_url}  metrics {server.metrics_url}", flush=True)
        dead = _watch(server, stopping)
        if dead is None:
            return server.process.wait()
        if restart == settings.stub_restart_limit:
            break
        print(
            f"python-backend stub {dead} died; restarting tritonserver "
            f"({restart + 1} of {settings.stub_restart_limit} restarts)",
            file=sys.stderr,
            flush=True,
        )
        server.stop()
    server.stop()
    raise ServerError(
        f"python-backend stubs kept dying: gave up after {settings.stub_restart_limit} restarts "
        f"(log: {server.log_file})"
    )
