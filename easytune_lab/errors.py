"""User-facing errors.

A :class:`UserError` is raised for bad input (a missing file, an unknown option, a malformed dataset).
The CLI prints its message as one line and exits non-zero without a traceback.
"""


class UserError(Exception):
    """An error caused by the user's input; its message names the file or parameter and the problem."""

    exit_code = 2


class NonFiniteError(UserError):
    """A NaN/Inf loss or reward: the run stops with one line (exit 3) and keeps its last good checkpoint."""

    exit_code = 3
