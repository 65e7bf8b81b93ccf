"""Password, ACL-user and TLS Redis for every component: the client and CLI, pool and built-in
workers (Celery's broker connection included) and `workerpool server`.

The redis-server here wants a password (``requirepass``) and knows one ACL user. The embedded
redis-server is built without TLS, so TLS is terminated by ``tests/netproxy.py`` in front of
it, with a CA and certificate made for the test. Wrong credentials or a wrong CA must stop each
command with exit code 3 and one line that names the problem and never shows the password.
"""

from __future__ import annotations

import itertools
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from conftest import one_line_error
from netproxy import Certificates, NetProxy, make_ca, make_certificates

from workerpool import Client
from workerpool.core.connection import tls_options
from workerpool.core.errors import BadInput, RedisUnavailable
from workerpool.server.embedded import EmbeddedRedis
from workerpool.worker.celery.app import make_app

# Characters that must be percent-encoded in a URL, to check every component decodes them.
PASSWORD = "s3cret:def@ult/%"
USER, USER_PASSWORD = "deployer", "user p@ss#1"
PW, USER_PW = quote(PASSWORD, safe=""), quote(USER_PASSWORD, safe="")  # as in a URL
_databases = itertools.count(1)


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("secure-redis"),
                           extra_args=("--requirepass", PASSWORD, "--appendonly", "no",
                                       "--databases", "32"))
    server.start()
    admin = redis.Redis(port=server.port, password=PASSWORD)
    admin.acl_setuser(USER, enabled=True, passwords=[f"+{USER_PASSWORD}"], keys=["*"],
                      channels=["*"], commands=["+@all"])
    admin.close()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_proxy(secure_redis: EmbeddedRedis, certificates: Certificates) -> Iterator[NetProxy]:
    with NetProxy(secure_redis.port, certificates.server_context()) as proxy:
        yield proxy


def fresh_db(port: int) -> int:
    number = next(_databases)
    admin = redis.Redis(port=port, password=PASSWORD, db=number)
    admin.flushdb()
    admin.close()
    return number


def error_without_secrets(done, *, code: int = 3) -> str:
    """The command failed with *code* and a single line on stderr, no traceback, no secret."""
    line = one_line_error(done, code)
    for secret in (PASSWORD, USER_PASSWORD, PW, USER_PW):  # (the wrong ones contain these)
        assert secret not in done.stderr, done.stderr
    return line


def run_step(cli, pool: str) -> dict:
    done = cli("run", "--pool", pool, "--script", 'echo "ran on $WORKERPOOL_WORKER_NAME"',
               "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- password and ACL user -------------------------------------------------------------------

@pytest.fixture
def redis_url(request, secure_redis: EmbeddedRedis) -> str:
    """This module's tests use the password-protected server (overrides conftest's): with the
    password, or (parametrized "acl-user") as the ACL user."""
    acl_user = getattr(request, "param", "password") == "acl-user"
    credentials = f"{USER}:{USER_PW}" if acl_user else f":{PW}"
    return f"redis://{credentials}@127.0.0.1:{secure_redis.port}/{fresh_db(secure_redis.port)}"


@pytest.mark.parametrize("redis_url", ["password", "acl-user"], indirect=True)
def test_every_component_works_with_a_password_or_an_acl_user(client, start_worker, cli):
    client.pools.add("Database Worker Pool")
    worker = start_worker("Database Worker Pool")
    result = run_step(cli, "Database Worker Pool")
    assert result["state"] == "Success" and result["worker"] == worker.name
    assert [e["text"] for e in result["log"] if e["stream"] == "stdout"] == \
        [f"ran on {worker.name}"]
    status = cli("status", "--json")
    assert status.returncode == 0, status.stderr
    assert worker.name in status.stdout
    logs = cli("logs", result["id"])
    assert logs.returncode == 0 and f"ran on {worker.name}" in logs.stdout, logs.stderr


@pytest.mark.parametrize("credentials, shown, says", [
    (f":wrong-{PW}", ":***@", "refused the password"),
    (f"{USER}:wrong-{USER_PW}", f"{USER}:***@", f"refused user '{USER}' with that password"),
    ("", "", "requires a password"),
], ids=["wrong-password", "wrong-user-password", "no-password"])
def test_wrong_credentials_stop_each_command_with_one_line(cli, secure_redis, credentials, shown,
                                                           says):
    at = f"{credentials}@" if credentials else ""
    bad = {"WORKERPOOL_REDIS_URL": f"redis://{at}127.0.0.1:{secure_redis.port}/0"}
    for args in (["worker", "start", "--pool", "Database Worker Pool"],
                 ["worker", "start", "--builtin"], ["run", "--script", "true"], ["status"],
                 ["logs", "abc"]):
        line = error_without_secrets(cli(*args, extra_env=bad))
        assert f"Redis at redis://{shown}127.0.0.1:{secure_redis.port}/0 " in line, line
        assert says in line, line
    with pytest.raises(RedisUnavailable, match=says):
        Client(redis_url=bad["WORKERPOOL_REDIS_URL"]).snapshot()


# -- TLS --------------------------------------------------------------------------------------

def tls_url(proxy: NetProxy, ca: Path, db: int, **options: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"ssl_ca_certs": str(ca), **options}.items())
    return f"rediss://:{PW}@127.0.0.1:{proxy.port}/{db}?{query}"


