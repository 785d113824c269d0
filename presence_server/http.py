"""PubNub-shaped responses and errors, and the middleware that keeps every answer JSON."""

from __future__ import annotations

import functools
import logging
import time
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from presence_server.context import REDIS_OUTAGE
from presence_server.logs import REDIS_DOWN as REDIS_DOWN  # re-exported: metrics reads it here
from presence_server.store.core import ClockOutOfRange, timetoken_at

log = logging.getLogger("presence_server")

# What the real service sends; both SDKs require "json" or "javascript" in it (docs/protocol.md 1.4).
CONTENT_TYPE = 'text/javascript; charset="UTF-8"'

PRESENCE = "Presence"
CHANNEL_REGISTRY = "channel-registry"
ACCESS_MANAGER = "Access Manager"

# Server options every way of running the app uses: held long-polls are cancelled when their client
# goes away, and publish bodies reach the handler undecoded (Python labels zlib as gzip, docs/protocol.md 8).
# A GET publish carries its message in the path: 32 KiB of JSON, percent-encoded, exceeds aiohttp's
# 8 KiB request line; a longer line would get aiohttp's plain-text 400 instead of our JSON 413.
RUNNER_OPTIONS: dict[str, object] = {
    "handler_cancellation": True,
    "auto_decompress": False,
    "max_line_size": 128 * 1024,
}


def json_response(body: Any, status: int = 200) -> web.Response:
    return raw_json_response(orjson.dumps(body), status)


def raw_json_response(body: bytes, status: int = 200) -> web.Response:
    """A response whose JSON body is already serialised."""
    response = web.Response(body=body, status=status)
    # Set after: a headers dict passed in is copied into a new multidict, twice the cost of the
    # rest of the response object, paid by every heartbeat and every woken poll.
    response.headers[hdrs.CONTENT_TYPE] = CONTENT_TYPE
    return response


def ok(service: str = PRESENCE, **fields: Any) -> web.Response:
    """The ``{"status": 200, "message": "OK", "service": ...}`` body most presence calls answer."""
    if fields:
        return json_response({"status": 200, "message": "OK", "service": service, **fields})
    # Heartbeats: the same bytes every time.
    body = _PLAIN_OK if service == PRESENCE else _plain_ok(service)
    response = web.Response(body=body)
    response.headers[hdrs.CONTENT_TYPE] = CONTENT_TYPE  # as raw_json_response sets it, one call less
    return response


@functools.cache
def _plain_ok(service: str) -> bytes:
    return orjson.dumps({"status": 200, "message": "OK", "service": service})


_PLAIN_OK = _plain_ok(PRESENCE)


class PubNubError(Exception):
    """An error answered with PubNub's JSON error body (docs/protocol.md 1.5); never a 2xx."""

    def __init__(
        self,
        status: int,
        message: str,
        service: str = PRESENCE,
        payload: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.service = service
        self.payload = payload
        self.headers = headers or {}

    def response(self) -> web.Response:
        body: dict[str, Any] = {"status": self.status, "error": True, "message": self.message, "service": self.service}
        if self.payload is not None:
            body["payload"] = self.payload
        response = json_response(body, self.status)
        response.headers.update(self.headers)
        return response


class SendError(PubNubError):
    """An error of publish, fire or signal: an array, ``[0, "<message>", "<timetoken>"]`` (docs/protocol.md 2.9)."""

    def __init__(self, error: PubNubError, now: float) -> None:
        super().__init__(error.status, error.message, error.service)
        self.now = now

    def response(self) -> web.Response:
        return json_response([0, self.message, timetoken_at(self.now)], self.status)


def bad_request(message: str, service: str = PRESENCE) -> PubNubError:
    return PubNubError(400, message, service)


_clock_reported: list[bool] = []  # said once per process


def error_response(request: web.Request, exc: Exception) -> web.Response:
    """The JSON answer to a handler's failure: aiohttp's own error pages are plain text (docs/protocol.md 8).
    The caller passes on HTTP exceptions below 400 (redirects) and cancellations."""
    if isinstance(exc, PubNubError):
        return exc.response()
    if isinstance(exc, web.HTTPException):
        return PubNubError(exc.status, exc.reason, _service_of(request.path)).response()
    if isinstance(exc, REDIS_DOWN):
        outage = request.app.get(REDIS_OUTAGE)
        if outage is not None:
            outage.failed(f"{request.method} {_logged_path(request)}", exc)
        else:
            log.warning("redis unavailable during %s %s: %s", request.method, _logged_path(request), exc)
        return _failure(request, 503, "Service Unavailable")
    if isinstance(exc, ClockOutOfRange):
        # Nothing was written (store.core.timetoken_at refuses first); /health says so too.
        if not _clock_reported:
            _clock_reported.append(True)
            log.error("clock out of range, answering 503 until it is back: %s", exc)
        return _failure(request, 503, "Service Unavailable: clock out of range")
    log.error("internal error during %s %s", request.method, _logged_path(request), exc_info=exc)
    return _failure(request, 500, "Internal Server Error")


def _failure(request: web.Request, status: int, message: str) -> web.Response:
    """The server's own failure, in the route's error shape: publish's and signal's array (docs/protocol.md
    2.9, with the wall clock's timetoken: the server's clock may be what failed), else the object."""
    if request.path.startswith(("/publish/", "/signal/")):
        return json_response([0, message, str(int(time.time() * 10_000_000))], status)
    return PubNubError(status, message, _service_of(request.path)).response()


def _logged_path(request: web.Request) -> str:
    """The route's pattern (``/v3/pam/{sub_key}/grant/{token}``), not the path: a path may carry a
    token, and names are the users' own."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


def _service_of(path: str) -> str:
    if path.startswith("/v1/channel-registration"):
        return CHANNEL_REGISTRY
    return PRESENCE


# -- what aiohttp answers before any handler runs ----------------------------------------------------
#
# aiohttp refuses some requests while parsing them, before routing: a request line over max_line_size
# (128 KiB here) or a header over 8 KiB, characters a request line or header may not hold, a bad
# method, an unsupported HTTP version, a malformed chunked body. Its own answer is a plain-text 400 (or
# 505, 413...) that the SDKs cannot parse (docs/protocol.md 1.4). Servers started through AppRunner
# below answer those in PubNub's JSON error shape, with the same status and the parser's reason, and
# close the connection as aiohttp does. (aiohttp's test server, which route tests use, keeps its own.)


class _JsonErrorHandler(RequestHandler):
    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            # A malformed request is the client's, not ours: one line, without aiohttp's traceback
            # and without the parser's message, which quotes the refused bytes (an oversized
            # Authorization header, say) into the log.
            log.info("refused a malformed request from %s: %s", request.remote, status)
        if request.writer.output_size > 0:
            # Part of an answer went out already: no error body can follow (as aiohttp does).
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        # The status's phrase only: the parser's message may quote the refused request line, and
        # with it a token or an auth key, back to whoever is on the other end of the connection.
        response = PubNubError(status, reason, _service_of(request.path)).response()
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer aiohttp's own refusals in JSON (see above)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _JsonErrorServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
