"""
### Publish CDC events

Publishes the rows of `users_change_events` above the CDC watermark to the Kafka topic in one
Kafka transaction together with the new CDC watermark (written to the compacted
`<topic>-publisher-state` topic), then copies the watermark to `latest_cdc_timestamp`. A
publisher killed before the commit leaves nothing a `read_committed` reader sees; the next run
aborts its transaction and sends the events once.

**Event-driven**: the asset `users_change_events_unpublished` has a watcher whose trigger runs
in the triggerer and probes MySQL twice a second (two primary-key lookups), so a row inserted
by any writer, not only the ingest DAG, starts this DAG within about a second. At most one run
is active; rows that arrive during a run are taken by the next. A run every minute is the
safety net (and settles id gaps of transactions that committed late).

`publish_new_events` first checks for work and is skipped (no producer created) when nothing is
new. Task logs show the watermark before and after, events published, partition and offset
ranges, the backlog left and the time taken.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import dag, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable
from regstream.assets import new_cdc_events
from regstream.settings import KAFKA_CONN_ID, MYSQL_PUBLISHER_CONN_ID


@dag(
    dag_id="publish_cdc_events",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("* * * * *", timezone="UTC"), assets=[new_cdc_events()]
    ),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 3, "retry_delay": timedelta(seconds=15)},
    doc_md=__doc__,
    tags=["regstream", "cdc"],
)
def publish_cdc_events() -> None:
    @task
    def publish_new_events() -> dict:
        import logging

        from airflow.exceptions import AirflowSkipException
        from regstream.db import connect
        from regstream.publish import has_work, run_publish
        from regstream.settings import topic

        conn = connect(MYSQL_PUBLISHER_CONN_ID)
        try:
            work, why = has_work(conn, topic())
        finally:
            conn.close()
        logging.getLogger(__name__).info("%s: %s", "publishing" if work else "skipping", why)
        if not work:
            raise AirflowSkipException(why)
        r = run_publish(MYSQL_PUBLISHER_CONN_ID, KAFKA_CONN_ID)
        return {
            "published": r.published,
            "watermark_before": r.before.last_event_id,
            "watermark_after": r.after.last_event_id,
            "backlog": r.backlog,
        }

    publish_new_events()


publish_cdc_events()
