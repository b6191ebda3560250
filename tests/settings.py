"""Test settings: the project's, with Redis on a dedicated database that the tests flush.

Redis is real: REDIS_URL when set, else the embedded server (started here if needed).
The tests use database RESPCACHE_TEST_REDIS_DB (13 by default) of that server.
"""

import os
import sys
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from project import embedded_redis

if embedded_redis.wanted():
    embedded_redis.ensure_running()

from project.settings import *  # noqa: E402,F403
from project.settings import BASE_DIR, CACHES, DATABASES, REDIS_URL  # noqa: E402
from project.settings import RESPCACHE as PROJECT_RESPCACHE  # noqa: E402

TEST_REDIS_DB = int(os.environ.get("RESPCACHE_TEST_REDIS_DB", "13"))


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = dict(parse_qsl(parts.query))
        query["db"] = str(db)
        return f"unix://{parts.path}?{urlencode(query)}"
    return urlunsplit(parts._replace(path=f"/{db}"))


TEST_REDIS_URL = _with_db(REDIS_URL, TEST_REDIS_DB)
CACHES["respcache"]["LOCATION"] = TEST_REDIS_URL
CACHES["respcache"]["KEY_PREFIX"] = "rctest"

# A file (not in-memory) SQLite test database, so that a gunicorn started by a test shares it.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    (BASE_DIR / ".run").mkdir(exist_ok=True)  # a fresh clone with REDIS_URL set has none yet
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / ".run" / "test-db.sqlite3")}

# Fast test users; a server a test starts to measure the real hashing (tests/security/) keeps the
# project's bounded PBKDF2 with RESPCACHE_TEST_REAL_HASHERS=1.
if os.environ.get("RESPCACHE_TEST_REAL_HASHERS") != "1":
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# A server a test starts (tests/test_deploy.py) sets RESPCACHE_TEST_UPSTREAM=anthropic to reach
# the fake Messages API; never RESPCACHE_UPSTREAM, which may point a developer's shell at Anthropic.
RESPCACHE = {
    "CACHE_ALIAS": "respcache",
    "UPSTREAM": os.environ.get("RESPCACHE_TEST_UPSTREAM", "simulated"),
    "LOCAL_CACHE_SECONDS": 0,
    # From the environment as in production (RESPCACHE_METRICS_TOKEN, RESPCACHE_METRICS_PUBLIC):
    # a server a test starts with the production settings needs them for /metrics.
    "METRICS_TOKEN": PROJECT_RESPCACHE["METRICS_TOKEN"],
    "METRICS_PUBLIC": PROJECT_RESPCACHE["METRICS_PUBLIC"],
    # A server a test starts flushes its counters every second, as deployed; the test process
    # itself flushes when it reads (stats flushes first), so a flush never lands mid-test.
    "COUNTER_FLUSH_SECONDS": PROJECT_RESPCACHE["COUNTER_FLUSH_SECONDS"] if "pytest" not in sys.modules else 3600.0,
}
