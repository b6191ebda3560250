"""Production settings: built from the environment, `check --deploy` clean, the API refusing plain
HTTP with a 403 where pages are redirected, Redis over TLS with a password, through a Sentinel
group and as a Redis Cluster with a password (real servers, started here), static files served."""

from __future__ import annotations

import os
import runpy
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from django.conf import settings
from django.test import Client, override_settings
from django_redis.pool import ConnectionFactory

from project import cluster_redis, embedded_redis
from respcache import selectors, services, store
from respcache.exceptions import CacheUnavailable
from respcache.models import Workload
from respcache.store import cluster
from tests.conftest import ask

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET = "rc-" + "x7Kq9pLm2Vn8Bw4Zt6Yh3Jd5Fs1Gr0Ce" * 2  # 69 characters, many unique: a real-looking key
PRODUCTION_ENV = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": SECRET,
    "DJANGO_ALLOWED_HOSTS": "respcache.example.com",
    "DATABASE_URL": "postgres://respcache:pw@db.example.com:5432/respcache",
    "REDIS_URL": "rediss://:redis-pw@redis.example.com:6380/0",
    "ANTHROPIC_API_KEY": "sk-ant-test",
    "RESPCACHE_METRICS_TOKEN": "scrape-token",
    "RESPCACHE_ENCRYPTION_KEYS": "rmY0QAiWm4Kt6l5hOZcVTEcqn6rBffbOp0qM9AAEkFk=",
}
ENV_NAMES = {
    "RESPCACHE_ENCRYPTION_KEYS",
    "RESPCACHE_ENCRYPTION_REQUIRED",
    "DJANGO_DEBUG",
    "DJANGO_SECRET_KEY",
    "DJANGO_ALLOWED_HOSTS",
    "DATABASE_URL",
    "REDIS_URL",
    "REDIS_PASSWORD",
    "REDIS_SENTINELS",
    "REDIS_SENTINEL_SERVICE",
    "REDIS_SENTINEL_PASSWORD",
    "REDIS_CLUSTER_NODES",
    "REDIS_CLUSTER_TLS",
    "REDIS_DB",
    "REDIS_TLS_CA_CERTS",
    "REDIS_TLS_CERTFILE",
    "REDIS_TLS_KEYFILE",
    "REDIS_TLS_CERT_REQS",
    "DJANGO_SECURE_SSL_REDIRECT",
    "DJANGO_SECURE_HSTS_SECONDS",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "DJANGO_SECURE_HSTS_PRELOAD",
    "DJANGO_SECURE_PROXY_SSL_HEADER",
    "DATABASE_CONN_MAX_AGE",
    "DJANGO_NUM_PROXIES",
    "RESPCACHE_MANAGEMENT_ANON_RATE",
    "RESPCACHE_MANAGEMENT_USER_RATE",
    "RESPCACHE_METRICS_TOKEN",
    "RESPCACHE_METRICS_PUBLIC",
}


