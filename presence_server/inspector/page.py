"""The inspector's files (``static/``), served with the admin API: the page, its script, its style sheet.

No build step and nothing fetched from elsewhere: the policy below lets the page load its own script
and style sheet and talk to this server only, so no inline script or style runs, nor anything injected
through a channel name or a state shown on the page (the script sets text, never markup).
"""

from __future__ import annotations

import functools
from importlib import resources

from aiohttp import hdrs, web

from presence_server.http import PubNubError

FILES = {
    "index.html": "text/html; charset=utf-8",
    "inspector.js": "text/javascript; charset=utf-8",
    "inspector.css": "text/css; charset=utf-8",
}
PAGE = "index.html"

POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.cache
def _content(name: str) -> bytes:
    return (resources.files("presence_server.inspector") / "static" / name).read_bytes()


def file_response(name: str, service: str) -> web.Response:
    """One of FILES with its type and the headers above; any other name is a JSON 404."""
    content_type = FILES.get(name)
    if content_type is None:
        raise PubNubError(404, "No such file of the inspector page", service)
    response = web.Response(body=_content(name), headers=HEADERS)
    response.headers[hdrs.CONTENT_TYPE] = content_type
    return response
