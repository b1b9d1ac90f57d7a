"""One exception type for every mistake a user can make.

The CLI prints its message as a single sentence and exits non-zero; anything else that
escapes is a bug in graphkit, not in the user's input.
"""


class GraphkitError(Exception):
    """A user-facing error: the message is one clear sentence saying what to fix."""
