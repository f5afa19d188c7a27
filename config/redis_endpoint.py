"""Where treadle's Redis is and how to reach it.

The one place that reads a Redis URL together with the connection settings and turns
them into Celery's broker and result-backend options and into redis-py clients, so that
kombu's queues, Celery's results and treadle's own state store, scripts and upkeep all
reach the same server the same way:

    redis://[user:password@]host[:port][/db]        plain TCP
    rediss://[user:password@]host[:port][/db]       TLS; certificates from TREADLE_REDIS_TLS_*
    sentinel://[user:password@]host:port[/db];sentinel://host2:port2;...
                                                    the primary that Sentinel names
                                                    TREADLE_REDIS_SENTINEL_MASTER, followed
                                                    through failovers

The ``user:password`` of a Sentinel URL is the primary's (and replicas'); sentinels that
require a password of their own get TREADLE_REDIS_SENTINEL_PASSWORD.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from config.redact import redact_url
from config.sentinel_connection import PrimaryConnection

if TYPE_CHECKING:
    from config.settings import Settings

CertReqs = Literal["required", "optional", "none"]

REDIS_PORT = 6379
SENTINEL_PORT = 26379
# How long a sentinel may take to answer "who is the primary?" before the next is asked.
SENTINEL_TIMEOUT_S = 5.0

_BROKER_TRANSPORT = "config.broker_transport:Transport"
_SENTINEL_BROKER_TRANSPORT = "config.broker_transport:SentinelTransport"
_BACKEND = "config.result_backend:PublishOnlyRedisBackend"
_SENTINEL_BACKEND = "config.result_backend:PublishOnlySentinelBackend"


class RedisUrlError(ValueError):
    """The Redis URL or a connection setting is wrong. The message never holds a password."""


@dataclass(frozen=True)
class Tls:
    """How a ``rediss://`` connection checks the server, and the client's own certificate."""

    cert_reqs: CertReqs = "required"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def ssl_options(self) -> dict[str, Any]:
        """The same keys suit kombu (``broker_use_ssl``), Celery's backend
        (``redis_backend_use_ssl``) and redis-py's SSLConnection."""
        options: dict[str, Any] = {
            "ssl_cert_reqs": self.cert_reqs,
            # A certificate is worth checking only for the host it was issued to.
            "ssl_check_hostname": self.cert_reqs == "required",
        }
        for key, path in (
            ("ssl_ca_certs", self.ca_file),
            ("ssl_certfile", self.cert_file),
            ("ssl_keyfile", self.key_file),
        ):
            if path is not None:
                options[key] = str(path)
        return options


@dataclass(frozen=True)
class RedisEndpoint:
    url: str = field(repr=False)
    scheme: str
    hosts: tuple[tuple[str, int], ...]  # the server, or every sentinel
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: Tls | None = None
    sentinel_master: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, url: str, settings: Settings) -> RedisEndpoint:
        """The endpoint of ``url`` (TREADLE_REDIS_URL or the embedded Redis's) under the
        connection settings."""
        sentinel_password = settings.redis_sentinel_password
        return parse(
            url,
            sentinel_master=settings.redis_sentinel_master,
            sentinel_password=(
                sentinel_password.get_secret_value() if sentinel_password is not None else None
            ),
            tls=Tls(
                cert_reqs=settings.redis_tls_cert_reqs,
                ca_file=settings.redis_tls_ca_file,
                cert_file=settings.redis_tls_cert_file,
                key_file=settings.redis_tls_key_file,
            ),
        )

    @property
    def is_sentinel(self) -> bool:
        return self.scheme == "sentinel"

    # -- Celery and kombu ------------------------------------------------------------------

    def celery_options(self) -> dict[str, Any]:
        """Celery's broker and result-backend settings for this endpoint (the transport
        options come separately: ``transport_options``)."""
        sentinel = self.is_sentinel
        options: dict[str, Any] = {
            "broker_url": self.url,
            "broker_transport": _SENTINEL_BROKER_TRANSPORT if sentinel else _BROKER_TRANSPORT,
            # "<class>+<url>" is Celery's way to name a backend class for a URL.
            "result_backend": f"{_SENTINEL_BACKEND if sentinel else _BACKEND}+{self.url}",
        }
        if self.tls is not None:
            options["broker_use_ssl"] = self.tls.ssl_options()
            options["redis_backend_use_ssl"] = self.tls.ssl_options()
        return options

    def transport_options(self) -> dict[str, Any]:
        """What kombu's and Celery's Sentinel support read from the transport options."""
        if not self.is_sentinel:
            return {}
        return {"master_name": self.sentinel_master, "sentinel_kwargs": self._sentinel_kwargs()}

    # -- redis-py ----------------------------------------------------------------------------

    def client(self, **options: Any) -> redis.Redis:
        """A redis-py client of the server, or of whichever server Sentinel names primary
        (asked again on every new connection, so a failover is followed); ``options`` are
        connection options (timeouts, retry policy)."""
        kwargs: dict[str, Any] = {
            "db": self.db,
            "username": self.username,
            "password": self.password,
            **options,
        }
        if self.tls is not None:
            kwargs.update(ssl=True, **self.tls.ssl_options())
        if not self.is_sentinel:
            host, port = self.hosts[0]
            return redis.Redis(host=host, port=port, **kwargs)
        assert self.sentinel_master is not None  # checked by parse
        sentinels = Sentinel(  # type: ignore[no-untyped-call]
            list(self.hosts), sentinel_kwargs=self._sentinel_kwargs(), **kwargs
        )
        client: _PrimaryOfSentinels = sentinels.master_for(  # type: ignore[no-untyped-call]
            self.sentinel_master,
            redis_class=_PrimaryOfSentinels,
            connection_class=PrimaryConnection,
        )
        client.sentinels = sentinels
        return client

    def _sentinel_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "socket_timeout": SENTINEL_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_TIMEOUT_S,
        }
        if self.sentinel_password is not None:
            kwargs["password"] = self.sentinel_password
        return kwargs


