"""SQLAlchemy models; importing this package registers every table on ``Base.metadata``."""

from .base import Base
from .cases import (
    Case,
    CaseAttachment,
    CaseCounter,
    CaseEvent,
    IdempotencyKey,
    Notification,
    NotificationReadMark,
)
from .categories import CalendarDay, CalendarEdit, CalendarYear, Category
from .exports import ExportJob
from .grids import Grid, GridVersion, IndexGeneration
from .identity import (
    ApiClient,
    AuditEntry,
    Department,
    GridAssignment,
    RefreshToken,
    Role,
    User,
)
from .limits import RateLimitCounter
from .patrols import Patrol, PatrolCheckin, PatrolFinding, PatrolPoint, Presence
from .regions import Region
from .register import House, Household, Person, SpecialGroupRecord, Visit
from .sync import SyncLog
from .tasks import Campaign, Task, TaskItem
from .webhooks import WebhookDelivery, WebhookEvent, WebhookSubscription

__all__ = [
    "ApiClient",
    "AuditEntry",
    "Base",
    "CalendarDay",
    "CalendarEdit",
    "CalendarYear",
    "Campaign",
    "Case",
    "CaseAttachment",
    "CaseCounter",
    "CaseEvent",
    "Category",
    "Department",
    "ExportJob",
    "Grid",
    "GridAssignment",
    "GridVersion",
    "House",
    "Household",
    "IdempotencyKey",
    "IndexGeneration",
    "Notification",
    "NotificationReadMark",
    "Patrol",
    "PatrolCheckin",
    "PatrolFinding",
    "PatrolPoint",
    "Person",
    "Presence",
    "RateLimitCounter",
    "RefreshToken",
    "Region",
    "Role",
    "SpecialGroupRecord",
    "SyncLog",
    "Task",
    "TaskItem",
    "User",
    "Visit",
    "WebhookDelivery",
    "WebhookEvent",
    "WebhookSubscription",
]
