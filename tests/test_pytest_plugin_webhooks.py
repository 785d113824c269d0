"""The pytest fixture with presence webhooks on: a suite points ``webhook_url`` at its own receiver and
sees the server's POSTs, moving time with ``advance`` and sending what is due with ``deliver_webhooks``."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from presence_server.pytest_plugin import PresenceServer


class _Receiver(ThreadingHTTPServer):
    events: list[dict[str, Any]]


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert self.headers["Content-Type"] == "application/json"
        self.server.events.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver(("127.0.0.1", 0), _Handler)
    server.events = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def presence_server_settings(receiver: _Receiver) -> dict[str, Any]:
    return {"webhook_url": f"http://127.0.0.1:{receiver.server_address[1]}/hooks"}


def test_the_fixture_posts_presence_webhooks_to_the_suites_receiver(
    presence_server: PresenceServer, receiver: _Receiver
) -> None:
    url = f"{presence_server.url}/v2/presence/sub-key/demo/channel/lobby/heartbeat?uuid=alice&heartbeat=60"
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
    presence_server.deliver_webhooks()
    assert [(e["action"], e.get("uuid")) for e in receiver.events] == [("active", None), ("join", "alice")]
    assert presence_server.advance(61) == 1
    presence_server.deliver_webhooks()
    assert [(e["action"], e.get("uuid"), e["channel"]) for e in receiver.events[2:]] == [
        ("timeout", "alice", "lobby"),
        ("inactive", None, "lobby"),
    ]
