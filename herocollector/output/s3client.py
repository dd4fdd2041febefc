"""The boto3 S3 client of the stores and tools, from the ``storage_options`` of the service.

May import: :mod:`herocollector.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from herocollector.errors import ConfigError

__all__ = ["s3_client"]


def s3_client(options: Mapping[str, Any]) -> Any:
    """A boto3 S3 client from ``storage_options``.

    Recognised options: ``endpoint_url`` (or ``endpoint_override`` with ``scheme``),
    ``region``, ``access_key_id``, ``secret_access_key``, ``session_token``, ``addressing_style``
    (``path`` or ``virtual``). Credentials that are not given come from the usual ``AWS_*``
    environment, config files or instance roles, as boto3 finds them.

    Raises:
        ConfigError: An unknown option.
    """
    import boto3
    from botocore.config import Config

    known = {
        "endpoint_url",
        "endpoint_override",
        "scheme",
        "region",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "addressing_style",
    }
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"storage_options: unknown option(s) {unknown}; known: {sorted(known)}")
    endpoint = options.get("endpoint_url")
    if endpoint is None and options.get("endpoint_override"):
        endpoint = f"{options.get('scheme', 'https')}://{options['endpoint_override']}"
    style = options.get("addressing_style", "path" if endpoint else "auto")
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=options.get("region"),
        aws_access_key_id=options.get("access_key_id"),
        aws_secret_access_key=options.get("secret_access_key"),
        aws_session_token=options.get("session_token"),
        config=Config(s3={"addressing_style": style}, retries={"max_attempts": 5, "mode": "standard"}),
    )
