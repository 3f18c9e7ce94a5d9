"""Airflow plugin: mounts the registrations live view in the API server and adds it to the
UI's navigation."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from regstream.liveview import app
from regstream.monitoring import app as metrics_app


class RegstreamPlugin(AirflowPlugin):
    name = "regstream"
    # the more specific prefix first: the API server matches mounts in this order
    fastapi_apps = [
        {"app": metrics_app, "url_prefix": "/regstream/metrics", "name": "Pipeline metrics"},
        {"app": app, "url_prefix": "/regstream", "name": "Registrations live view"},
    ]
    external_views = [
        {
            "name": "Registrations",
            "href": "/regstream/",
            "destination": "nav",
            "url_route": "registrations",
        }
    ]
