"""Metrics that work: the Prometheus endpoint the service serves, and BOSS's datasource option.

The endpoint is scraped over real HTTP and parsed with prometheus-client's own parser; the
numbers are checked against the journal and the run files. Under BOSS, the actor with a
``datasource`` section (polled and async) still journals and collects every announced run, and
publishes its observables.
"""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from herocollector.actor.demo import write_simulated_run
from herocollector.config import ServiceConfig
from herocollector.errors import ConfigError
from herocollector.service.core import CollectionService
from herocollector.service.metrics import MALFORMED, UNKNOWN, error_type
from herocollector.testing.actors import tracebacks, wait_for
from herocollector.testing.runs import journal_rows

TEMPLATE = "{{ output_root }}/{{ logger_name }}/{{ measure }}.arrow"
SCRAPE_TIMEOUT = 30.0


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, by name and labels."""
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class Site:
    """Folders of one test and the services it started (closed at its end)."""

    def __init__(self, tmp: Path) -> None:
        self.runs = tmp / "runs"
        self.runs.mkdir()
        self.outside = tmp / "outside"
        self.outside.mkdir()
        self.out = tmp / "out"
        self.state = tmp / "state"
        self.services: list[CollectionService] = []
        self._seed = 0

    def config(self, **overrides: Any) -> ServiceConfig:
        arguments: dict[str, Any] = dict(
            save_template=TEMPLATE,
            output_root=str(self.out),
            allowed_roots=[str(self.runs)],
            state_dir=str(self.state),
            retry_delay=0.05,
            max_retries=0,
            backoff=20,
            scan_interval=None,
            metrics_port=0,
        )
        arguments.update(overrides)
        return ServiceConfig.from_arguments(**arguments)

    def service(self, **overrides: Any) -> CollectionService:
        service = CollectionService(self.config(**overrides))
        self.services.append(service)
        return service

    def run(self, name: str, folder: Path | None = None) -> Path:
        self._seed += 1
        path = (folder or self.runs) / name
        write_simulated_run(path, records=300, entities=2, seed=self._seed)
        return path

    def close(self) -> None:
        for service in self.services:
            service.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    try:
        yield s
    finally:
        s.close()


def test_the_endpoint_counts_what_the_journal_and_the_runs_say(site: Site) -> None:
    service = site.service()
    url = service.metrics_url()
    assert url is not None and url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    before = scrape(url)
    assert value(before, "herocollector_jobs", state="done") == 0
    assert value(before, "herocollector_collect_seconds_count") == 0

    good = [site.run("run-1"), site.run("run-2")]
    refused = site.run("run-x", folder=site.outside)
    for path in [*good, refused]:
        service.submit("logger", {"path": str(path)})
    service.submit("logger", {"no_path": 1})
    assert service.wait_idle(timeout=120)

    samples = scrape(url)
    rows = {r["path"]: r for r in journal_rows(site.state)}
    assert value(samples, "herocollector_jobs", state="done") == 2
    assert value(samples, "herocollector_jobs", state="failed") == 2  # the refused run and the malformed event
    assert value(samples, "herocollector_jobs", state="pending") == 0
    assert value(samples, "herocollector_running_runs") == 0
    assert value(samples, "herocollector_runs_collected_total") == 2
    assert value(samples, "herocollector_collect_seconds_count") == 2
    assert value(samples, "herocollector_announce_to_commit_seconds_count") == 2
    assert value(samples, "herocollector_collect_seconds_sum") > 0
    assert value(samples, "herocollector_collected_rows_total") == sum(rows[str(p)]["rows"] for p in good)
    segment_bytes = sum(f.stat().st_size for p in good for f in p.glob("*.seg.zst"))
    assert value(samples, "herocollector_collected_bytes_total") == segment_bytes
    assert value(samples, "herocollector_errors_total", type="RunRefused") == 1
    assert value(samples, "herocollector_errors_total", type=MALFORMED) == 1
    # The histogram's buckets are cumulative and end in +Inf with every observation.
    assert value(samples, "herocollector_collect_seconds_bucket", le="+Inf") == 2


def test_each_service_has_its_own_registry_and_close_stops_the_server(site: Site, tmp_path: Path) -> None:
    first = site.service()
    second = site.service(state_dir=str(tmp_path / "state-2"))
    assert first.metrics_url() != second.metrics_url()
    first.submit("logger", {"path": str(site.run("run-1"))})
    assert first.wait_idle(timeout=120)
    second_url = second.metrics_url()
    assert second_url is not None
    assert value(scrape(second_url), "herocollector_runs_collected_total") == 0
    assert b"herocollector_" not in generate_latest(REGISTRY), "the process-wide registry was used"

    url = first.metrics_url()
    assert url is not None
    threads = {t.name for t in threading.enumerate()}
    assert "herocollector-metrics" in threads
    first.close()
    assert first.metrics_url() is None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT)
    second.close()
    assert "herocollector-metrics" not in {t.name for t in threading.enumerate()}


def test_no_port_no_endpoint(site: Site) -> None:
    service = site.service(metrics_port=None)
    assert service.metrics_url() is None
    assert service.exporter is None


def test_a_taken_port_fails_the_start_naming_it_and_keeps_nothing(site: Site) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = {t.name for t in threading.enumerate()}
        with pytest.raises(ConfigError, match=f"metrics_port {port}") as raised:
            site.service(metrics_port=port)
        assert "127.0.0.1" in str(raised.value)
        assert {t.name for t in threading.enumerate()} <= before, "a thread of the failed start lives on"
    service = site.service()  # the state_dir lock was released
    assert service.metrics_url() is not None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"metrics_port": "9464"}, "metrics_port must be a whole number"),
        ({"metrics_port": 1.5}, "metrics_port must be a whole number"),
        ({"metrics_port": -1}, "metrics_port must be at least 0"),
    ],
)
def test_bad_metrics_arguments_stop_the_start(site: Site, arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        site.config(**arguments)


@pytest.mark.parametrize("arguments", [{"metrics_port": 70000}, {"metrics_address": "no-such-host.invalid"}])
def test_an_address_that_cannot_be_listened_on_is_a_config_error(site: Site, arguments: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="metrics_port"):
        site.service(**arguments)


def test_error_types_are_a_bounded_label() -> None:
    assert error_type("SegmentError: /r/00000.seg.zst: damaged frame at byte 12", "/r") == "SegmentError"
    assert error_type("malformed event: no 'path' key", None) == MALFORMED
    assert error_type("a message: without a type", "/r") == UNKNOWN
    assert error_type("x" * 500 + ": long", "/r") == UNKNOWN


# -- under BOSS: the datasource option ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.e2e
@pytest.mark.parametrize("polled", [True, False], ids=["polled", "async"])
def test_under_boss_with_a_datasource_section_announced_runs_are_collected(tmp_path: Path, polled: bool) -> None:
    from heros import DatasourceObserver

    from herocollector.actor.launcher import BossProcess, load_config, wait_until

    realm = f"hc-metrics-{uuid.uuid4().hex[:12]}"
    port = free_port()
    arguments = {
        "default_metadata": {"output_root": str(tmp_path / "out")},
        "allowed_roots": [str(tmp_path / "runs")],
        "state_dir": str(tmp_path / "state"),
        "scan_interval": None,  # only the events can get the runs journalled
        "metrics_port": port,
    }
    config = load_config("collector.json", arguments)
    config["datasource"] = {"async": not polled, "interval": 0.2}
    collector = BossProcess(config, realm, tmp_path / "boss").start()
    logger_config = load_config(
        "demo_logger.json", {"root": str(tmp_path / "runs"), "records": 300, "backend": "data_logger"}
    )
    logger = BossProcess(logger_config, realm, tmp_path / "boss").start()
    observed: list[dict[str, Any]] = []
    observer = None
    try:
        actor = collector.remote(timeout=90)
        logger_hero = logger.remote(timeout=90)
        observer = DatasourceObserver("collector", realm=realm)
        observer.register_callback(lambda source, data: observed.append({v.id: v.value for v in data}))
        runs = logger_hero.simulate(3)
        wait_until(lambda: actor.status()["counts"]["done"] == 3, 60, "3 collected runs")
        assert {r["path"] for r in journal_rows(tmp_path / "state")} == {r["path"] for r in runs}
        # The observables reach a DatasourceObserver (polled: every interval; async: after each run).
        wait_for(lambda: any(o.get("jobs_done") == 3 for o in observed), "observable_data with jobs_done 3")
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert value(samples, "herocollector_jobs", state="done") == 3
        assert value(samples, "herocollector_runs_collected_total") == 3
    finally:
        if observer is not None:
            observer._destroy_hero()
        logger.stop(timeout=10)
        collector.stop(timeout=10)
    assert tracebacks(collector.log_text()) == []
