"""Labels that readers would skip fail their own jobs, and every output stays visible to a dataset scan."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds

from herocollector import CollectionService, ServiceConfig
from herocollector.actor.demo import write_simulated_run
from herocollector.journal.base import JobState


def test_hidden_and_underscore_labels_fail_their_jobs_and_good_runs_stay_scannable(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    out = tmp_path / "out"
    config = ServiceConfig.from_arguments(
        save_template="{{ output_root }}/{{ site }}/{{ logger_name }}/{{ measure }}.arrow",
        output_root=str(out),
        allowed_roots=[str(runs)],
        state_dir=str(tmp_path / "state"),
        scan_interval=None,
        max_retries=3,
        retry_delay=0.05,
    )
    paths = {}
    for site in (".hidden", "_data", "lab"):
        paths[site] = runs / f"run-{site.strip('._')}"
        write_simulated_run(paths[site], records=300, entities=1, labels={"site": site})
    with CollectionService(config) as service:
        jobs = {site: service.submit("logger", {"path": str(path)}) for site, path in paths.items()}
        assert service.wait_idle(120)
        final = {site: service.journal.get(job.id) for site, job in jobs.items()}
    for site in (".hidden", "_data"):
        job = final[site]
        assert job is not None and job.state == JobState.FAILED
        assert job.attempts == 1, "a label that can never make a visible file is not retried"
        assert repr(site) in (job.error or "") and "dataset readers skip" in (job.error or "")
    good = final["lab"]
    assert good is not None and good.state == JobState.DONE
    assert ds.dataset(str(out), format="arrow").to_table().num_rows == good.rows
