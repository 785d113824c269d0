"""Request signatures (docs/protocol.md 11.2) against vectors the SDKs computed themselves: Python 7.2.0
and JavaScript GET publish, a signed grant body, Python's v1 POST publish and JavaScript's POST publish
signed as a GET without its body. No network: these pin the algorithm itself."""

from __future__ import annotations

import pytest

from presence_server.access.signing import canonical_query, pam_encode, sign_v1, sign_v2, signature_matches

SECRET, SUB, PUB = "sec-c-demo", "sub-c-demo", "pub-c-demo"
PUBLISH_PATH = "/publish/pub-c-demo/sub-c-demo/0/room%201/0/%22hi%20there%22"


def matches(signature: str, method: str, path: str, query: str, body: bytes = b"") -> bool:
    return signature_matches(
        SECRET, signature, method=method, sub_key=SUB, pub_key=PUB, raw_path=path, raw_query=query, body=body
    )


def test_the_pam_encoder_escapes_all_but_the_unreserved_set() -> None:
    assert pam_encode("~user/1_2.3-4") == "%7Euser%2F1_2.3-4"
    assert pam_encode("£13.37") == "%C2%A313.37"
    assert pam_encode("a b+c*!'()[]") == "a%20b%2Bc%2A%21%27%28%29%5B%5D"


def test_the_canonical_query_decodes_once_sorts_and_drops_the_signature() -> None:
    # Python sends auth raw: its "+" is a plus, not a space. A comma list signs its commas as %2C.
    raw = "uuid=user-1&auth=tok+en/=&signature=v2.x&channel=a,b&pnsdk=PubNub-Python%2F7.2.0"
    assert canonical_query(raw) == "auth=tok%2Ben%2F%3D&channel=a%2Cb&pnsdk=PubNub-Python%2F7.2.0&uuid=user-1"


def test_python_get_publish_vector() -> None:
    query = "auth=tok+en/=&pnsdk=PubNub-Python%2F7.2.0&uuid=user-1&timestamp=1700000000"
    expected = "v2.m5NOuePwnOjfvgC2dGrcYy5OiShwk_SxeVC88s9Nubc"
    assert sign_v2(SECRET, "GET", PUB, PUBLISH_PATH, canonical_query(query)) == expected
    assert matches(expected, "GET", PUBLISH_PATH, f"{query}&signature={expected}")


def test_javascript_get_publish_vector() -> None:
    query = "uuid=user-1&pnsdk=PubNub-JS-Nodejs%2F12.0.3&auth=tok%2Ben%2F%3D&timestamp=1700000000"
    assert matches("v2.U_Ed-IqVXDHn6N196Le7lxAuUqQXUsiXtv6PwYvhNxY", "GET", PUBLISH_PATH, query)


def test_javascript_grant_token_vector_signs_the_body() -> None:
    body = (
        b'{"ttl":15,"permissions":{"resources":{"channels":{"room-1":1},"groups":{},"uuids":{},"users":{},'
        b'"spaces":{}},"patterns":{"channels":{},"groups":{},"uuids":{},"users":{},"spaces":{}},"meta":{}}}'
    )
    query = "pnsdk=PubNub-JS-Nodejs%2F12.0.3&timestamp=1700000000&uuid=user-1"
    signature = "v2.QC5IvaAh2abJdWPJR1RS0F7t4oazznucQ_kxW4eXbJg"
    assert matches(signature, "POST", "/v3/pam/sub-c-demo/grant", query, body)
    # One byte of the body changed: the signature no longer matches.
    assert not matches(signature, "POST", "/v3/pam/sub-c-demo/grant", query, body.replace(b"15", b"16"))


def test_python_post_publish_is_signed_v1() -> None:
    path, query = (
        "/publish/pub-c-demo/sub-c-demo/0/room-1/0",
        "pnsdk=PubNub-Python%2F7.2.0&uuid=user-1&timestamp=1700000000",
    )
    signature = "0l3Nf4cpK3J93YzfppUX72A_4pD5HmZ7KWYujmiuPPA="
    assert sign_v1(SECRET, SUB, PUB, path, canonical_query(query)) == signature
    assert matches(signature, "POST", path, query, b'{"text":"hi"}')
    assert matches(signature.rstrip("="), "POST", path, query, b'{"text":"hi"}')
    # v1 covers neither the method nor the body: it signs a POST publish and nothing else.
    assert not matches(signature, "GET", path, query)
    assert not matches(signature, "DELETE", path, query)
    history = "/v3/history/sub-key/sub-c-demo/channel/room-1"
    v1 = sign_v1(SECRET, SUB, PUB, history, canonical_query(query))
    assert not matches(v1, "GET", history, query) and not matches(v1, "DELETE", history, query)


def test_javascript_post_publish_is_signed_as_a_get_without_its_body() -> None:
    path = "/publish/pub-c-demo/sub-c-demo/0/room-1/0"
    query = "uuid=user-1&pnsdk=PubNub-JS-Nodejs%2F12.0.3&timestamp=1700000000"
    signature = "v2.sYkO2yafbCwWuTZtGIDHWaS6dmBdwbmVSHH8t_FhPh8"
    assert matches(signature, "POST", path, query, b'{"text":"hi"}')
    # That fallback is for publish only.
    assert not matches(
        sign_v2(SECRET, "GET", PUB, "/v3/pam/sub-c-demo/grant", canonical_query(query)),
        "POST",
        "/v3/pam/sub-c-demo/grant",
        query,
        b"{}",
    )


@pytest.mark.parametrize(
    "change",
    [
        {"secret": "sec-c-other"},
        {"method": "DELETE"},
        {"path": PUBLISH_PATH.replace("room%201", "room%202")},
        {"query": "auth=tok%20en/=&pnsdk=PubNub-Python%2F7.2.0&uuid=user-1&timestamp=1700000000"},
        {"query": "auth=tok+en/=&pnsdk=PubNub-Python%2F7.2.0&uuid=user-1&timestamp=1700000001"},
    ],
    ids=["secret", "method", "path", "plus-as-space", "timestamp"],
)
def test_any_change_breaks_the_signature(change: dict[str, str]) -> None:
    query = "auth=tok+en/=&pnsdk=PubNub-Python%2F7.2.0&uuid=user-1&timestamp=1700000000"
    signature = "v2.m5NOuePwnOjfvgC2dGrcYy5OiShwk_SxeVC88s9Nubc"
    assert signature_matches(
        change.get("secret", SECRET),
        signature,
        method=change.get("method", "GET"),
        sub_key=SUB,
        pub_key=PUB,
        raw_path=change.get("path", PUBLISH_PATH),
        raw_query=change.get("query", query),
        body=b"",
    ) is (not change)
