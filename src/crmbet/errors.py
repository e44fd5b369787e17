"""Exceptions raised by crmbet.

Each one also subclasses the builtin exception that callers already catch,
so ``except ValueError`` keeps working around crmbet calls.
"""

from __future__ import annotations

from dataclasses import dataclass


class CrmbetError(Exception):
    """Base class of every crmbet exception."""


@dataclass(frozen=True)
class FieldError:
    """One invalid value: where it is, what is wrong and how to fix it."""

    row: int | None
    field: str
    value: object
    problem: str
    fix: str

    def __str__(self) -> str:
        where = f"row {self.row}: " if self.row is not None else ""
        return f"{where}{self.field}={self.value!r} is {self.problem}; {self.fix}"


class EventValidationError(CrmbetError, ValueError):
    """Raised when input records are not valid transaction events."""

    def __init__(self, errors: list[FieldError], total: int | None = None) -> None:
        self.errors = errors
        shown = "\n  ".join(str(error) for error in errors[:10])
        count = total if total is not None else len(errors)
        more = f"\n  ... and {count - 10} more" if count > 10 else ""
        super().__init__(f"{count} invalid event field(s):\n  {shown}{more}")


class QueryValidationError(CrmbetError, ValueError):
    """Raised when the rows of a point-in-time query table are not valid."""

    def __init__(
        self, source: str, errors: list[FieldError], total: int | None = None
    ) -> None:
        self.source = source
        self.errors = errors
        shown = "\n  ".join(str(error) for error in errors[:10])
        count = total if total is not None else len(errors)
        more = f"\n  ... and {count - 10} more" if count > 10 else ""
        super().__init__(f"{count} invalid value(s) in {source}:\n  {shown}{more}")


class DegenerateDataError(CrmbetError, ValueError):
    """Raised when the data cannot support the requested model."""


class NotFittedError(CrmbetError, RuntimeError):
    """Raised when a model is used before it was trained or loaded."""


class ModelNotFoundError(CrmbetError, LookupError):
    """Raised when the registry has no model under the requested name or alias."""
