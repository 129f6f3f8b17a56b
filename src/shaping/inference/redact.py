"""Keeping secrets out of what the project prints and writes.

Keys come from environment variables only (`models.<name>.api_key_env`), but a registry entry's
free-form dicts (`options`, `engine_options`) can still hold one (`hf_token`, an `Authorization`
header): wherever those are logged or written (log lines, manifests, run records), their
secret-looking values are replaced, as transformers' `TrainingArguments.to_dict` does for
`*_token` arguments. A `base_url` cannot carry credentials at all (`check_base_url`).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from shaping.errors import ShapingError

MASK = "***"
# a name whose last part is one of these holds a secret (hf_token, api_key, x-api-key), not
# max_tokens or stop_token_ids; one with any part among ANY does wherever it is (client_secret_id)
_TAIL = {"token", "key", "pwd", "cookie"}
_ANY = {"secret", "password", "passwd", "auth", "authorization", "credential", "credentials", "apikey"}
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def is_secret_key(name: str) -> bool:
    """Whether a key's value is presumably a credential: token, key, secret, password, auth."""
    parts = [p for p in re.split(r"[^a-z0-9]+", _CAMEL.sub("_", str(name)).lower()) if p]
    return bool(parts) and (parts[-1] in _TAIL or not _ANY.isdisjoint(parts))


def redact(value: Any) -> Any:
    """A copy of `value` (dicts and lists, nested) with secret-looking keys' values masked."""
    if isinstance(value, dict):
        return {k: MASK if is_secret_key(k) and v not in (None, False) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def check_base_url(name: str, url: str) -> None:
    """Refuse a URL that carries credentials (`http://user:pass@host`, `?api_key=...`) for
    `models.<name>.base_url`: they would be in params.yaml, dvc.lock and every message naming the
    URL. The error masks them."""
    try:
        query = urlsplit(url).query
    except ValueError as err:  # e.g. an unclosed IPv6 bracket
        raise ShapingError(f"models.{name}.base_url={mask_url(url)!r}: not a valid URL ({err})") from None
    userinfo = _has_userinfo(url)
    secret_params = [k for k, _ in parse_qsl(query, keep_blank_values=True) if is_secret_key(k)]
    if userinfo or secret_params:
        what = "a user name or password" if userinfo else f"a credential ({', '.join(secret_params)})"
        raise ShapingError(
            f"models.{name}.base_url={mask_url(url)!r}: the URL carries {what}; remove it and put the key in an "
            f"environment variable named by models.{name}.api_key_env (sent as a Bearer token): secrets never go "
            "in the config"
        )


def _authority(url: str) -> str:
    """The part of `url` after the scheme, up to the path, query or fragment."""
    rest = url.split("://", 1)[1] if "://" in url else url
    return re.split(r"[/?#]", rest, maxsplit=1)[0]


def _has_userinfo(url: str) -> bool:
    """Whether `url` names a user or password: an '@' in its authority, or a ':' there followed by
    something other than a port (a password holding '/' ends the authority before its '@')."""
    authority = _authority(url)
    if "@" in authority:
        return True
    _, colon, port = re.sub(r"^\[[^\]]*\]", "", authority).partition(":")  # an IPv6 literal's colons are no port
    return bool(colon) and not port.isdigit()


def mask_url(url: str) -> str:
    """`url` with any user info and secret-looking query values masked."""
    head, sep, query = url.partition("?")
    query, hash_sep, fragment = query.partition("#")
    start = head.index("://") + 3 if "://" in head else 0
    if _has_userinfo(url):  # up to the last '@' before the query: a password may hold '/'
        head = head[:start] + MASK + ("@" + head[start:].rsplit("@", 1)[1] if "@" in head[start:] else "")
    if query:
        pairs = (pair.partition("=") for pair in query.split("&"))
        query = "&".join(f"{k}={MASK}" if is_secret_key(k) else f"{k}{eq}{v}" for k, eq, v in pairs)
    return head + sep + query + hash_sep + fragment
