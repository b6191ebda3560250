"""The admin console (Django's admin autodiscovers this package and its registrations below).

- ``workloads.py``: workloads with live numbers, the policy form and the confirmed actions
  (bump, purge, enable, disable);
- ``pages.py``: a workload's extra pages (stats, entry browser, entry detail and delete, bump and
  purge buttons), added in ``get_urls``;
- ``presenters.py``: numbers made into rows, labels and chart data for those pages (the markup,
  SVG charts included, lives in ``templates/admin/respcache/workload/``);
- ``audit.py``: the read-only audit trail; ``apikeys.py``: caller API keys.

Every change goes through a governance service in ``respcache.services``, which records it in the
audit trail and the log; reads go through ``respcache.selectors``.
"""

from __future__ import annotations

from django.contrib import admin
from rest_framework_api_key.models import APIKey

from respcache.admin.apikeys import ApiKeyAdmin
from respcache.admin.audit import AuditEntryAdmin
from respcache.admin.workloads import WorkloadAdmin
from respcache.models import ApiKey, AuditEntry, Workload

__all__ = ["ApiKeyAdmin", "AuditEntryAdmin", "WorkloadAdmin"]

admin.site.register(Workload, WorkloadAdmin)
admin.site.register(AuditEntry, AuditEntryAdmin)
admin.site.register(ApiKey, ApiKeyAdmin)

# djangorestframework-api-key registers its own APIKey model, which respcache does not use; two
# "API keys" pages would mislead operators, so only respcache's is shown.
if admin.site.is_registered(APIKey):
    admin.site.unregister(APIKey)
