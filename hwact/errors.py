"""Errors a user can cause. The CLI prints them as one line (plus a hint) and exits with code 2."""


class HwactError(Exception):
    """Base class: `message` is one line naming the file/node and the cause; `hint` says what to do."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class InputError(HwactError):
    """A file, shape, option or dataset the user gave cannot be used."""


class UnsupportedError(HwactError):
    """An op, model or target combination hwact does not support."""


class PreconditionError(HwactError):
    """A pass's precondition does not hold; the message names the violating nodes."""


class ToolMissingError(HwactError):
    """An external tool (yosys, verilator, a cross compiler, nvcc, ...) is not installed."""


class VerificationError(HwactError):
    """A produced artifact does not match its reference."""
