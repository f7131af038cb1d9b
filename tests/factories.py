"""Test data: square, readable polygons near 苏州 and the regions that hold them."""

from __future__ import annotations

from typing import Any

PROVINCE, CITY, COUNTY = "320000000000", "320500000000", "320508000000"
TOWNSHIP = "320508001000"
COMMUNITY_A, COMMUNITY_B = "320508001001", "320508001002"
LON0, LAT0 = 120.60, 31.30
STEP = 0.01  # about 950 m × 1,110 m


def square(
    col: float, row: float, size: float = 1.0, *, lon0: float = LON0, lat0: float = LAT0
) -> dict[str, Any]:
    """Return a GeoJSON Polygon: the cell at (col, row) of a 0.01° lattice, ``size`` cells wide."""
    x0, y0 = lon0 + col * STEP, lat0 + row * STEP
    # Computed from the lattice, not from x0, so shared edges are bit-for-bit equal.
    x1, y1 = lon0 + (col + size) * STEP, lat0 + (row + size) * STEP
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def rectangle(col0: float, row0: float, col1: float, row1: float) -> dict[str, Any]:
    x0, y0, x1, y1 = (
        LON0 + col0 * STEP,
        LAT0 + row0 * STEP,
        LON0 + col1 * STEP,
        LAT0 + row1 * STEP,
    )
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def to_multi(polygon: dict[str, Any]) -> dict[str, Any]:
    return {"type": "MultiPolygon", "coordinates": [polygon["coordinates"]]}


def feature(
    code: str, geometry: dict[str, Any], name: str | None = None, grid_type: str | None = None
) -> dict[str, Any]:
    props: dict[str, Any] = {"code": code, "name": name or f"第{code[-3:]}网格"}
    if grid_type:
        props["type"] = grid_type
    return {"type": "Feature", "properties": props, "geometry": geometry}


def collection(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def clean_tiling() -> dict[str, Any]:
    """Two communities side by side, each 2×1 cells, tiled by two 1×1 grids.

    Community A covers cells (0..2, 0..1); community B covers (2..4, 0..1).
    """
    return collection(
        feature(COMMUNITY_A + "001", square(0, 0)),
        feature(COMMUNITY_A + "002", square(1, 0)),
        feature(COMMUNITY_B + "001", square(2, 0)),
        feature(COMMUNITY_B + "002", square(3, 0), grid_type="dedicated"),
    )


def region_rows(with_boundaries: bool = True) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"code": PROVINCE, "name": "江苏省"},
        {"code": CITY, "name": "苏州市"},
        {"code": COUNTY, "name": "姑苏区"},
        {"code": TOWNSHIP, "name": "平江街道"},
        {"code": COMMUNITY_A, "name": "平江社区"},
        {"code": COMMUNITY_B, "name": "观前社区"},
    ]
    if with_boundaries:
        rows[3]["boundary"] = rectangle(0, 0, 4, 1)
        rows[4]["boundary"] = rectangle(0, 0, 2, 1)
        rows[5]["boundary"] = rectangle(2, 0, 4, 1)
    return rows


class Factory:
    """Builds test data through the HTTP API, so tests exercise the real paths."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def regions(self, with_boundaries: bool = True) -> None:
        r = self.client.post("/api/v1/regions/import", json=region_rows(with_boundaries))
        assert r.status_code == 200, r.get_json()

    def grid_version(
        self,
        fc: dict[str, Any] | None = None,
        *,
        activate: bool = True,
        force: bool = False,
        **args: str,
    ) -> dict[str, Any]:
        query = "&".join(f"{k}={v}" for k, v in args.items())
        r = self.client.post(f"/api/v1/grid-versions?{query}", json=fc or clean_tiling())
        assert r.status_code == 201, r.get_json()
        version = r.get_json()
        if activate:
            r = self.client.post(
                f"/api/v1/grid-versions/{version['id']}/activate", json={"force": force}
            )
            assert r.status_code == 200, r.get_json()
            version = r.get_json()
        return version

    def locate(self, lon: float, lat: float, crs: str = "wgs84") -> dict[str, Any]:
        r = self.client.get(f"/api/v1/locate?lon={lon!r}&lat={lat!r}&crs={crs}")
        assert r.status_code == 200, r.get_json()
        return r.get_json()


PASSWORD = "Test-Passw0rd!"


class Accounts:
    """Creates accounts through the service layer and signs them in with real tokens."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.ids: dict[str, int] = {}

    def create(
        self,
        username: str,
        role: str,
        *,
        scope_region: str | None = None,
        grids: list[str] | None = None,
        phone: str | None = None,
        password: str = PASSWORD,
    ) -> int:
        from sqlalchemy import select

        from gridapi.models import User
        from gridapi.scope import Scope
        from gridapi.services.identity import create_user

        st = self.app.extensions["gridapi"]
        with st.sessions.begin() as session:
            existing = session.scalars(select(User.id).where(User.username == username)).first()
            if existing is not None:  # another app on the same database made it already
                self.ids[username] = existing
                return existing
            user = create_user(
                session,
                scope=Scope.everything(),
                actor_rank=None,
                username=username,
                password=password,
                role=role,
                phone=phone,
                scope_region=scope_region,
                grids=grids,
                phone_key=st.phone_key,
            )
            self.ids[username] = user.id
            return user.id

    def token(self, username: str) -> str:
        st = self.app.extensions["gridapi"]
        from gridapi.models import User

        with st.sessions() as session:
            user = session.get(User, self.ids[username])
            return st.tokens.issue(
                subject=str(user.id), claims={"ver": user.token_version, "role": user.role_name}
            )

    def client(self, username: str, role: str | None = None, **scope: Any) -> Any:
        """Return a test client signed in as ``username`` (created first when new)."""
        if username not in self.ids:
            self.create(username, role or username, **scope)
        client = self.app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {self.token(username)}"
        return client
