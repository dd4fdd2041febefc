"""The collection service, free of HEROS: scheduler, runner, cleanup, catch-up scan, state dir.

May import everything below it (errors, config, events, run, decode, output, journal), but
never :mod:`heros` or :mod:`zenoh`: a test imports this package in a fresh interpreter and
checks that neither is loaded.

:class:`CollectionService` is imported when it is first asked for: a command that needs one
part of the service (the catch-up scan's :func:`~herocollector.service.scan.finished_runs`)
does not load the rest of it (the workers, the journal, the metrics server, following, compaction).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from herocollector.service.core import CollectionService

__all__ = ["CollectionService"]


def __getattr__(name: str) -> object:
    if name == "CollectionService":
        from herocollector.service.core import CollectionService

        return CollectionService
    raise AttributeError(f"module 'herocollector.service' has no attribute {name!r}")
