"""The service's Prometheus endpoint: an HTTP ``/metrics`` page that Prometheus scrapes directly.

With ``metrics_port`` set, the service serves its metrics with ``prometheus-client`` on
``metrics_address:metrics_port``, from a registry of its own (never the process-wide one, so two
services in one process, or a test, never share counters) and on a thread that :meth:`close`
stops. Nothing has to push: a Prometheus server scrapes it like any exporter::

    scrape_configs:
      - job_name: herocollector
        static_configs:
          - targets: ["collector-host:9464"]

Metrics (all prefixed ``herocollector_``):

* ``jobs{state}``: jobs per state in the journal (a gauge, read from the journal at each scrape);
* ``running_runs``: runs this service's workers are collecting now (a gauge);
* ``collect_seconds``: how long each collection took (a histogram);
* ``announce_to_commit_seconds``: from a run's announcement to the commit of its outputs (a histogram);
* ``collected_rows_total``, ``collected_bytes_total``: rows written, segment bytes decoded (counters);
* ``runs_collected_total``: runs collected (a counter);
* ``errors_total{type}``: failed attempts by error type (a counter), e.g. ``SegmentError``,
  ``DoneTimeout``, ``MalformedEvent``.

It knows nothing of HEROS; the service feeds it from its ``_collected`` and ``_failed`` hooks.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from herocollector.errors import ConfigError

log = logging.getLogger(__name__)

PREFIX = "herocollector"
COLLECT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Seconds per collection: from a small run in milliseconds to a large one in half an hour."""
LAG_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 86400.0)
"""Seconds from announcement to commit: includes the wait for ``_DONE`` and retries, so up to a day."""
MALFORMED = "MalformedEvent"
"""The error type of an event the service could not read (it has no run path)."""
UNKNOWN = "Error"
"""The error type of a failure whose message does not start with an exception name."""
_ERROR_TYPE = re.compile(r"([A-Za-z_][A-Za-z0-9_]{0,99}): ")


def error_type(error: str, path: str | None) -> str:
    """The ``type`` label of a failed attempt, from its message (``"SegmentError: …"``).

    Args:
        error: The failure as reported (:class:`herocollector.events.RunFailed`'s ``error``).
        path: The run's path; None for a malformed event.

    Returns:
        An exception class name, :data:`MALFORMED` or :data:`UNKNOWN`: a small, fixed set, so
        the label cannot grow without bound whatever the messages say.
    """
    if path is None:
        return MALFORMED
    match = _ERROR_TYPE.match(error)
    return match.group(1) if match else UNKNOWN


class _JournalGauges(Collector):
    """Gauges read at scrape time: jobs per state and runs being collected."""

    def __init__(self, counts: Callable[[], Mapping[str, int]], running: Callable[[], int]) -> None:
        self._counts = counts
        self._running = running

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs in the journal per state.", labels=["state"])
        try:
            for state, n in self._counts().items():
                jobs.add_metric([state], float(n))
        except Exception as exc:  # noqa: BLE001 - a failing journal must not break the scrape of the rest
            log.warning(f"metrics: the journal could not be counted: {exc}")
        yield jobs
        yield GaugeMetricFamily(
            f"{PREFIX}_running_runs", "Runs this service's workers are collecting now.", value=float(self._running())
        )


class MetricsExporter:
    """Serves the service's metrics at ``http://address:port/metrics`` until :meth:`close`.

    Args:
        address: The address to listen on (``127.0.0.1`` by default in the configuration).
        port: The TCP port; ``0`` lets the system pick a free one (see :attr:`port`).
        counts: Jobs per state (state name to count), read at each scrape.
        running: How many runs are being collected now, read at each scrape.

    Raises:
        ConfigError: The address cannot be listened on (port taken, address not local ...).
    """

    def __init__(
        self,
        address: str,
        port: int,
        counts: Callable[[], Mapping[str, int]],
        running: Callable[[], int],
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_JournalGauges(counts, running))
        self.collect_seconds = Histogram(
            f"{PREFIX}_collect_seconds", "Seconds per collection.", buckets=COLLECT_BUCKETS, registry=self.registry
        )
        self.lag_seconds = Histogram(
            f"{PREFIX}_announce_to_commit_seconds",
            "Seconds from a run's announcement to the commit of its outputs.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.rows = Counter(f"{PREFIX}_collected_rows", "Rows written.", registry=self.registry)
        self.bytes = Counter(f"{PREFIX}_collected_bytes", "Segment bytes decoded.", registry=self.registry)
        self.runs = Counter(f"{PREFIX}_runs_collected", "Runs collected.", registry=self.registry)
        self.errors = Counter(
            f"{PREFIX}_errors", "Failed attempts, by error type.", labelnames=["type"], registry=self.registry
        )
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._server, self._thread = start_http_server(port, address, registry=self.registry)
        except (OSError, OverflowError) as exc:  # OverflowError: a port over 65535
            raise ConfigError(f"metrics_port {port}: cannot listen on {address!r}: {exc}") from None
        self._thread.name = "herocollector-metrics"
        log.info(f"metrics served at http://{self.url_host}:{self.port}/metrics")

    @property
    def port(self) -> int:
        """The port listened on (the one the system picked, for port ``0``)."""
        server: WSGIServer = self._server
        return int(server.server_address[1])

    @property
    def url_host(self) -> str:
        """The listening address as written in a URL (IPv6 in brackets)."""
        host = str(self._server.server_address[0])
        return f"[{host}]" if ":" in host else host

    def observe_collected(self, seconds: float, lag: float | None, rows: int, segment_bytes: int) -> None:
        """Count a collected run.

        Args:
            seconds: How long the collection took.
            lag: Seconds from its announcement to its commit, if known.
            rows: Rows written.
            segment_bytes: Segment bytes decoded.
        """
        self.runs.inc()
        self.collect_seconds.observe(max(seconds, 0.0))
        if lag is not None:
            self.lag_seconds.observe(max(lag, 0.0))
        self.rows.inc(max(rows, 0))
        self.bytes.inc(max(segment_bytes, 0))

    def observe_failed(self, error: str, path: str | None) -> None:
        """Count a failed attempt under its error type (see :func:`error_type`)."""
        self.errors.labels(type=error_type(error, path)).inc()

    def close(self) -> None:
        """Stop serving and join the server thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
