"""
### Reconcile counts

Checks that the stream's counts are right: per (window, store), the count in
`registrations_per_window` must equal the committed customers of the source in that window
minus the events the stream recorded as too late (`stream_late_events`). Windows checked are
those within the allowed lateness (`REGSTREAM_LATENESS`) that ended at least `settle_s`
seconds ago (`REGSTREAM_RECONCILE_SETTLE_S`, default 120 s); runs on
`REGSTREAM_RECONCILE_SCHEDULE` (default every 5 minutes) and on demand (▶, param `settle_s`).

`reconcile_window_counts` **fails** when a window differs; its log lists each one:
`window 2026-11-24 10:05:00-10:06:00 store 2: counted 9, expected 8 (source 8 - too late 0),
difference +1`. Every run is stored (`stream_reconciliation_runs`, `..._mismatches`) and shown
on the live view (`/regstream/`). It reads the source through `mysql_reconcile` (of a customer
only id, store and registration time) and the sink, where it also stores its runs, through
`mysql_reconcile_sink` (when undefined: `mysql_reconcile`, one database; docs/sink.md).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import Param, dag, task
from regstream.settings import env_int, setting


@dag(
    dag_id="reconcile_counts",
    schedule=setting("REGSTREAM_RECONCILE_SCHEDULE"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    # a mismatch fails at once (AirflowFailException); a retry is for a database that was down
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "settle_s": Param(
            env_int("REGSTREAM_RECONCILE_SETTLE_S"),
            type="integer",
            minimum=0,
            description="leave windows that ended less than this many seconds ago",
        ),
    },
    doc_md=__doc__,
    tags=["regstream", "monitoring"],
)
def reconcile_counts() -> None:
    @task
    def reconcile_window_counts(params: dict | None = None, run_id: str | None = None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException
        from regstream.reconcile import ReconciliationMismatch, run_from_settings

        try:
            result = run_from_settings((params or {}).get("settle_s"), run_id)
        except ReconciliationMismatch as exc:
            raise AirflowFailException(str(exc)) from exc
        return {"reconciliation_run": result.run_id, "matched": result.matched}

    reconcile_window_counts()


reconcile_counts()
