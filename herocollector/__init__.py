"""herocollector: collect disco data-logger runs into Arrow IPC files.

The public API:

* :class:`Collector`, the library (SPEC §3);
* :class:`CollectorArchiver`, the BOSS-launched HEROS actor (SPEC §4);
* :class:`RunWriter`, which writes logger directories in the data logger's format;
* the errors :class:`CollectorError`, :class:`MetadataError`, :class:`SegmentError` and
  :class:`UnknownStreamError`.
"""

from .collector import Collector
from .errors import CollectorError, MetadataError, SegmentError, UnknownStreamError
from .logdir import RunWriter

__all__ = [
    "Collector",
    "CollectorArchiver",
    "CollectorError",
    "MetadataError",
    "RunWriter",
    "SegmentError",
    "UnknownStreamError",
]


def __getattr__(name: str) -> object:
    # The actor pulls in HEROS and Zenoh; import it only when asked for.
    if name == "CollectorArchiver":
        from .actor import CollectorArchiver

        return CollectorArchiver
    raise AttributeError(f"module 'herocollector' has no attribute {name!r}")
