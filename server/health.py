"""`perceptserve serve`'s health endpoint: a readiness that sees dead python stubs.

Triton 2.51 answers /v2/health/ready with 200 after a python-backend stub has died, while every
request to that model fails. Kubernetes probes this endpoint instead: GET /ready is 200 only while
the supervisor is serving (not starting, restarting or draining), every stub it saw at start is
alive (read from /proc at the probe, not at the supervisor's next poll) and Triton is ready;
GET /live is 200 unless a serving Triton fails its own liveness check. The body says why, in one
line.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .launcher import TritonServer
from .stubs import stub_processes


@dataclass
class Supervision:
    """What the supervisor is doing, shared with the endpoint's threads.

    Args:
        server: the supervised server.
        phase: "starting", "serving" or "restarting".
        stubs: {pid: instance name} of the python stubs the serving server started with.
        stopping: the signals received; any means draining.
    """

    server: TritonServer
    phase: str = "starting"
    stubs: dict[int, str] = field(default_factory=dict)
    stopping: list[int] = field(default_factory=list)

    def dead_stubs(self) -> list[str]:
        alive = stub_processes(self.server.process.pid)
        return [name for pid, name in self.stubs.items() if pid not in alive]

    def readiness(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "draining: finishing the requests in flight before stopping"
        if self.phase != "serving":
            return False, f"{self.phase} tritonserver"
        dead = self.dead_stubs()
        if dead:
            return False, f"python-backend stub {dead[0]} died; restarting tritonserver"
        if not self.server.is_ready():
            return False, "tritonserver is not ready"
        return True, "ready"

    def liveness(self) -> tuple[bool, str]:
        if self.phase == "serving" and not self.stopping and not self.server.is_live():
            return False, "tritonserver is not live"
        return True, "live"


class HealthEndpoint:
    """GET /ready and /live for `supervision`, served from a daemon thread until `close()`."""

    def __init__(self, host: str, port: int, supervision: Supervision) -> None:
        checks = {"/ready": supervision.readiness, "/live": supervision.liveness}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (the name http.server calls)
                check = checks.get(self.path.split("?", 1)[0])
                ok, why = check() if check else (False, f"unknown path {self.path}: /ready or /live")
                body = f"{why}\n".encode()
                self.send_response(200 if ok else (503 if check else 404))
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # probes every few seconds: not worth a log line
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="health", daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
