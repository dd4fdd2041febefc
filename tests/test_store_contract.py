"""The output store contract (:class:`herocollector.testing.store_contract.StoreTests`) on both stores:
a local folder in ``tmp_path``, and an S3 bucket on the real moto test server (a bucket per test).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from herocollector.output.stores import LocalStore, OutputStore, S3Store
from herocollector.testing.servers import S3TestServer
from herocollector.testing.store_contract import StoreTests


class TestLocalStore(StoreTests):
    replaces_own = True

    @pytest.fixture
    def store(self, tmp_path: Path) -> OutputStore:
        return LocalStore(tmp_path / "out")

    def location(self, store: OutputStore, name: str) -> str:
        return f"{store.root}/{name}"

    def raw(self, store: OutputStore, location: str) -> bytes | None:
        path = Path(location)
        return path.read_bytes() if path.exists() else None

    def put_foreign(self, store: OutputStore, location: str, data: bytes) -> None:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).write_bytes(data)


class TestS3Store(StoreTests):
    replaces_own = False  # an object store never overwrites: the earlier attempt's object is adopted

    @pytest.fixture
    def store(self, tmp_path: Path, s3: S3TestServer) -> OutputStore:
        self.client = s3.client()
        return S3Store(f"s3://{s3.bucket()}/collected", s3.options, tmp_path / "staging")

    def location(self, store: OutputStore, name: str) -> str:
        return f"{store.root}/{name}"

    def raw(self, store: OutputStore, location: str) -> bytes | None:
        assert isinstance(store, S3Store)
        try:
            return bytes(self.client.get_object(Bucket=store.bucket, Key=store.key(location))["Body"].read())
        except self.client.exceptions.NoSuchKey:
            return None

    def put_foreign(self, store: OutputStore, location: str, data: bytes) -> None:
        assert isinstance(store, S3Store)
        self.client.put_object(Bucket=store.bucket, Key=store.key(location), Body=data)
