"""
### Publish CDC events

Publishes the rows of `users_change_events` that are newer than the watermark
(`latest_cdc_timestamp`) to the Kafka topic, then advances the watermark, only after Kafka
acknowledged every message (acks=all, idempotent producer).

Runs when the ingest DAG lands rows (asset `customer_registrations_cdc`) and every minute,
because other applications register customers too. `check_for_new_events` skips the run
(no producer created) when nothing is new. Task logs show the watermark before and after,
events published, partition and offset ranges, the backlog left and the time taken.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import dag, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable
from regstream.assets import REGISTRATIONS
from regstream.settings import KAFKA_CONN_ID, MYSQL_PUBLISHER_CONN_ID


@dag(
    dag_id="publish_cdc_events",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("* * * * *", timezone="UTC"), assets=[REGISTRATIONS]
    ),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 3, "retry_delay": timedelta(seconds=15)},
    doc_md=__doc__,
    tags=["regstream", "cdc"],
)
def publish_cdc_events() -> None:
    @task.short_circuit
    def check_for_new_events() -> bool:
        import logging

        from regstream.db import connect
        from regstream.publish import has_work
        from regstream.settings import topic

        conn = connect(MYSQL_PUBLISHER_CONN_ID)
        try:
            work, why = has_work(conn, topic())
        finally:
            conn.close()
        logging.getLogger(__name__).info("%s: %s", "publishing" if work else "skipping", why)
        return work

    @task
    def publish_new_events() -> dict:
        from regstream.publish import run_publish

        r = run_publish(MYSQL_PUBLISHER_CONN_ID, KAFKA_CONN_ID)
        return {
            "published": r.published,
            "watermark_before": r.before.last_event_id,
            "watermark_after": r.after.last_event_id,
            "backlog": r.backlog,
        }

    check_for_new_events() >> publish_new_events()


publish_cdc_events()
