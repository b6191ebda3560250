"""respcache's exceptions. Each carries its HTTP status and Anthropic error ``type``.

    RespcacheError
    ├── InvalidRequest           400 invalid_request_error
    ├── AuthenticationFailed     401 authentication_error
    ├── PermissionDenied         403 permission_error
    ├── WorkloadNotFound         404 not_found_error
    ├── RequestTooLarge          413 request_too_large
    ├── BudgetExceeded           429 rate_limit_error, with retry-after (the workload's budget
    │                            refused a call that would go upstream)
    ├── UpstreamError            the upstream's own status and error body
    │   └── UpstreamUnavailable  502 api_error (the upstream could not be reached)
    ├── DatabaseUnavailable      503 api_error (the database failed and nothing is known of the
    │                            key or workload asked for; known ones keep their last policy)
    └── CacheUnavailable         Redis failed; callers fail open and never see it

One exception handler (``respcache.api.views.anthropic_exception_handler``) renders all of them
as ``{"type": "error", "error": {"type": ..., "message": ...}}``.
"""

from __future__ import annotations

import orjson


class RespcacheError(Exception):
    status_code: int = 500
    error_type: str = "api_error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> bytes:
        return error_body(self.error_type, self.message)

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(RespcacheError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(RespcacheError):
    status_code = 401
    error_type = "authentication_error"


class PermissionDenied(RespcacheError):
    status_code = 403
    error_type = "permission_error"


class WorkloadNotFound(RespcacheError):
    status_code = 404
    error_type = "not_found_error"


class RequestTooLarge(RespcacheError):
    status_code = 413
    error_type = "request_too_large"


class BudgetExceeded(RespcacheError):
    """The workload's budget refused a call that would have gone upstream; ``retry_after`` is
    the seconds until the window that is spent (the minute's, or the day's) ends."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)}


class UpstreamError(RespcacheError):
    """The upstream answered with an error: its status, body and retry headers reach the caller."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: bytes | None = None,
        error_type: str = "api_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type
        self._body = body
        self._headers = headers or {}

    def body(self) -> bytes:
        return self._body if self._body is not None else error_body(self.error_type, self.message)

    def headers(self) -> dict[str, str]:
        return dict(self._headers)


class UpstreamUnavailable(UpstreamError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=502, error_type="api_error")


class DatabaseUnavailable(RespcacheError):
    """The database failed while reading a policy or a key this process has never seen."""

    status_code = 503
    error_type = "api_error"


class CacheUnavailable(RespcacheError):
    """Redis is unreachable or failed a command; the service fails open around it."""


def error_body(error_type: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})
