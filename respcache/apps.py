"""AppConfig: registers respcache's system checks."""

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class RespcacheConfig(AppConfig):
    name = "respcache"
    verbose_name = _("Response cache")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from respcache import checks  # noqa: F401  (registers the checks)

        try:
            import drf_spectacular  # noqa: F401
        except ImportError:  # the schema is optional for apps that embed respcache
            return
        from respcache.api import schema  # noqa: F401  (registers the OpenAPI auth extension)
