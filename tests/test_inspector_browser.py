"""The inspector page (docs/protocol.md 9.2) in a real browser: Debian's Chromium, headless, driven by
playwright-core from ``tests/e2e/js/inspector.mjs`` against a live server on loopback. A user who joins
through the REST API appears on the page within a second; the page's buttons make users leave and time
out; "Advance clock" times the rest out, and the feed shows each event. Skipped, saying why, without
Node or Chromium (CI has both).

The screenshot goes to the directory PRESENCE_TEST_ARTIFACTS names (CI keeps it), else to the test's
tmp_path; with PRESENCE_UPDATE_SCREENSHOT=1 it is also written to docs/inspector.png, the README's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from presence_server.config import Settings
from presence_server.context import STORE
from presence_server.store import open_redis
from tests.e2e.live import JS_DIR, LiveServer, serve
from tests.helpers.app import START, FakeClock

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = JS_DIR / "inspector.mjs"
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "inspector.png"
TOKEN = "inspector-browser-token-0123"
NODE_MAJOR = 20  # what playwright-core 1.65 asks for (its package.json "engines")
REPLY_WAIT = 30.0  # real seconds for one browser command: a cold Chromium start on a busy machine


@pytest.fixture(scope="module")
def node() -> str:
    """Node with playwright-core installed next to the driver (``npm ci`` when it is missing)."""
    node_bin, npm_bin = shutil.which("node"), shutil.which("npm")
    if node_bin is None or npm_bin is None:
        pytest.skip("the inspector's browser test needs Node.js and npm on PATH")
    version = subprocess.run([node_bin, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    if int(version.lstrip("v").partition(".")[0] or 0) < NODE_MAJOR:
        pytest.skip(f"playwright-core needs Node.js {NODE_MAJOR} or newer; this one is {version or 'unknown'}")
    if not CHROMIUM.exists():
        pytest.skip(f"the inspector's browser test needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    if not (JS_DIR / "node_modules" / "playwright-core" / "package.json").exists():
        # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: playwright-core downloads nothing anyway; this only makes sure.
        env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
        done = subprocess.run(
            [npm_bin, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {JS_DIR} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return node_bin


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    named = os.environ.get("PRESENCE_TEST_ARTIFACTS")
    if not named:
        return tmp_path
    path = Path(named)
    path.mkdir(parents=True, exist_ok=True)
    return path


class Browser:
    """One Node process running inspector.mjs: a JSON command a line in, a JSON reply a line out."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.page_errors: list[str] = []
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = json.loads(raw)
            if "page_error" in line:
                self.page_errors.append(line["page_error"])
            elif "reply" in line and line["reply"] in self._replies:
                self._replies[line["reply"]].set_result(line)
        for pending in self._replies.values():
            if not pending.done():
                pending.set_exception(AssertionError(f"node ended: {await self._stderr()}"))

    async def _stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode(errors="replace")

    async def do(self, op: str, **args: Any) -> Any:
        ident = next(self._ids)
        reply = self._replies[ident] = asyncio.get_running_loop().create_future()
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": ident, "op": op, **args}).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(reply, REPLY_WAIT)
        assert "error" not in line, f"{op} {args}: {line['error']}; page errors: {self.page_errors}"
        return line["result"]

    async def wait(self, selector: str, within: float, state: str = "attached") -> None:
        """Until ``selector`` is on the page (or, ``state="detached"``, gone), for ``within`` real seconds."""
        await self.do("wait", selector=selector, timeout_ms=int(within * 1000), state=state)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.do("close"), 10)
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await asyncio.gather(self._reader, return_exceptions=True)


