"""Errors that the CLI turns into one line on stderr: exit code 2 for usage, 1 for a failed check or run."""


class UsageError(ValueError):
    """Bad input from the user: the message says what is wrong and what would be right."""


class CheckFailed(RuntimeError):
    """A compiled stage is out of tolerance: the CLI prints the message on one line and exits 1."""


class RunFailed(RuntimeError):
    """A run failed outside lcc's process (a rank of a multi-process run died): one line, exit 1."""
