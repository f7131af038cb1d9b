"""Third-party API clients: registered by an admin, keys shown once, revocable."""

from __future__ import annotations

from flask.views import MethodView

from ..auditing import audit
from ..auth import current_principal
from ..extensions import commit, db_session, state
from ..schemas.identity import (
    ClientCreatedSchema,
    ClientCreateSchema,
    ClientListSchema,
    ClientSchema,
)
from ..services import identity as svc
from .blueprint import Blueprint

blp = Blueprint(
    "clients",
    __name__,
    url_prefix="/api/v1/clients",
    description="Apps (hotlines, resident apps, city systems) and their API keys.",
)


@blp.route("")
class Clients(MethodView):
    @blp.requires("clients:manage")
    @blp.response(200, ClientListSchema)
    def get(self):
        """List API clients"""
        return {"items": svc.list_clients(db_session(), current_principal().scope)}

    @blp.requires("clients:manage")
    @blp.arguments(ClientCreateSchema)
    @blp.response(201, ClientCreatedSchema)
    def post(self, data):
        """Register an API client; the answer shows its key once"""
        client, key = svc.create_client(
            db_session(),
            name=data["name"],
            scopes=data["scopes"],
            scope_region=data.get("scope_region"),
            rate_limit=data.get("rate_limit") or state().settings.client_rate_limit,
            created_by=current_principal().name,
            scope=current_principal().scope,
        )
        audit(
            "client.create",
            "client",
            client.id,
            region_code=client.scope_region_code,
            summary={"name": client.name, "scopes": client.scopes, "prefix": client.key_prefix},
        )
        commit()
        client.api_key = key  # shown in this answer only; never stored
        return client


@blp.route("/<id:client_id>")
class ClientsById(MethodView):
    @blp.requires("clients:manage")
    @blp.response(200, ClientSchema)
    def get(self, client_id):
        """Get an API client"""
        return svc.get_client(db_session(), client_id, current_principal().scope)

    @blp.requires("clients:manage")
    @blp.response(200, ClientSchema)
    def delete(self, client_id):
        """Revoke an API client's key"""
        client = svc.revoke_client(db_session(), client_id, current_principal().scope)
        audit("client.revoke", "client", client.id, region_code=client.scope_region_code)
        commit()
        state().principals.clear()
        return client
