"""The parse caches of presence_server.params hold short texts only: distinct long request lines,
which one client can send without end, leave nothing behind."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from presence_server import params
from presence_server.http import PRESENCE

LONG = 100 * 1024


@pytest.mark.parametrize(
    "parse",
    [
        lambda text: params._parse_query(text),
        lambda text: params._segments(text),
        lambda text: params._split_names(text, "channel", 10**6, PRESENCE, False),
    ],
    ids=["query", "path segments", "name lists"],
)
def test_distinct_long_texts_are_not_kept(parse: Callable[[str], Any]) -> None:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(300):
            parse(f"{i:04d}" + "a" * LONG)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 2 * 1024 * 1024, f"{kept / 1024 / 1024:.1f} MiB kept after 300 texts of 100 KiB"


def test_short_texts_are_parsed_once() -> None:
    text = "uuid=u1&heartbeat=60&cached-test=1"
    assert params._parse_query(text) is params._parse_query(text)
