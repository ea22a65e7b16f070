"""User-facing errors and the exit codes of the ``easytune`` command.

A :class:`UserError` is raised for bad input (a missing file, an unknown option, a malformed dataset).
The CLI prints its message as one line and exits non-zero without a traceback:

====  ==========================================================================================================
2     bad input: an option, a file or a directory named on the command line (also argparse's own errors)
3     a non-finite value: a NaN/Inf loss, reward or weight stops a run; a writer refused a NaN/Inf result
4     an output could not be written (disk full, read-only file system, no permission, run directory locked)
====  ==========================================================================================================
"""


class UserError(Exception):
    """An error caused by the user's input; its message names the file or parameter and the problem."""

    exit_code = 2


class NonFiniteError(UserError):
    """A NaN/Inf loss or reward: the run stops with one line (exit 3) and keeps its last good checkpoint.
    Also raised by every writer asked to store a NaN/Inf value that the caller did not allow."""

    exit_code = 3


class OutputError(UserError):
    """An output path cannot be written (the OS refused it, or another process holds the run directory)."""

    exit_code = 4
