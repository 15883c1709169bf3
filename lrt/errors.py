"""User-facing errors: the CLI prints these as one clear message, never as a traceback."""
from __future__ import annotations


class LrtError(Exception):
    """A mistake the user can fix (recipe, data, command line). Printed without traceback."""


class ConfigError(LrtError):
    """One or more recipe problems, all reported at once."""

    def __init__(self, problems: list[str], source: str = "recipe") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")


class DataError(LrtError):
    """Bad input data; the message names `file:line` (or the row) and the fix."""


PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped on SIGTERM/SIGUSR1 after a checkpoint; requeue and resume


class Preempted(LrtError):
    """Training stopped on a preemption signal after writing a checkpoint; `lrt train` exits 75."""

    exit_code = PREEMPTED_EXIT