class _PrimaryOfSentinels(redis.Redis):
    """A client of Sentinel's primary that also closes its connections to the sentinels."""

    sentinels: Sentinel | None = None

    def close(self) -> None:
        super().close()
        if self.sentinels is not None:
            for sentinel in self.sentinels.sentinels:
                sentinel.close()


def parse(
    url: str,
    *,
    sentinel_master: str | None = None,
    sentinel_password: str | None = None,
    tls: Tls | None = None,
) -> RedisEndpoint:
    """Check ``url`` and the settings that go with it; raises RedisUrlError."""
    parts = [p for p in url.split(";") if p.strip()]
    if not parts:
        raise RedisUrlError("TREADLE_REDIS_URL is empty")
    locations = [_location(p) for p in parts]
    scheme = locations[0].scheme
    if scheme == "sentinel":
        return _sentinel_endpoint(url, locations, sentinel_master, sentinel_password, tls)
    if len(locations) > 1:
        raise RedisUrlError(
            "TREADLE_REDIS_URL: several URLs (separated by ';') are only for sentinel:// URLs"
        )
    if sentinel_master is not None or sentinel_password is not None:
        raise RedisUrlError(
            "TREADLE_REDIS_SENTINEL_MASTER and TREADLE_REDIS_SENTINEL_PASSWORD need a "
            "sentinel:// TREADLE_REDIS_URL"
        )
    only = locations[0]
    return RedisEndpoint(
        url=url,
        scheme=scheme,
        hosts=(only.address,),
        db=only.db,
        username=only.username,
        password=only.password,
        tls=_tls_for(scheme, tls),
    )


def _sentinel_endpoint(
    url: str,
    locations: list[_Location],
    master: str | None,
    sentinel_password: str | None,
    tls: Tls | None,
) -> RedisEndpoint:
    if any(loc.scheme != "sentinel" for loc in locations):
        raise RedisUrlError("TREADLE_REDIS_URL: every URL in a Sentinel list must be sentinel://")
    if not master:
        raise RedisUrlError(
            "TREADLE_REDIS_SENTINEL_MASTER is required with a sentinel:// TREADLE_REDIS_URL: "
            "the name the sentinels monitor the primary by"
        )
    first = locations[0]
    # kombu and Celery take the credentials and the database from the first URL only; a
    # different one further on would be silently ignored by them, so it is refused here.
    for loc in locations[1:]:
        if loc.has_credentials and (loc.username, loc.password) != (
            first.username,
            first.password,
        ):
            raise RedisUrlError(
                "TREADLE_REDIS_URL: put the primary's user and password on the first "
                "sentinel:// URL (later ones must repeat them or leave them out)"
            )
        if loc.has_db and loc.db != first.db:
            raise RedisUrlError(
                "TREADLE_REDIS_URL: every sentinel:// URL must name the same database"
            )
    if tls is not None and tls != Tls():
        raise RedisUrlError(
            "TREADLE_REDIS_TLS_* settings are not supported with Sentinel: use a rediss:// URL "
            "to a single server, or Sentinel without TLS"
        )
    return RedisEndpoint(
        url=url,
        scheme="sentinel",
        hosts=tuple(loc.address for loc in locations),
        db=first.db,
        username=first.username,
        password=first.password,
        sentinel_master=master,
        sentinel_password=sentinel_password,
    )


