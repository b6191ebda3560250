"""URLs of the call endpoint. Include them at the site root: ``path("", include("respcache.api.urls"))``."""

from django.urls import path

from respcache.api import views

app_name = "respcache"

urlpatterns = [
    path("w/<slug:workload>/v1/messages", views.MessagesView.as_view(), name="messages"),
    path("w/<slug:workload>/v1/messages/count_tokens", views.CountTokensView.as_view(), name="count_tokens"),
]
