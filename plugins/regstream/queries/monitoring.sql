-- Queries of plugins/regstream/monitoring.py, each after a `-- name:` line, run through the
-- reader role. `now`, `watermark` and `backlog` (and the oldest waiting event, built in
-- monitoring.py for the id gaps) read the source; the others read the sink.

-- name: now
SELECT UTC_TIMESTAMP(6);

-- name: watermark
SELECT last_event_id, updated_at, pending_gaps FROM latest_cdc_timestamp
 WHERE pipeline = %(pipeline)s;

-- name: backlog
SELECT COUNT(*), MIN(captured_at) FROM users_change_events WHERE event_id > %(last_id)s;

-- name: last_input_batch
SELECT MAX(finished_at) FROM stream_progress WHERE query_name = %(q)s AND input_rows > 0;

-- name: last_commit
SELECT MAX(committed_at) FROM stream_sink_commits WHERE query_name = %(q)s;

-- name: last_batch
SELECT rows_per_second, duration_ms, event_watermark FROM stream_progress
 WHERE query_name = %(q)s AND batch_id >= 0 ORDER BY finished_at DESC LIMIT 1;

-- name: late_events
SELECT COUNT(*) FROM stream_late_events;

-- name: quarantined
SELECT COUNT(*) FROM stream_quarantine;
