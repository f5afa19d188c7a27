"""The one way a Redis URL is shown to a person: with its password masked.

Every log line, printout and error message that names a Redis URL goes through
``redact_url``; a URL in treadle's settings may carry a password (``redis://:pw@h``,
``redis://user:pw@h``) and Sentinel URLs carry it once per sentinel (``a;b``).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# Query parameters that redis-py, kombu or Celery would read a secret from.
_SECRET_PARAMS = frozenset({"password", "pass", "passwd", "secret", "token", "auth"})


def redact_url(url: str) -> str:
    """``url`` with every password replaced by ``***``; Sentinel lists (``a;b``) too."""
    return ";".join(_redact_one(part) for part in url.split(";"))


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        # Unparseable: nothing of it can be shown safely but its scheme.
        scheme = url.split("://", 1)[0] if "://" in url else ""
        return f"{scheme}://{MASK}" if scheme else MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hostport = netloc.rsplit("@", 1)
        user, colon, _password = userinfo.partition(":")
        # Without a colon the one field may be a password written where a user goes.
        netloc = f"{user}:{MASK}@{hostport}" if colon else f"{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, MASK if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
