"""
### Ingest fake customers

Inserts `customers` (default 20) fake customers, each with a new address, into the sakila
database every 5 minutes. The people of a run are a function of the DAG and its data interval
(seeded Faker) and their `create_date` is spread across that interval, so:

* re-running or clearing a run inserts nothing twice (ledger table `ingest_batches`);
* backfilling past intervals fills them with historical registrations:
  `airflow backfill create --dag-id ingest_fake_customers --from-date 2026-11-01T00:00:00 --to-date 2026-11-01T01:00:00`

The AFTER INSERT trigger on `customer` records each registration in `users_change_events`;
this DAG then updates the `customer_registrations_cdc` asset (lineage). The publisher does not
wait for it: its trigger sees the new rows, whoever wrote them (`publish_cdc_events`).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import Param, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable
from regstream.ingest import DEFAULT_CUSTOMERS_PER_RUN, MAX_CUSTOMERS_PER_RUN
from regstream.settings import MYSQL_INGEST_CONN_ID


@dag(
    dag_id="ingest_fake_customers",
    schedule=CronDataIntervalTimetable("*/5 * * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=2,
    params={
        "customers": Param(
            DEFAULT_CUSTOMERS_PER_RUN,
            type="integer",
            minimum=1,
            maximum=MAX_CUSTOMERS_PER_RUN,
            description="How many customers this run registers.",
        )
    },
    default_args={
        "retries": 3,
        "retry_delay": timedelta(seconds=20),
        "mysql_conn_id": MYSQL_INGEST_CONN_ID,
    },
    doc_md=__doc__,
    tags=["regstream", "ingest"],
)
def ingest_fake_customers() -> None:
    @task
    def insert_fake_customers(
        params: dict | None = None,
        data_interval_start: datetime | None = None,
        data_interval_end: datetime | None = None,
        dag_run=None,
    ) -> dict:
        from regstream.db import connect
        from regstream.ingest import run_ingest, validate_count

        n = validate_count((params or {}).get("customers", DEFAULT_CUSTOMERS_PER_RUN))
        if data_interval_start is None or data_interval_end is None:
            raise ValueError("this run has no data interval; trigger it with a logical date")
        conn = connect(MYSQL_INGEST_CONN_ID, autocommit=False)
        try:
            result = run_ingest(conn, dag_run.dag_id, data_interval_start, data_interval_end, n)
        finally:
            conn.close()
        return {
            "inserted": result.inserted,
            "first_customer_id": result.first_customer_id,
            "last_customer_id": result.last_customer_id,
            "already_loaded": result.already_loaded,
        }

    insert_fake_customers()


ingest_fake_customers()
