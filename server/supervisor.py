"""`perceptserve serve`: keep a tritonserver serving until a signal, then drain it.

Two behaviours of Triton 2.51 need a supervisor: a python-backend stub that dies is never
restarted (the server still reports ready while every request to that model fails), and on
SIGTERM Triton stops every scheduler at once, failing ensemble requests between steps. So we
watch the stubs and restart the server cleanly, and on a signal we wait until Triton holds no
request before passing the signal on.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from perceptserve.settings import ServerSettings

from .failure import ServerError
from .flags import exposure_warning
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

    We wait (at most the exit timeout) until Triton holds no request on two polls in a row, then
    signal it."""
    entries = ensemble_entries(server.repository, server.config)
    deadline = time.monotonic() + server.settings.exit_timeout_s
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline and server.process.poll() is None:
        held = read_in_flight(server.metrics_url, entries)
        if held is None:
            break
        quiet = quiet + 1 if held == 0 else 0
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
    """Run until a signal, restarting the server if a python stub dies; the server's exit status."""
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
