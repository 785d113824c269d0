"""The one table of paths. Name placeholders match ``[^/]+`` because aiohttp's default pattern
refuses ``{``/``}``, which may appear in names once percent-decoded."""

from __future__ import annotations

from aiohttp import web

from server.metrics import metrics_handler
from server.routes import admin, groups, meta, presence, publish, subscribe

N = "[^/]+"
PRESENCE = f"/v2/presence/sub-key/{{sub_key:{N}}}"
SEND = f"{{pub_key:{N}}}/{{sub_key:{N}}}/{{signature:{N}}}/{{channel:{N}}}/{{callback:{N}}}"
REGISTRY = f"/v1/channel-registration/sub-key/{{sub_key:{N}}}/channel-group"


def setup_routes(app: web.Application) -> None:
    # aiohttp tries the patterns that share a static prefix in the order they were added, so the
    # call every client makes most often comes first.
    app.router.add_get(f"{PRESENCE}/channel/{{channels:{N}}}/heartbeat", presence.heartbeat)
    app.router.add_get("/time/0", meta.time)
    app.router.add_get("/health", meta.health)
    app.router.add_get("/ready", meta.health)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get(PRESENCE, presence.here_now_global)
    app.router.add_get(f"{PRESENCE}/channel/{{channels:{N}}}", presence.here_now)
    app.router.add_get(f"{PRESENCE}/channel/{{channels:{N}}}/leave", presence.leave)
    app.router.add_get(f"{PRESENCE}/channel/{{channels:{N}}}/uuid/{{uuid:{N}}}", presence.get_state)
    app.router.add_get(f"{PRESENCE}/channel/{{channels:{N}}}/uuid/{{uuid:{N}}}/data", presence.set_state)
    app.router.add_get(f"{PRESENCE}/uuid/{{uuid:{N}}}", presence.where_now)
    app.router.add_get(f"/v2/subscribe/{{sub_key:{N}}}/{{channels:{N}}}/{{callback:{N}}}", subscribe.subscribe)
    app.router.add_get(f"/publish/{SEND}/{{message:{N}}}", publish.publish)
    app.router.add_post(f"/publish/{SEND}", publish.publish)
    app.router.add_get(f"/signal/{SEND}/{{message:{N}}}", publish.signal)
    app.router.add_get(REGISTRY, groups.list_groups)
    app.router.add_get(f"{REGISTRY}/{{group:{N}}}", groups.modify_or_list)
    app.router.add_get(f"{REGISTRY}/{{group:{N}}}/remove", groups.delete)


def setup_admin_routes(app: web.Application) -> None:
    app.router.add_post("/admin/clock/advance", admin.advance_clock)
    app.router.add_post(f"/admin/keysets/{{sub_key:{N}}}/reset", admin.reset_keyset)
    app.router.add_get(f"/admin/keysets/{{sub_key:{N}}}/snapshot", admin.snapshot)
