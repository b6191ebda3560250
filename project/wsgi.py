"""WSGI entry point (gunicorn project.wsgi). Starts the embedded Redis when no Redis is configured."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
from project import embedded_redis  # noqa: E402

if embedded_redis.wanted():
    embedded_redis.ensure_running()

application = get_wsgi_application()

# Load the URLconf (the views, and with them the anthropic SDK) at worker boot, not in the first
# caller's request: a fresh worker would otherwise answer its first call seconds late.
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns  # noqa: B018

from respcache.conf import app_settings  # noqa: E402  (needs the settings loaded)
from respcache.upstream import get_upstream  # noqa: E402

get_upstream()  # an unknown RESPCACHE_UPSTREAM stops the worker here, not at its first call
if app_settings.upstream_kind == "simulated":
    import sys

    why = "RESPCACHE_UPSTREAM=simulated" if app_settings.UPSTREAM else "ANTHROPIC_API_KEY is unset"
    print(
        f"respcache: WARNING: answering from the simulated upstream ({why}); no call reaches Anthropic.",
        file=sys.stderr,
    )
