"""Area scope: the part of the administrative tree a caller may see, as SQL conditions.

Applied inside the queries of every service, so an object outside the caller's scope is
never loaded and answers exactly as a missing one does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import and_, false, or_, true
from sqlalchemy.sql import ColumnElement

from .codes import ancestor_prefix_codes, subtree_prefix


def _prefix_bound(prefix: str) -> str | None:
    """Return the smallest digit string above every string starting with ``prefix``, or None."""
    digits = prefix.rstrip("9")
    if not digits:
        return None
    return digits[:-1] + str(int(digits[-1]) + 1)


def starts_with(column: ColumnElement[str], prefix: str) -> ColumnElement[bool]:
    """Return 'column starts with prefix' as a range for digit codes, so that B-tree indexes
    serve it under any collation (PostgreSQL uses an index for LIKE only with C collation)."""
    if not prefix.isdigit() or not prefix.isascii():
        return column.startswith(prefix, autoescape=True)
    bound = _prefix_bound(prefix)
    if bound is None:
        return column >= prefix
    return and_(column >= prefix, column < bound)


@dataclass(frozen=True)
class Scope:
    """Unrestricted, or a set of region subtrees and/or a set of grids.

    ``ancestors`` are the regions above the scope: visible for navigation (names and codes of
    the path to the province), never their other descendants.
    """

    unrestricted: bool = False
    prefixes: tuple[str, ...] = ()
    grid_codes: frozenset[str] = field(default_factory=frozenset)
    ancestors: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def everything(cls) -> Scope:
        return cls(unrestricted=True)

    @classmethod
    def of_region(cls, code: str) -> Scope:
        """Return the scope of a region's whole subtree."""
        return cls(
            prefixes=(subtree_prefix(code),), ancestors=frozenset(ancestor_prefix_codes(code))
        )

    @classmethod
    def of_grids(cls, codes: Iterable[str]) -> Scope:
        """Return the scope of a set of grids (their communities become visible ancestors)."""
        grids = frozenset(codes)
        ancestors: set[str] = set()
        for code in grids:
            community = code[:12]
            ancestors.add(community)
            ancestors.update(ancestor_prefix_codes(community))
        return cls(grid_codes=grids, ancestors=frozenset(ancestors))

    def fingerprint(self) -> str:
        """Return a short digest of the area (equal for equal scopes): what a thing made for
        a caller's area (a sync cursor, an export's file) is checked against later."""
        parts = ["*" if self.unrestricted else "", *sorted(self.prefixes), "|"]
        parts += sorted(self.grid_codes)
        return hashlib.blake2b("\n".join(parts).encode(), digest_size=12).hexdigest()

    # --- checks in Python -------------------------------------------------------------------

    def covers_region(self, code: str | None) -> bool:
        """Return whether ``code`` lies inside the scope (its subtree; not the ancestors)."""
        if self.unrestricted:
            return True
        return bool(code) and any(code.startswith(p) for p in self.prefixes)

    def sees_region(self, code: str | None) -> bool:
        """Return whether a region may be read: inside the scope or one of its ancestors."""
        return self.covers_region(code) or (code in self.ancestors)

    def covers_grid(self, code: str) -> bool:
        """Return whether a grid (by its 15-digit code) is inside the scope."""
        return self.unrestricted or code in self.grid_codes or self.covers_region(code[:12])

    # --- SQL conditions ---------------------------------------------------------------------

    def region_condition(
        self, column: ColumnElement[str], with_ancestors: bool = False
    ) -> ColumnElement[bool]:
        """Return the condition 'the region code in ``column`` is in scope'."""
        if self.unrestricted:
            return true()
        parts = [starts_with(column, p) for p in self.prefixes]
        if with_ancestors and self.ancestors:
            parts.append(column.in_(sorted(self.ancestors)))
        return or_(*parts) if parts else false()

    def grid_condition(
        self, code_column: ColumnElement[str], community_column: ColumnElement[str]
    ) -> ColumnElement[bool]:
        """Return the condition 'the grid is in scope'."""
        if self.unrestricted:
            return true()
        parts = [starts_with(community_column, p) for p in self.prefixes]
        if self.grid_codes:
            parts.append(code_column.in_(sorted(self.grid_codes)))
        return or_(*parts) if parts else false()
