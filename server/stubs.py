"""The python-backend stub processes of a running tritonserver, read from /proc.

Triton 2.51 does not restart a stub that dies: every later request to that model fails with
INTERNAL "Stub process ... is not healthy" while the server still reports ready. So the
supervisor watches them itself."""

from __future__ import annotations

from pathlib import Path

from .installation import STUB


def children(parent: int) -> list[int]:
    """The processes whose parent is `parent`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return found


def stub_name(pid: int) -> str | None:
    """The model instance name of python stub `pid`, None for any other process (or one that
    has ended: a stub killed and not yet reaped has no command line any more)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if argv and argv[0].endswith(STUB.encode()) and len(argv) > 3:
        return argv[-3].decode()  # argv ends with: name, "DEFAULT", ""
    return None


def stub_processes(server_pid: int) -> dict[int, str]:
    """{pid: model instance name} of the stubs of the server `server_pid`."""
    names = {pid: stub_name(pid) for pid in children(server_pid)}
    return {pid: name for pid, name in names.items() if name is not None}
