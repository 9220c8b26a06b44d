"""Run-end notifications: a test message to the configured webhooks, to check them before a run ends."""

from __future__ import annotations

from fastapi import APIRouter

from backend.api_errors import declare
from backend.deps import ServicesDep
from backend.models import NotificationTest
from backend.routing import ApiRoute
from backend.services.notify import send_test_notification

router = APIRouter(prefix="/api/notifications", tags=["notifications"], route_class=ApiRoute)


@router.post("/test", responses=declare(409))
def test_notification(svc: ServicesDep) -> NotificationTest:
    """POST a test message to every webhook the server notifies (--notify-url), one try each, and say which took
    it (2xx) and why the others did not; 409 when none is configured."""
    return send_test_notification(svc.notifier)
