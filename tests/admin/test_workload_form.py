"""The workload change form saves through services.workload_upsert (the path every surface uses)
and the admin goes on with the saved row: its id in the redirect, its history, its message."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.test import Client
from django.urls import reverse

from respcache import services
from respcache.models import AuditEntry, Workload

pytestmark = pytest.mark.django_db

FORM = {
    "enabled": "on",
    "ttl_seconds": 600,
    "lock_ttl": 10,
    "wait_max": 310,
    "max_upstream_per_minute": 0,
    "max_tokens_per_day": 0,
    "drift_threshold_points": 20,
    "description": "",
}


def test_add_and_continue_goes_to_the_saved_workload(admin_client: Client, caplog: Any) -> None:
    with caplog.at_level(logging.INFO, logger="respcache.services.governance"):
        response = admin_client.post(
            reverse("admin:respcache_workload_add"), {**FORM, "slug": "new-one", "_continue": "1"}, follow=True
        )
    workload = Workload.objects.get(slug="new-one")
    assert response.redirect_chain == [(reverse("admin:respcache_workload_change", args=[workload.pk]), 302)]
    assert "new-one" in response.content.decode() and "was added successfully" in response.content.decode()
    history = LogEntry.objects.get()
    assert (history.action_flag, history.object_id) == (ADDITION, str(workload.pk))
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.workload, entry.actor, entry.after["ttl_seconds"]) == ("create", workload, "admin", 600)
    assert entry.user is not None and entry.user.get_username() == "admin"
    assert any("respcache audit: admin create new-one" in r.getMessage() for r in caplog.records)


def test_edit_keeps_a_bump_made_while_the_form_was_open_and_records_both(
    admin_client: Client, make_workload: Any
) -> None:
    workload = make_workload("intents")
    services.workload_bump(workload, actor="someone-else")
    response = admin_client.post(
        reverse("admin:respcache_workload_change", args=[workload.pk]),
        {**FORM, "enabled": "", "_continue": "1"},
        follow=True,
    )
    assert response.status_code == 200
    workload.refresh_from_db()
    assert (workload.key_version, workload.enabled, workload.ttl_seconds) == (2, False, 600)
    assert LogEntry.objects.get().action_flag == CHANGE
    edit = AuditEntry.objects.exclude(action="bump").get()
    assert (edit.action, edit.before, edit.after) == (
        "edit",
        {"enabled": True, "ttl_seconds": 86400},
        {"enabled": False, "ttl_seconds": 600},
    )
