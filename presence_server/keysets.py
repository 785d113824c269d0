"""The keyset allow-list (PRESENCE_KEYSETS): only the listed keysets are served."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from presence_server.context import CLOCK
from presence_server.http import PubNubError, json_response
from presence_server.params import path_value
from presence_server.store import timetoken_at


def keyset_checked(handler: Handler, pairs: list[tuple[str, str]]) -> Handler:
    """With PRESENCE_KEYSETS (``pairs``), only the listed keysets are served, each isolated from
    the others."""
    listed, subs = set(pairs), {sub for _, sub in pairs}

    async def checked(request: web.Request) -> web.StreamResponse:
        # Read as the handlers read them (params), never from a parse of their own: a target the
        # check understood differently from the handler would let a request past it.
        sub_key, pub_key = path_value(request, "sub_key"), path_value(request, "pub_key")
        if sub_key is not None and sub_key not in subs:
            if pub_key is not None:
                return json_response([0, "Invalid Key", timetoken_at(request.app[CLOCK]())], 400)
            raise PubNubError(400, "Invalid Subscribe Key", "Access Manager")
        if pub_key is not None and (pub_key, sub_key) not in listed:
            return json_response([0, "Invalid Key", timetoken_at(request.app[CLOCK]())], 400)
        return await handler(request)

    return checked
