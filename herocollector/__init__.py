"""herocollector: collect disco data-logger runs into Arrow IPC files.

The public API:

* :class:`Collector`, the library (SPEC §3);
* :class:`RunWriter`, which writes logger directories in the data logger's format;
* the errors :class:`CollectorError`, :class:`MetadataError`, :class:`SegmentError` and
  :class:`UnknownStreamError`.
"""

from .collector import Collector
from .errors import CollectorError, MetadataError, SegmentError, UnknownStreamError
from .logdir import RunWriter

__all__ = [
    "Collector",
    "CollectorError",
    "MetadataError",
    "RunWriter",
    "SegmentError",
    "UnknownStreamError",
]
