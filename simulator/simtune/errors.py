"""Errors that end a command with a one-line message and a chosen exit code.

Why a dedicated class: the CLI must turn every bad input into one line naming the
file, row or field, with exit code 2, and never a traceback. Library code raises
`InputError`; the CLI catches it, prints `str(err)` and exits with `err.exit_code`.
"""

from __future__ import annotations


class SimtuneError(Exception):
    """Base class for errors simtune reports to the user without a traceback."""

    exit_code: int = 1


class InputError(SimtuneError):
    """Bad user input (trace, config, model file, option): exit code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep it to one line so the CLI's output stays a single line.
        super().__init__(" ".join(str(message).split()))


class InfeasibleError(SimtuneError):
    """No configuration in the search space meets the SLO: exit code 3."""

    exit_code = 3