def _tls_for(scheme: str, tls: Tls | None) -> Tls | None:
    if scheme == "rediss":
        tls = tls or Tls()
        for name, path in (
            ("TREADLE_REDIS_TLS_CA_FILE", tls.ca_file),
            ("TREADLE_REDIS_TLS_CERT_FILE", tls.cert_file),
            ("TREADLE_REDIS_TLS_KEY_FILE", tls.key_file),
        ):
            if path is not None and not path.is_file():
                raise RedisUrlError(f"{name}: no such file: {path}")
        if tls.key_file is not None and tls.cert_file is None:
            raise RedisUrlError("TREADLE_REDIS_TLS_KEY_FILE needs TREADLE_REDIS_TLS_CERT_FILE")
        return tls
    if tls is not None and tls != Tls():
        raise RedisUrlError("TREADLE_REDIS_TLS_* settings need a rediss:// TREADLE_REDIS_URL")
    return None


@dataclass(frozen=True)
class _Location:
    scheme: str
    address: tuple[str, int]
    db: int
    has_db: bool
    username: str | None
    password: str | None = field(repr=False)

    @property
    def has_credentials(self) -> bool:
        return self.username is not None or self.password is not None


_SCHEMES = ("redis", "rediss", "sentinel")


def _location(text: str) -> _Location:
    # Errors name the URL only as redacted: the password must not reach a log or a screen.
    shown = redact_url(text.strip())
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        # from None: the parser's own message may quote the URL.
        raise RedisUrlError(f"TREADLE_REDIS_URL: cannot read {shown}") from None
    if parts.scheme not in _SCHEMES:
        raise RedisUrlError(
            f"TREADLE_REDIS_URL: {shown} must start with redis://, rediss:// or sentinel://"
        )
    if not parts.hostname:
        raise RedisUrlError(f"TREADLE_REDIS_URL: {shown} names no host")
    if parts.query or parts.fragment:
        raise RedisUrlError(
            f"TREADLE_REDIS_URL: {shown}: query parameters are not read; TLS is configured "
            "with the TREADLE_REDIS_TLS_* settings"
        )
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise RedisUrlError(f"TREADLE_REDIS_URL: {shown}: the path must be a database number")
    default_port = SENTINEL_PORT if parts.scheme == "sentinel" else REDIS_PORT
    return _Location(
        scheme=parts.scheme,
        address=(parts.hostname, port or default_port),
        db=int(path or 0),
        has_db=bool(path),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def settings_problem(settings: Settings) -> str | None:
    """What is wrong with the Redis connection settings, if anything (for Settings)."""
    if settings.redis_url is None:
        # The embedded Redis is plain redis:// on loopback; these could never apply to it.
        named = [
            name
            for name, value in (
                ("TREADLE_REDIS_SENTINEL_MASTER", settings.redis_sentinel_master),
                ("TREADLE_REDIS_SENTINEL_PASSWORD", settings.redis_sentinel_password),
                ("TREADLE_REDIS_TLS_CA_FILE", settings.redis_tls_ca_file),
                ("TREADLE_REDIS_TLS_CERT_FILE", settings.redis_tls_cert_file),
                ("TREADLE_REDIS_TLS_KEY_FILE", settings.redis_tls_key_file),
            )
            if value is not None
        ]
        if named:
            return f"{', '.join(named)} need TREADLE_REDIS_URL (the embedded Redis is plain)"
        return None
    try:
        RedisEndpoint.of(settings.redis_url, settings)
    except RedisUrlError as exc:
        return str(exc)
    return None


def connection_environment(settings: Settings) -> dict[str, str | None]:
    """The TREADLE_* variables that tell a child process how to reach Redis as
    ``settings`` do (None: unset it), beside TREADLE_REDIS_URL."""
    secret = settings.redis_sentinel_password
    values: dict[str, str | Path | None] = {
        "TREADLE_REDIS_SENTINEL_MASTER": settings.redis_sentinel_master,
        "TREADLE_REDIS_SENTINEL_PASSWORD": secret.get_secret_value() if secret else None,
        "TREADLE_REDIS_TLS_CERT_REQS": settings.redis_tls_cert_reqs,
        "TREADLE_REDIS_TLS_CA_FILE": settings.redis_tls_ca_file,
        "TREADLE_REDIS_TLS_CERT_FILE": settings.redis_tls_cert_file,
        "TREADLE_REDIS_TLS_KEY_FILE": settings.redis_tls_key_file,
    }
    # Absolute: a child may run in another directory.
    return {
        name: None if value is None else str(value.absolute() if isinstance(value, Path) else value)
        for name, value in values.items()
    }
