"""Tokens (docs/protocol.md 11.3): what the server mints it verifies, the SDK's own parser reads, and
nothing else verifies: not a changed byte, not another keyset's token, not unsigned CBOR."""

from __future__ import annotations

import base64

import cbor2
import pytest
from pubnub.pnconfiguration import PNConfiguration
from pubnub.pubnub import PubNub

from presence_server.access.tokens import (
    CHANNELS,
    GROUPS,
    MANAGE,
    READ,
    UUIDS,
    WRITE,
    InvalidToken,
    looks_like_token,
    mint,
    token_id,
    verify,
)

SECRET, SUB = "sec-c-demo", "sub-c-demo"


def sample(uuid: str | None = "user-1", secret: str = SECRET, sub_key: str = SUB) -> str:
    return mint(
        secret,
        sub_key,
        issued=1_700_000_000,
        ttl=15,
        resources={CHANNELS: {"room-1": READ | WRITE, "room-1-pnpres": READ}, GROUPS: {"cg-1": MANAGE}},
        patterns={CHANNELS: {"^lobby-[0-9]+$": READ}},
        meta={"plan": "free", "limits": [1, 2]},
        uuid=uuid,
    )


def test_a_minted_token_verifies_to_what_was_granted() -> None:
    token = verify(SECRET, SUB, sample())
    assert (token.issued, token.ttl, token.expires, token.uuid) == (1_700_000_000, 15, 1_700_000_900, "user-1")
    assert token.allows(CHANNELS, "room-1", WRITE) and token.allows(CHANNELS, "room-1-pnpres", READ)
    assert not token.allows(CHANNELS, "room-1-pnpres", WRITE) and not token.allows(CHANNELS, "room-2", READ)
    assert token.allows(GROUPS, "cg-1", MANAGE) and not token.allows(GROUPS, "cg-1", READ)
    assert token.allows(CHANNELS, "lobby-42", READ) and not token.allows(CHANNELS, "lobby-x", READ)
    assert not token.allows(UUIDS, "user-1", READ)
    assert token.id == token_id(sample())


def test_tokens_are_padded_base64url_and_verify_unpadded_too() -> None:
    text = sample()
    assert len(text) % 4 == 0 and "+" not in text and "/" not in text
    assert verify(SECRET, SUB, text.rstrip("=")).id == verify(SECRET, SUB, text).id


def test_the_python_sdk_parses_our_token() -> None:
    config = PNConfiguration()
    config.subscribe_key, config.publish_key, config.uuid = SUB, "pub-c-demo", "parser"
    parsed = PubNub(config).parse_token(sample())
    assert parsed["version"] == 2 and parsed["ttl"] == 15 and parsed["authorized_uuid"] == "user-1"
    assert parsed["resources"]["channels"]["room-1"]["write"] is True
    assert parsed["resources"]["channels"]["room-1"]["manage"] is False
    assert parsed["resources"]["groups"]["cg-1"]["manage"] is True
    assert parsed["patterns"]["channels"]["^lobby-[0-9]+$"]["read"] is True
    assert parsed["meta"] == {"plan": "free", "limits": [1, 2]}


def test_no_authorized_uuid_makes_a_seven_entry_map() -> None:
    raw = base64.urlsafe_b64decode(sample(uuid=None))
    assert raw[0] == 0xA7
    assert verify(SECRET, SUB, sample(uuid=None)).uuid is None


@pytest.mark.parametrize("position", [0, 5, 40, -40, -1])
def test_any_changed_byte_is_refused(position: int) -> None:
    raw = bytearray(base64.urlsafe_b64decode(sample()))
    raw[position] ^= 0x01
    with pytest.raises(InvalidToken):
        verify(SECRET, SUB, base64.urlsafe_b64encode(bytes(raw)).decode())


def test_another_keysets_token_is_refused_even_with_the_same_secret() -> None:
    with pytest.raises(InvalidToken):
        verify(SECRET, SUB, sample(sub_key="sub-c-other"))
    with pytest.raises(InvalidToken):
        verify(SECRET, SUB, sample(secret="sec-c-other"))


def test_unsigned_cbor_is_never_decoded() -> None:
    # A map that claims v2 and carries a "sig" entry of the right size, but nobody signed it.
    forged = cbor2.dumps({b"v": 2, b"t": 1, b"ttl": 1, b"res": {}, b"pat": {}, b"meta": {}, b"sig": bytes(32)})
    text = base64.urlsafe_b64encode(forged).decode()
    assert looks_like_token(text)
    with pytest.raises(InvalidToken):
        verify(SECRET, SUB, text)


@pytest.mark.parametrize("auth", ["my-auth-key", "", "qEF2", "!!!", "tok+en/=", "p0F2AkF0", "a" * 5000])
def test_malformed_texts_are_refused(auth: str) -> None:
    with pytest.raises(InvalidToken):
        verify(SECRET, SUB, auth)


def test_auth_keys_and_tokens_are_told_apart() -> None:
    assert looks_like_token(sample()) and looks_like_token(sample(uuid=None))
    assert not looks_like_token("my-auth-key") and not looks_like_token("") and not looks_like_token("tok+en/=")
