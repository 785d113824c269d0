"""The names of the data scripts write are defined once, in fields.py, and the scripts use them."""

from __future__ import annotations

import re
from importlib import resources

from presence_server.store import fields

# Written by Python only (the admin API, a reset), never by a script.
PYTHON_ONLY = {"WAKE_CLOCK", "WAKE_RESET", "WAKE_FAULTS"}


def test_the_lua_header_names_every_field_scripts_write() -> None:
    header = fields.lua_header()
    in_lua = set(re.findall(r"= '([^']*)'", header))
    written = {
        value
        for name, value in vars(fields).items()
        if re.fullmatch(r"(EVENT|COUNTER|WAKE)_[A-Z_]+", name) and name not in PYTHON_ONLY
    }
    assert written <= in_lua, written - in_lua


def test_no_script_spells_a_field_name_itself() -> None:
    lua = resources.files("presence_server.store") / "lua"
    for name in ("common", "heartbeat", "leave", "set_state", "sweep", "publish"):
        text = (lua / f"{name}.lua").read_text()
        # A field given as a one-letter literal in a fields list or a wake-up table.
        assert not re.search(r"\{'[a-z]',|table\.insert\(fields, '[a-z]'\)|\b[kn] = ", text), name