class TestTLS:
    @pytest.fixture
    def redis_url(self, tls_proxy: NetProxy, certificates: Certificates,
                  secure_redis: EmbeddedRedis) -> str:
        return tls_url(tls_proxy, certificates.ca, fresh_db(secure_redis.port))

    def test_worker_client_and_cli_run_a_step_over_tls(self, client, start_worker, cli,
                                                       tls_proxy):
        client.pools.add("Database Worker Pool")
        before = tls_proxy.accepted
        worker = start_worker("Database Worker Pool")
        assert tls_proxy.accepted > before  # the worker's connections went through TLS
        result = run_step(cli, "Database Worker Pool")
        assert result["state"] == "Success" and result["worker"] == worker.name
        assert cli("status").returncode == 0
        assert f"ran on {worker.name}" in cli("logs", result["id"]).stdout
        assert tls_proxy.handshake_failures == 0

    def test_server_orchestrates_a_deployment_over_tls(self, server, cli, tmp_path, tls_proxy):
        server()  # the orchestrator, the reaper and the built-in worker, all over TLS
        process = tmp_path / "process.yaml"
        process.write_text("name: Over TLS\nsteps:\n"
                           "  - {name: Notify, location: server, script: echo notified}\n")
        done = cli("deploy", str(process), "--environment", "Test", "--json", timeout=120)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["state"] == "Success"
        assert result["steps"][0]["runs"][0]["pool"] == "builtin"
        assert tls_proxy.handshake_failures == 0

    def test_wrong_ca_plain_url_and_missing_file_give_one_line(self, cli, tls_proxy, tmp_path,
                                                               secure_redis):
        other_ca, _ = make_ca(tmp_path / "other", "other")
        cases = [
            ({"WORKERPOOL_REDIS_URL": tls_url(tls_proxy, other_ca, 0)}, 3,
             "the TLS handshake with Redis at rediss://:***@127.0.0.1:"),
            ({"WORKERPOOL_REDIS_URL": f"redis://:{PW}@127.0.0.1:{tls_proxy.port}/0"}, 3,
             "use rediss://"),
            ({"WORKERPOOL_REDIS_URL": tls_url(tls_proxy, tmp_path / "missing.pem", 0)}, 2,
             "ssl_ca_certs="),
            ({"WORKERPOOL_REDIS_URL": tls_url(tls_proxy, other_ca, 0, ssl_cert_reqs="maybe")},
             2, "ssl_cert_reqs='maybe' must be one of required, optional, none"),
        ]
        for extra_env, code, says in cases:
            for args in (["worker", "start", "--builtin"], ["run", "--script", "true"],
                         ["status"]):
                line = error_without_secrets(cli(*args, extra_env=extra_env), code=code)
                assert says in line, line
        assert tls_proxy.handshake_failures >= 3

    def test_celery_verifies_the_broker_certificate(self, tls_proxy, certificates, tmp_path,
                                                    secure_redis):
        """kombu alone would not check a bare rediss:// broker's certificate; workerpool's
        app does, with the same options as every other component."""
        other_ca, _ = make_ca(tmp_path / "other", "other")
        trusted = make_app(tls_url(tls_proxy, certificates.ca, 0))
        with trusted.connection_for_read() as conn:
            conn.ensure_connection(max_retries=0)
        for url in (tls_url(tls_proxy, other_ca, 0),
                    f"rediss://:{PW}@127.0.0.1:{tls_proxy.port}/0"):
            app = make_app(url)
            with app.connection_for_read() as conn, pytest.raises(Exception,
                                                                   match="CERTIFICATE_VERIFY"):
                conn.ensure_connection(max_retries=0)


def test_url_options_are_read_once_for_redis_py_and_kombu(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert tls_options("redis://h:1/0") == {}
    # Hostname checking is explicit: redis-py before 6 defaulted it to off.
    assert tls_options("rediss://h:1/0") == {"ssl_cert_reqs": ssl.CERT_REQUIRED,
                                             "ssl_check_hostname": True}
    assert tls_options("rediss://h:1/0?ssl_cert_reqs=none") == {
        "ssl_cert_reqs": ssl.CERT_NONE, "ssl_check_hostname": False}
    assert tls_options(f"rediss://:p@h:1/0?ssl_ca_certs={ca}&ssl_cert_reqs=optional"
                       "&ssl_check_hostname=false") == {
        "ssl_cert_reqs": ssl.CERT_OPTIONAL, "ssl_ca_certs": str(ca), "ssl_check_hostname": False}
    url = f"rediss://:p@h:1/0?ssl_ca_certs={ca}"
    assert make_app(url).conf.broker_use_ssl == tls_options(url)
    assert make_app(url).conf.broker_url == "rediss://:p@h:1/0"
    assert make_app("redis://h:1/0").conf.broker_use_ssl is False


def test_url_options_are_checked_before_anything_connects(tmp_path):
    for url, says in [
        ("redis://127.0.0.1:1/0?ssl_ca_certs=/x", "TLS options need a rediss:// URL"),
        ("rediss://127.0.0.1:1/0?ssl_check_hostname=maybe", "must be true or false"),
        ("rediss://127.0.0.1:1/0?socket_timeout=1", "has option 'socket_timeout'"),
        ("rediss://127.0.0.1:1/0?ssl_cert_reqs=none&ssl_cert_reqs=required", "twice"),
        ("rediss://127.0.0.1:1/0?ssl_cert_reqs=none&ssl_check_hostname=true",
         "ssl_check_hostname=true needs a certificate"),
    ]:
        with pytest.raises(BadInput, match=says):
            Client(redis_url=url)
