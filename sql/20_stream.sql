-- Tables the Spark job writes (spark_jobs/registration_counts.py).

-- Registrations per store per event-time window; upserted by (window, store) so a replayed
-- micro-batch writes the same numbers.
CREATE TABLE IF NOT EXISTS registrations_per_window (
  window_start DATETIME NOT NULL,
  window_end DATETIME NOT NULL,
  store_id SMALLINT UNSIGNED NOT NULL,
  registrations BIGINT UNSIGNED NOT NULL,
  batch_id BIGINT NOT NULL,
  query_id CHAR(36) NULL COMMENT 'the streaming query (checkpoint) that wrote the count',
  last_updated TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  PRIMARY KEY (window_start, window_end, store_id),
  KEY idx_window_end (window_end)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Tables made before query_id existed: batch ids restart at 0 with a new checkpoint, so the
-- upsert needs the query id to let a new checkpoint take existing windows over.
-- (information_schema and a prepared statement: ADD COLUMN IF NOT EXISTS is MariaDB-only)
SET @ddl = IF((SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
                 AND TABLE_NAME = 'registrations_per_window' AND COLUMN_NAME = 'query_id') = 0,
  'ALTER TABLE registrations_per_window ADD COLUMN query_id CHAR(36) NULL AFTER batch_id',
  'DO 0');
PREPARE add_query_id FROM @ddl;
EXECUTE add_query_id;
DEALLOCATE PREPARE add_query_id;

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
