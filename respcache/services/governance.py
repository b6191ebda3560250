"""Governance: workloads, bump, purge, keys, entries, audit: the one path every surface uses.

The admin, the management API and the commands change policies, key versions, keys and entries
only through these functions; each records who did what in the audit trail (``AuditEntry``) and
in the log, and drops this process's local copies of policies and grants.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, cast

from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from respcache import store
from respcache.models import ApiKey, AuditEntry, Workload
from respcache.selectors import LocalCopies, clear_local_caches
from respcache.services import guard

__all__ = [
    "POLICY_FIELDS",
    "api_key_create",
    "api_key_revoke",
    "audit",
    "entry_delete",
    "entry_viewed",
    "record_policy_change",
    "workload_bump",
    "workload_purge",
    "workload_set_enabled",
    "workload_upsert",
]

logger = logging.getLogger(__name__)

POLICY_FIELDS = (
    "enabled",
    "ttl_seconds",
    "key_version",
    "strict",
    "lock_ttl",
    "wait_max",
    "max_upstream_per_minute",
    "max_tokens_per_day",
    "shadow",
    "drift_threshold_points",
    "description",
)


def _snapshot(workload: Workload) -> dict[str, Any]:
    return {name: getattr(workload, name) for name in POLICY_FIELDS}


def audit(
    *,
    actor: str,
    action: str,
    workload: Workload | None,
    slug: str = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    entries_purged: int | None = None,
    user: Any = None,
) -> AuditEntry:
    """Record a governance action in the audit trail and in the log."""
    entry = AuditEntry.objects.create(
        actor=actor,
        user=user if getattr(user, "is_authenticated", False) else None,
        action=action,
        workload=workload,
        workload_slug=slug or (workload.slug if workload else ""),
        before=before or {},
        after=after or {},
        entries_purged=entries_purged,
    )
    logger.info(
        "respcache audit: %s %s %s before=%s after=%s purged=%s",
        actor,
        action,
        entry.workload_slug,
        entry.before,
        entry.after,
        entries_purged,
    )
    return entry


def workload_upsert(*, slug: str, actor: str, user: Any = None, **fields: Any) -> tuple[Workload, bool]:
    """Create the workload or update the given policy fields; audited."""
    unknown = set(fields) - set(POLICY_FIELDS)
    if unknown:
        raise ValueError(f"unknown workload fields: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        workload = Workload.objects.select_for_update().filter(slug=slug).first()
        created = workload is None
        if workload is None:
            workload = Workload(slug=slug)
        before = {} if created else _snapshot(workload)
        for name, value in fields.items():
            setattr(workload, name, value)
        workload.full_clean()
        workload.save()
        after = _snapshot(workload)
        if created:
            audit(actor=actor, user=user, action=AuditEntry.Action.CREATE, workload=workload, after=after)
        elif before != after:
            record_policy_change(workload, before, actor=actor, user=user)
    policies_changed(workload="")
    return workload, created


def record_policy_change(workload: Workload, before: dict[str, Any], *, actor: str, user: Any = None) -> None:
    """Audit a saved policy change: enable/disable get their own action, the rest is an edit."""
    after = _snapshot(workload)
    changed = {k for k in after if after[k] != before.get(k)}
    if not changed:
        return
    if changed == {"enabled"}:
        action = AuditEntry.Action.ENABLE if workload.enabled else AuditEntry.Action.DISABLE
    else:
        action = AuditEntry.Action.EDIT
    audit(
        actor=actor,
        user=user,
        action=action,
        workload=workload,
        before={k: before.get(k) for k in sorted(changed)},
        after={k: after[k] for k in sorted(changed)},
    )
    if "key_version" in changed:
        _publish_version(workload)


def _publish_version(workload: Workload) -> None:
    guard.fail_open(
        guard.PUBLISH,
        lambda: store.set_version(workload.slug, workload.key_version),
        guard.nothing,
        workload=workload.slug,
    )


def workload_bump(workload: Workload, *, actor: str, user: Any = None) -> int:
    """Increment the key version atomically (two bumps at once give two increments)."""
    with transaction.atomic():
        before = workload.key_version
        Workload.objects.filter(pk=workload.pk).update(key_version=F("key_version") + 1)
        workload.refresh_from_db(fields=["key_version", "updated_at"])
        audit(
            actor=actor,
            user=user,
            action=AuditEntry.Action.BUMP,
            workload=workload,
            before={"key_version": before},
            after={"key_version": workload.key_version},
        )
    _publish_version(workload)
    policies_changed(workload="")
    return workload.key_version


def workload_purge(workload: Workload, *, actor: str, user: Any = None) -> int:
    """Delete every stored entry of the workload now; returns how many. Raises CacheUnavailable."""
    purged = store.purge(workload.slug)
    audit(
        actor=actor,
        user=user,
        action=AuditEntry.Action.PURGE,
        workload=workload,
        entries_purged=purged,
    )
    return purged


def workload_set_enabled(workload: Workload, enabled: bool, *, actor: str, user: Any = None) -> bool:
    """Turn caching on or off; returns whether anything changed."""
    if workload.enabled == enabled:
        return False
    before = _snapshot(workload)
    workload.enabled = enabled
    workload.save(update_fields=["enabled", "updated_at"])
    record_policy_change(workload, before, actor=actor, user=user)
    policies_changed(workload="")
    return True


def api_key_create(
    *, name: str, workloads: Iterable[Workload], managed_workloads: Iterable[Workload] = ()
) -> tuple[ApiKey, str]:
    """Create a caller key; the raw key is returned once and stored only hashed."""
    with transaction.atomic():
        created, raw = ApiKey.objects.create_key(name=name)
        api_key = cast(ApiKey, created)  # the manager is typed for the abstract base; it makes ours
        api_key.workloads.set(list(workloads))
        api_key.managed_workloads.set(list(managed_workloads))
    return api_key, raw


def entry_delete(workload: Workload, *, version: int, fingerprint: str, actor: str, user: Any = None) -> int:
    """Delete one stored entry (and its meta) of the configured upstream's key space now;
    audited. Returns 1, or 0 if it was gone."""
    deleted = store.entry_delete(workload.slug, version, fingerprint, upstream=store.key_space())
    audit(
        actor=actor,
        user=user,
        action=AuditEntry.Action.DELETE_ENTRY,
        workload=workload,
        before={"key_version": version, "fingerprint": fingerprint},
        entries_purged=deleted,
    )
    return deleted


def entry_viewed(workload: Workload, *, version: int, fingerprint: str, actor: str, user: Any = None) -> None:
    """Record that ``actor`` read a stored answer's content (the admin's entry page): who, which
    workload, which entry (its key version and fingerprint, in ``after``)."""
    audit(
        actor=actor,
        user=user,
        action=AuditEntry.Action.VIEW_ENTRY,
        workload=workload,
        after={"key_version": version, "fingerprint": fingerprint},
    )


def entry_summaries_viewed(
    workload: Workload, *, version: int, fingerprints: list[str], actor: str, user: Any = None
) -> None:
    """Record that ``actor`` was shown the summaries (the start of each request and answer) of
    these entries: a page of the admin's entry browser is a read of what they say, too."""
    audit(
        actor=actor,
        user=user,
        action=AuditEntry.Action.VIEW_ENTRY,
        workload=workload,
        after={"key_version": version, "summaries_of": fingerprints},
    )


