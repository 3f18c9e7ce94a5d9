-- Tables the Spark job writes (spark_jobs/registration_counts.py).

-- Registrations per store per event-time window. stream_count is the stream's own running
-- count, added to once per micro-batch (in the transaction that records the batch's offsets
-- in stream_sink_commits); registrations, what readers see, is set from it on every write.
CREATE TABLE IF NOT EXISTS registrations_per_window (
  window_start DATETIME NOT NULL,
  window_end DATETIME NOT NULL,
  store_id SMALLINT UNSIGNED NOT NULL,
  registrations BIGINT UNSIGNED NOT NULL,
  stream_count BIGINT UNSIGNED NOT NULL DEFAULT 0 COMMENT 'the stream''s state; see above',
  batch_id BIGINT NOT NULL,
  query_id CHAR(36) NULL COMMENT 'the streaming query (checkpoint) that wrote the count',
  last_updated TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  PRIMARY KEY (window_start, window_end, store_id),
  KEY idx_window_end (window_end)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Tables made before query_id existed (which checkpoint wrote a window last: for a person
-- reading the table; the counts do not depend on it).
-- (information_schema and a prepared statement: ADD COLUMN IF NOT EXISTS is MariaDB-only)
SET @ddl = IF((SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
                 AND TABLE_NAME = 'registrations_per_window' AND COLUMN_NAME = 'query_id') = 0,
  'ALTER TABLE registrations_per_window ADD COLUMN query_id CHAR(36) NULL AFTER batch_id',
  'DO 0');
PREPARE add_query_id FROM @ddl;
EXECUTE add_query_id;
DEALLOCATE PREPARE add_query_id;

-- Tables made before stream_count existed: the stream's count starts from the one shown.
SET @ddl = IF((SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
                 AND TABLE_NAME = 'registrations_per_window' AND COLUMN_NAME = 'stream_count') = 0,
  'ALTER TABLE registrations_per_window ADD COLUMN stream_count BIGINT UNSIGNED NOT NULL DEFAULT 0 AFTER registrations',
  'DO 0');
PREPARE add_stream_count FROM @ddl;
EXECUTE add_stream_count;
DEALLOCATE PREPARE add_stream_count;
UPDATE registrations_per_window SET stream_count = registrations WHERE stream_count = 0;

-- Messages the job could not use, with the raw value and why; keyed by their Kafka position.
CREATE TABLE IF NOT EXISTS stream_quarantine (
  topic VARCHAR(200) NOT NULL,
  kafka_partition INT NOT NULL,
  kafka_offset BIGINT NOT NULL,
  kafka_timestamp DATETIME(3) NULL,
  raw_key VARBINARY(255) NULL,
  raw_value MEDIUMBLOB NULL,
  reason VARCHAR(500) NOT NULL,
  quarantined_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (topic, kafka_partition, kafka_offset)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- One row per micro-batch: what the job did, including rows it dropped as too late.
CREATE TABLE IF NOT EXISTS stream_progress (
  query_name VARCHAR(100) NOT NULL,
  batch_id BIGINT NOT NULL,
  input_rows BIGINT NOT NULL,
  rows_per_second DOUBLE NULL,
  duration_ms BIGINT NULL,
  event_watermark DATETIME(3) NULL,
  late_rows_dropped BIGINT NOT NULL DEFAULT 0,
  kafka_end_offsets TEXT NULL,
  finished_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (query_name, batch_id),
  KEY idx_finished_at (finished_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Valid events the stream did not count because they came after the lateness bound: one row
-- per event_id, written in the same MySQL transaction as the counts of the micro-batch that
-- saw the event (stream_sink_commits), so a replayed or killed batch records each one once.
CREATE TABLE IF NOT EXISTS stream_late_events (
  event_id BIGINT UNSIGNED NOT NULL,
  customer_id BIGINT UNSIGNED NULL,
  store_id SMALLINT UNSIGNED NOT NULL,
  create_date DATETIME(6) NOT NULL COMMENT 'the event time: the registration',
  event_watermark DATETIME(6) NOT NULL COMMENT 'the stream watermark it was older than',
  reason VARCHAR(200) NOT NULL,
  topic VARCHAR(200) NOT NULL,
  kafka_partition INT NOT NULL,
  kafka_offset BIGINT NOT NULL,
  batch_id BIGINT NOT NULL,
  seen_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (event_id),
  KEY idx_seen_at (seen_at),
  KEY idx_create_date (create_date)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The sink's commit record, one row per streaming query: the last micro-batch applied, the
-- Kafka offsets it consumed up to, and the newest event time seen (the watermark's base).
-- Updated in the same MySQL transaction as the batch's counts and late events: a batch is
-- applied once, and a new checkpoint starts from these offsets instead of the topic's start.
CREATE TABLE IF NOT EXISTS stream_sink_commits (
  query_name VARCHAR(100) NOT NULL,
  query_id CHAR(36) NOT NULL COMMENT 'the checkpoint the batch ids belong to',
  batch_id BIGINT NOT NULL,
  kafka_end_offsets TEXT NOT NULL COMMENT 'JSON {topic: {partition: next offset}}',
  max_event_time DATETIME(6) NULL,
  event_watermark DATETIME(6) NULL COMMENT 'max_event_time minus the lateness',
  events_counted BIGINT UNSIGNED NOT NULL DEFAULT 0 COMMENT 'since the row was created',
  late_events BIGINT UNSIGNED NOT NULL DEFAULT 0 COMMENT 'since the row was created',
  committed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  PRIMARY KEY (query_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