@contextlib.asynccontextmanager
async def browser(node: str) -> AsyncIterator[Browser]:
    proc = await asyncio.create_subprocess_exec(
        node,
        str(DRIVER),
        str(CHROMIUM),
        cwd=JS_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    driver = Browser(proc)
    try:
        yield driver
    finally:
        await driver.close()


@dataclasses.dataclass
class Rest:
    """The public REST API of the live server, as any client calls it."""

    session: aiohttp.ClientSession
    base: str

    async def get(self, path: str, **params: str) -> Any:
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        async with self.session.get(f"{self.base}{path}?{query}") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json(content_type=None)

    async def heartbeat(self, channels: str, uuid: str, seconds: int, state: str = "") -> None:
        path = f"/v2/presence/sub-key/demo/channel/{channels}/heartbeat"
        await self.get(path, uuid=uuid, heartbeat=str(seconds), **({"state": state} if state else {}))

    async def publish(self, channel: str, message: Any, uuid: str, kind: str = "publish") -> None:
        await self.get(f"/{kind}/pub-key/demo/0/{channel}/0/{quote(json.dumps(message), safe='')}", uuid=uuid)


@contextlib.asynccontextmanager
async def live(settings: Settings, **overrides: Any) -> AsyncIterator[tuple[LiveServer, Rest]]:
    """A live server on loopback with the admin API on (one engine is enough here: the embedded store;
    tests/test_inspector.py runs the endpoints on both)."""
    redis = open_redis("memory://")
    try:
        async with (
            serve(redis, settings, FakeClock(), admin=True, **overrides) as server,
            aiohttp.ClientSession() as session,
        ):
            yield server, Rest(session, f"http://{server.origin}")
    finally:
        await redis.aclose()


def occupant(channel: str, uuid: str) -> str:
    return f'tr.occupant[data-channel="{channel}"][data-uuid="{uuid}"]'


def event(action: str, uuid: str, channel: str) -> str:
    return f'#feed li.event[data-action="{action}"][data-uuid="{uuid}"][data-channel="{channel}"]'


@pytest.fixture
def screenshot_paths(artifacts: Path) -> Iterator[Path]:
    path = artifacts / "inspector.png"
    yield path
    if os.environ.get("PRESENCE_UPDATE_SCREENSHOT") == "1" and path.exists():
        shutil.copyfile(path, SCREENSHOT)


async def test_the_page_shows_a_keyset_live_and_steers_it(
    node: str, settings: Settings, screenshot_paths: Path
) -> None:
    async with live(settings) as (server, rest), browser(node) as page:
        # Some of a keyset before the page opens.
        await rest.heartbeat("lobby,room-2", "bob", 300, '{"role":"host"}')
        await rest.heartbeat("room-2", "carol", 120, '{"typing":false}')
        await rest.heartbeat("lobby", "erin", 240, '{"device":"phone","away":true}')
        await rest.heartbeat("help-desk", "dave", 90)
        await rest.get("/v1/channel-registration/sub-key/demo/channel-group/rooms", add="lobby,room-2")
        await rest.get("/v1/channel-registration/sub-key/demo/channel-group/support", add="help-desk")
        await rest.publish("lobby", {"text": "welcome!"}, "bob")
        await rest.publish("room-2", {"text": "anyone here?"}, "carol")
        await rest.publish("room-2", "typing", "bob", kind="signal")

        assert await page.do("goto", url=f"http://{server.origin}/inspector?sub_key=demo") == 200
        await page.wait('body[data-feed="live"][data-loaded]', 10)
        await page.wait(occupant("room-2", "carol"), 1)

        # A user joins through the REST API: on the page within a second, and in the feed.
        await rest.heartbeat("lobby", "alice", 60, '{"mood":"happy"}')
        await page.wait(occupant("lobby", "alice"), 1)
        await page.wait(event("join", "alice", "lobby"), 1)
        assert await page.do("texts", selector=f"{occupant('lobby', 'alice')} td.state") == ['{"mood": "happy"}']

        # The page's buttons: make bob leave room-2, make dave time out.
        await page.do("click", selector=f'{occupant("room-2", "bob")} button[data-action="leave"]')
        await page.wait(event("leave", "bob", "room-2"), 2)
        await page.do("click", selector=f'{occupant("help-desk", "dave")} button[data-action="timeout"]')
        await page.wait(event("timeout", "dave", "help-desk"), 2)
        await page.wait(occupant("help-desk", "dave"), 2, state="detached")

        # "Advance clock" past alice's 60 s: she times out, and the feed says so.
        await page.do("fill", selector="#advance-seconds", value="61")
        await page.do("click", selector="#advance")
        await page.wait(event("timeout", "alice", "lobby"), 2)
        await page.wait(occupant("lobby", "alice"), 2, state="detached")

        snapshot = await server.app[STORE].snapshot("demo", now=START + 61)
        assert {ch: sorted(c["occupants"]) for ch, c in snapshot["channels"].items()} == {
            "lobby": ["bob", "erin"],
            "room-2": ["carol"],
        }
        timeouts = [e.uuid for e in await server.store.read_log("demo", "lobby") if e.action == "timeout"]
        assert timeouts == ["alice"]
        assert await page.do("texts", selector="#messages li code") == [
            '{"text": "welcome!"}',
            '"typing"',
            '{"text": "anyone here?"}',
        ]
        await page.do("screenshot", path=str(screenshot_paths))
        assert page.page_errors == []  # nothing refused by the page's policy, no script error
    png = await asyncio.to_thread(screenshot_paths.read_bytes)
    # A PNG of the viewport: the signature, then the IHDR chunk's width and height.
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[16:24] == (1280).to_bytes(4, "big") + (800).to_bytes(4, "big")


async def test_with_an_admin_token_the_page_asks_for_it(node: str, settings: Settings) -> None:
    async with live(settings, admin_token=TOKEN) as (server, rest), browser(node) as page:
        assert await page.do("goto", url=f"http://{server.origin}/inspector?sub_key=demo") == 200
        await page.wait("#token-form.wanted:not([hidden])", 5)  # every call answered 401
        await page.do("fill", selector="#token", value=TOKEN)
        await page.do("click", selector="#token-form button")
        await page.wait('body[data-feed="live"][data-loaded]', 5)
        await rest.heartbeat("lobby", "alice", 60)
        await page.wait(occupant("lobby", "alice"), 1)
        await page.wait(event("join", "alice", "lobby"), 1)
        # The browser reported the refused calls of before the token, and nothing else.
        assert all("401" in error for error in page.page_errors), page.page_errors


async def test_the_keyset_field_and_the_reset_button(node: str, settings: Settings) -> None:
    async with live(settings) as (server, rest), browser(node) as page:
        await rest.heartbeat("lobby", "alice", 60)
        await rest.get("/v2/presence/sub-key/other/channel/hall/heartbeat", uuid="zoe")
        assert await page.do("goto", url=f"http://{server.origin}/inspector") == 200
        await page.wait("#channels p.empty", 5)  # no keyset chosen yet: nothing read
        await page.do("fill", selector="#sub-key", value="other")
        await page.do("click", selector="#keyset-form button")
        await page.wait(occupant("hall", "zoe"), 2)
        assert await page.do("texts", selector="tr.occupant td.uuid") == ["zoe"]
        # Reset (the page asks first; the driver accepts): the keyset empties, the others stay.
        await page.do("click", selector="#reset")
        await page.wait(occupant("hall", "zoe"), 2, state="detached")
        assert (await server.app[STORE].snapshot("other", now=START))["channels"] == {}
        assert list((await server.app[STORE].snapshot("demo", now=START))["channels"]) == ["lobby"]
        assert page.page_errors == []
