"""The Helm chart's server container, rendered by `helm template` and run on this machine.

Shared by tests/test_helm_chart.py and tests/test_reliability.py: the command line and the
environment the kubelet would give the container, with the repository path, the ports, the bind
address (loopback here, 0.0.0.0 in a pod) and the config name replaced, run as a process whose
output is read line by line. With no /opt/tritonserver here, `perceptserve serve` finds the
bundled tritonserver: it stands in for the NGC image's.
"""

from __future__ import annotations

import base64
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from perceptserve.server import free_port
from perceptserve.server.stubs import children

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "perceptserve"
KUBE_VERSION = "1.30.0"
RELEASE = "ps"
NAMESPACE = "vision"
PORT_ROLES = ("http", "grpc", "metrics", "health")


def helm_binary() -> str:
    """The Helm binary: $HELM (a path, relative to the repository, or a name on PATH), else
    .tools/helm/helm. Missing is a failure, never a skip."""
    configured = os.environ.get("HELM") or ".tools/helm/helm"
    path = Path(configured) if Path(configured).is_absolute() else REPO / configured
    found = str(path) if path.is_file() else (shutil.which(configured) if os.sep not in configured else None)
    if not found or not os.access(found, os.X_OK):
        pytest.fail(
            f"Helm binary not found ({configured}): run `make helm-tools` first "
            "(it installs Helm 3 into .tools/helm/helm)",
            pytrace=False,
        )
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm_binary(), *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def template_args(*extra: str) -> list[str]:
    return ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *extra]


def render(*extra: str) -> list[dict]:
    result = run_helm(*template_args(*extra))
    assert result.returncode == 0, f"helm template {' '.join(extra)} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def server_pod(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]


def triton_container(docs: list[dict]) -> dict:
    containers = server_pod(docs)["spec"]["containers"]
    assert [c["name"] for c in containers] == ["tritonserver"]
    return containers[0]


def container_environment(container: dict, docs: list[dict]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (values and Secret keys)."""
    secrets = {s["metadata"]["name"]: s for s in of_kind(docs, "Secret")}
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = base64.b64decode(secrets[ref["name"]]["data"][ref["key"]]).decode()
    return env


def expand(argument: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion in command and args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), argument)


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


class ChartServer:
    """The chart's server container (`helm template`'s command, args and env) as a local process.

    Replaced: --repository, --config, --host (loopback) and the --*-port values; everything else,
    the tritonserver arguments after `--` included, is the chart's."""

    def __init__(self, docs: list[dict], repository: Path, config: str) -> None:
        container = triton_container(docs)
        self.env = container_environment(container, docs)
        self.ports = {role: free_port() for role in PORT_ROLES}
        replaced = {
            "--repository": str(repository),
            "--config": config,
            "--host": "127.0.0.1",
            **{f"--{role}-port": str(port) for role, port in self.ports.items()},
        }
        command = []
        for argument in [*container["command"], *container["args"]]:
            flag = argument.split("=", 1)[0]
            command.append(f"{flag}={replaced[flag]}" if flag in replaced else expand(argument, self.env))
        assert not [a for a in command if "$(" in a], command
        assert set(replaced) <= {a.split("=", 1)[0] for a in command}, "the chart no longer passes these flags"
        # `perceptserve` is this environment's entry point, as it is the image's.
        command[0] = shutil.which(command[0], path=str(Path(sys.executable).parent))
        self.command = command
        self.process = subprocess.Popen(
            command,
            env=dict(os.environ, **self.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self._lines.put(line)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    def url(self, role: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[role]}{path}"

    def ready(self) -> tuple[int, str]:
        """The readiness probe: (status, reason)."""
        return http_get(self.url("health", "/ready"))

    def wait_for(self, text: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=1)
            except queue.Empty:
                assert self.process.poll() is None, "perceptserve serve exited:\n" + "".join(self.output[-40:])
                continue
            if text in line:
                return line
        raise AssertionError(f"no {text!r} within {timeout} s:\n" + "".join(self.output[-40:]))

    def triton_pid(self) -> int:
        (pid,) = children(self.process.pid)
        return pid

    def stop(self) -> int:
        """SIGTERM, as the kubelet sends it after preStop; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()


def process_gone(pid: int) -> bool:
    """Dead: no longer in /proc, or a zombie its parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
