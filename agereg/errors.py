"""The one exception hierarchy of agereg.

Every error a user can cause is an :class:`AgeregError`. The CLI turns it into a
one-line message and exit code 2 in exactly one place (``agereg.cli.main``).
"""

from __future__ import annotations


class AgeregError(Exception):
    """An error the user can fix; its message says what, where and how."""

    exit_code = 2


class ConfigError(AgeregError):
    """The YAML config is missing, malformed or holds a bad value."""


class DataError(AgeregError):
    """A dataset file is missing, unreadable or inconsistent."""


class SplitError(AgeregError):
    """A split file is malformed or belongs to other data. ``problem`` is the message
    without the advice after it (how to remake a data folder's split.json), for a caller
    to whom that advice does not apply (a run folder's own split.json)."""

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.problem = message if problem is None else problem


class RunError(AgeregError):
    """A run folder is missing, locked, not an agereg run, or cannot be written."""


class TrialsFailed(AgeregError):
    """Trials raised while training: the search saved them as ``failed`` and
    ``--resume`` trains them again. Exit code 3, apart from input errors (2)."""

    exit_code = 3
