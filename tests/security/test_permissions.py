"""Answers are data: who may read a cached answer in the admin (``view_entry_content``), the
audit row each read writes, and who may mint a key with management grants (bump and purge)."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from respcache.models import ApiKey, AuditEntry, Workload
from tests.conftest import ask

pytestmark = pytest.mark.django_db

ADD_KEY = "/admin/respcache/apikey/add/"
ANSWER = "Let me look that up."  # in the fake upstream's tool_use answer

#: The users of the matrix: the respcache permissions each holds (None: a superuser).
USERS: dict[str, tuple[str, ...] | None] = {
    "viewer": ("view_workload",),
    "reader": ("view_workload", "view_entry_content"),
    "key_minter": ("add_apikey",),
    "key_manager": ("add_apikey", "bump_workload", "purge_workload"),
    "superuser": None,
}


def login(name: str) -> Client:
    codenames = USERS[name]
    if codenames is None:
        user = User.objects.create_superuser(name, password="pw")
    else:
        user = User.objects.create_user(name, password="pw", is_staff=True)
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="respcache", codename__in=codenames)
        )
    client = Client()
    client.force_login(user)
    return client


def url(name: str, *args: Any) -> str:
    return reverse(f"admin:respcache_workload_{name}", args=args)


@pytest.fixture
def stored(workload: Workload, api_key: str, fake: Any) -> str:
    """One stored answer of ``intents`` (through the fake upstream): its fingerprint."""
    response = Client().post(
        "/w/intents/v1/messages",
        data=orjson.dumps(ask("[[shape:tool_use]] weather?")),
        content_type="application/json",
        HTTP_X_API_KEY=api_key,
    )
    assert response.status_code == 200 and ANSWER in response.content.decode()
    return str(response["X-Respcache-Key"])


# --- the entry browser and an entry's page ----------------------------------------------------

ENTRY_ACCESS = {  # user: (entry list status, shows links to content, entry page status)
    "viewer": (200, False, 403),
    "reader": (200, True, 200),
    "key_minter": (403, False, 403),
    "key_manager": (403, False, 403),
    "superuser": (200, True, 200),
}


@pytest.mark.parametrize("name", list(USERS))
def test_entry_list_and_page_by_permission(name: str, workload: Workload, stored: str) -> None:
    listing, links, page = ENTRY_ACCESS[name]
    client = login(name)
    entries = client.get(url("entries", workload.pk))
    assert entries.status_code == listing
    detail = client.get(url("entry", workload.pk, 1, stored))
    assert detail.status_code == page
    views = AuditEntry.objects.filter(action=AuditEntry.Action.VIEW_ENTRY)
    if listing == 200:
        body = entries.content.decode()
        # The metadata is listed for every viewer: the fingerprint, the model, the reads.
        assert f'title="{stored}"' in body and "claude-test-1" in body
        assert (url("entry", workload.pk, 1, stored) in body) is links
        # The summary (the answer's first line among it) is content: only with the permission.
        assert (ANSWER in body) is links
    if page == 200:
        assert ANSWER in detail.content.decode() and "get_weather" in detail.content.decode()
        (listed,) = [v for v in views if "summaries_of" in v.after]
        assert listed.after == {"key_version": 1, "summaries_of": [stored]}
        (view,) = [v for v in views if "fingerprint" in v.after]
        assert (view.actor, view.user.username, view.workload, view.workload_slug) == (name, name, workload, "intents")
        assert view.after == {"key_version": 1, "fingerprint": stored}
    else:
        assert ANSWER not in detail.content.decode()
        assert not views.exists()  # a refused look is not a read


def test_every_view_of_an_entrys_content_is_audited(workload: Workload, stored: str) -> None:
    client = login("reader")
    for _ in range(2):
        assert client.get(url("entries", workload.pk)).status_code == 200
    listed = AuditEntry.objects.filter(action="view_entry")
    assert [(r.actor, r.after) for r in listed] == [("reader", {"key_version": 1, "summaries_of": [stored]})] * 2
    listed.delete()
    # Without the permission a listing shows no summary, and is no read.
    assert login("viewer").get(url("entries", workload.pk)).status_code == 200
    assert not AuditEntry.objects.filter(action="view_entry").exists()
    for _ in range(3):
        assert client.get(url("entry", workload.pk, 1, stored)).status_code == 200
    rows = AuditEntry.objects.filter(action="view_entry")
    assert rows.count() == 3
    assert {(r.actor, r.workload_slug, r.after["fingerprint"]) for r in rows} == {("reader", "intents", stored)}
    # A gone entry shows nothing, and is not recorded as read.
    assert client.get(url("entry", workload.pk, 1, "0" * 64)).status_code == 404
    assert rows.count() == 3
    # The audit trail shows it (read-only) to whoever may read the trail.
    trail = login("superuser").get("/admin/respcache/auditentry/").content.decode()
    assert "view entry content" in trail


def test_without_the_permission_no_surface_shows_the_answer(workload: Workload, stored: str, make_key: Any) -> None:
    """The viewer's other pages, and the REST management API (staff session and managing key),
    carry policies and numbers only."""
    viewer = login("viewer")
    for page in (url("stats", workload.pk), url("change", workload.pk), "/admin/respcache/workload/"):
        response = viewer.get(page)
        assert response.status_code == 200 and ANSWER not in response.content.decode()
    key = make_key(workload, name="manager", managed=(workload,))
    for client in (login("superuser"), Client(HTTP_X_API_KEY=key)):
        for path in ("/api/workloads/", "/api/workloads/intents/stats/"):
            response = client.get(path)
            assert response.status_code == 200, response.content
            assert ANSWER not in response.content.decode() and stored not in response.content.decode()


# --- minting keys with management grants --------------------------------------------------------

MINTING = {  # user: (plain key, key managing a workload)
    "viewer": (403, 403),
    "reader": (403, 403),
    "key_minter": (302, 200),  # 200: the form again, with the error
    "key_manager": (302, 302),
    "superuser": (302, 302),
}


def mint(client: Client, name: str, workload: Workload, *, managed: bool) -> Any:
    data = {"name": name, "workloads": [workload.pk], "expiry_date_0": "", "expiry_date_1": ""}
    if managed:
        data["managed_workloads"] = [workload.pk]
    return client.post(ADD_KEY, data)


@pytest.mark.parametrize("name", list(USERS))
def test_minting_keys_by_permission(name: str, workload: Workload) -> None:
    plain, managing = MINTING[name]
    client = login(name)
    response = mint(client, "plain", workload, managed=False)
    assert response.status_code == plain, response.content.decode()[:2000]
    assert ApiKey.objects.filter(name="plain").exists() is (plain == 302)

    response = mint(client, "managing", workload, managed=True)
    assert response.status_code == managing
    created = ApiKey.objects.filter(name="managing").first()
    if managing == 302:
        assert created is not None and list(created.managed_workloads.all()) == [workload]
    else:
        assert created is None
    if managing == 200:
        errors = " ".join(
            re.sub(r"<[^>]+>", "", e) for e in response.context["adminform"].form.errors["managed_workloads"]
        )
        assert "You cannot grant management of intents" in errors
        assert "bump" in errors and "purge" in errors


def test_bump_or_purge_alone_does_not_let_a_user_grant_management(workload: Workload) -> None:
    for codename in ("bump_workload", "purge_workload"):
        user = User.objects.create_user(f"only-{codename}", password="pw", is_staff=True)
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="respcache", codename__in=("add_apikey", codename))
        )
        client = Client()
        client.force_login(user)
        assert mint(client, f"k-{codename}", workload, managed=True).status_code == 200
    assert not ApiKey.objects.exists()


def test_adding_managed_workloads_to_an_existing_key_needs_the_same(make_workload: Any) -> None:
    intents, other = make_workload("intents"), make_workload("other")
    key, _raw = ApiKey.objects.create_key(name="existing")
    key.workloads.set([intents])
    key.managed_workloads.set([intents])  # granted earlier, by someone allowed to
    change = f"/admin/respcache/apikey/{key.pk}/change/"
    editor = User.objects.create_user("editor", password="pw", is_staff=True)
    editor.user_permissions.set(
        Permission.objects.filter(content_type__app_label="respcache", codename__in=("change_apikey", "view_apikey"))
    )
    client = Client()
    client.force_login(editor)
    form = {"name": "existing", "workloads": [intents.pk], "expiry_date_0": "", "expiry_date_1": ""}

    # Keeping the grant it has (renaming the key) is fine; adding one is refused, naming it.
    assert client.post(change, {**form, "name": "renamed", "managed_workloads": [intents.pk]}).status_code == 302
    refused = client.post(change, {**form, "name": "renamed", "managed_workloads": [intents.pk, other.pk]})
    assert refused.status_code == 200
    assert "You cannot grant management of other:" in str(refused.context["adminform"].form.errors)
    assert list(ApiKey.objects.get(pk=key.pk).managed_workloads.all()) == [intents]
    # Dropping a grant takes nothing away from anyone: allowed.
    assert client.post(change, {**form, "name": "renamed"}).status_code == 302
    assert not ApiKey.objects.get(pk=key.pk).managed_workloads.exists()

    editor.user_permissions.add(*Permission.objects.filter(codename__in=("bump_workload", "purge_workload")))
    client.force_login(User.objects.get(pk=editor.pk))  # a fresh user: no cached permissions
    assert client.post(change, {**form, "name": "renamed", "managed_workloads": [other.pk]}).status_code == 302
    assert list(ApiKey.objects.get(pk=key.pk).managed_workloads.all()) == [other]
