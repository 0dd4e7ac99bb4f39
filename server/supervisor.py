"""`perceptserve serve`: keep a tritonserver serving until a signal, then drain it.

Two behaviours of Triton 2.51 need a supervisor: a python-backend stub that dies is never
restarted (the server still reports ready while every request to that model fails), and on
SIGTERM Triton stops every scheduler at once, failing ensemble requests between steps. So we
watch the stubs and restart the server cleanly, and on a signal we wait until Triton holds no
request before passing the signal on. `health.py` serves the same view to Kubernetes' probes.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from perceptserve.settings import ServerSettings

from .failure import ServerError
from .flags import exposure_warning
from .health import HealthEndpoint, Supervision
from .launcher import TritonServer
from .metrics import ensemble_entries, read_in_flight
from .stubs import stub_processes


def _start(server: TritonServer) -> None:
    server.start()
    try:
        server.wait_ready()
    except ServerError:
        tail = server.log_tail()
        if tail:
            print(f"--- last lines of {server.log_file} ---\n{tail}\n---", file=sys.stderr)
        raise


def _drain_then_stop(server: TritonServer, signum: int, poll_s: float = 0.1) -> None:
    """Let accepted requests finish, then pass the signal on.

    We wait (at most the drain timeout) until Triton holds no request on two polls in a row, then
    signal it, and say which of the two ended the wait."""
    entries = ensemble_entries(server.repository, server.config)
    started = time.monotonic()
    deadline = started + server.settings.drain_timeout_s
    quiet, held = 0, None
    while quiet < 2 and time.monotonic() < deadline and server.process.poll() is None:
        held = read_in_flight(server.metrics_url, entries)
        quiet = quiet + 1 if held == 0 else 0  # unreadable (a busy server): not known to be quiet
        time.sleep(poll_s)
    outcome = "drained" if quiet >= 2 else f"drain stopped with {held} requests held"
    print(f"{outcome} after {time.monotonic() - started:.1f} s; stopping tritonserver", flush=True)
    if server.process.poll() is None:
        server.process.send_signal(signum)


def _watch(supervision: Supervision, poll_s: float = 0.5) -> str | None:
    """Wait until the server exits (None) or one of its python stubs dies (the stub's name);
    a signal drains and stops the server."""
    server = supervision.server
    drained = False
    while server.process.poll() is None:
        time.sleep(poll_s)
        if supervision.stopping:
            if not drained:
                _drain_then_stop(server, supervision.stopping[0])
                drained = True
            continue
        dead = supervision.dead_stubs()
        if dead and server.process.poll() is None:
            return dead[0]
    return None


def _health_endpoint(settings: ServerSettings, supervision: Supervision) -> HealthEndpoint | None:
    if settings.health_port is None:
        return None
    try:
        return HealthEndpoint(settings.host, settings.health_port, supervision)
    except OSError as error:
        raise ServerError(f"the health port {settings.health_port} on {settings.host}: {error.strerror}") from None


def serve_forever(
    repository: Path,
    config: str,
    settings: ServerSettings,
    log_file: Path | None = None,
    tritonserver: Path | None = None,
) -> int:
    """Run until a signal, restarting the server if a python stub dies; the server's exit status."""
    server = TritonServer(repository, config, settings, log_file, tritonserver)
    supervision = Supervision(server)

    def forward(signum, _frame):
        if supervision.stopping and server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGKILL if len(supervision.stopping) > 1 else signum)  # asked again
        supervision.stopping.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    print(f"starting tritonserver on {repository} ({config} configs); log: {server.log_file}", flush=True)
    warning = exposure_warning(settings)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    health = _health_endpoint(settings, supervision)
    try:
        return _supervise(supervision)
    finally:
        if health is not None:
            health.close()


def _supervise(supervision: Supervision) -> int:
    server, limit = supervision.server, supervision.server.settings.stub_restart_limit
    port = server.settings.health_port
    health = f"  health http://{server.client_host}:{port}/ready" if port is not None else ""
    for restart in range(limit + 1):
        _start(server)
        supervision.stubs = stub_processes(server.process.pid)
        supervision.phase = "serving"
        print(
            f"ready: gRPC {server.grpc_url}  HTTP {server.http_url}  metrics {server.metrics_url}{health}", flush=True
        )
        dead = _watch(supervision)
        if dead is None:
            return server.process.wait()
        supervision.phase = "restarting"
        if restart == limit:
            break
        print(
            f"python-backend stub {dead} died; restarting tritonserver ({restart + 1} of {limit} restarts)",
            file=sys.stderr,
            flush=True,
        )
        server.stop()
    server.stop()
    raise ServerError(f"python-backend stubs kept dying: gave up after {limit} restarts (log: {server.log_file})")
