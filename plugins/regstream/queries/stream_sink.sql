-- The stream job's MySQL sink (regstream.stream.sink): one transaction per micro-batch.
-- Placeholders are MySQLdb's %s.

-- name: counts
-- stream_count is the stream's running count (its state, added to once per batch);
-- registrations, what readers see, is set from it. Each assignment reads only the old
-- row, so the result does not depend on the order MySQL or MariaDB evaluate them in.
INSERT INTO registrations_per_window (window_start, window_end, store_id, stream_count,
  registrations, batch_id, query_id) VALUES (%s, %s, %s, %s, %s, %s, %s)
ON DUPLICATE KEY UPDATE registrations = stream_count + VALUES(stream_count),
  stream_count = stream_count + VALUES(stream_count), batch_id = VALUES(batch_id),
  query_id = VALUES(query_id);

-- name: late_events
INSERT IGNORE INTO stream_late_events (event_id, customer_id, store_id, create_date,
  event_watermark, reason, topic, kafka_partition, kafka_offset, batch_id)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s);

-- name: quarantine
INSERT IGNORE INTO stream_quarantine (topic, kafka_partition, kafka_offset,
  kafka_timestamp, raw_key, raw_value, reason) VALUES (%s, %s, %s, %s, %s, %s, %s);

-- name: sink_state
SELECT kafka_end_offsets, max_event_time FROM stream_sink_commits WHERE query_name = %s;

-- name: commit
-- event_watermark is the event-time watermark the batch reached (newest event - lateness).
INSERT INTO stream_sink_commits (query_name, query_id, batch_id, kafka_end_offsets,
  max_event_time, event_watermark, events_counted, late_events)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE
  query_id = VALUES(query_id), batch_id = VALUES(batch_id),
  kafka_end_offsets = VALUES(kafka_end_offsets), max_event_time = VALUES(max_event_time),
  event_watermark = VALUES(event_watermark),
  events_counted = events_counted + VALUES(events_counted),
  late_events = late_events + VALUES(late_events);

-- name: progress
INSERT INTO stream_progress (query_name, batch_id, input_rows, rows_per_second,
  duration_ms, event_watermark, late_rows_dropped, kafka_end_offsets)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE
  input_rows = VALUES(input_rows), rows_per_second = VALUES(rows_per_second),
  duration_ms = VALUES(duration_ms), event_watermark = VALUES(event_watermark),
  late_rows_dropped = VALUES(late_rows_dropped),
  kafka_end_offsets = VALUES(kafka_end_offsets), finished_at = CURRENT_TIMESTAMP(6);

-- name: prune_progress
DELETE FROM stream_progress WHERE finished_at < NOW(6) - INTERVAL %s DAY LIMIT 100000;

-- name: orphan_counts
SELECT EXISTS (SELECT 1 FROM registrations_per_window)
  AND NOT EXISTS (SELECT 1 FROM stream_sink_commits);

-- name: required_schema
SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND
  ((TABLE_NAME = 'registrations_per_window' AND COLUMN_NAME = 'stream_count') OR
   (TABLE_NAME = 'stream_sink_commits' AND COLUMN_NAME = 'kafka_end_offsets') OR
   (TABLE_NAME = 'stream_late_events' AND COLUMN_NAME = 'event_id'));
