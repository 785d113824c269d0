"""Access Manager v3 tokens (docs/protocol.md 11.3): minted, verified and read here only.

A token is the base64url text (with ``=`` padding: Python's ``parse_token`` needs it) of one CBOR map
with byte-string keys ``v t ttl res pat meta [uuid] sig``, the layout PubNub's own tokens have, so the
SDKs' ``parse_token`` reads ours. PubNub's ``sig`` algorithm is not public; ours is HMAC-SHA256, keyed
with the keyset's secret, over the subscribe key, a NUL and the CBOR of the map without ``sig``. Those
bytes are the token's own bytes in front of the trailing ``sig`` entry with the map's entry count one
lower, so a token is verified before any of its CBOR is decoded: bytes nobody signed are never parsed.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

import cbor2

# Resource kinds as grants and 403 payloads name them, and the CBOR names of each in `res` and `pat`.
CHANNELS, GROUPS, UUIDS = "channels", "groups", "uuids"
_CBOR_KINDS = {CHANNELS: b"chan", GROUPS: b"grp", UUIDS: b"uuid"}
# The legacy Objects aliases: `spc` mirrors `chan`, `usr` mirrors `uuid` (docs/protocol.md 11.3).
_MIRRORS = {b"spc": CHANNELS, b"usr": UUIDS}

# Permission bits (docs/protocol.md 11.3).
READ, WRITE, MANAGE, DELETE, CREATE, GET, UPDATE, JOIN = 1, 2, 4, 8, 16, 32, 64, 128
ALL_BITS = 255

# The trailing entry of every token: the byte string "sig" and a 32-byte byte string header.
_SIG_ENTRY = b"\x43sig\x58\x20"
_SIG_TAIL = len(_SIG_ENTRY) + 32
# The map header of a signed token: 7 entries, or 8 with an authorized uuid (CBOR 0xa0 + count).
_HEADERS = (0xA7, 0xA8)
# How every token begins after its map header: the byte string "v" and the integer 2.
_VERSION_ENTRY = b"\x41v\x02"


class InvalidToken(ValueError):
    """A text that is a token, but not one this keyset signed (or not a well-formed one)."""


@dataclasses.dataclass(frozen=True)
class Token:
    """A verified token: what it grants, to whom, until when."""

    id: str  # the signature, hex: names the token in the revocation list
    issued: int  # Unix seconds
    ttl: int  # minutes
    uuid: str | None
    resources: Mapping[str, Mapping[str, int]]
    patterns: Mapping[str, tuple[tuple[re.Pattern[str], int], ...]]

    @property
    def expires(self) -> float:
        return self.issued + self.ttl * 60

    def allows(self, kind: str, name: str, mask: int) -> bool:
        """Whether the token gives ``name`` (a ``kind``) any bit of ``mask``: by its exact name, or by
        any pattern that ``re.search`` finds in it (docs/protocol.md 11.5)."""
        if self.resources.get(kind, {}).get(name, 0) & mask:
            return True
        return any(bits & mask and pattern.search(name) for pattern, bits in self.patterns.get(kind, ()))


def looks_like_token(auth: str) -> bool:
    """Whether ``auth`` is meant as a v3 token rather than a v2 auth key: base64url of a CBOR map
    that starts with ``v: 2`` (docs/protocol.md 11.5)."""
    head = _decode_base64(auth[:8])
    return head is not None and len(head) >= 4 and head[0] in _HEADERS and head[1:4] == _VERSION_ENTRY


def mint(
    secret: str,
    sub_key: str,
    *,
    issued: int,
    ttl: int,
    resources: Mapping[str, Mapping[str, int]],
    patterns: Mapping[str, Mapping[str, int]],
    meta: Mapping[str, Any],
    uuid: str | None = None,
) -> str:
    """A signed token granting ``resources`` and ``patterns`` (kind -> name -> bits)."""
    body: dict[bytes, Any] = {
        b"v": 2,
        b"t": issued,
        b"ttl": ttl,
        b"res": _cbor_resources(resources),
        b"pat": _cbor_resources(patterns),
        b"meta": dict(meta),
    }
    if uuid is not None:
        body[b"uuid"] = uuid
    unsigned = cbor2.dumps(body)
    signature = _sign(secret, sub_key, unsigned)
    signed = bytes([unsigned[0] + 1]) + unsigned[1:] + _SIG_ENTRY + signature
    return base64.urlsafe_b64encode(signed).decode()


def _cbor_resources(by_kind: Mapping[str, Mapping[str, int]]) -> dict[bytes, dict[str, int]]:
    channels, groups, uuids = (dict(by_kind.get(kind, {})) for kind in (CHANNELS, GROUPS, UUIDS))
    # All five keys, sorted, as PubNub writes them: JavaScript fails without `grp` (docs/protocol.md 11.3).
    return {b"chan": channels, b"grp": groups, b"spc": channels, b"usr": uuids, b"uuid": uuids}


def _sign(secret: str, sub_key: str, unsigned: bytes) -> bytes:
    return hmac.new(secret.encode(), sub_key.encode() + b"\0" + unsigned, hashlib.sha256).digest()


def verify(secret: str, sub_key: str, auth: str) -> Token:
    """The token ``auth`` if this keyset signed it; InvalidToken otherwise. Not cached here: see
    access/control.py."""
    raw = _decode_base64(auth)
    if raw is None or len(raw) <= _SIG_TAIL or raw[0] not in _HEADERS or raw[-_SIG_TAIL:-32] != _SIG_ENTRY:
        raise InvalidToken("not a token")
    unsigned = bytes([raw[0] - 1]) + raw[1:-_SIG_TAIL]
    signature = raw[-32:]
    if not hmac.compare_digest(signature, _sign(secret, sub_key, unsigned)):
        raise InvalidToken("not signed by this keyset")
    # Only bytes this server signed get here, so their CBOR is ours.
    try:
        return _read(signature.hex(), cbor2.loads(unsigned))
    except (cbor2.CBORError, KeyError, TypeError, ValueError, re.error) as exc:
        raise InvalidToken("malformed token") from exc


def _read(token_id: str, body: dict[bytes, Any]) -> Token:
    res, pat = body[b"res"], body[b"pat"]
    patterns = {
        kind: tuple((compiled(text), bits) for text, bits in _merged(pat, kind).items()) for kind in _CBOR_KINDS
    }
    uuid = body.get(b"uuid")
    return Token(
        id=token_id,
        issued=int(body[b"t"]),
        ttl=int(body[b"ttl"]),
        uuid=None if uuid is None else str(uuid),
        resources={kind: _merged(res, kind) for kind in _CBOR_KINDS},
        patterns=patterns,
    )


def _merged(section: dict[bytes, dict[str, int]], kind: str) -> dict[str, int]:
    """One kind's names and bits, with its legacy alias folded in."""
    merged = dict(section.get(_CBOR_KINDS[kind], {}))
    for mirror, mirrored in _MIRRORS.items():
        if mirrored == kind:
            for name, bits in section.get(mirror, {}).items():
                merged[name] = merged.get(name, 0) | int(bits)
    return merged


@functools.lru_cache(maxsize=1024)
def compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def token_id(auth: str) -> str | None:
    """The id (signature, hex) of a token-shaped text, whether or not it verifies; None if none."""
    raw = _decode_base64(auth)
    if raw is None or len(raw) <= _SIG_TAIL or raw[-_SIG_TAIL:-32] != _SIG_ENTRY:
        return None
    return raw[-32:].hex()


def _decode_base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None
