"""Settings of the framework floor: the service's own settings (apps, middleware, Redis, database)
with the floor's URLconf, so that the only difference from the service is the view."""

from project.settings import *  # noqa: F403

ROOT_URLCONF = "bench.floor"
