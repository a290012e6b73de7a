"""The errors metactl raises on purpose.

Only the CLI entry point prints them: one line, ``Error: <message> <hint>``, and a non-zero
exit. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class MetactlError(Exception):
    """A problem the user can fix; ``hint`` says how."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = _sentence(self.message)
        if self.hint:
            text += " " + _sentence(self.hint[:1].upper() + self.hint[1:])
        return " ".join(text.split())


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "?", "!")) else text + "."


class UsageError(MetactlError):
    """Options that do not fit together or a name that does not exist."""

    exit_code = 2


class DataError(MetactlError):
    """A dataset that is missing, corrupt or does not match what was asked."""


class DownloadError(DataError):
    """A download that failed or produced a file that does not verify."""


class PluginError(MetactlError):
    """A plugin that cannot be loaded or registers something invalid."""


class Interrupted(MetactlError):
    """Work stopped by the user (a second Ctrl-C); exits like a shell's interrupted command."""

    exit_code = 130


def check_positive(**options: int | None) -> None:
    """Refuse a command-line count that is zero or negative, naming its option
    (``check_positive(way=0)`` -> "--way must be positive, got 0"); None means not given."""
    for name, value in options.items():
        if value is not None and value < 1:
            option = "--" + name.replace("_", "-")
            raise UsageError(f"{option} must be positive, got {value}",
                             f"pass {option} 1 or more, or leave it out for the default")
