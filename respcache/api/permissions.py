"""Who may use the management API: staff users with the action's permission, or managing API keys."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from respcache.selectors import Grant


def grant_of(request: Request) -> Grant | None:
    """The API key's grant when the request authenticated with a respcache key."""
    return request.auth if isinstance(request.auth, Grant) else None


class CanManageWorkloads(BasePermission):
    """Staff users (plus the view's ``required_permission``, e.g. ``respcache.bump_workload``),
    or an API key granted management of at least one workload.

    Which workload a key may touch is the object check: ``has_object_permission`` takes the
    workload's *slug*, so a key learns nothing about workloads it does not manage (403 before 404).
    """

    message = "Staff users with the permission, or API keys granted management of a workload, only."

    def has_permission(self, request: Request, view: Any) -> bool:
        grant = grant_of(request)
        if grant is not None:
            return bool(grant.managed_workloads)
        user = request.user
        if not (user and user.is_active and user.is_staff):
            return False
        required = getattr(view, "required_permission", None)
        return required is None or user.has_perm(required)

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        grant = grant_of(request)
        return grant is None or str(obj) in grant.managed_workloads
