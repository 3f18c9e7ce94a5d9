"""Airflow plugin: mounts the registrations live view in the API server and adds it to the
UI's navigation."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from regstream.liveview import app


class RegstreamPlugin(AirflowPlugin):
    name = "regstream"
    fastapi_apps = [{"app": app, "url_prefix": "/regstream", "name": "Registrations live view"}]
    external_views = [
        {
            "name": "Registrations",
            "href": "/regstream/",
            "destination": "nav",
            "url_route": "registrations",
        }
    ]
