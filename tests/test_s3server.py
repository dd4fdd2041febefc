"""The suite's S3 server lets exactly one of concurrent conditional writes of a key win, as S3 does.

moto on its own checks ``If-None-Match`` and then stores, so two writers can both win: a Delta
commit on S3 could then be lost. These tests run moto's real application behind the suite's
middleware, with thread switches forced often, and through the server the suite starts.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from herocollector.testing.s3server import ConditionalWritesInTurn
from herocollector.testing.servers import S3TestServer, free_port

WRITERS = 6
KEYS = 200
"""With moto alone, about one key in a hundred got two winners here: 200 keys catch it almost always."""


def client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's application behind the middleware, served on a thread of this process."""
    port = free_port()
    monkeypatch.setenv("MOTO_PORT", str(port))
    app = ConditionalWritesInTurn(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="test-s3server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def winners(clients: list[Any], bucket: str, key: str) -> list[int]:
    """Which of ``clients`` created ``key`` when all put it at once, if absent."""
    won: list[int] = []
    refused: list[str] = []
    start = threading.Barrier(len(clients))

    def put(index: int) -> None:
        start.wait()
        try:
            clients[index].put_object(Bucket=bucket, Key=key, Body=str(index).encode(), IfNoneMatch="*")
            won.append(index)
        except botocore.exceptions.ClientError as exc:
            refused.append(exc.response["Error"]["Code"])

    threads = [threading.Thread(target=put, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert set(refused) <= {"PreconditionFailed"}, refused
    assert len(won) + len(refused) == len(clients)
    return won


def test_concurrent_conditional_puts_of_a_key_have_exactly_one_winner(endpoint: str) -> None:
    clients = [client(endpoint) for _ in range(WRITERS)]
    clients[0].create_bucket(Bucket="race")
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches as often as they come: a check-then-write race shows
    try:
        doubled = {}
        for k in range(KEYS):
            won = winners(clients, "race", f"log/{k:05d}.json")
            if len(won) != 1:
                doubled[k] = won
    finally:
        sys.setswitchinterval(interval)
    assert not doubled, f"keys with other than one winner: {doubled}"
    # The winner's bytes are what the key holds.
    body = clients[0].get_object(Bucket="race", Key="log/00000.json")["Body"].read()
    assert body.decode() in {str(i) for i in range(WRITERS)}


def test_the_suite_server_refuses_a_second_create_and_serves_unconditional_writes(s3: S3TestServer) -> None:
    bucket = s3.bucket()
    s3_client = s3.client()
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        s3_client.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"third")  # no condition: replaces
    assert s3_client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"third"


def test_a_started_server_is_not_started_twice() -> None:
    """``with S3TestServer().start()`` starts one process and stops it: none is left behind."""
    server = S3TestServer().start()
    first = server._process
    assert first is not None
    with server.start() as again:
        assert again._process is first
        again.bucket()
    assert first.poll() is not None
