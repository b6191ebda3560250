"""WSGI entry point (gunicorn project.wsgi). Starts the embedded Redis when REDIS_URL is unset."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
if not os.environ.get("REDIS_URL"):
    from project import embedded_redis

    embedded_redis.ensure_running()

application = get_wsgi_application()

from respcache.conf import app_settings  # noqa: E402  (needs the settings loaded)

if app_settings.upstream_kind == "simulated":
    import sys

    print(
        "respcache: WARNING: answering from the simulated upstream (ANTHROPIC_API_KEY is unset); "
        "no call reaches Anthropic.",
        file=sys.stderr,
    )
