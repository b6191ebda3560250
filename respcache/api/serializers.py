"""Shapes of the REST API: workload numbers and policies, Anthropic error bodies, Messages API
request and response (the latter two for the OpenAPI schema only: that endpoint passes bodies
through)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from respcache.models import Workload
from respcache.services.governance import POLICY_FIELDS


class StatsSerializer(serializers.Serializer[dict[str, Any]]):
    """A workload's counters over one window, and the contract's numbers derived from them."""

    window = serializers.CharField()
    requests = serializers.IntegerField(help_text="Calls of every outcome.")
    hit = serializers.IntegerField()
    wait = serializers.IntegerField(help_text="Served another caller's in-flight answer.")
    miss = serializers.IntegerField()
    fallthrough = serializers.IntegerField(help_text="Waited wait_max, then called the upstream itself.")
    bypass = serializers.IntegerField()
    refresh = serializers.IntegerField()
    upstream_error = serializers.IntegerField()
    cache_error = serializers.IntegerField(help_text="Redis failures served around (fail-open).")
    budget_refused = serializers.IntegerField(
        help_text="Calls that would have gone upstream, refused by the workload's budget (429)."
    )
    upstream_calls = serializers.IntegerField()
    upstream_ms = serializers.IntegerField(help_text="Summed upstream latency, milliseconds.")
    saved_in = serializers.IntegerField(help_text="Input tokens hits and waits did not spend.")
    saved_out = serializers.IntegerField(help_text="Output tokens hits and waits did not spend.")
    written = serializers.IntegerField(help_text="Entries stored.")
    exp_written = serializers.IntegerField(help_text="Entries whose TTL ended in the window.")
    exp_read = serializers.IntegerField(help_text="Of those, entries read at least once.")
    hit_rate = serializers.FloatField(allow_null=True, help_text="(hit + wait) / (hit + wait + miss + fallthrough)")
    stampede_rate = serializers.FloatField(allow_null=True, help_text="wait / miss")
    dead_write_rate = serializers.FloatField(allow_null=True, help_text="(exp_written - exp_read) / exp_written")
    upstream_latency_ms = serializers.FloatField(allow_null=True, help_text="Mean upstream latency.")
    shadow = serializers.IntegerField(help_text="Shadow calls (shadow mode): fresh answers, not in the hit rate.")
    would_hit = serializers.IntegerField(help_text="Shadow calls whose key had a stored entry.")
    would_save_in = serializers.IntegerField(help_text="Input tokens the would-be hits would have saved.")
    would_save_out = serializers.IntegerField(help_text="Output tokens the would-be hits would have saved.")
    agree = serializers.IntegerField(help_text="Would-be hits whose fresh answer equalled the stored one.")
    agreement = serializers.FloatField(allow_null=True, help_text="agree / would_hit")


class WorkloadStatsSerializer(StatsSerializer):
    """What ``respcache_stats SLUG --json`` prints for one workload."""

    workload = serializers.CharField()
    key_version = serializers.IntegerField()
    enabled = serializers.BooleanField()


class MissReasonsSerializer(serializers.Serializer[dict[str, Any]]):
    """Misses by why they missed (the miss explainer), over one window."""

    new = serializers.IntegerField(help_text="No stored request of this workload and key version shares its shape.")
    model = serializers.IntegerField(help_text="The closest stored request differs in model.")
    system = serializers.IntegerField(help_text="... in system.")
    tools = serializers.IntegerField(help_text="... in tools.")
    max_tokens = serializers.IntegerField(help_text="... in max_tokens.")
    other = serializers.IntegerField(help_text="... in another top-level field (temperature, tool_choice...).")
    messages = serializers.IntegerField(help_text="... in messages only (messages[i]).")


class WorkloadMissesSerializer(serializers.Serializer[dict[str, Any]]):
    """``GET /api/workloads/<slug>/misses/``: the workload's miss reasons over the window."""

    workload = serializers.CharField()
    key_version = serializers.IntegerField()
    window = serializers.CharField()
    misses = serializers.IntegerField(help_text="Calls answered miss (miss + fallthrough) over the window.")
    explained = serializers.IntegerField(help_text="Of them, those classified below.")
    reasons = MissReasonsSerializer()


class WorkloadSerializer(serializers.ModelSerializer[Workload]):
    """A workload's policy with its numbers over the requested window."""

    stats = StatsSerializer()

    class Meta:
        model = Workload
        # The policy is what governance writes: a field added there is listed here too.
        fields = ("slug", *POLICY_FIELDS, "updated_at", "stats")
        read_only_fields = fields


class ErrorDetailSerializer(serializers.Serializer[dict[str, Any]]):
    type = serializers.CharField(help_text="e.g. invalid_request_error, authentication_error, permission_error.")
    message = serializers.CharField()


class ErrorSerializer(serializers.Serializer[dict[str, Any]]):
    """Every error, as the Anthropic API writes them (so SDKs raise their usual classes)."""

    type = serializers.ChoiceField(choices=["error"])
    error = ErrorDetailSerializer()


class MessageParamSerializer(serializers.Serializer[dict[str, Any]]):
    """A Messages API request. Any other field is accepted and passed upstream untouched."""

    model = serializers.CharField(min_length=1)
    messages = serializers.ListField(child=serializers.DictField())
    max_tokens = serializers.IntegerField()
    system = serializers.JSONField(required=False, help_text="A string or a list of text blocks.")
    temperature = serializers.FloatField(required=False, help_text="Above 0: never cached (bypass). 0: cached.")
    stream = serializers.BooleanField(required=False, help_text="Not part of the cache key.")
    metadata = serializers.DictField(required=False, help_text="Not part of the cache key.")


class ServerSentEventSerializer(serializers.Serializer[dict[str, Any]]):
    """One event of a streamed answer (``"stream": true``), as the Messages API sends them."""

    event = serializers.ChoiceField(
        choices=[
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
            "ping",
            "error",
        ]
    )
    # DRF's metaclass moves declared fields to _declared_fields, so .data stays the property.
    data = serializers.CharField(help_text="The event's JSON object.")  # type: ignore[assignment]  # a field, not .data


class CountTokensParamSerializer(serializers.Serializer[dict[str, Any]]):
    """A count_tokens request: a Messages API request without ``max_tokens``."""

    model = serializers.CharField(min_length=1)
    messages = serializers.ListField(child=serializers.DictField())
    system = serializers.JSONField(required=False, help_text="A string or a list of text blocks.")


class TokenCountSerializer(serializers.Serializer[dict[str, Any]]):
    input_tokens = serializers.IntegerField()


class UsageSerializer(serializers.Serializer[dict[str, Any]]):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()


class MessageSerializer(serializers.Serializer[dict[str, Any]]):
    """A Message, exactly as the upstream returned it (byte for byte on a hit)."""

    id = serializers.CharField()
    type = serializers.ChoiceField(choices=["message"])
    role = serializers.ChoiceField(choices=["assistant"])
    model = serializers.CharField()
    content = serializers.ListField(child=serializers.DictField())
    stop_reason = serializers.CharField(allow_null=True)
    stop_sequence = serializers.CharField(allow_null=True)
    usage = UsageSerializer()
