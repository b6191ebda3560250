"""A view mixin that records every call of the call endpoints: log line and span attributes.

``MessagesView`` sets ``self.call_result`` (the service's CachedResult) when it has one, and
``self.grant`` once the caller is known; errors and responses built elsewhere (a stream, a
refusal) are recorded from the response itself. Its ``dispatch`` calls ``record_call`` once
per request, whatever the method.
"""

from __future__ import annotations

import logging
import time

import orjson
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse

from respcache import telemetry
from respcache.selectors import Grant
from respcache.services import CachedResult

logger = logging.getLogger(__name__)


def _error_type(response: HttpResponseBase) -> str | None:
    if isinstance(response, StreamingHttpResponse):
        return None
    try:
        return str(orjson.loads(response.content)["error"]["type"])  # type: ignore[attr-defined]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None


def _log_call(record: telemetry.CallRecord) -> None:
    try:
        telemetry.log_call(record)
    except Exception:  # telemetry must never fail a call
        logger.exception("respcache: could not record the call")


class CallTelemetryMixin:
    """Times the call; on the way out writes its log line and tags the current span."""

    call_result: CachedResult | None = None
    grant: Grant | None = None
    _call_started: float | None = None

    def record_call(self, request: HttpRequest, response: HttpResponseBase) -> None:
        """Tag the call's span now and write its log line once the server closes the response,
        if anyone reads them; never raises.

        The line waits for the close, i.e. until the client has the answer (gunicorn writes its
        access log then too): its CPU is not between a caller and its hit. What it says is
        measured now.
        """
        if not telemetry.wanted():
            return
        try:
            record = self.call_record(request, response)
            telemetry.tag_span(record)
        except Exception:  # telemetry must never fail a call
            logger.exception("respcache: could not record the call")
            return
        close = response.close

        def close_then_log() -> None:
            try:
                close()
            finally:
                _log_call(record)

        response.close = close_then_log  # type: ignore[method-assign]

    def call_record(self, request: HttpRequest, response: HttpResponseBase) -> telemetry.CallRecord:
        result = self.call_result
        status = response.status_code
        grant = self.grant
        input_tokens = output_tokens = None
        if result is not None and status < 400:
            input_tokens, output_tokens = result.input_tokens, result.output_tokens
            if input_tokens is None and result.body:  # not known from the entry's accounting
                input_tokens, output_tokens = telemetry.usage_of(result.body)
        if result is not None:
            outcome = result.outcome  # what was counted: a fall-through says so, its header "miss"
        elif status >= 400:
            outcome = "error"
        else:
            outcome = response.get("X-Respcache") or "unknown"
        started = self._call_started
        match = getattr(request, "resolver_match", None)
        return telemetry.CallRecord(
            workload=str(getattr(self, "kwargs", {}).get("workload", "")),
            endpoint=str(getattr(match, "url_name", None) or "messages"),
            status=status,
            outcome=outcome,
            key=(result.fingerprint if result is not None else None) or response.get("X-Respcache-Key"),
            caller=grant.name if grant else None,
            api_key_prefix=grant.prefix if grant else None,
            upstream_ms=result.upstream_ms if result is not None else None,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            age=result.age if result is not None else None,
            duration_ms=(time.perf_counter() - started) * 1000 if started is not None else None,
            error_type=_error_type(response) if status >= 400 else None,
            stream=isinstance(response, StreamingHttpResponse),
        )
