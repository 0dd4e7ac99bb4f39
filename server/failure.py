"""Why a tritonserver failed: the error raised, and the one-line reason read from its log."""

from __future__ import annotations

import re

from perceptserve.errors import UserError

# Triton's start-up noise on machines without a GPU: never the reason a start failed.
_NOISE = ("NVML", "DCGM", "CUDA driver", "stream for")


class ServerError(UserError, RuntimeError):
    """The server could not start or stopped unexpectedly; the message is one line."""


def reason_from_log(log: str) -> str:
    """The most telling error line of a failed start, without Triton's log prefix: the first
    line naming a model that failed to load, else the last error."""
    errors = [line for line in log.splitlines() if re.match(r"^E\d{4} ", line) or line.startswith("error:")]
    errors = [e for e in errors if not any(noise in e for noise in _NOISE)]
    if not errors:
        return "tritonserver exited during start-up"
    naming_a_model = [e for e in errors if "failed to load '" in e]
    line = (naming_a_model or errors)[0 if naming_a_model else -1]
    line = re.sub(r"^E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ", "", line).strip().strip('"')
    return line.split("\\n")[0].replace('\\"', '"')  # the log escapes newlines; keep the first line
