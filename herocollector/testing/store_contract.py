"""The contract every output store keeps, as one pytest base class: :class:`StoreTests`.

In the style of zarr's ``StoreTests``: every test is written once, here, and a test module
subclasses :class:`StoreTests` for each :class:`~herocollector.output.stores.OutputStore`,
providing the ``store`` fixture (an empty store) and three small hooks: :meth:`StoreTests.location`
(where a name goes in that store), :meth:`StoreTests.raw` (the bytes at a location, read past
the store) and :meth:`StoreTests.put_foreign` (an object that herocollector did not write)::

    class TestLocalStore(StoreTests):
        @pytest.fixture
        def store(self, tmp_path: Path) -> OutputStore:
            return LocalStore(tmp_path / "out")

        def location(self, store: OutputStore, name: str) -> str:
            return f"{store.root}/{name}"

        ...

Where the stores differ by design (a local folder replaces a job's own earlier output, an
object store adopts it and never overwrites), the test says so and checks both through what
the store reports (:meth:`~herocollector.output.stores.OutputStore.published`). ``replace_own``
is the caller's statement that the output there is the job's own (the runner checks the
provenance first): the contract tests other runs' and foreign outputs with ``replace_own=False``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from herocollector.errors import OutputError
from herocollector.output.files import OutputFile, provenance_metadata
from herocollector.output.stores import OutputStore, Provenance

RUN = "/data/runs/run-a"
OTHER = "/data/runs/run-b"


class StoreTests:
    """The output store contract; subclass it with a ``store`` fixture and the three hooks.

    Attributes:
        replaces_own: Whether a job's own earlier output is replaced (a local folder) rather
            than adopted as it is (an object store, which never overwrites).
    """

    replaces_own: bool = True

    @pytest.fixture
    def store(self) -> Iterator[OutputStore]:
        """An empty store of the kind under test."""
        raise NotImplementedError("a StoreTests subclass provides the store fixture")

    def location(self, store: OutputStore, name: str) -> str:
        """The location of ``name`` (a relative path) in ``store``."""
        raise NotImplementedError

    def raw(self, store: OutputStore, location: str) -> bytes | None:
        """The bytes at ``location``, read without the store; None if there is nothing."""
        raise NotImplementedError

    def put_foreign(self, store: OutputStore, location: str, data: bytes) -> None:
        """Put ``data`` at ``location`` as someone else would: without herocollector's provenance."""
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def finished(store: OutputStore, location: str, run: str = RUN, job: int = 1, rows: int = 10) -> OutputFile:
        """A finished (fsynced, hashed) Arrow file for ``location``, staged where the store wants it."""
        metadata = provenance_metadata(run, "logger-1", "2026-01-01T00:00:00+00:00", job, [])
        schema = pa.schema([("value", pa.int64())], metadata=metadata)
        output = OutputFile(store.staging_path(location), schema)
        output.write(pa.record_batch([pa.array(range(job * 1000, job * 1000 + rows), pa.int64())], schema=schema))
        output.finish()
        return output

    @staticmethod
    def staged_bytes(output: OutputFile) -> bytes:
        """The bytes of a finished file, before it is published."""
        return output.temporary.read_bytes()

    # -- publish --------------------------------------------------------------------------------------

    def test_publish_puts_exactly_the_staged_bytes_in_place(self, store: OutputStore) -> None:
        """A published file is there byte for byte, with its provenance; its temporary file is gone."""
        where = self.location(store, "run-a/stock.arrow")
        output = self.finished(store, where, RUN, job=7)
        data = self.staged_bytes(output)
        digest = store.publish(output, where, Provenance(RUN, 7, 3), replace_own=False)
        assert digest == output.sha256 == hashlib.sha256(data).hexdigest()
        assert self.raw(store, where) == data
        assert store.read_bytes(where) == data
        assert not output.temporary.exists()
        found = store.provenance(where)
        assert found is not None and (found.logger_path, found.job) == (RUN, 7)
        assert store.published(where, len(data), digest) == (len(data), digest)

    def test_verify_checks_size_and_checksum(self, store: OutputStore) -> None:
        """``verify`` is True for the published size and SHA-256 only."""
        where = self.location(store, "v/out.arrow")
        output = self.finished(store, where)
        size = output.bytes
        digest = store.publish(output, where, Provenance(RUN, 1), replace_own=False)
        assert store.verify(where, size, digest) is True
        assert store.verify(where, size + 1, digest) is False
        assert store.verify(where, size, "0" * 64) is False
        assert store.verify(self.location(store, "v/missing.arrow"), size, digest) is False

    def test_another_runs_output_is_never_overwritten(self, store: OutputStore) -> None:
        """Publishing over another run's output fails naming the location; the output stays as it was."""
        where = self.location(store, "shared/out.arrow")
        first = self.finished(store, where, RUN, job=1)
        store.publish(first, where, Provenance(RUN, 1), replace_own=False)
        before = self.raw(store, where)
        second = self.finished(store, where, OTHER, job=2)
        with pytest.raises(OutputError) as info:
            store.publish(second, where, Provenance(OTHER, 2), replace_own=False)
        assert "shared/out.arrow" in str(info.value)
        assert self.raw(store, where) == before
        assert not second.temporary.exists()
        found = store.provenance(where)
        assert found is not None and found.logger_path == RUN

    def test_a_foreign_object_is_never_overwritten(self, store: OutputStore) -> None:
        """An object herocollector did not write has an empty provenance and is never replaced."""
        where = self.location(store, "foreign/out.arrow")
        self.put_foreign(store, where, b"not ours")
        found = store.provenance(where)
        assert found is not None and found.logger_path == ""
        output = self.finished(store, where)
        with pytest.raises(OutputError):
            store.publish(output, where, Provenance(RUN, 1), replace_own=False)
        assert self.raw(store, where) == b"not ours"
        assert not output.temporary.exists()

    def test_the_jobs_own_earlier_output_is_replaced_or_adopted(self, store: OutputStore) -> None:
        """A retry of the same job: replaced (local) or adopted (object store); the result reports what is there."""
        where = self.location(store, "own/out.arrow")
        first = self.finished(store, where, RUN, job=4, rows=10)
        first_bytes = self.staged_bytes(first)
        store.publish(first, where, Provenance(RUN, 4, 1), replace_own=False)
        again = self.finished(store, where, RUN, job=4, rows=20)
        again_bytes = self.staged_bytes(again)
        digest = store.publish(again, where, Provenance(RUN, 4, 2), replace_own=True)
        now = self.raw(store, where)
        assert now == (again_bytes if self.replaces_own else first_bytes)
        assert now is not None and digest == hashlib.sha256(now).hexdigest()
        assert store.published(where, len(again_bytes), again.sha256) == (len(now), digest)
        assert not again.temporary.exists()

    def test_without_replace_own_the_jobs_own_output_is_refused(self, store: OutputStore) -> None:
        """``replace_own=False``: even the job's own earlier output is not overwritten."""
        where = self.location(store, "own2/out.arrow")
        first = self.finished(store, where, RUN, job=4)
        store.publish(first, where, Provenance(RUN, 4), replace_own=False)
        before = self.raw(store, where)
        again = self.finished(store, where, RUN, job=4, rows=3)
        with pytest.raises(OutputError):
            store.publish(again, where, Provenance(RUN, 4), replace_own=False)
        assert self.raw(store, where) == before

    def test_concurrent_publishes_of_one_location_have_one_winner(self, store: OutputStore) -> None:
        """Runs racing for one location: exactly one publishes, the others fail, the bytes are the winner's."""
        where = self.location(store, "race/out.arrow")
        # Each racer stages its own temporary file (names are unique per writer) for the same location.
        outputs = [self.finished(store, where, f"/data/runs/r-{i}", job=i + 1) for i in range(4)]
        staged = {i: self.staged_bytes(o) for i, o in enumerate(outputs)}
        winners: list[int] = []
        losers: list[int] = []
        barrier = threading.Barrier(len(outputs))

        def publish(index: int) -> None:
            barrier.wait(timeout=60)
            try:
                store.publish(outputs[index], where, Provenance(f"/data/runs/r-{index}", index + 1), replace_own=False)
                winners.append(index)
            except OutputError:
                losers.append(index)

        threads = [threading.Thread(target=publish, args=(i,)) for i in range(len(outputs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert len(winners) == 1 and len(losers) == len(outputs) - 1
        assert self.raw(store, where) == staged[winners[0]]
        assert not any(o.temporary.exists() for o in outputs)

    def test_provenance_of_an_unusual_run_path_round_trips(self, store: OutputStore) -> None:
        """A run path with spaces and non-ASCII characters is recorded as it is."""
        run = "/data/runs/Messung 3 – é/ü"
        where = self.location(store, "odd/out.arrow")
        store.publish(self.finished(store, where, run, job=9), where, Provenance(run, 9), replace_own=False)
        found = store.provenance(where)
        assert found is not None and (found.logger_path, found.job) == (run, 9)

    # -- small objects (manifests) ------------------------------------------------------------------

    def test_put_bytes_creates_once(self, store: OutputStore) -> None:
        """``put_bytes`` creates a small object atomically and never replaces one."""
        where = self.location(store, "m/_manifest.json")
        assert store.read_bytes(where) is None
        assert store.put_bytes(where, b'{"n": 1}', Provenance(RUN, 1)) is True
        assert store.put_bytes(where, b'{"n": 2}', Provenance(RUN, 1)) is False
        assert store.read_bytes(where) == self.raw(store, where) == b'{"n": 1}'

    def test_remove(self, store: OutputStore) -> None:
        """``remove`` deletes an object durably; removing nothing is fine."""
        where = self.location(store, "r/_manifest.json")
        store.put_bytes(where, b"{}", Provenance(RUN, 1))
        store.remove(where)
        assert store.read_bytes(where) is None and self.raw(store, where) is None
        assert store.provenance(where) is None
        store.remove(where)
        store.remove(self.location(store, "never/was.json"))
        assert store.put_bytes(where, b"{}", Provenance(RUN, 1)) is True  # the name is free again

    def test_nothing_there(self, store: OutputStore) -> None:
        """A location with nothing: no provenance, no bytes, not verified."""
        where = self.location(store, "nothing/here.arrow")
        assert store.provenance(where) is None
        assert store.read_bytes(where) is None
        assert store.verify(where, 0, hashlib.sha256(b"").hexdigest()) is False

    def test_staging_is_a_local_path(self, store: OutputStore) -> None:
        """The staged file of a location is a local path (where OutputFile writes)."""
        staged = store.staging_path(self.location(store, "s/out.arrow"))
        assert isinstance(staged, Path) and staged.name == "out.arrow"
