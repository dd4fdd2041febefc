"""A logger process that writes one run at a steady rate, for the tests of following runs while they are written.

``python -m herocollector.testing.live RUN TRUTH --seconds S --rate N [--rotate-bytes B] [--seed K] [--max-nnz M]``
writes records with the real ``data_logger.DataLogger`` (:class:`~herocollector.testing.runs.RecordMaker`)
at about ``N`` records per second for ``S`` seconds, rotating segments every ``B`` bytes, then closes
the logger (which writes ``_DONE``) and pickles what was recorded, with the wall time each record
was handed to the logger, to ``TRUTH``: a :class:`LiveTruth`.
"""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from herocollector.testing.runs import RecordedRun, RecordMaker


@dataclass
class LiveTruth:
    """What a live logger recorded.

    Attributes:
        run: The run and its records (as :func:`~herocollector.testing.runs.build_run` gives them).
        written_at: The wall time (``time.time()``) each record was handed to the logger.
    """

    run: RecordedRun
    written_at: list[float] = field(default_factory=list)


def write_live(
    path: Path, seconds: float, rate: float, seed: int = 1, rotate_bytes: int = 1 << 20, max_nnz: int = 8
) -> LiveTruth:
    """Write a run at ``rate`` records per second for ``seconds``; close it (``_DONE``)."""
    maker = RecordMaker(path, seed, rotate_bytes=rotate_bytes, max_nnz=max_nnz)
    truth = LiveTruth(maker.run)
    started = time.monotonic()
    written = 0
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate)
            while written < due:
                maker.record()
                truth.written_at.append(time.time())
                written += 1
            time.sleep(0.002)  # the pace of a simulation, not a wait for a condition
    finally:
        maker.close()
    return truth


class LiveLogger:
    """The live logger as a process of its own (what a test follows), and what it recorded.

    Args:
        tmp: The test's folder: the run is ``tmp/runs/<name>``.
        name: The run's name.
        seconds: How long it writes.
        rate: Records per second.
        max_nnz: Largest number of non-zeros in a record.
        rotate_bytes: Segment rotation size.
    """

    def __init__(
        self,
        tmp: Path,
        name: str = "run",
        *,
        seconds: float,
        rate: float,
        max_nnz: int = 8,
        rotate_bytes: int = 256 << 10,
    ) -> None:
        self.path = tmp / "runs" / name
        self.truth_file = tmp / f"{name}.truth"
        self.seconds = seconds
        command: Sequence[str] = [
            sys.executable, "-m", "herocollector.testing.live", str(self.path), str(self.truth_file),
            "--seconds", str(seconds), "--rate", str(rate), "--rotate-bytes", str(rotate_bytes),
            "--max-nnz", str(max_nnz),
        ]  # fmt: skip
        self.process = subprocess.Popen(command)
        # Here, not at the top: the logger process imports this module too, and the actors'
        # module (HEROS, the archiver) took a second and a half of its start.
        from herocollector.testing.actors import wait_for

        wait_for(lambda: (self.path / "streams").is_dir() or self.process.poll() is not None, "the run to begin", 60)

    def truth(self) -> LiveTruth:
        """What was recorded, once the logger has finished (``_DONE`` is written)."""
        assert self.process.wait(timeout=self.seconds + 120) == 0
        truth = pickle.loads(self.truth_file.read_bytes())
        assert isinstance(truth, LiveTruth)
        return truth

    def stop(self) -> None:
        """Kill the logger if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Freshness:
    """When each record of a followed run first appeared in its table, as a reader polling it sees it.

    Chunks are prefixes of each stream's records in file order, so a stream's row count says
    which of its records are in: the j-th record of a stream is in once the stream has more than
    j rows. :meth:`poll` reads the counts; :meth:`latencies` pairs them with the write times.

    A poll reads only the data files it has not read before (a file of a Delta table never
    changes), and sums the counts of the files the table's current version lists: the table is
    polled every fraction of a second while it grows, and reading all of it each time made the
    reader, not the actor, the largest user of the CPU in a minute-long test.
    """

    def __init__(self) -> None:
        self.seen: dict[int, list[float]] = {}
        self._counts: dict[str, dict[int, int]] = {}  # rows per stream of each data file read

    def poll(self, table: str) -> None:
        """Read the table's rows per stream now."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from herocollector.output.delta import open_table

        delta = open_table(table, {})
        if delta is None:
            return
        now = time.time()
        rows: dict[int, int] = {}
        for uri in delta.file_uris():
            counts = self._counts.get(uri)
            if counts is None:
                ids = pq.read_table(uri, columns=["stream_id"])["stream_id"]
                counts = {int(e["values"]): int(e["counts"]) for e in pc.value_counts(ids).to_pylist()}
                self._counts[uri] = counts
            for sid, count in counts.items():
                rows[sid] = rows.get(sid, 0) + count
        for sid, count in rows.items():
            times = self.seen.setdefault(sid, [])
            times.extend([now] * (count - len(times)))

    def latencies(self, truth: LiveTruth) -> list[float]:
        """Seconds from each record's write to its first sight in the table (records never seen are left out)."""
        found = []
        ranks: dict[int, int] = {}
        for sid, written in zip(truth.run.stream_ids, truth.written_at, strict=True):
            k = ranks.get(sid, 0)
            ranks[sid] = k + 1
            if k < len(self.seen.get(sid, [])):
                found.append(self.seen[sid][k] - written)
        return found


def main() -> None:
    """The command line: see the module documentation."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("truth", type=Path)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--rotate-bytes", type=int, default=1 << 20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-nnz", type=int, default=8, help="largest number of non-zeros in a record")
    args = parser.parse_args()
    from herocollector.testing import live  # not __main__: the pickle names the importable class

    truth = live.write_live(args.run, args.seconds, args.rate, args.seed, args.rotate_bytes, args.max_nnz)
    partial = args.truth.with_name(args.truth.name + ".partial")
    partial.write_bytes(pickle.dumps(truth))
    partial.rename(args.truth)


if __name__ == "__main__":
    main()
