"""The shipped pytest plugin, used the way a user's suite uses it: a separate pytest run, in a
directory of its own, with nothing of this project's tests around it."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from presence_server.pytest_plugin import PresenceServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(("example", "passed"), [("test_with_presence_server.py", 2), ("test_access_manager.py", 1)])
def test_example_suite_passes_with_the_installed_plugin(tmp_path: Path, example: str, passed: int) -> None:
    shutil.copy(EXAMPLES / example, tmp_path / "test_example.py")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_example.py"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{passed} passed" in result.stdout


def test_the_fixtures_server_answers_what_aiohttps_parser_refuses_in_json(
    presence_server: PresenceServer, caplog: pytest.LogCaptureFixture
) -> None:
    # As the command line serves (presence_server.http.AppRunner): the SDKs parse every body as JSON,
    # and the refused bytes (here a secret in an oversized header) stay out of the log.
    caplog.set_level(logging.DEBUG)
    host, port = presence_server.origin.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        secret = b"Bearer s3cr3t-" + b"b" * 9000
        sock.sendall(b"GET /time/0 HTTP/1.1\r\nHost: x\r\nAuthorization: " + secret + b"\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", head
    assert b"javascript" in head.lower(), head
    assert json.loads(body)["error"] is True
    assert "s3cr3t" not in caplog.text and "Traceback" not in caplog.text, caplog.text
    assert "refused a malformed request" in caplog.text


def test_the_fixtures_fault_rules_make_the_next_request_fail_then_go(presence_server: PresenceServer) -> None:
    url = f"{presence_server.url}/v2/presence/sub-key/demo/channel/ch1/heartbeat?uuid=u1"
    presence_server.fault("heartbeat", "demo", status=503, times=1)
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(url, timeout=10)
    assert failed.value.code == 503 and json.loads(failed.value.read())["message"] == "Service Unavailable"
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
    presence_server.fault("heartbeat", "demo", status=500)
    assert presence_server.clear_faults() == 1
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
    with pytest.raises(Exception, match="Invalid fault rule"):
        presence_server.fault("heartbeat", "demo", status=200)
