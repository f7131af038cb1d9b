"""SQLAlchemy models; importing this package registers every table on ``Base.metadata``."""

from .base import Base
from .cases import (
    Case,
    CaseAttachment,
    CaseCounter,
    CaseEvent,
    IdempotencyKey,
    Notification,
)
from .categories import CalendarDay, Category
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
from .regions import Region
from .register import House, Household, Person, SpecialGroupRecord, Visit

__all__ = [
    "ApiClient",
    "AuditEntry",
    "Base",
    "CalendarDay",
    "Case",
    "CaseAttachment",
    "CaseCounter",
    "CaseEvent",
    "Category",
    "Department",
    "Grid",
    "GridAssignment",
    "GridVersion",
    "House",
    "Household",
    "IdempotencyKey",
    "IndexGeneration",
    "Notification",
    "Person",
    "RefreshToken",
    "Region",
    "Role",
    "SpecialGroupRecord",
    "User",
    "Visit",
]
