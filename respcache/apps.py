"""AppConfig: registers respcache's system checks."""

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class RespcacheConfig(AppConfig):
    name = "respcache"
    verbose_name = _("Response cache")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from respcache import checks  # noqa: F401  (registers the checks)
