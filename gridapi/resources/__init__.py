"""HTTP resources: one flask-smorest Blueprint per resource, registered here."""

from __future__ import annotations

from flask import Flask
from flask_smorest import Api

from . import (
    attachments,
    audit,
    auth,
    bulletins,
    calendar,
    cases,
    categories,
    clients,
    departments,
    docs,
    exports,
    grids,
    health,
    indicators,
    locate,
    maps,
    notifications,
    open311,
    patrols,
    person_import,
    regions,
    register,
    special_groups,
    sync,
    tasks,
    users,
    webhooks,
)


def register_blueprints(app: Flask, api: Api) -> None:
    """Register every API blueprint on ``api`` and the docs page on ``app``."""
    for blueprint in (
        health.blp,
        auth.blp,
        regions.blp,
        grids.versions_blp,
        grids.blp,
        locate.blp,
        users.blp,
        departments.blp,
        clients.blp,
        audit.blp,
        categories.blp,
        calendar.blp,
        cases.blp,
        attachments.blp,
        register.houses_blp,
        register.households_blp,
        register.persons_blp,
        register.visits_blp,
        special_groups.blp,
        sync.blp,
        person_import.blp,
        tasks.blp,
        notifications.blp,
        tasks.campaigns_blp,
        patrols.blp,
        patrols.presence_blp,
        indicators.blp,
        maps.blp,
        bulletins.blp,
        webhooks.blp,
        exports.blp,
    ):
        api.register_blueprint(blueprint)
    app.register_blueprint(docs.bp)
    app.register_blueprint(open311.bp)
