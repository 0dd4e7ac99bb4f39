"""The one base class of errors a user can fix (bad checkpoint, bad prompt, server down, ...).

The CLI prints any of them as one line without a traceback; it lives in a module of its own so
that catching them imports neither torch nor the model code.
"""


class UserError(Exception):
    """A problem with the user's input or environment; its message is one line."""


class InvalidRequest(UserError, ValueError):
    """A request the models cannot serve as given (bad image bytes, prompts, classes, ranges);
    served models answer it with INVALID_ARGUMENT and go on with the others."""
