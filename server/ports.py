"""Ports: a free one for tests and benchmarks, and the check that ours are not taken."""

from __future__ import annotations

import socket

from .failure import ServerError


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it), for servers started by tests and benchmarks."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_free(host: str, ports: dict[str, int]) -> None:
    """Refuse to start on a port already taken: another server would answer our readiness check.

    `ports` maps a role ("gRPC", "HTTP", ...) to its port, for the message."""
    for role, port in ports.items():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                raise ServerError(f"the {role} port {port} on {host} is already in use") from None
