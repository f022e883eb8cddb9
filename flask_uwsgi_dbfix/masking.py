"""Passwords never printed: one masking for every output (warning, check, test helper, logs)."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.engine import Engine

__all__ = ["mask_passwords", "mask_tree", "masked_url"]

# scheme://user:PASSWORD@host: the password runs to the last "@" before the host part ends,
# so a raw "@" in it (postgresql://app:p@ss@word@host/db, which SQLAlchemy accepts and
# splits at the first "@") is masked whole.
_URL_PASSWORD = re.compile(r"(\b[\w.+-]+://[^:/?#@\s]*:)[^/?#\s]*@")
# ?key=value and &key=value in a URL's query.
_QUERY_VALUE = re.compile(r"([?&])([^=&#\s]+)=([^&#\s]*)")
# key=value in a libpq keyword DSN ("host=h user=u password=secret"), quoted or not.
_DSN_SECRET = re.compile(
    r"(?<![\w?&])(password|passwd|pwd|sslpassword)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'&]+)", re.I
)
_SECRET_WORDS = ("pass", "pwd", "secret", "token", "auth", "apikey", "api_key")
_SECRET_NAMES = frozenset({"key", "sslkeypassword", "credentials"})
_MASK = "***"


def _is_secret_name(name: str) -> bool:
    """Query keys whose values are secrets: libpq's password and sslpassword, SQLCipher's
    ``key``, tokens; not ``sslkey`` or ``sslrootcert``, which name files."""
    lowered = name.lower()
    return lowered in _SECRET_NAMES or any(word in lowered for word in _SECRET_WORDS)


def _mask_query_value(match: re.Match[str]) -> str:
    sep, name, value = match.groups()
    return f"{sep}{name}={_MASK}" if _is_secret_name(name) and value else match.group(0)


def mask_passwords(text: str) -> str:
    """Replace by ``***`` every URL's password, secret query values (``?password=``,
    ``sslpassword=``, ``key=``, ``...token=``) and libpq keyword passwords
    (``password=...`` in ``host=h user=u password=...``)."""
    text = _URL_PASSWORD.sub(rf"\1{_MASK}@", text)
    text = _QUERY_VALUE.sub(_mask_query_value, text)
    return _DSN_SECRET.sub(rf"\1\2{_MASK}", text)


def mask_tree(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with every string masked."""
    if isinstance(value, str):
        return mask_passwords(value)
    if isinstance(value, dict):
        return {k: mask_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_tree(v) for v in value]
    return value


def masked_url(engine: Engine) -> str:
    """The engine URL, safe to print."""
    return mask_passwords(engine.url.render_as_string(hide_password=True))
