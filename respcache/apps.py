"""AppConfig: registers respcache's system checks and its OpenAPI extensions.

drf-spectacular is a dependency (pyproject.toml), not an option: the management API describes
itself with it (respcache/api/management.py) and the call endpoints carry its schema
(respcache/api/schema.py), both imported at module level.
"""

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class RespcacheConfig(AppConfig):
    name = "respcache"
    verbose_name = _("Response cache")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from respcache import checks  # noqa: F401  (registers the checks)
        from respcache.api import schema  # noqa: F401  (registers the OpenAPI auth extensions)
