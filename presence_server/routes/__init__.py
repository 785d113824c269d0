"""The one table of paths. Name placeholders match ``[^/]+`` because aiohttp's default pattern
refuses ``{``/``}``, which may appear in names once percent-decoded."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from presence_server.access import needs
from presence_server.access.needs import Needs
from presence_server.metrics import UNMATCHED, metrics_handler
from presence_server.routes import access, admin, groups, history, meta, presence, publish, subscribe

N = "[^/]+"
PRESENCE = f"/v2/presence/sub-key/{{sub_key:{N}}}"
SEND = f"{{pub_key:{N}}}/{{sub_key:{N}}}/{{signature:{N}}}/{{channel:{N}}}/{{callback:{N}}}"
REGISTRY = f"/v1/channel-registration/sub-key/{{sub_key:{N}}}/channel-group"
PAM_V2 = f"/v2/auth/{{call:grant|audit}}/sub-key/{{sub_key:{N}}}"
PAM_V3 = f"/v3/pam/{{sub_key:{N}}}/grant"


# Wraps a route's handler once, when it is added: errors, metrics, keyset and Access Manager checks
# (presence_server.app). The route's needs say what Access Manager checks; None: nothing (time, health).
Wrap = Callable[[Handler, str, Needs | None], Handler]


class Router:
    """Adds routes with their handlers wrapped, and answers what no route serves (JSON 404/405)."""

    def __init__(self, app: web.Application, wrap: Wrap) -> None:
        self.app = app
        self.wrap = wrap

    def add_get(self, path: str, handler: Handler, needs: Needs | None = None) -> None:
        self.add_methods(("GET",), path, handler, needs)

    def add(self, method: str, path: str, handler: Handler, needs: Needs | None = None) -> None:
        self.add_methods((method,), path, handler, needs)

    def add_methods(self, methods: tuple[str, ...], path: str, handler: Handler, needs: Needs | None = None) -> None:
        """One handler for several methods of one path (HEAD comes with GET)."""
        resource = self.app.router.add_resource(path)
        wrapped = self.wrap(handler, resource.canonical, needs)
        for method in ("HEAD", *methods) if "GET" in methods else methods:
            resource.add_route(method, wrapped)

    def finish(self) -> None:
        """After every route: a wrong method on a known path is a 405, any other path a 404."""
        for resource in list(self.app.router.resources()):
            if isinstance(resource, web.Resource):
                allowed = {route.method for route in resource}
                resource.add_route("*", self.wrap(_method_not_allowed(allowed), UNMATCHED, None))
        self.app.router.add_route("*", "/{tail:.*}", self.wrap(_not_found, UNMATCHED, None))


def _method_not_allowed(allowed: set[str]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed(request.method, allowed)

    return handler


async def _not_found(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound()


def setup_routes(app: Router) -> None:
    # aiohttp tries the patterns that share a static prefix in the order they were added, so the
    # call every client makes most often comes first. The third column: what Access Manager checks.
    channels = f"{PRESENCE}/channel/{{channels:{N}}}"
    app.add_get(f"{channels}/heartbeat", presence.heartbeat, needs.read_channels)
    app.add_get("/time/0", meta.time)
    app.add_get("/health", meta.health)
    app.add_get("/ready", meta.health)
    app.add_get("/metrics", metrics_handler)
    app.add_get(PRESENCE, presence.here_now_global, needs.signed)
    app.add_get(channels, presence.here_now, needs.read_channels)
    app.add_get(f"{channels}/leave", presence.leave, needs.nothing)
    app.add_get(f"{channels}/uuid/{{uuid:{N}}}", presence.get_state, needs.read_channels)
    app.add_get(f"{channels}/uuid/{{uuid:{N}}}/data", presence.set_state, needs.set_state)
    app.add_get(f"{PRESENCE}/uuid/{{uuid:{N}}}", presence.where_now, needs.nothing)
    app.add_get(
        f"/v2/subscribe/{{sub_key:{N}}}/{{channels:{N}}}/{{callback:{N}}}", subscribe.subscribe, needs.read_channels
    )
    app.add_get(f"/publish/{SEND}/{{message:{N}}}", publish.publish, needs.write_channel)
    app.add("POST", f"/publish/{SEND}", publish.publish, needs.write_channel)
    app.add_get(f"/signal/{SEND}/{{message:{N}}}", publish.signal, needs.write_channel)
    app.add_get(REGISTRY, groups.list_groups, needs.signed)
    app.add_get(f"{REGISTRY}/{{group:{N}}}", groups.modify_or_list, needs.group_change_or_list)
    app.add_get(f"{REGISTRY}/{{group:{N}}}/remove", groups.delete, needs.group_delete)
    app.add_get(f"/v2/history/sub-key/{{sub_key:{N}}}/channel/{{channel:{N}}}", history.history_v2, needs.read_channel)
    fetch = f"/v3/history/sub-key/{{sub_key:{N}}}/channel/{{channels:{N}}}"
    app.add_methods(("GET", "DELETE"), fetch, history.fetch_or_delete, needs.history_channels)
    with_actions = f"/v3/history-with-actions/sub-key/{{sub_key:{N}}}/channel/{{channel:{N}}}"
    app.add_get(with_actions, history.fetch_with_actions, needs.read_channel)
    counts = f"/v3/history/sub-key/{{sub_key:{N}}}/message-counts/{{channels:{N}}}"
    app.add_get(counts, history.message_counts, needs.read_channels)
    app.add("POST", PAM_V3, access.grant_token, needs.signed)
    app.add("DELETE", f"{PAM_V3}/{{token:{N}}}", access.revoke_token, needs.signed)
    app.add_get(PAM_V2, access.grant_or_audit_v2, needs.signed)


def setup_admin_routes(app: Router) -> None:
    app.add("POST", "/admin/clock/advance", admin.advance_clock)
    app.add("POST", f"/admin/keysets/{{sub_key:{N}}}/reset", admin.reset_keyset)
    app.add_get(f"/admin/keysets/{{sub_key:{N}}}/snapshot", admin.snapshot)
    app.add_get(f"/admin/keysets/{{sub_key:{N}}}/messages", admin.last_messages)
    app.add_get(f"/admin/keysets/{{sub_key:{N}}}/events", admin.events)
    app.add("POST", f"/admin/keysets/{{sub_key:{N}}}/leave", admin.leave)
    app.add("POST", f"/admin/keysets/{{sub_key:{N}}}/timeout", admin.time_out)
    app.add_get("/inspector", admin.inspector_page)
    app.add_get(f"/inspector/{{name:{N}}}", admin.inspector_file)
    app.add_methods(("GET", "POST", "DELETE"), "/admin/faults", admin.faults)
    app.add("DELETE", f"/admin/faults/{{fault_id:{N}}}", admin.remove_fault)
