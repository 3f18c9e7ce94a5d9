"""Which MySQL connection reaches which side: the source (customers, their change events, the
publisher's watermark, the ingest ledger: sql/01-11 and 50_source_grants.sql) or the sink
(the stream's counts and records, the reconciliation's results: sql/20-30 and
51_sink_grants.sql). The two may be one database, two databases or two servers; docs/sink.md
says how to split them.

Two tasks read both sides, each through one role per side: the reconciliation (the reconcile
role: customers on the source, counts and its results on the sink) and the lag monitor (the
reader role: watermark and event times on the source, the stream's progress on the sink).
Their second connection is optional: when it is not defined, the sink is taken to be in the
source's database, as on a one-server stack.
"""

from __future__ import annotations

import logging
from typing import Any

from regstream.settings import (
    MYSQL_INGEST_CONN_ID,
    MYSQL_PUBLISHER_CONN_ID,
    MYSQL_READER_CONN_ID,
    MYSQL_STREAM_CONN_ID,
)

log = logging.getLogger(__name__)

# The reconciliation reads customers and change events through this (source side) ...
MYSQL_RECONCILE_CONN_ID = "mysql_reconcile"
# ... and reads the counts and writes its results through this (sink side).
MYSQL_RECONCILE_SINK_CONN_ID = "mysql_reconcile_sink"
# The lag monitor and the live view read the sink through MYSQL_READER_CONN_ID, and the
# watermark and change events' ids and times through this (source side).
MYSQL_READER_SOURCE_CONN_ID = "mysql_reader_source"

SOURCE_CONN_IDS = (
    MYSQL_INGEST_CONN_ID,
    MYSQL_PUBLISHER_CONN_ID,
    MYSQL_RECONCILE_CONN_ID,
    MYSQL_READER_SOURCE_CONN_ID,
)
SINK_CONN_IDS = (MYSQL_STREAM_CONN_ID, MYSQL_READER_CONN_ID, MYSQL_RECONCILE_SINK_CONN_ID)

# A connection left undefined is the same role's connection of the other side (one database).
SAME_DATABASE_AS = {
    MYSQL_RECONCILE_SINK_CONN_ID: MYSQL_RECONCILE_CONN_ID,
    MYSQL_READER_SOURCE_CONN_ID: MYSQL_READER_CONN_ID,
}


def resolve(conn_id: str) -> str:
    """`conn_id` when Airflow knows it, else the connection of the same role on the other
    side (SAME_DATABASE_AS): a one-database deployment defines only the five role ids."""
    fallback = SAME_DATABASE_AS.get(conn_id)
    if fallback is None:
        return conn_id
    from airflow.exceptions import AirflowNotFoundException
    from airflow.sdk.bases.hook import BaseHook

    try:
        BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        log.info(
            "connection %r is not defined: using %r (source and sink in one database; "
            "define AIRFLOW_CONN_%s to split them, see docs/sink.md)",
            conn_id,
            fallback,
            conn_id.upper(),
        )
        return fallback
    return conn_id


def connect_side(conn_id: str, *, autocommit: bool = True) -> Any:
    """regstream.db.connect through `resolve(conn_id)`."""
    from regstream.db import connect

    return connect(resolve(conn_id), autocommit=autocommit)
