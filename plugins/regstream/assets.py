"""Airflow assets shared by the DAGs."""

from __future__ import annotations

from airflow.sdk import Asset

# Updated by the ingest DAG whenever it lands customers (and so CDC rows via the trigger).
REGISTRATIONS = Asset(
    name="customer_registrations_cdc", uri="regstream://sakila/users_change_events"
)


def new_cdc_events() -> Asset:
    """Updated by the triggerer whenever unpublished rows appear in `users_change_events`,
    from any writer (see regstream.triggers)."""
    from airflow.sdk import AssetWatcher

    from regstream.settings import MYSQL_PUBLISHER_CONN_ID, topic
    from regstream.triggers import NewCdcEventsTrigger

    trigger = NewCdcEventsTrigger(conn_id=MYSQL_PUBLISHER_CONN_ID, pipeline=topic())
    return Asset(
        name="users_change_events_unpublished",
        uri="regstream://sakila/users_change_events/unpublished",
        watchers=[AssetWatcher(name="new_cdc_events", trigger=trigger)],
    )
