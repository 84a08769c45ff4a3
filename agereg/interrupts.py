"""Deferring Ctrl-C and SIGTERM while a run folder is being made consistent.

The CLI's signal handlers raise through :func:`deliver`. Inside :func:`shielded` (writing
the summaries after an interrupt, moving an evaluation into place) the exception is held
and raised when the block ends, so a second Ctrl-C in quick succession cannot leave
run.json "running" or results.csv unwritten. Plain Python: no click, no signals here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0
_pending: list[BaseException] = []


def deliver(exc: BaseException) -> None:
    """Raise ``exc`` now, or, inside :func:`shielded`, when the block ends."""
    if _depth:
        _pending.append(exc)
        return
    raise exc


@contextmanager
def shielded() -> Iterator[None]:
    """Run the block to its end even if Ctrl-C or SIGTERM arrives; raise it afterwards."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending:
            exc = _pending[0]
            _pending.clear()
            raise exc
