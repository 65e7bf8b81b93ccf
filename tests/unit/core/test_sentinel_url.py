"""Redis Sentinel URLs (Celery's ``sentinel://h1;sentinel://h2`` form): parsing, refusals, and
what each component builds from one. No Redis: nothing here connects, or only to closed ports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import one_line_error
from redis.sentinel import SentinelConnectionPool

from workerpool.core import credentials
from workerpool.core.connection import connect, guarded, redact, validate_url
from workerpool.core.errors import BadInput, RedisUnavailable
from workerpool.core.sentinel import SentinelMaster, SentinelURL, parse_sentinel, sentinel_url
from workerpool.core.settings import Settings
from workerpool.server.embedded import free_port
from workerpool.worker.celery.app import make_app
from workerpool.worker.celery.transport import SENTINEL_NAME

URL = "sentinel://:p%40ss@h1:26379/3;sentinel://h2:26380;sentinel://h3"


def test_a_sentinel_url_names_every_sentinel_and_the_masters_login() -> None:
    assert parse_sentinel(URL) == SentinelURL(
        (("h1", 26379), ("h2", 26380), ("h3", 26379)), None, "p@ss", 3)
    assert parse_sentinel("sentinel://u:pw@[::1]:5000") == SentinelURL(
        (("::1", 5000),), "u", "pw", 0)
    # Celery's form repeats the login and database in each part: the same, so accepted.
    assert parse_sentinel("sentinel://:pw@a:1/2;sentinel://:pw@b:2/2;") == SentinelURL(
        (("a", 1), ("b", 2)), None, "pw", 2)
    assert validate_url(URL) == URL


@pytest.mark.parametrize(("url", "says"), [
    ("sentinel://", "without a host"),
    ("sentinel://h1:26379;redis://h2:6379", "every part must start with sentinel://"),
    ("sentinel://h1:0", "port 0"),
    ("sentinel://h1:99999", "malformed"),
    ("sentinel://h1:26379/x", "database 'x'"),
    ("sentinel://h1:26379/0?ssl_cert_reqs=none", "takes none"),
    ("sentinel://:a@h1:1;sentinel://:b@h2:1", "different credentials"),
    ("sentinel://h1:1/1;sentinel://h2:1/2", "different credentials or databases"),
    ("sentinel:/h1", "without a host"),
])
def test_a_bad_sentinel_url_is_refused_saying_why(url: str, says: str) -> None:
    with pytest.raises(BadInput) as caught:
        validate_url(url)
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_a_sentinel_urls_passwords_are_redacted_in_every_part() -> None:
    assert redact("sentinel://:pw@h1:1/0;sentinel://:pw@h2:2") == (
        "sentinel://:***@h1:1/0;sentinel://:***@h2:2")


def test_the_url_is_rebuilt_in_one_form() -> None:
    assert sentinel_url(parse_sentinel(URL)) == (
        "sentinel://:p%40ss@h1:26379/3;sentinel://h2:26380;sentinel://h3:26379")
    assert parse_sentinel(sentinel_url(parse_sentinel(URL))) == parse_sentinel(URL)


def test_a_pools_credentials_keep_the_sentinels_and_database() -> None:
    url = credentials.url_for(URL, "workerpool-pool-a", "s3cret/+")
    assert parse_sentinel(url) == SentinelURL(
        (("h1", 26379), ("h2", 26380), ("h3", 26379)), "workerpool-pool-a", "s3cret/+", 3)
    assert credentials.database(URL) == 3


def test_connect_binds_a_client_to_the_named_master_without_io() -> None:
    settings = Settings(redis_sentinel_master="prod", redis_sentinel_password="sentinel-pw")
    client = connect(URL, settings)
    pool = client.connection_pool
    assert isinstance(client, SentinelMaster) and isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "prod" and pool.is_master
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"], kwargs["decode_responses"]) == (3, "p@ss", True)
    asked = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(k["host"], k["port"], k["password"]) for k in asked] == [
        ("h1", 26379, "sentinel-pw"), ("h2", 26380, "sentinel-pw"), ("h3", 26379, "sentinel-pw")]
    assert not connect(URL, settings, decode=False).connection_pool.connection_kwargs[
        "decode_responses"]
    client.close()


def test_the_sentinel_settings_come_from_the_environment() -> None:
    settings = Settings.from_env({"WORKERPOOL_REDIS_SENTINEL_MASTER": "prod",
                                  "WORKERPOOL_REDIS_SENTINEL_PASSWORD": "pw",
                                  "WORKERPOOL_REDIS_WAIT_REPLICAS": "1"})
    assert (settings.redis_sentinel_master, settings.redis_sentinel_password,
            settings.redis_wait_replicas) == ("prod", "pw", 1)
    assert "pw" not in repr(settings)
    assert Settings.from_env({}).redis_sentinel_master == "mymaster"
    assert Settings.from_env({}).redis_wait_replicas == 0
    with pytest.raises(BadInput, match="one word"):
        Settings.from_env({"WORKERPOOL_REDIS_SENTINEL_MASTER": "my master"})
    with pytest.raises(BadInput, match="whole number"):
        Settings.from_env({"WORKERPOOL_REDIS_WAIT_REPLICAS": "one"})


@pytest.mark.parametrize("transport", [None, "workerpool"])
def test_celery_takes_kombus_sentinel_transport_on_the_named_master(transport: str | None
                                                                     ) -> None:
    settings = Settings(redis_sentinel_master="prod", redis_sentinel_password="sentinel-pw")
    kwargs = {} if transport else {"transport": None}
    app = make_app(URL, pool="a", settings=settings, **kwargs)  # type: ignore[arg-type]
    assert app.conf.broker_url == URL  # Celery's own form, which kombu splits at ";"
    assert app.conf.broker_transport == (SENTINEL_NAME if transport else "sentinel")
    options = app.conf.broker_transport_options
    assert options["master_name"] == "prod"
    assert options["sentinel_kwargs"]["password"] == "sentinel-pw"
    assert "queue_order_strategy" not in options and "visibility_timeout" in options
    with app.connection_for_write() as conn:  # built, not connected
        channel_class = conn.transport.Channel
        assert conn.transport.default_port == 26379
        assert [alt.removeprefix("sentinel://").split("@")[-1] for alt in conn.alt] == [
            "h1:26379/3", "h2:26380", "h3"]
    if transport:  # workerpool's channel, on kombu's Sentinel pools
        from kombu.transport.redis import SentinelChannel

        from workerpool.worker.celery.transport import Channel
        assert issubclass(channel_class, Channel) and issubclass(channel_class, SentinelChannel)
        assert {"master_name", "sentinel_kwargs", "step_pool"} <= set(
            channel_class.from_transport_options)


def test_unreachable_sentinels_are_one_line_saying_so() -> None:
    url = f"sentinel://127.0.0.1:{free_port()};sentinel://127.0.0.1:{free_port()}"
    client = connect(url, Settings())
    with pytest.raises(RedisUnavailable) as caught:
        guarded(client.ping, url)
    assert "no Redis Sentinel at 127.0.0.1:" in str(caught.value)
    assert "\n" not in str(caught.value) and caught.value.exit_code == 3


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
    return subprocess.run([sys.executable, "-m", "workerpool", *args],
                          env={**env, "WORKERPOOL_REDIS_URL": url}, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_the_cli_refuses_a_bad_sentinel_url_and_unreachable_sentinels_in_one_line() -> None:
    assert "sentinel://" in one_line_error(_cli("sentinel://h1:26379;redis://h2", "pool",
                                                "list"), 2)
    line = one_line_error(_cli(f"sentinel://127.0.0.1:{free_port()}", "pool", "list"), 3)
    assert "no Redis Sentinel" in line


def test_the_binary_twin_of_a_sentinel_client_follows_the_same_master() -> None:
    from workerpool.worker.packages.builtin import binary

    client = connect(URL, Settings(redis_sentinel_master="prod"))
    twin = binary(client).connection_pool
    assert isinstance(twin, SentinelConnectionPool) and twin is not client.connection_pool
    assert (twin.service_name, twin.sentinel_manager) == ("prod", client.connection_pool
                                                          .sentinel_manager)
    assert twin.connection_kwargs["connection_pool"] is twin.proxy  # its own, not the client's
    assert not twin.connection_kwargs["decode_responses"] and twin.connection_kwargs["db"] == 3
