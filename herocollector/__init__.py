"""herocollector: collect disco data-logger runs into Arrow and Parquet files.

The public API:

* :class:`Collector`, the library: logger directories in, Arrow record batches out;
* :class:`CollectionService` and its :class:`ServiceConfig`, the collection service (journal,
  workers, output files, scanning, cleanup), free of HEROS;
* :class:`CollectorArchiver`, the service as a BOSS-launched HEROS actor, and :func:`connect`,
  which returns a proxy of a running one (discovery retried until a timeout);
* :class:`RunWriter`, which writes logger directories in the data logger's format;
* the errors, all under :class:`CollectorError` (see :mod:`herocollector.errors`).
"""

from herocollector.collector import Collector
from herocollector.errors import (
    CollectorError,
    ConfigError,
    DoneTimeout,
    MetadataError,
    OutputError,
    SegmentError,
    UnknownStreamError,
)
from herocollector.run.logdir import RunWriter

__all__ = [
    "CollectionService",
    "Collector",
    "CollectorArchiver",
    "CollectorError",
    "ConfigError",
    "DoneTimeout",
    "MetadataError",
    "OutputError",
    "RunWriter",
    "SegmentError",
    "ServiceConfig",
    "UnknownStreamError",
    "connect",
]


def __getattr__(name: str) -> object:
    # The service and the actor pull in HEROS and Zenoh; import them only when asked for.
    if name == "CollectorArchiver":
        from herocollector.actor.archiver import CollectorArchiver

        return CollectorArchiver
    if name == "connect":
        from herocollector.actor.launcher import connect

        return connect
    if name == "CollectionService":
        from herocollector.service.core import CollectionService

        return CollectionService
    if name == "ServiceConfig":
        from herocollector.config import ServiceConfig

        return ServiceConfig
    raise AttributeError(f"module 'herocollector' has no attribute {name!r}")
