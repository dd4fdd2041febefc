"""The collection service, free of HEROS: scheduler, runner, cleanup, catch-up scan, state dir.

May import everything below it (errors, config, events, run, decode, output, journal), but
never :mod:`heros` or :mod:`zenoh`: a test imports this package in a fresh interpreter and
checks that neither is loaded.
"""

from herocollector.service.core import CollectionService

__all__ = ["CollectionService"]
