"""The errors a user can fix: the CLI prints them as one line and exits 2.

Anything else that escapes a command is a failure of ours and keeps its traceback (exit 1), so
a bug never looks like bad input. No imports beyond the standard library: the CLI's parser and
every layer of ``trainers`` use these.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input or a bad option. ``str(err)`` says what and where, in one line."""


class UsageError(InputError):
    """A bad option, or an option that does not fit the others (raised by ``validate()``)."""


class DataError(InputError):
    """Malformed input data. ``str(err)`` names the file and the column (or field)."""

    def __init__(self, source, message: str, column: str | None = None, kind: str = "column"):
        self.source, self.column, self.message, self.kind = str(source), column, message, kind
        where = f"{source}" + (f", {kind} '{column}'" if column else "")
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # pickled whole, so it survives a trip through a Ray task
        return (self.__class__, (self.source, self.message, self.column, self.kind))


class DataWarning(UserWarning):
    """Data that runs but probably not as the user meant (e.g. no negatives at all); the CLI
    prints it as one line."""
