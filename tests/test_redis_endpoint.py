"""How a Redis URL and the connection settings become Celery's options and redis-py
clients, and how a URL is shown: no server needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from config.celery_app import celery_config, make_app
from config.redact import redact_url
from config.redis_endpoint import (
    RedisEndpoint,
    RedisUrlError,
    Tls,
    connection_environment,
    parse,
)
from config.settings import Settings
from tests.conftest import clean_env, treadle

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (f"redis://:{SECRET}@h:6379/0", "redis://:***@h:6379/0"),
        (f"redis://treadle:{SECRET}@h:6379/2", "redis://treadle:***@h:6379/2"),
        (f"rediss://treadle:{SECRET}@h", "rediss://treadle:***@h"),
        (f"redis://{SECRET}@h:1", "redis://***@h:1"),
        (
            f"sentinel://:{SECRET}@a:26379;sentinel://:{SECRET}@b:26380",
            "sentinel://:***@a:26379;sentinel://:***@b:26380",
        ),
        (f"redis://h:1/0?password={SECRET}&db=1", "redis://h:1/0?password=***&db=1"),
        (f"redis://:{SECRET}@[::1:6379/0", "redis://***"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert SECRET not in redact_url(url)


def test_a_plain_url_with_an_acl_user() -> None:
    endpoint = parse(f"redis://treadle:{SECRET}@10.0.0.5:6380/3")
    assert endpoint.hosts == (("10.0.0.5", 6380),)
    assert (endpoint.username, endpoint.password, endpoint.db) == ("treadle", SECRET, 3)
    assert endpoint.tls is None
    assert SECRET not in repr(endpoint)
    options = endpoint.celery_options()
    assert options["broker_url"] == endpoint.url
    assert options["broker_transport"] == "config.broker_transport:Transport"
    assert options["result_backend"].startswith("config.result_backend:PublishOnlyRedisBackend+")
    assert "broker_use_ssl" not in options
    assert endpoint.transport_options() == {}


def test_a_password_with_reserved_characters_is_read_percent_decoded() -> None:
    assert parse("redis://:p%40ss%3Aword@h:6379").password == "p@ss:word"


def test_tls_options_go_to_the_broker_the_backend_and_redis_py(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "client.pem", "client.key"))
    for path in (ca, cert, key):
        path.write_text("pem")
    endpoint = parse(
        "rediss://:pw@redis.example:6380/0",
        tls=Tls(cert_reqs="required", ca_file=ca, cert_file=cert, key_file=key),
    )
    ssl = {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(ca),
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
    }
    options = endpoint.celery_options()
    # Celery refuses a rediss:// backend without ssl_cert_reqs; kombu would fall back to
    # not checking the certificate at all.
    assert options["broker_use_ssl"] == ssl
    assert options["redis_backend_use_ssl"] == ssl
    pool_kwargs = endpoint.client().connection_pool.connection_kwargs
    assert {k: pool_kwargs[k] for k in ssl} == ssl


def test_tls_without_checking_skips_the_host_name_check_too() -> None:
    options = parse("rediss://h", tls=Tls(cert_reqs="none")).celery_options()
    assert options["broker_use_ssl"] == {"ssl_cert_reqs": "none", "ssl_check_hostname": False}


def test_a_sentinel_list_names_the_primary_by_its_master_name() -> None:
    url = f"sentinel://:{SECRET}@s1:26379/1;sentinel://s2:26380;sentinel://s3"
    endpoint = parse(url, sentinel_master="mymaster", sentinel_password="sentinel-pw")
    assert endpoint.is_sentinel
    assert endpoint.hosts == (("s1", 26379), ("s2", 26380), ("s3", 26379))
    assert (endpoint.password, endpoint.db) == (SECRET, 1)
    options = endpoint.celery_options()
    assert options["broker_url"] == url
    assert options["broker_transport"] == "config.broker_transport:SentinelTransport"
    assert options["result_backend"] == (f"config.result_backend:PublishOnlySentinelBackend+{url}")
    transport = endpoint.transport_options()
    assert transport["master_name"] == "mymaster"
    assert transport["sentinel_kwargs"]["password"] == "sentinel-pw"


def test_celery_gets_the_master_name_in_both_transport_options() -> None:
    settings = Settings(
        redis_url="sentinel://a:26379;sentinel://b:26379", redis_sentinel_master="mymaster"
    )
    conf = celery_config(settings, "sentinel://a:26379;sentinel://b:26379")
    for key in ("broker_transport_options", "result_backend_transport_options"):
        assert conf[key]["master_name"] == "mymaster"
        assert conf[key]["visibility_timeout"] == settings.visibility_timeout_s


def test_celery_shows_the_backend_and_broker_without_the_password() -> None:
    url = f"sentinel://:{SECRET}@a:26379;sentinel://:{SECRET}@b:26379"
    settings = Settings(
        redis_url=url,
        redis_sentinel_master="m",
        redis_sentinel_password=SECRET,  # type: ignore[arg-type]
    )
    app = make_app(settings, url)
    try:
        shown = [app.backend.as_uri(), app.connection_for_write().as_uri()]
        shown.append(str(app.conf.humanize(with_defaults=False, censored=True)))
    finally:
        app.close()
    for text in shown:
        assert SECRET not in text, text


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("http://h:1", {}, "must start with redis://, rediss:// or sentinel://"),
    ("redis://:1", {}, "names no host"),
    ("redis://h:1/zero", {}, "database number"),
    ("redis://h:1/0?ssl_cert_reqs=none", {}, "query parameters are not read"),
    ("redis://a:1;redis://b:1", {}, "only for sentinel:// URLs"),
    ("redis://h:1", {"sentinel_master": "m"}, "need a sentinel:// TREADLE_REDIS_URL"),
    ("sentinel://h:1", {}, "TREADLE_REDIS_SENTINEL_MASTER is required"),
    ("sentinel://h:1;redis://h:2", {"sentinel_master": "m"}, "must be sentinel://"),
    (
        f"sentinel://:{SECRET}@a:1;sentinel://:other@b:1",
        {"sentinel_master": "m"},
        "on the first sentinel:// URL",
    ),
    ("sentinel://a:1/0;sentinel://b:1/2", {"sentinel_master": "m"}, "same database"),
    ("redis://h:1", {"tls": Tls(cert_reqs="none")}, "need a rediss:// TREADLE_REDIS_URL"),
    (
        "sentinel://a:1",
        {"sentinel_master": "m", "tls": Tls(cert_reqs="none")},
        "not supported with Sentinel",
    ),
    ("rediss://h:1", {"tls": Tls(ca_file=Path("/nonexistent/ca.pem"))}, "no such file"),
]


@pytest.mark.parametrize(("url", "kwargs", "message"), BAD)
def test_a_wrong_url_or_setting_is_refused_without_showing_the_password(
    url: str, kwargs: dict[str, Any], message: str
) -> None:
    url = url.replace("://", f"://:{SECRET}@", 1) if "@" not in url else url
    with pytest.raises(RedisUrlError, match=message) as info:
        parse(url, **kwargs)
    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None


def test_settings_refuse_the_same_without_echoing_the_url() -> None:
    with pytest.raises(ValidationError, match="TREADLE_REDIS_SENTINEL_MASTER is required") as info:
        Settings(redis_url=f"sentinel://:{SECRET}@h:26379")
    assert SECRET not in str(info.value)
    with pytest.raises(ValidationError, match="need TREADLE_REDIS_URL"):
        Settings(redis_sentinel_master="m")
    assert SECRET not in repr(Settings(redis_url=f"redis://:{SECRET}@h:1"))


def test_child_processes_get_the_same_connection_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    settings = Settings(
        redis_url="rediss://h:6380", redis_tls_ca_file=Path(ca), redis_tls_cert_reqs="optional"
    )
    env = connection_environment(settings)
    assert env["TREADLE_REDIS_TLS_CA_FILE"] == str(ca)
    assert env["TREADLE_REDIS_TLS_CERT_REQS"] == "optional"
    assert env["TREADLE_REDIS_SENTINEL_MASTER"] is None
    endpoint = RedisEndpoint.of("rediss://h:6380", settings)
    assert endpoint.tls == Tls(cert_reqs="optional", ca_file=ca)


def test_the_cli_refuses_a_wrong_redis_setting_with_exit_2_and_no_password(
    tmp_path: Path,
) -> None:
    env = clean_env(redis_url=f"sentinel://:{SECRET}@127.0.0.1:26379")
    result = treadle("list", env=env, cwd=tmp_path, timeout_s=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: TREADLE_REDIS_SENTINEL_MASTER is required")
    assert SECRET not in result.stdout + result.stderr
