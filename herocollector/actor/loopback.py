"""Zenoh confined to this machine: a hub on 127.0.0.1 that the demo's and the tests' HEROs join.

Zenoh's defaults scout the local network by multicast and listen on every interface, so two
test runs (or a demo and a lab) on one network can see each other's HEROs. A :class:`LoopbackHub`
listens on one TCP port of 127.0.0.1; :meth:`LoopbackHub.peer_config` is the configuration every
other session uses (through ``HEROS_ZENOH_CONFIG``, which heros reads for every session, BOSS
processes included): connect to the hub, listen on a free port of 127.0.0.1, no multicast
scouting. Peers learn of each other from the hub (gossip) and connect directly, still on
127.0.0.1.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import zenoh

ENV = "HEROS_ZENOH_CONFIG"
"""The environment variable heros reads a session's Zenoh configuration from (JSON5)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LoopbackHub:
    """A Zenoh peer on 127.0.0.1 that every session of a demo or a test run connects to."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._session: Any = None

    def start(self) -> LoopbackHub:
        """Open the hub's session (listening on ``tcp/127.0.0.1:<port>``)."""
        config = {
            "mode": "peer",
            "listen": {"endpoints": [f"tcp/127.0.0.1:{self.port}"]},
            "scouting": {"multicast": {"enabled": False}},
            "transport": {"shared_memory": {"enabled": False}},
        }
        self._session = zenoh.open(zenoh.Config.from_json5(json.dumps(config)))
        return self

    def peer_config(self) -> str:
        """The ``HEROS_ZENOH_CONFIG`` of every other session: the hub, loopback only, no multicast, no shared memory."""
        return json.dumps(
            {
                "mode": "peer",
                "listen": {"endpoints": ["tcp/127.0.0.1:0"]},
                "connect": {"endpoints": [f"tcp/127.0.0.1:{self.port}"]},
                "scouting": {"multicast": {"enabled": False}, "gossip": {"enabled": True}},
                # Shared memory drops large events read late in a burst, logging at DEBUG only: off.
                "transport": {"shared_memory": {"enabled": False}},
            }
        )

    def close(self) -> None:
        """Close the hub's session (idempotent)."""
        if self._session is not None:
            session, self._session = self._session, None
            session.close()

    def __enter__(self) -> LoopbackHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
