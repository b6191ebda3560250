"""WSGI entry point (gunicorn project.wsgi). Starts the embedded Redis when no Redis is configured.

With the production settings on, a service that would answer from the simulated upstream without
being told to (no ANTHROPIC_API_KEY, no RESPCACHE_UPSTREAM=simulated) refuses to start: importing
this module raises ImproperlyConfigured, so no gunicorn worker boots.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
from django.conf import settings  # noqa: E402

from respcache.upstream import get_upstream, refuse_silent_simulation  # noqa: E402

# Before anything starts: no Redis, no worker for a service that must not run.
refuse_silent_simulation(production=getattr(settings, "PRODUCTION", False))

from project import embedded_redis  # noqa: E402

if embedded_redis.wanted():
    embedded_redis.ensure_running()

application = get_wsgi_application()

# Load the URLconf (the views, and with them the anthropic SDK) at worker boot, not in the first
# caller's request: a fresh worker would otherwise answer its first call seconds late.
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns  # noqa: B018

from respcache.conf import app_settings  # noqa: E402

get_upstream()  # an unknown RESPCACHE_UPSTREAM stops the worker here, not at its first call

from respcache import sealing  # noqa: E402

sealing.keyring()  # so does a malformed RESPCACHE_ENCRYPTION_KEYS (ImproperlyConfigured)
if app_settings.upstream_kind == "simulated":
    import sys

    why = "RESPCACHE_UPSTREAM=simulated" if app_settings.UPSTREAM else "ANTHROPIC_API_KEY is unset"
    print(
        f"respcache: WARNING: answering from the simulated upstream ({why}); no call reaches Anthropic.",
        file=sys.stderr,
    )
