"""Passwords never printed: one masking for every output (warning, check, test helper, logs)."""

from __future__ import annotations

import re

from sqlalchemy.engine import Engine

__all__ = ["mask_passwords", "masked_url"]

_URL_PASSWORD = re.compile(r"(\b[\w.+-]+://[^:/?#@\s]*:)[^@\s]*@")
# Query keys whose values are secrets: libpq's password, sslpassword, and the like.
_QUERY_SECRET = re.compile(r"([?&][^=&\s]*(?:pass|secret|token)[^=&\s]*=)[^&\s]*", re.I)


def mask_passwords(text: str) -> str:
    """Replace by ``***`` the password of every URL in ``text``, and query values such as
    ``?password=`` or ``sslpassword=``."""
    return _QUERY_SECRET.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def masked_url(engine: Engine) -> str:
    """The engine URL, safe to print."""
    return mask_passwords(engine.url.render_as_string(hide_password=True))
