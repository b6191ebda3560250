"""gunicorn settings for respcache (``gunicorn -c gunicorn.conf.py project.wsgi``).

gevent workers: a waiter blocked on the stampede lock or a slow streaming client holds a
greenlet, not a whole worker process. Every value can be set from the environment.

Workers keep no state that others need (entries, locks, counters and key versions are in Redis,
policies in the database; a worker flushes the counters it added up every second and on exit),
so: graceful reload after a deploy or a settings change is ``kill -HUP <master pid>`` (new
workers start with the new code, old ones finish their requests within ``graceful_timeout``, no
request is dropped); ``kill -TTIN`` / ``-TTOU`` add or remove a
worker; ``kill -TERM`` stops gracefully. ``GUNICORN_PIDFILE`` writes the master's pid to a file.
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, multiprocessing.cpu_count())))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gevent")
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
# gevent workers heartbeat from their own greenlet, so a long upstream call or stream does not
# trip this; it only kills a worker whose event loop is stuck.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "0"))
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-")
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
pidfile = os.environ.get("GUNICORN_PIDFILE") or None
