"""SQLAlchemy models; importing this package registers every table on ``Base.metadata``."""

from .base import Base
from .grids import Grid, GridVersion, IndexGeneration
from .regions import Region

__all__ = ["Base", "Grid", "GridVersion", "IndexGeneration", "Region"]
