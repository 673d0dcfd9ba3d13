"""The JSON API: one blueprint per resource."""

from __future__ import annotations

from flask import Flask

from service.api import events, health, items, recommendations, search, stats, users


def register_blueprints(app: Flask) -> None:
    from service import openapi, ui  # openapi imports service.auth -> service.api.common

    for module in (items, events, users, recommendations, search, stats, health, openapi, ui):
        app.register_blueprint(module.bp)
