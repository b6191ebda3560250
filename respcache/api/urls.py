"""URLs of the call endpoint and the management API. Include them at the site root:
``path("", include("respcache.api.urls"))``."""

from django.urls import path

from respcache.api import management, views

app_name = "respcache"

urlpatterns = [
    path("w/<slug:workload>/v1/messages", views.MessagesView.as_view(), name="messages"),
    path("w/<slug:workload>/v1/messages/count_tokens", views.CountTokensView.as_view(), name="count_tokens"),
    path("api/workloads/", management.WorkloadListView.as_view(), name="workload-list"),
    path("api/workloads/<slug:slug>/stats/", management.WorkloadStatsView.as_view(), name="workload-stats"),
    path("api/workloads/<slug:slug>/misses/", management.WorkloadMissesView.as_view(), name="workload-misses"),
    path("api/workloads/<slug:slug>/bump/", management.WorkloadBumpView.as_view(), name="workload-bump"),
    path("api/workloads/<slug:slug>/purge/", management.WorkloadPurgeView.as_view(), name="workload-purge"),
]