def api_key_revoke(api_keys: Iterable[ApiKey]) -> int:
    """Revoke keys: refused on this worker at once, on the others within LOCAL_CACHE_SECONDS."""
    ids = [k.pk for k in api_keys]
    revoked = ApiKey.objects.filter(pk__in=ids, revoked=False).update(revoked=True)
    policies_changed(workload="")
    return revoked


#: The keys whose use this process recorded, each kept LOCAL_CACHE_SECONDS like the grant copies
#: (bounded; a key pushed out is written again on its next use, which is harmless).
_key_use_written: LocalCopies[str, bool] = LocalCopies(missing_maxsize=1)


def api_key_mark_used(key_id: str) -> bool:
    """Record that the key was used now (``ApiKey.last_used_at``), at most once per
    ``LOCAL_CACHE_SECONDS`` per key in this process (every time when it is 0): as often as the
    grant is read from the database, so a hit costs no query in steady state. True if written."""
    wrote = False

    def write() -> bool:
        nonlocal wrote
        try:
            ApiKey.objects.filter(pk=key_id).update(last_used_at=timezone.now())
        except DatabaseError as exc:  # a bookkeeping write never fails a call
            logger.warning("respcache: last use of an API key not recorded (%s)", exc)
            return True
        wrote = True
        return True

    _key_use_written.get_or_load(key_id, write)
    return wrote


def policies_changed(*, workload: str) -> None:
    """A policy, a key version or an API key changed: drop this process's local copies and
    tell every other process to drop theirs (on the next call every worker reads the change)."""
    clear_local_caches()
    guard.fail_open(guard.ANNOUNCE, store.announce_policies_changed, guard.nothing, workload=workload or "-")
