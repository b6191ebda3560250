"""Workload policies, hashed caller API keys and the audit trail."""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _
from rest_framework_api_key.models import AbstractAPIKey, APIKeyManager


class Workload(models.Model):
    """One caller's use of the cache, and the policy that governs it."""

    slug = models.SlugField(_("slug"), max_length=64, unique=True)
    enabled = models.BooleanField(_("enabled"), default=True, help_text=_("Off: every call bypasses the cache."))
    ttl_seconds = models.PositiveIntegerField(
        _("TTL (seconds)"),
        default=86400,
        validators=[MinValueValidator(1)],
        help_text=_("How long a stored answer is served."),
    )
    key_version = models.PositiveIntegerField(
        _("key version"),
        default=1,
        help_text=_("Bump it after a prompt change: every older entry becomes unreachable at once."),
    )
    strict = models.BooleanField(
        _("strict"),
        default=False,
        help_text=_(
            "Strict: only requests that set temperature to 0 are cached. "
            "Otherwise a request without temperature is cached too."
        ),
    )
    lock_ttl = models.FloatField(
        _("lock TTL (seconds)"),
        default=10.0,
        validators=[MinValueValidator(0.01)],
        help_text=_(
            "Liveness window of the stampede lock: its holder renews it while its upstream "
            "call runs; if the holder dies, a waiter takes over within this time."
        ),
    )
    wait_max = models.FloatField(
        _("wait max (seconds)"),
        default=310.0,
        validators=[MinValueValidator(0.0)],
        help_text=_(
            "The longest a caller waits for a live holder's answer before calling upstream "
            "itself. The default covers the upstream timeout (300 s) plus one lock TTL."
        ),
    )
    max_upstream_per_minute = models.PositiveIntegerField(
        _("max upstream calls per minute"),
        default=0,
        help_text=_(
            "Budget: calls that would go upstream (miss, fall-through, refresh, bypass) beyond "
            "this many in one UTC minute get 429 rate_limit_error; hits and waits are still "
            "served. 0: no limit."
        ),
    )
    max_tokens_per_day = models.PositiveIntegerField(
        _("max upstream tokens per day"),
        default=0,
        help_text=_(
            "Budget: once the upstream's answers of this UTC day used this many tokens (input "
            "plus output), calls that would go upstream get 429 rate_limit_error; hits and "
            "waits are still served. 0: no limit."
        ),
    )
    shadow = models.BooleanField(
        _("shadow mode"),
        default=False,
        help_text=_(
            "Shadow: every cacheable call gets a fresh upstream answer, which is stored; the "
            "stats record whether the call would have hit and whether the answers agree."
        ),
    )
    drift_threshold_points = models.PositiveSmallIntegerField(
        _("drift threshold (points)"),
        default=20,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text=_(
            "Alert when the hit rate of the last hour is more than this many percentage points "
            "below the 24 hours before it (100: never)."
        ),
    )
    description = models.TextField(_("description"), blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        ordering = ("slug",)
        verbose_name = _("workload")
        verbose_name_plural = _("workloads")
        permissions = [
            ("bump_workload", _("Can bump a workload's key version")),
            ("purge_workload", _("Can purge a workload's entries")),
            # The answers are data: the entry browser lists any staff user with view_workload
            # the entries' hashes, sizes, reads and TTLs, but only this shows what they say.
            ("view_entry_content", _("Can read cached answers")),
        ]

    def __str__(self) -> str:
        return self.slug


# On APIKeyManager (itself an empty BaseAPIKeyManager) so that ``objects`` keeps the base model's type.
class ApiKeyManager(APIKeyManager):
    pass


class ApiKey(AbstractAPIKey):
    """A caller's key, stored hashed (djangorestframework-api-key), allowed a set of workloads."""

    workloads = models.ManyToManyField(
        Workload,
        blank=True,
        related_name="api_keys",
        verbose_name=_("workloads"),
        help_text=_("Workloads this key may call."),
    )
    managed_workloads = models.ManyToManyField(
        Workload,
        blank=True,
        related_name="managing_api_keys",
        verbose_name=_("managed workloads"),
        help_text=_("Workloads this key may manage through the REST API (stats, bump, purge)."),
    )
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True)

    objects: ClassVar[ApiKeyManager] = ApiKeyManager()

    class Meta(AbstractAPIKey.Meta):
        # The library's Meta declares these str (its literals); Django takes lazy text too.
        verbose_name = _("API key")  # type: ignore[assignment]  # library's Meta is typed str, too narrow
        verbose_name_plural = _("API keys")  # type: ignore[assignment]  # library's Meta is typed str, too narrow


class AuditEntry(models.Model):
    """Who changed what, when: bumps, purges, enable/disable and policy edits; and who read
    which stored answer (``view_entry``: the entry's key version and fingerprint in ``after``)."""

    class Action(models.TextChoices):
        CREATE = "create", _("create")
        BUMP = "bump", _("bump key version")
        PURGE = "purge", _("purge entries")
        ENABLE = "enable", _("enable")
        DISABLE = "disable", _("disable")
        EDIT = "edit", _("edit policy")
        DELETE_ENTRY = "delete_entry", _("delete entry")
        VIEW_ENTRY = "view_entry", _("view entry content")

    created_at = models.DateTimeField(_("when"), auto_now_add=True, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, verbose_name=_("user")
    )
    actor = models.CharField(_("who"), max_length=150)
    workload = models.ForeignKey(
        Workload,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="audit_entries",
        verbose_name=_("workload"),
    )
    workload_slug = models.CharField(_("workload slug"), max_length=64)
    action = models.CharField(_("action"), max_length=20, choices=Action.choices)
    before = models.JSONField(_("before"), default=dict, blank=True)
    after = models.JSONField(_("after"), default=dict, blank=True)
    entries_purged = models.PositiveIntegerField(_("entries purged"), null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        verbose_name = _("audit entry")
        verbose_name_plural = _("audit trail")

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.workload_slug}"
