-- Queries of plugins/regstream/reconcile.py, each after a `-- name:` line. Run through the
-- reconcile role with the session clock in UTC (FROM_UNIXTIME / UNIX_TIMESTAMP are then UTC):
-- `now` and `source_windows` on the source, the others on the sink (they may be two servers;
-- the join is done in Python).
-- Windows are tumbling, %(w)s seconds long and aligned to the epoch, as Spark's window().

-- name: now
-- The source's clock: the capture times compared with it are the source's.
SELECT UTC_TIMESTAMP(6);

-- name: source_windows
-- Source side (reconcile role). Per (window, store) in [lo, hi): committed customers and the
-- newest capture time among them. One row per (window, store): the range is bounded by the
-- lateness, so the rows are at most lateness / window x stores.
SELECT CAST(FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(c.create_date) / %(w)s) * %(w)s) AS DATETIME)
         AS ws,
       c.store_id, COUNT(*), MAX(e.captured_at)
  FROM customer c LEFT JOIN users_change_events e ON e.customer_id = c.customer_id
 WHERE c.create_date >= %(lo)s AND c.create_date < %(hi)s
 GROUP BY ws, c.store_id
 ORDER BY ws, c.store_id;

-- name: sink_windows
-- Sink side (reconcile role on the sink). Per (window, store) in [lo, hi): the events
-- recorded as too late, and the stream's count (NULL: no row).
SELECT ws, store_id, SUM(late_n), MAX(counted_n)
FROM (
  SELECT CAST(FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(create_date) / %(w)s) * %(w)s) AS DATETIME)
           AS ws,
         store_id, COUNT(*) AS late_n, NULL AS counted_n
    FROM stream_late_events
   WHERE create_date >= %(lo)s AND create_date < %(hi)s
   GROUP BY ws, store_id
  UNION ALL
  SELECT window_start, store_id, 0, registrations
    FROM registrations_per_window
   WHERE window_start >= %(lo)s AND window_start < %(hi)s
     AND TIMESTAMPDIFF(SECOND, window_start, window_end) = %(w)s
     AND MOD(UNIX_TIMESTAMP(window_start), %(w)s) = 0
) AS per_table
GROUP BY ws, store_id
ORDER BY ws, store_id;

-- name: insert_run
INSERT INTO stream_reconciliation_runs
  (window_seconds, range_start, range_end, windows_checked, windows_matched, source_events,
   late_events, counted, airflow_run_id)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s);

-- name: insert_mismatch
INSERT INTO stream_reconciliation_mismatches
  (run_id, window_start, window_end, store_id, source_count, late_count, expected, counted,
   difference)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s);

-- name: latest_run
-- The newest run, for the live view (reader role).
SELECT run_id, checked_at, window_seconds, range_start, range_end, windows_checked,
       windows_matched, source_events, late_events, counted, airflow_run_id
  FROM stream_reconciliation_runs ORDER BY run_id DESC LIMIT 1;

-- name: run_mismatches
SELECT window_start, window_end, store_id, source_count, late_count, expected, counted,
       difference
  FROM stream_reconciliation_mismatches WHERE run_id = %s
 ORDER BY window_start DESC, store_id LIMIT %s;