def build_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    """project/settings.py evaluated afresh under ``env`` (the running Django is not touched)."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(BASE_DIR / "project" / "settings.py"))


# --- settings construction ---------------------------------------------------------------------


def test_local_defaults_without_a_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    built = build_settings(monkeypatch)
    assert built["PRODUCTION"] is False and built["DEBUG"] is False
    assert "SECURE_SSL_REDIRECT" not in built and "SECURE_HSTS_SECONDS" not in built
    assert built["CACHES"]["respcache"]["LOCATION"] == embedded_redis.url()


def test_production_hardening_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    built = build_settings(monkeypatch, **PRODUCTION_ENV)
    assert built["PRODUCTION"] is True and built["SECRET_KEY"] == SECRET
    assert built["SECURE_SSL_REDIRECT"] is True
    assert built["SECURE_HSTS_SECONDS"] == 365 * 24 * 3600
    assert built["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True and built["SECURE_HSTS_PRELOAD"] is True
    assert built["SESSION_COOKIE_SECURE"] is True and built["CSRF_COOKIE_SECURE"] is True
    assert "SECURE_PROXY_SSL_HEADER" not in built  # opt-in only: trusting it blindly is a hole
    assert built["SILENCED_SYSTEM_CHECKS"] == []
    assert built["ALLOWED_HOSTS"] == ["respcache.example.com"]


def test_production_opt_outs_and_proxy_header(monkeypatch: pytest.MonkeyPatch) -> None:
    built = build_settings(
        monkeypatch,
        **PRODUCTION_ENV,
        DJANGO_SECURE_SSL_REDIRECT="0",
        DJANGO_SECURE_HSTS_PRELOAD="false",
        DJANGO_SECURE_PROXY_SSL_HEADER="1",
    )
    assert built["SECURE_SSL_REDIRECT"] is False and built["SECURE_HSTS_PRELOAD"] is False
    assert built["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert built["SILENCED_SYSTEM_CHECKS"] == ["security.W008", "security.W021"]


def test_debug_is_never_production(monkeypatch: pytest.MonkeyPatch) -> None:
    built = build_settings(monkeypatch, **{**PRODUCTION_ENV, "DJANGO_DEBUG": "1"})
    assert built["PRODUCTION"] is False and "SECURE_SSL_REDIRECT" not in built


def test_postgres_from_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    database = build_settings(monkeypatch, **PRODUCTION_ENV)["DATABASES"]["default"]
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["NAME"], database["HOST"], database["PORT"], database["USER"]) == (
        "respcache",
        "db.example.com",
        5432,
        "respcache",
    )
    assert database["OPTIONS"]["connect_timeout"] == 5 and database["CONN_MAX_AGE"] == 0
    assert database["CONN_HEALTH_CHECKS"] is True


def test_redis_tls_and_password(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = build_settings(
        monkeypatch, **PRODUCTION_ENV, REDIS_TLS_CA_CERTS="/etc/ssl/redis-ca.pem", REDIS_PASSWORD="from-env"
    )["CACHES"]["respcache"]
    assert cache["LOCATION"] == "rediss://:redis-pw@redis.example.com:6380/0"
    assert cache["OPTIONS"]["PASSWORD"] == "from-env"
    pool = cache["OPTIONS"]["CONNECTION_POOL_KWARGS"]
    assert pool["ssl_ca_certs"] == "/etc/ssl/redis-ca.pem" and pool["ssl_cert_reqs"] == "required"
    plain = build_settings(monkeypatch, REDIS_URL="redis://127.0.0.1:6379/0")["CACHES"]["respcache"]
    assert not any(k.startswith("ssl") for k in plain["OPTIONS"]["CONNECTION_POOL_KWARGS"])


def test_redis_sentinel_through_django_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    built = build_settings(
        monkeypatch,
        REDIS_SENTINELS="sentinel-a:26379, sentinel-b:26380",
        REDIS_SENTINEL_SERVICE="cache",
        REDIS_DB="2",
        REDIS_SENTINEL_PASSWORD="s-pw",
        REDIS_URL="redis://ignored:6379/0",
    )
    cache = built["CACHES"]["respcache"]
    assert cache["LOCATION"] == built["REDIS_URL"] == "redis://cache/2"
    options = cache["OPTIONS"]
    assert options["CLIENT_CLASS"] == "django_redis.client.SentinelClient"
    assert options["CONNECTION_FACTORY"] == "django_redis.pool.SentinelConnectionFactory"
    assert options["SENTINELS"] == [("sentinel-a", 26379), ("sentinel-b", 26380)]
    assert options["SENTINEL_KWARGS"]["password"] == "s-pw"
    assert options["SENTINEL_KWARGS"]["socket_timeout"] == options["SOCKET_TIMEOUT"]


def test_redis_cluster_from_its_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    built = build_settings(
        monkeypatch,
        REDIS_CLUSTER_NODES="10.0.0.1:6379, 10.0.0.2:6380",
        REDIS_PASSWORD="from-env",
        REDIS_URL="redis://ignored:6379/0",
        REDIS_SENTINELS="ignored:26379",
    )
    cache = built["CACHES"]["respcache"]
    assert cache["LOCATION"] == built["REDIS_URL"] == "redis://10.0.0.1:6379,redis://10.0.0.2:6380"
    options = cache["OPTIONS"]
    assert options["CLIENT_CLASS"] == "respcache.store.cluster.ClusterClient"
    assert "SENTINELS" not in options
    # What redis-py's RedisCluster is given: every node, the password, the timeouts, a blocking
    # pool per node of the same size, few retries (a call fails open fast while a primary is down).
    kwargs = cluster.cluster_kwargs(cache["LOCATION"], options)
    assert kwargs["url"] == "redis://10.0.0.1:6379"
    assert [(n.host, n.port) for n in kwargs["startup_nodes"]] == [("10.0.0.2", 6380)]
    assert kwargs["password"] == "from-env" and "ssl" not in kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.0, 0.5)
    assert kwargs["connection_pool_class"] is redis.BlockingConnectionPool
    assert (kwargs["max_connections"], kwargs["timeout"]) == (200, 2.0)
    assert kwargs["retry"].get_retries() == 1
    assert not any(name.startswith("ssl") for name in kwargs)
    # Neither the embedded server nor a database number with a cluster.
    monkeypatch.setenv("REDIS_CLUSTER_NODES", "10.0.0.1:6379")
    monkeypatch.delenv("REDIS_URL")
    monkeypatch.delenv("REDIS_SENTINELS")
    assert not embedded_redis.wanted()


def test_redis_cluster_over_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = build_settings(
        monkeypatch,
        REDIS_CLUSTER_NODES="redis-1.example.com:6380,redis-2.example.com:6380",
        REDIS_CLUSTER_TLS="1",
        REDIS_TLS_CA_CERTS="/etc/ssl/redis-ca.pem",
        REDIS_TLS_CERTFILE="/etc/ssl/client.pem",
        REDIS_TLS_KEYFILE="/etc/ssl/client.key",
    )["CACHES"]["respcache"]
    assert cache["LOCATION"] == "rediss://redis-1.example.com:6380,rediss://redis-2.example.com:6380"
    kwargs = cluster.cluster_kwargs(cache["LOCATION"], cache["OPTIONS"])
    assert kwargs["url"] == "rediss://redis-1.example.com:6380"  # every node over TLS
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_certfile"], kwargs["ssl_keyfile"], kwargs["ssl_cert_reqs"]) == (
        "/etc/ssl/redis-ca.pem",
        "/etc/ssl/client.pem",
        "/etc/ssl/client.key",
        "required",
    )


@pytest.mark.django_db
def test_respcache_through_a_real_cluster_with_a_password(monkeypatch: pytest.MonkeyPatch, make_workload: Any) -> None:
    password = secrets.token_hex(8)
    local = cluster_redis.start(primaries=3, replicas_per_primary=0, password=password)
    try:
        nodes = local.startup_nodes
        cache = build_settings(monkeypatch, REDIS_CLUSTER_NODES=nodes, REDIS_PASSWORD=password)["CACHES"]["respcache"]
        make_workload("intents")
        assert served_through(cache) == ["miss", "hit"]
        # Served by the cluster: the entry is on one of its primaries.
        assert any(local.client(port).keys("*respcache:e:intents*") for port in local.ports)
        wrong = build_settings(monkeypatch, REDIS_CLUSTER_NODES=nodes, REDIS_PASSWORD="wrong")["CACHES"]["respcache"]
        with override_settings(CACHES={**settings.CACHES, "respcache": wrong}):
            with pytest.raises(CacheUnavailable):
                store.ping()
    finally:
        local.stop()


# --- manage.py check --deploy --------------------------------------------------------------------


#: They configure the service too (its upstream, its settings): a test sets them, not the shell.
SERVICE_NAMES = {"ANTHROPIC_API_KEY", "RESPCACHE_UPSTREAM", "DJANGO_SETTINGS_MODULE"}


def service_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without anything that configures the service, plus ``env``."""
    full = {k: v for k, v in os.environ.items() if k not in ENV_NAMES | SERVICE_NAMES}
    full.update(env)
    return full


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=BASE_DIR, env=service_env(env), capture_output=True, text=True, timeout=120)


