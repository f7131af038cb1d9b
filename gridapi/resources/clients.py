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
        """List API clients

        Returns the registered apps (hotlines, city systems, resident apps) whose area lies inside
        the caller's scope, ordered by id, each with its name, key prefix, scopes, area, rate limit,
        creator and revocation time; keys themselves are never shown again. Clients without an area
        (they see everything) are listed only to unrestricted callers. Needs `clients:manage`. Not
        paged.
        """
        return {"items": svc.list_clients(db_session(), current_principal().scope)}

    @blp.requires("clients:manage")
    @blp.arguments(ClientCreateSchema)
    @blp.response(201, ClientCreatedSchema)
    def post(self, data):
        """Register an API client; the answer shows its key once

        Creates an app credential with the given `scopes` (permissions), area (`scope_region`,
        required unless the caller is unrestricted, and inside the caller's scope) and `rate_limit`
        (default GRIDAPI_CLIENT_RATE_LIMIT). The answer carries the full `api_key` this one time:
        only a digest is kept, so store it at once; a lost key means registering a new client. Needs
        `clients:manage`; unknown scopes or ones the caller does not hold, a malformed rate limit
        or a region outside the caller's scope are refused with 422. Writes an audit row `client.create` (without the key).
        """
        client, key = svc.create_client(
            db_session(),
            name=data["name"],
            scopes=data["scopes"],
            scope_region=data.get("scope_region"),
            rate_limit=data.get("rate_limit") or state().settings.client_rate_limit,
            created_by=current_principal().name,
            scope=current_principal().scope,
            permissions=current_principal().permissions,
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
        """Get an API client

        Returns the app's name, key prefix (to recognise the key), scopes, area, rate limit, creator
        and `revoked_at`; never the key. Needs `clients:manage`; a client whose area is outside the
        caller's scope answers 404 like one that does not exist.
        """
        return svc.get_client(db_session(), client_id, current_principal().scope)

    @blp.requires("clients:manage")
    @blp.response(200, ClientSchema)
    def delete(self, client_id):
        """Revoke an API client's key

        Revokes the app's key: requests made with it are refused with 401 from then on (other server
        processes notice within the credential cache time). The client row stays, with `revoked_at`
        set, and is returned; revoking again keeps the first `revoked_at`. Needs `clients:manage`; a
        client outside the caller's scope answers 404. Writes an audit row `client.revoke` (once:
        revoking again changes nothing and writes none). There is no un-revoke: register a new
        client instead.
        """
        client, revoked = svc.revoke_client(db_session(), client_id, current_principal().scope)
        if revoked:
            audit("client.revoke", "client", client.id, region_code=client.scope_region_code)
        commit()
        state().principals.clear()
        return client
