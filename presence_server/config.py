"""Settings: one frozen dataclass read from PRESENCE_* variables, overridable by CLI flags."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from presence_server.store.connect import BadRedisUrl, check_url

# A failing webhook event is retried for at least this long, and never longer than the upper bound.
MIN_WEBHOOK_RETRY, MAX_WEBHOOK_RETRY = 30.0, 3600.0


class SettingsError(ValueError):
    """A setting has a value the server cannot run with; the message names the setting."""


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8090
    redis_url: str = "memory://"
    default_timeout: float = 300.0
    min_timeout: float = 20.0
    max_timeout: float = 3600.0
    sweep_interval: float = 1.0
    max_name_length: int = 92
    key_prefix: str = "pn"
    log_size: int = 1000
    announce_max: int = 20
    interval: float = 10.0
    longpoll_hold: float = 280.0
    keysets: str = ""  # "pub:sub" (open) or "pub:sub:secret" (Access Manager on), comma-separated
    history_retention: float = 604_800.0  # seconds messages are kept for history; 0 turns storage off
    history_max: int = 100_000  # messages kept per channel at most (the oldest go first)
    signature_window: float = 60.0  # seconds a signed request's timestamp may be off the wall clock
    admin: bool = False
    admin_remote: bool = False
    admin_token: str = ""  # when set, every admin call needs "Authorization: Bearer <token>"
    webhook_url: str = ""  # presence webhooks: every presence event POSTed here (presence_server/webhooks.py)
    webhook_secret: str = ""  # when set, each webhook POST carries an HMAC-SHA256 signature of its body
    webhook_retry_seconds: float = 60.0  # how long a failing webhook event is retried before it is dropped
    log_format: str = "text"
    access_log: bool = False

    def __post_init__(self) -> None:
        self._check_address()
        self._check_times()
        self._check_sizes()
        self._check_formats()

    def _check_address(self) -> None:
        if not self.host:
            raise SettingsError("PRESENCE_HOST must not be empty")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"PRESENCE_PORT must be between 0 and 65535, got {self.port}")
        if "://" not in self.redis_url:
            raise SettingsError(
                "PRESENCE_REDIS_URL must be a URL such as memory:// or redis://host:6379/0, "
                f"got {redact_url(self.redis_url)!r}"
            )
        try:
            check_url(self.redis_url)
        except BadRedisUrl as exc:
            raise SettingsError(f"PRESENCE_REDIS_URL {redact_url(self.redis_url)!r}: {exc}") from None

    def _check_times(self) -> None:
        for name in (
            "default_timeout",
            "min_timeout",
            "max_timeout",
            "sweep_interval",
            "interval",
            "longpoll_hold",
            "signature_window",
        ):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise SettingsError(f"{_env_name(name)} must be a positive number, got {getattr(self, name)}")
        if self.min_timeout > self.max_timeout:
            raise SettingsError(
                f"PRESENCE_MIN_TIMEOUT ({self.min_timeout}) must not exceed PRESENCE_MAX_TIMEOUT ({self.max_timeout})"
            )

    def _check_sizes(self) -> None:
        if self.max_name_length < 1:
            raise SettingsError(f"PRESENCE_MAX_NAME_LENGTH must be a positive integer, got {self.max_name_length}")
        if self.announce_max < 0:
            raise SettingsError(f"PRESENCE_ANNOUNCE_MAX must be zero or more, got {self.announce_max}")
        if not (0 <= self.history_retention < math.inf):
            raise SettingsError(
                f"PRESENCE_HISTORY_RETENTION must be zero or a positive number, got {self.history_retention}"
            )
        if self.history_max < self.log_size:
            raise SettingsError(
                f"PRESENCE_HISTORY_MAX ({self.history_max}) must be at least PRESENCE_LOG_SIZE ({self.log_size})"
            )
        if self.log_size < 100:
            raise SettingsError(f"PRESENCE_LOG_SIZE must be at least 100, got {self.log_size}")

    def _check_formats(self) -> None:
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"PRESENCE_LOG_FORMAT must be text or json, got {self.log_format!r}")
        self._check_keysets()
        self._check_webhooks()
        if not self.key_prefix or any(c in self.key_prefix for c in "{}"):
            raise SettingsError(f"PRESENCE_KEY_PREFIX must be non-empty and free of braces, got {self.key_prefix!r}")
        if self.admin_token and not re.fullmatch(r"[!-~]{16,}", self.admin_token):
            # Never echoed: the message names the setting only.
            raise SettingsError("PRESENCE_ADMIN_TOKEN must be at least 16 printable ASCII characters without spaces")

    def _check_webhooks(self) -> None:
        if self.webhook_url:
            scheme, sep, rest = self.webhook_url.partition("://")
            host = rest.split("/", 1)[0].rpartition("@")[2]
            if scheme.lower() not in ("http", "https") or not sep or not host or any(c.isspace() for c in rest):
                raise SettingsError(
                    "PRESENCE_WEBHOOK_URL must be an http:// or https:// URL with a host, "
                    f"got {redact_url(self.webhook_url)!r}"
                )
        if not (MIN_WEBHOOK_RETRY <= self.webhook_retry_seconds <= MAX_WEBHOOK_RETRY):
            raise SettingsError(
                f"PRESENCE_WEBHOOK_RETRY_SECONDS must be between {MIN_WEBHOOK_RETRY:.0f} and "
                f"{MAX_WEBHOOK_RETRY:.0f}, got {self.webhook_retry_seconds}"
            )

    def _check_keysets(self) -> None:
        entries = self._keyset_fields()
        for fields in entries:
            # Never echoes the value: it holds secret keys.
            if len(fields) not in (2, 3) or not all(fields):
                raise SettingsError(
                    "PRESENCE_KEYSETS must be a comma list of publish_key:subscribe_key or "
                    "publish_key:subscribe_key:secret_key entries, each field non-empty"
                )
        subs = [fields[1] for fields in entries]
        if any(len(fields) == 3 and subs.count(fields[1]) > 1 for fields in entries):
            raise SettingsError("PRESENCE_KEYSETS: a subscribe key with a secret key must be listed once")

    def _keyset_fields(self) -> list[list[str]]:
        return [item.split(":", 2) for item in filter(None, (part.strip() for part in self.keysets.split(",")))]

    def keyset_pairs(self) -> list[tuple[str, str]]:
        """PRESENCE_KEYSETS as (publish key, subscribe key) pairs; empty means every keyset is accepted."""
        return [(fields[0], fields[1]) for fields in self._keyset_fields()]

    def keyset_secrets(self) -> dict[str, tuple[str, str]]:
        """The Access Manager keysets: subscribe key -> (publish key, secret key)."""
        return {fields[1]: (fields[0], fields[2]) for fields in self._keyset_fields() if len(fields) == 3}

    def clamp_timeout(self, seconds: float) -> float:
        """Bound a client's presence timeout to [min_timeout, max_timeout]."""
        return min(max(seconds, self.min_timeout), self.max_timeout)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read PRESENCE_* variables; keyword overrides (CLI flags) win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(_env_name(field.name))
            if raw is not None and raw != "":
                values[field.name] = _convert(field.name, field.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def summary(self) -> dict[str, Any]:
        """The settings as a dict safe to log: no Redis password, no keys, no secrets."""
        data = dataclasses.asdict(self)
        data["redis_url"] = redact_url(self.redis_url)
        secured = len(self.keyset_secrets())
        data["keysets"] = f"{len(self.keyset_pairs())} listed, {secured} with Access Manager" if self.keysets else "any"
        data["admin_token"] = "set" if self.admin_token else "unset"
        # The query may carry the receiver's own token: only where the events go is logged.
        location, query_sep, _ = self.webhook_url.partition("?")
        data["webhook_url"] = redact_url(location) + ("?***" if query_sep else "")
        data["webhook_secret"] = "set" if self.webhook_secret else "unset"
        return data


def _env_name(field_name: str) -> str:
    return "PRESENCE_" + field_name.upper()


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _convert(name: str, type_name: Any, raw: str) -> Any:
    if str(type_name) == "bool":
        if raw.lower() not in _TRUE + _FALSE:
            raise SettingsError(f"{_env_name(name)} must be 1 or 0 (true or false), got {raw!r}")
        return raw.lower() in _TRUE
    kind = {"int": int, "float": float}.get(str(type_name), str)
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{_env_name(name)} must be a {kind.__name__}, got {raw!r}") from None


def redact_url(url: str) -> str:
    """The URL without its password: the one before ``@`` and any ``password=`` in the query."""
    scheme, sep, rest = url.partition("://")
    if not sep:  # no scheme at all (a refused value): everything is the location
        scheme, rest = "", scheme
    rest = re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", rest)
    if "@" not in rest.partition("?")[0]:
        return f"{scheme}{sep}{rest}"
    location, query_sep, query = rest.partition("?")
    creds, _, host = location.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user + ':' if user else ''}***@{host}{query_sep}{query}"