def run_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], env)


def test_check_deploy_is_clean_with_production_settings() -> None:
    done = run_check(PRODUCTION_ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout


def test_check_deploy_complains_without_them() -> None:
    done = run_check({"REDIS_URL": "redis://127.0.0.1:6379/0", "RESPCACHE_UPSTREAM": "simulated"})
    assert done.returncode != 0
    for check_id in ("security.W004", "security.W008", "security.W009", "security.W012", "security.W016"):
        assert check_id in done.stderr, check_id


# --- HTTPS: pages are redirected, API calls refused ---------------------------------------------


def production_http(monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """override_settings with what the production settings built from ``env`` say about HTTPS
    (the middleware list, SECURE_*), the rest of the test settings kept."""
    built = build_settings(monkeypatch, **{**PRODUCTION_ENV, **env})
    https = {"SECURE_PROXY_SSL_HEADER": None, **{k: v for k, v in built.items() if k.startswith("SECURE_")}}
    return override_settings(MIDDLEWARE=built["MIDDLEWARE"], **https)


def message_call(client: Client, path: str, **extra: Any) -> Any:
    return client.post(path, orjson.dumps(ask("over which scheme")), content_type="application/json", **extra)


@pytest.mark.django_db
def test_api_calls_over_plain_http_get_403_and_no_redirect(
    monkeypatch: pytest.MonkeyPatch, make_workload: Any, make_key: Any
) -> None:
    intents = make_workload("intents")
    key = make_key(intents, managed=(intents,))
    with production_http(monkeypatch):
        client = Client(HTTP_X_API_KEY=key)
        for path in ("/w/intents/v1/messages", "/w/intents/v1/messages/count_tokens", "/api/workloads/intents/bump/"):
            # X-Forwarded-Proto is not trusted unless DJANGO_SECURE_PROXY_SSL_HEADER says so.
            for extra in ({}, {"HTTP_X_FORWARDED_PROTO": "https"}):
                response = message_call(client, path, **extra)
                assert response.status_code == 403, (path, extra)
                assert "Location" not in response
                body = orjson.loads(response.content)
                assert body["type"] == "error" and body["error"]["type"] == "permission_error"
                assert body["error"]["message"].startswith("Use HTTPS")
        assert client.get("/api/workloads/").status_code == 403
        assert Workload.objects.get(slug="intents").key_version == 1
        # Over HTTPS the same calls are served.
        assert message_call(client, "/w/intents/v1/messages", secure=True)["X-Respcache"] == "miss"
        assert client.get("/api/workloads/", secure=True).status_code == 200
        # Pages keep Django's redirect; /healthz and /metrics their exemption.
        admin = client.get("/admin/")
        assert admin.status_code == 301 and admin["Location"] == "https://testserver/admin/"
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200


@pytest.mark.django_db
def test_a_trusted_proxy_marks_api_calls_as_https(
    monkeypatch: pytest.MonkeyPatch, make_workload: Any, make_key: Any
) -> None:
    intents = make_workload("intents")
    key = make_key(intents)
    with production_http(monkeypatch, DJANGO_SECURE_PROXY_SSL_HEADER="1"):
        client = Client(HTTP_X_API_KEY=key)
        served = message_call(client, "/w/intents/v1/messages", HTTP_X_FORWARDED_PROTO="https")
        assert served.status_code == 200 and served["X-Respcache"] == "miss"
        refused = message_call(client, "/w/intents/v1/messages", HTTP_X_FORWARDED_PROTO="http")
        assert refused.status_code == 403 and "Location" not in refused


@pytest.mark.django_db
def test_without_the_https_redirect_plain_http_is_the_operators_choice(
    monkeypatch: pytest.MonkeyPatch, make_workload: Any, make_key: Any
) -> None:
    intents = make_workload("intents")
    key = make_key(intents)
    with production_http(monkeypatch, DJANGO_SECURE_SSL_REDIRECT="0"):
        client = Client(HTTP_X_API_KEY=key)
        assert message_call(client, "/w/intents/v1/messages")["X-Respcache"] == "miss"
        assert client.get("/admin/").status_code == 302  # to the login page, not to HTTPS


# --- the simulated upstream in production ------------------------------------------------------

WITHOUT_A_KEY = {k: v for k, v in PRODUCTION_ENV.items() if k != "ANTHROPIC_API_KEY"}


def start_wsgi(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Import the WSGI app as a gunicorn worker does, in a fresh process."""
    return run([sys.executable, "-c", "import project.wsgi"], env)


def test_check_deploy_reports_a_simulated_upstream_nobody_asked_for() -> None:
    done = run_check(WITHOUT_A_KEY)
    assert done.returncode != 0
    assert "respcache.E007" in done.stderr and "RESPCACHE_UPSTREAM=simulated" in done.stderr
    assert run_check({**WITHOUT_A_KEY, "RESPCACHE_UPSTREAM": "simulated"}).returncode == 0


def test_production_refuses_to_start_on_a_simulated_upstream_nobody_asked_for() -> None:
    done = start_wsgi(WITHOUT_A_KEY)
    assert done.returncode != 0
    assert "ImproperlyConfigured: respcache refuses to start" in done.stderr
    assert "Set ANTHROPIC_API_KEY, or RESPCACHE_UPSTREAM=simulated" in done.stderr


def test_production_starts_on_the_simulated_upstream_when_it_is_named() -> None:
    done = start_wsgi({**WITHOUT_A_KEY, "RESPCACHE_UPSTREAM": "simulated"})
    assert done.returncode == 0, done.stderr
    assert "answering from the simulated upstream (RESPCACHE_UPSTREAM=simulated)" in done.stderr


def test_without_production_settings_the_simulated_upstream_is_still_the_default() -> None:
    local = {k: v for k, v in WITHOUT_A_KEY.items() if k != "DJANGO_SECRET_KEY"}
    done = start_wsgi(local)
    assert done.returncode == 0, done.stderr
    assert "answering from the simulated upstream (ANTHROPIC_API_KEY is unset)" in done.stderr


def test_gunicorn_exits_rather_than_serve_a_simulated_upstream_nobody_asked_for(tmp_path: Path) -> None:
    gunicorn = Path(sys.executable).parent / "gunicorn"
    env = {**WITHOUT_A_KEY, "GUNICORN_BIND": f"127.0.0.1:{free_port()}", "WEB_CONCURRENCY": "1"}
    done = run([str(gunicorn), "-c", "gunicorn.conf.py", "project.wsgi"], env)
    assert done.returncode != 0
    assert "respcache refuses to start" in done.stdout + done.stderr


# --- static files --------------------------------------------------------------------------------


def test_static_files_are_served_by_whitenoise() -> None:
    response = Client().get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert b"".join(response.streaming_content)


# --- real Redis servers: TLS with a password, Sentinel --------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(args: list[str], ready: Any, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args[0]} exited: {log.read_text()[-500:]}")
        try:
            if ready():
                return process
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{args[0]} did not come up: {log.read_text()[-500:]}")


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()


def served_through(cache: dict[str, Any]) -> list[str]:
    """Two identical calls through respcache with ``cache`` as its Redis: what X-Respcache said."""
    with override_settings(CACHES={**settings.CACHES, "respcache": cache}):
        policy = selectors.workload_policy("intents")
        assert policy is not None
        body = ask("through this redis")
        return [
            services.cached_message_create(policy=policy, body=body, raw_body=orjson.dumps(body)).status
            for _ in range(2)
        ]


@pytest.mark.django_db
def test_respcache_through_a_real_sentinel_group(
    monkeypatch: pytest.MonkeyPatch, make_workload: Any, servers: list[Any], tmp_path: Path
) -> None:
    binary = embedded_redis.binary()
    master_port, sentinel_port = free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    servers.append(
        start(
            [binary, "--port", str(master_port), *common],
            lambda: redis.Redis(port=master_port).ping(),
            tmp_path / "master.log",
        )
    )
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\nsentinel monitor cache 127.0.0.1 {master_port} 1\n"
    )
    servers.append(
        start(
            [binary, str(conf), "--sentinel"],
            lambda: redis.Redis(port=sentinel_port).sentinel_get_master_addr_by_name("cache"),
            tmp_path / "sentinel.log",
        )
    )
    cache = build_settings(monkeypatch, REDIS_SENTINELS=f"127.0.0.1:{sentinel_port}", REDIS_SENTINEL_SERVICE="cache")[
        "CACHES"
    ]["respcache"]
    make_workload("intents")
    assert served_through(cache) == ["miss", "hit"]
    # Served by the master the Sentinel named: the entry is there.
    assert any(b"respcache:e:intents" in k for k in redis.Redis(port=master_port).keys("*"))


TLS_REDIS = shutil.which("redis-server")
OPENSSL = shutil.which("openssl")


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "redis.key", "redis.csr", "redis.pem"))
    quiet = {"check": True, "capture_output": True}
    subprocess.run(
        [
            OPENSSL,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            ca_key,
            "-out",
            ca,
            "-days",
            "2",
            "-subj",
            "/CN=respcache test CA",
        ],
        **quiet,
    )
    subprocess.run(
        [OPENSSL, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        **quiet,
    )
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    subprocess.run(
        [
            OPENSSL,
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "2",
            "-extfile",
            ext,
        ],
        **quiet,
    )
    return ca, cert, key


@pytest.mark.skipif(not (TLS_REDIS and OPENSSL), reason="needs a TLS-capable redis-server and openssl on PATH")
@pytest.mark.django_db
def test_respcache_over_tls_with_a_password(
    monkeypatch: pytest.MonkeyPatch, make_workload: Any, servers: list[Any], tmp_path: Path
) -> None:
    ca, cert, key = make_certificates(tmp_path)
    port, password = free_port(), secrets.token_hex(8)

    def ready() -> bool:
        client = redis.Redis(port=port, ssl=True, ssl_ca_certs=str(ca), password=password)
        return bool(client.ping())

    servers.append(
        start(
            [
                str(TLS_REDIS),
                "--port",
                "0",
                "--tls-port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--tls-cert-file",
                str(cert),
                "--tls-key-file",
                str(key),
                "--tls-ca-cert-file",
                str(ca),
                "--tls-auth-clients",
                "no",
                "--requirepass",
                password,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            ready,
            tmp_path / "tls.log",
        )
    )
    make_workload("intents")
    url = f"rediss://:{password}@127.0.0.1:{port}/0"
    cache = build_settings(monkeypatch, REDIS_URL=url, REDIS_TLS_CA_CERTS=str(ca))["CACHES"]["respcache"]
    assert served_through(cache) == ["miss", "hit"]
    # The certificate is verified: without our CA the connection is refused, and calls fail open.
    elsewhere = url.replace("127.0.0.1", "localhost")  # the certificate names both
    for ca_certs, works in ((str(ca), True), ("", False)):
        ConnectionFactory._pools.clear()  # django-redis keeps one pool per URL, per process
        cache = build_settings(monkeypatch, REDIS_URL=elsewhere, REDIS_TLS_CA_CERTS=ca_certs)["CACHES"]["respcache"]
        with override_settings(CACHES={**settings.CACHES, "respcache": cache}):
            if works:
                store.ping()
            else:
                with pytest.raises(CacheUnavailable, match="certificate verify failed"):
                    store.ping()
    # A wrong password is refused too.
    wrong = build_settings(monkeypatch, REDIS_URL=url.replace(password, "wrong"), REDIS_TLS_CA_CERTS=str(ca))
    with override_settings(CACHES={**settings.CACHES, "respcache": wrong["CACHES"]["respcache"]}):
        with pytest.raises(CacheUnavailable):
            store.ping()


@pytest.mark.skipif(not (TLS_REDIS and OPENSSL), reason="needs a TLS-capable redis-server and openssl on PATH")
@pytest.mark.django_db
def test_respcache_through_a_real_cluster_over_tls(
    monkeypatch: pytest.MonkeyPatch, make_workload: Any, tmp_path: Path
) -> None:
    """Every node speaks TLS only (clients, cluster bus, replication) and wants a password: the
    settings a single Redis over TLS takes, plus REDIS_CLUSTER_TLS=1, reach it; without our CA
    the certificate is refused and calls fail open."""
    ca, cert, key = make_certificates(tmp_path)
    password = secrets.token_hex(8)
    files = (str(ca), str(cert), str(key))
    local = cluster_redis.start(
        primaries=3, replicas_per_primary=0, password=password, tls=files, executable=str(TLS_REDIS)
    )
    try:
        env = {
            "REDIS_CLUSTER_NODES": local.startup_nodes,
            "REDIS_CLUSTER_TLS": "1",
            "REDIS_TLS_CA_CERTS": str(ca),
            "REDIS_PASSWORD": password,
        }
        cache = build_settings(monkeypatch, **env)["CACHES"]["respcache"]
        assert cache["LOCATION"].startswith("rediss://")
        make_workload("intents")
        assert served_through(cache) == ["miss", "hit"]
        untrusted = build_settings(monkeypatch, **{**env, "REDIS_TLS_CA_CERTS": ""})["CACHES"]["respcache"]
        with override_settings(CACHES={**settings.CACHES, "respcache": untrusted}):
            with pytest.raises(CacheUnavailable, match="certificate verify failed"):
                store.ping()
    finally:
        local.stop()
