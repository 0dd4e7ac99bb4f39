"""The python-backend stub processes of a running tritonserver, read from /proc.

Triton 2.51 does not restart a stub that dies: every later request to that model fails with
INTERNAL "Stub process ... is not healthy" while the server still reports ready. So the
supervisor watches them itself."""

from __future__ import annotations

from pathlib import Path

STUB_BINARY = b"triton_python_backend_stub"


def stub_processes(server_pid: int) -> dict[int, str]:
    """{pid: model instance name} of the stubs whose parent is `server_pid`."""
    stubs = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent != server_pid:
                continue
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        if argv and argv[0].endswith(STUB_BINARY) and len(argv) > 3:
            stubs[int(stat.parent.name)] = argv[-3].decode()  # argv ends with: name, "DEFAULT", ""
    return stubs
