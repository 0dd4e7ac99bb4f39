"""Errors the client raises, carrying the server's status code and message."""

from __future__ import annotations

from perceptserve.errors import UserError


class ClientError(UserError):
    """A request the server refused or could not serve. `status` is the gRPC status name
    (INVALID_ARGUMENT, UNAVAILABLE, ...)."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message
