"""Airflow assets shared by the DAGs."""

from __future__ import annotations

from airflow.sdk import Asset

# Updated by the ingest DAG whenever it lands customers (and so CDC rows via the trigger).
REGISTRATIONS = Asset(
    name="customer_registrations_cdc", uri="regstream://sakila/users_change_events"
)
