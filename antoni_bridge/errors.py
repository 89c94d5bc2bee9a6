"""The one error type users see: a sentence saying what went wrong and a hint saying what to do."""

from __future__ import annotations


class BridgeError(Exception):
    """A failure caused by the user's input or environment, reported without a traceback."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
