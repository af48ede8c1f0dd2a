"""The one error type users see: a single line, exit code 2, never a traceback."""

from __future__ import annotations


class EvalkitError(Exception):
    """A problem with the user's input or environment, said in one line.

    `where` names the file (and item and field when known); `hint` says what to do.
    """

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return " ".join(text.split())


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type's name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
