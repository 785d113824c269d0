"""The inspector page (docs/protocol.md 9.2): a page served with the admin API that shows one keyset live
(who is where, with state and time left, groups, last messages, a feed of presence events) and steers
it (advance the clock, make a user leave or time out, reset). It reads only the admin API's JSON, so
anyone may build their own; ``feed`` shapes that JSON, ``page`` serves the files in ``static/``.
"""
