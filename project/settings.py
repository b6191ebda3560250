"""Settings for running respcache as a service. Secrets and endpoints come from the environment.

Production is on when ``DJANGO_DEBUG`` is off and a real ``DJANGO_SECRET_KEY`` is set: HTTPS
redirect, HSTS, secure cookies (each adjustable from the environment, see the README's
Production section), so that ``manage.py check --deploy`` is clean. Without a secret key in the
environment (``make run`` on a laptop) the local-only defaults apply.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url

from project import embedded_redis

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


DEBUG = _env_bool("DJANGO_DEBUG", False)
_INSECURE_KEY = "django-insecure-respcache-local-only"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or _INSECURE_KEY
PRODUCTION = not DEBUG and SECRET_KEY != _INSECURE_KEY
ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",") if h.strip()
]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "respcache",
]

MIDDLEWARE = [
    # First: the management pages and API wait here, one at a time per worker, so that a flood of
    # them cannot crowd out the calls the worker serves (project/login_guard.py).
    "project.login_guard.ManagementBulkheadMiddleware",
    # Before SecurityMiddleware: with SECURE_SSL_REDIRECT on, API calls over plain HTTP get a 403
    # instead of its redirect (the key has crossed in clear; clients would send it again).
    "respcache.api.middleware.HttpsOnlyApiMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "project.login_guard.HashingBusyMiddleware",
    # Last, as django-axes asks: turns a locked-out sign-in into its 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite by default (the embedded default); PostgreSQL and others through DATABASE_URL.
# CONN_MAX_AGE 0 by default: under gevent workers each request runs in its own greenlet, whose
# connection could not be reused by the next one anyway (the hit path does not touch the
# database; put PgBouncer in front when many workers do).
DATABASES: dict[str, Any] = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "0")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # /healthz and the admin must not hang on an unreachable database.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", int(os.environ.get("DATABASE_CONNECT_TIMEOUT", "5"))
    )

# Redis: REDIS_URL (redis://, rediss:// for TLS, unix://), or a Sentinel group (REDIS_SENTINELS),
# else the embedded server that manage.py / wsgi.py / the tests start.
_SENTINELS = [s.strip() for s in os.environ.get("REDIS_SENTINELS", "").split(",") if s.strip()]
if _SENTINELS:
    # django-redis's SentinelClient reads the service name as the URL's host.
    REDIS_URL = f"redis://{os.environ.get('REDIS_SENTINEL_SERVICE', 'mymaster')}/{os.environ.get('REDIS_DB', '0')}"
else:
    REDIS_URL = os.environ.get("REDIS_URL") or embedded_redis.url()

CACHES: dict[str, Any] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "respcache": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": os.environ.get("RESPCACHE_KEY_PREFIX", "rc"),
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            # Fail open fast: a Redis outage must cost a caller milliseconds, not a hung worker.
            "SOCKET_CONNECT_TIMEOUT": float(os.environ.get("RESPCACHE_REDIS_CONNECT_TIMEOUT", "0.5")),
            "SOCKET_TIMEOUT": float(os.environ.get("RESPCACHE_REDIS_TIMEOUT", "2")),
            # A blocking pool: under a burst (a stampede, a gevent worker with hundreds of calls in
            # flight) a caller waits a moment for a free connection instead of failing with
            # "Too many connections" (redis-py's default pool holds 100 and then raises).
            "CONNECTION_POOL_CLASS": "redis.BlockingConnectionPool",
            "CONNECTION_POOL_KWARGS": {
                "health_check_interval": 30,
                "max_connections": int(os.environ.get("RESPCACHE_REDIS_MAX_CONNECTIONS", "200")),
                "timeout": float(os.environ.get("RESPCACHE_REDIS_POOL_TIMEOUT", "2")),
            },
        },
    },
}
_REDIS_OPTIONS = CACHES["respcache"]["OPTIONS"]
if os.environ.get("REDIS_PASSWORD"):  # or in the URL: rediss://:PASSWORD@host:6380/0
    _REDIS_OPTIONS["PASSWORD"] = os.environ["REDIS_PASSWORD"]
if REDIS_URL.startswith("rediss://"):
    # TLS: the server's certificate is verified, against REDIS_TLS_CA_CERTS or the system's CAs.
    _REDIS_OPTIONS["CONNECTION_POOL_KWARGS"].update(
        {
            name: os.environ[variable]
            for name, variable in (
                ("ssl_ca_certs", "REDIS_TLS_CA_CERTS"),
                ("ssl_certfile", "REDIS_TLS_CERTFILE"),  # client certificate, when Redis asks for one
                ("ssl_keyfile", "REDIS_TLS_KEYFILE"),
            )
            if os.environ.get(variable)
        },
        ssl_cert_reqs=os.environ.get("REDIS_TLS_CERT_REQS", "required"),
    )
if _SENTINELS:
    _REDIS_OPTIONS.update(
        CLIENT_CLASS="django_redis.client.SentinelClient",
        CONNECTION_FACTORY="django_redis.pool.SentinelConnectionFactory",
        SENTINELS=[(host, int(port)) for host, _, port in (s.rpartition(":") for s in _SENTINELS)],
        SENTINEL_KWARGS={
            "socket_connect_timeout": _REDIS_OPTIONS["SOCKET_CONNECT_TIMEOUT"],
            "socket_timeout": _REDIS_OPTIONS["SOCKET_TIMEOUT"],
        },
    )
    if os.environ.get("REDIS_SENTINEL_PASSWORD"):
        _REDIS_OPTIONS["SENTINEL_KWARGS"]["password"] = os.environ["REDIS_SENTINEL_PASSWORD"]
    # Sentinel needs its own pool class (django-redis's SentinelConnectionFactory checks it),
    # which has no blocking variant: it keeps redis-py's limit of connections, raised.
    _REDIS_OPTIONS.pop("CONNECTION_POOL_CLASS", None)
    _REDIS_OPTIONS["CONNECTION_POOL_KWARGS"].pop("timeout", None)

# The admin sign-in is guarded against guessing by django-axes: after RESPCACHE_LOGIN_FAILURE_LIMIT
# failed sign-ins of one username from one client address, that pair is refused (429, without a
# password check, even with the right password) for RESPCACHE_LOGIN_COOLOFF_MINUTES. The counts
# live in respcache's Redis (one key per pair, expiring with the cool-off): shared by every worker
# and machine, and no database write on a failed sign-in (under SQLite a write can wait on the
# file lock, which would hold up a gevent worker's whole event loop).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_HANDLER = "project.login_guard.FailOpenAxesCacheHandler"  # Redis down: the password alone decides
AXES_CACHE = "respcache"
AXES_FAILURE_LIMIT = int(os.environ.get("RESPCACHE_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=float(os.environ.get("RESPCACHE_LOGIN_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "project.login_guard.client_ip"  # the throttles' client IP (DJANGO_NUM_PROXIES)
# The hashes run off the event loop, one at a time per worker (project/login_guard.py); the
# first hasher stores new passwords, the others still verify stored ones.
PASSWORD_HASHERS = [
    "project.login_guard.BoundedPBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Production hardening (see the module docstring); every value can be set from the environment.
if PRODUCTION:
    SECURE_SSL_REDIRECT = _env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    # Load balancer health checks and Prometheus scrapes often come over plain HTTP inside the
    # network: they are answered, not redirected.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = _env_bool("DJANGO_SECURE_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    if _env_bool("DJANGO_SECURE_PROXY_SSL_HEADER"):
        # Only behind a proxy that terminates TLS and sets (overwrites) X-Forwarded-Proto.
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # A setting turned off in the environment is a decision, not an oversight: do not warn about it.
    SILENCED_SYSTEM_CHECKS = [
        check_id
        for check_id, on in (
            ("security.W008", SECURE_SSL_REDIRECT),
            ("security.W004", SECURE_HSTS_SECONDS),
            ("security.W005", SECURE_HSTS_INCLUDE_SUBDOMAINS),
            ("security.W021", SECURE_HSTS_PRELOAD),
        )
        if not on
    ]

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True  # serve app static files even before collectstatic
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # No BasicAuthentication: checking a password is a deliberately slow hash, and a stranger's
    # flood of made-up ones would stall the worker. The management API adds respcache keys.
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "UNAUTHENTICATED_USER": None,
    # The management API's rates (respcache/api/throttling.py), counted in Redis: requests without
    # valid credentials per client IP, each staff user and API key on its own. Empty: no limit.
    "DEFAULT_THROTTLE_RATES": {
        "management_anon": os.environ.get("RESPCACHE_MANAGEMENT_ANON_RATE", "60/minute") or None,
        "management_user": os.environ.get("RESPCACHE_MANAGEMENT_USER_RATE", "600/minute") or None,
    },
    # The client IP is REMOTE_ADDR; behind proxies that append to X-Forwarded-For, their number
    # says which address in it is the client's (unset, DRF would trust what the client sent).
    "NUM_PROXIES": int(os.environ.get("DJANGO_NUM_PROXIES", "0")),
}

SPECTACULAR_SETTINGS = {
    "TITLE": "respcache",
    "DESCRIPTION": "Exact-match response cache for the Anthropic Messages API.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The call endpoints are plain Django views: this hook adds their description.
    "PREPROCESSING_HOOKS": ["respcache.api.schema.call_endpoints"],
}

RESPCACHE: dict[str, Any] = {
    "CACHE_ALIAS": "respcache",
    "UPSTREAM": os.environ.get("RESPCACHE_UPSTREAM", ""),
    "METRICS_TOKEN": os.environ.get("RESPCACHE_METRICS_TOKEN", ""),
    # In production /metrics needs its token unless this opens it on purpose (respcache.E009).
    "METRICS_PUBLIC": _env_bool("RESPCACHE_METRICS_PUBLIC", False),
    # Comma-separated: the first key encrypts, all decrypt (see the reference's Encryption at rest).
    "ENCRYPTION_KEYS": [k.strip() for k in os.environ.get("RESPCACHE_ENCRYPTION_KEYS", "").split(",") if k.strip()],
    "ENCRYPTION_REQUIRED": _env_bool("RESPCACHE_ENCRYPTION_REQUIRED"),
    # How often each process flushes its counters to Redis (/metrics and the admin agree across
    # processes within this time).
    "COUNTER_FLUSH_SECONDS": float(os.environ.get("RESPCACHE_COUNTER_FLUSH_SECONDS", "1")),
}

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        # respcache.calls writes one JSON object per call: the line is the message alone.
        "json_line": {"format": "%(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        "calls": {"class": "logging.StreamHandler", "formatter": "json_line"},
    },
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.server": {"level": "WARNING"},
        # One line per call (respcache/telemetry.py); RESPCACHE_CALL_LOG_LEVEL=WARNING silences it.
        "respcache.calls": {
            "handlers": ["calls"],
            "level": os.environ.get("RESPCACHE_CALL_LOG_LEVEL", "INFO"),
            "propagate": False,
        },
    },
}

if "pytest" in sys.modules:  # keep tests quiet unless something is wrong
    LOGGING["root"]["level"] = "WARNING"
    LOGGING["loggers"]["respcache.calls"]["level"] = "WARNING"
