"""``python -m herocollector.testing.s3server --port PORT``: moto's S3, with conditional writes atomic as in S3.

moto answers a ``PutObject`` or a ``CompleteMultipartUpload`` with ``If-None-Match: *`` by
looking the key up, then storing the object, on whichever thread of its server took the
request. Two such writes of one key can then both succeed, where S3 lets exactly one. A Delta
Lake commit on S3 is such a write (the log's next entry, put if absent), as is every object
the output stores create: two actors committing the same table version would both be told that
they did, and one commit would be lost. The suite saw it once: two actors logged version 47,
and one run's rows were not in the table.

Here a request with a condition (``If-None-Match`` or ``If-Match``) that writes runs alone,
after the one before it; every other request stays concurrent.

Only S3 is served, by moto's S3 application itself. ``moto_server`` puts a dispatcher in front
that finds each request's service under one lock for all requests, listing moto's package
folder every time: a quarter to a third of the server's CPU on a PUT or a GET, which the S3 tests
make by the thousand.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

Environ = dict[str, Any]
WSGIApp = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]

CONDITIONS = ("HTTP_IF_NONE_MATCH", "HTTP_IF_MATCH")
"""The WSGI names of the headers that make a write conditional."""


class ConditionalWritesInTurn:
    """WSGI middleware: conditional writes (``PUT``/``POST`` with a condition) one at a time.

    Args:
        app: The WSGI application (moto's).
    """

    def __init__(self, app: WSGIApp) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Answer one request; a conditional write waits for the one before it."""
        conditional = any(name in environ for name in CONDITIONS)
        if not conditional or environ.get("REQUEST_METHOD") not in ("PUT", "POST"):
            return self._app(environ, start_response)
        with self._lock:
            # The check and the write both happen in the call; the body is made inside the lock too.
            return list(self._app(environ, start_response))


def main(argv: list[str] | None = None) -> None:
    """Serve moto's S3 on ``--host``/``--port`` until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto_server sets it: moto builds URLs from it

    from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(0))
    # Not a line per request (werkzeug's INFO): the tests make thousands, and writing them under
    # the logging lock cost the server another seventh of its CPU. Errors are still logged.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_backend_app("s3")  # errors answered, not raised (debug), as moto_server runs it
    run_simple(args.host, args.port, ConditionalWritesInTurn(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
