"""Request signatures made with a keyset's secret key (docs/protocol.md 11.2).

A signature covers the method, the publish key, the path exactly as sent (still percent-encoded),
every query parameter but ``signature`` in canonical form, and the body of a POST or PATCH. The
canonical form decodes each value once and encodes it again with the PAM encoder, so that the SDKs'
different wire encodings (Python sends ``uuid`` and ``auth`` raw, JavaScript encodes them) sign alike.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote, unquote

from presence_server.params import cached_when_short

V2 = "v2."


def pam_encode(value: str) -> str:
    """Every UTF-8 byte but ``A-Z a-z 0-9 - _ .`` as ``%XX``, upper-case hex (docs/protocol.md 11.2)."""
    return quote(value, safe="").replace("~", "%7E")


@cached_when_short(maxsize=1024)
def canonical_query(raw_query: str) -> str:
    """The signed form of a raw query string: ``signature`` dropped, pairs sorted, values re-encoded.

    Decoded with ``unquote``, never ``unquote_plus``: a ``+`` that Python sent raw is a plus.
    """
    pairs = []
    for pair in raw_query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        key = unquote(key)
        if key != "signature":
            pairs.append((key, unquote(value)))
    pairs.sort()
    return "&".join(f"{key}={pam_encode(value)}" for key, value in pairs)


def _digest(secret: str, text: bytes) -> str:
    mac = hmac.new(secret.encode(), text, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode()


def sign_v2(secret: str, method: str, pub_key: str, raw_path: str, query: str, body: bytes = b"") -> str:
    """``v2.`` and the unpadded URL-safe HMAC-SHA256 of ``METHOD\\npub\\npath\\nquery\\nbody``."""
    text = f"{method}\n{pub_key}\n{raw_path}\n{query}\n".encode() + body
    return V2 + _digest(secret, text).rstrip("=")


def sign_v1(secret: str, sub_key: str, pub_key: str, raw_path: str, query: str) -> str:
    """The legacy form Python signs POST publish with: ``sub\\npub\\npath\\nquery``, padded, no prefix."""
    return _digest(secret, f"{sub_key}\n{pub_key}\n{raw_path}\n{query}".encode())


def signature_matches(
    secret: str,
    signature: str,
    *,
    method: str,
    sub_key: str,
    pub_key: str,
    raw_path: str,
    raw_query: str,
    body: bytes,
) -> bool:
    """Whether ``signature`` signs this request with ``secret``, in any form an SDK signs it (docs/protocol.md 11.2)."""
    query = canonical_query(raw_query)
    if signature.startswith(V2):
        signed_body = body if method in ("POST", "PATCH") else b""
        if _same(signature, sign_v2(secret, method, pub_key, raw_path, query, signed_body)):
            return True
        # JavaScript signs a POST publish as a GET without its body (docs/protocol.md 11.2).
        return (
            method == "POST"
            and raw_path.startswith("/publish/")
            and _same(signature, sign_v2(secret, "GET", pub_key, raw_path, query))
        )
    # v1 covers neither the method nor the body: only what Python signs with it, a POST publish.
    if method != "POST" or not raw_path.startswith("/publish/"):
        return False
    return _same(signature.rstrip("="), sign_v1(secret, sub_key, pub_key, raw_path, query).rstrip("="))


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
