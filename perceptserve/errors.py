"""The one base class of errors a user can fix (bad checkpoint, bad prompt, server down, ...).

The CLI prints any of them as one line without a traceback; it lives in a module of its own so
that catching them imports neither torch nor the model code.
"""


class UserError(Exception):
    """A problem with the user's input or environment; its message is one line."""
