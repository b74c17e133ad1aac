"""Errors that the CLI turns into one line on stderr and exit code 2."""


class UsageError(ValueError):
    """Bad input from the user: the message says what is wrong and what would be right."""


class CheckFailed(RuntimeError):
    """A compiled stage is out of tolerance: the CLI prints the message on one line and exits 1."""
