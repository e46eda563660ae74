"""Errors that the CLI turns into exit codes without a traceback.

`InputError` (exit 2) is bad input or usage: it names the file, the line and what to change.
`WorkFailed` (exit 1) is work that ran but did not succeed (a check failed, a fit diverged).
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input or usage; the message says where (file:line) and what to change."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path if self.line is None else f"{self.path}:{self.line}"
            where += ": "
        return where + self.message


class WorkFailed(Exception):
    """The work ran but failed (exit 1)."""

    exit_code = 1
