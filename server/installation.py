"""Where a tritonserver and its backends are, and the environment its python stubs need.

Two kinds: an installed tritonserver with its own backends (the NGC image's /opt/tritonserver,
what production runs), and, for development, the tritonserver 2.51 that `nvidia-pytriton` ships
(python backend only). That wheel keeps one python stub per Python version beside the backend,
and Triton looks for the stub inside the backend's folder, so we assemble that folder once per
environment.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .failure import ServerError

NGC_ROOT = Path("/opt/tritonserver")
STUB = "triton_python_backend_stub"


@dataclass(frozen=True)
class TritonInstallation:
    """A tritonserver binary with the folders its flags name.

    Args:
        binary: the tritonserver executable.
        backends: the backend folder (`--backend-directory`), with the python backend and its stub.
        caches: the cache folder (`--cache-directory`), with the local response cache.
        libraries: folders its shared libraries are loaded from (put first on LD_LIBRARY_PATH).
    """

    binary: Path
    backends: Path
    caches: Path
    libraries: tuple[Path, ...]

    @classmethod
    def locate(cls, root: Path | None = None) -> TritonInstallation:
        """`root` when given (`--tritonserver`), else the NGC image's /opt/tritonserver where it
        exists, else the bundled one."""
        if root is None and (NGC_ROOT / "bin" / "tritonserver").is_file():
            root = NGC_ROOT
        return cls.bundled() if root is None else cls.external(root)

    @classmethod
    def external(cls, root: Path) -> TritonInstallation:
        """A tritonserver installed as NGC's image installs it: `root/bin/tritonserver`,
        `root/backends/python/` with the stub, `root/caches/`, `root/lib/`. `root` may also be
        the binary itself."""
        root = Path(root)
        if root.is_file():
            root = root.parent.parent
        binary, backends = root / "bin" / "tritonserver", root / "backends"
        if not binary.is_file():
            raise ServerError(f"no tritonserver at {binary}: give --tritonserver its installation folder")
        if not (backends / "python" / STUB).is_file():
            raise ServerError(f"{root} has no python backend ({backends / 'python' / STUB} is missing)")
        libraries = tuple(folder for folder in (root / "lib",) if folder.is_dir())
        return cls(binary, backends, root / "caches", libraries)

    @classmethod
    def bundled(cls) -> TritonInstallation:
        """The tritonserver of the `nvidia-pytriton` wheel in this environment."""
        try:
            import pytriton
        except ImportError:
            raise ServerError("nvidia-pytriton is not installed: run `make install`") from None
        root = Path(pytriton.__file__).parent / "tritonserver"
        libraries = root.parent.parent / "nvidia_pytriton.libs"
        return cls(root / "bin" / "tritonserver", _python_backend_folder(root), root / "caches", (libraries,))

    def environment(self, base: dict[str, str] | None = None, huge_pages: bool = False) -> dict[str, str]:
        """The server's environment: `base` (default: ours) with this Python found first, and with
        `huge_pages` glibc's malloc tuned to map with transparent huge pages (`ServerSettings`).

        The python stub finds this environment's packages through PATH's first python. It links
        libpython3.x by name: this interpreter's own comes first, so that its extension modules
        (_ssl, which torch, transformers and diffusers import) find the symbols they were built
        against rather than another build's (a system libpython). A folder without a libpython
        (the NGC image's /usr/lib) is left out: it would only shadow the image's own libraries."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        interpreter = Path(sys.base_prefix) / "lib"
        own_python = [str(interpreter)] if any(interpreter.glob("libpython3*.so*")) else []
        libraries = [*map(str, self.libraries), *own_python, env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libraries)
        if huge_pages:
            env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), HUGE_PAGES_TUNABLE]))
        return env


# glibc >= 2.35; older glibc ignores it. Only where the kernel's transparent_hugepage mode is
# `madvise` or `always` does it change anything.
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def _python_backend_folder(root: Path) -> Path:
    """A backend folder with the wheel's python backend and the stub built for the running Python."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    folder = Path(sys.prefix) / "var" / "perceptserve" / f"triton-backends-py{version}"
    python = folder / "python"
    stub = python / STUB
    if not stub.exists():
        python.mkdir(parents=True, exist_ok=True)
        for item in (root / "backends" / "python").iterdir():
            if item.is_file():
                shutil.copy2(item, python / item.name)
        shutil.copy2(root / "python_backend_stubs" / version / STUB, stub)
    return folder
