"""The one error type of the jobs layer: what went wrong, in a sentence a person can act on."""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    """What kind of failure; the service maps each to one status code, the log to one word."""

    INVALID = "invalid"  # the request is wrong; the message says what to change
    NOT_FOUND = "not-found"  # an unknown preset
    ALREADY_EXISTS = "already-exists"  # a preset name that is taken
    BROKEN_PRESET = "broken-preset"  # a preset file the operator must fix
    EXHAUSTED = "out-of-memory"  # over a limit, the queue full, or not enough memory
    TIMEOUT = "timeout"  # the upload did not arrive in time
    CANCELLED = "cancelled"
    UNAVAILABLE = "unavailable"  # the server is shutting down
    BUG = "error"  # a defect in Impasto; logged with its traceback


class JobError(Exception):
    def __init__(self, kind: Kind, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


def shutting_down(what: str = "") -> JobError:
    return JobError(Kind.UNAVAILABLE, f"the server is shutting down{what}; try again when it is back")
