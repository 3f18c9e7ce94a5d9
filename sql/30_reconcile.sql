-- Results of the reconciliation (plugins/regstream/reconcile.py, DAG reconcile_counts): each
-- run compares, per (window, store), the stream's count with the committed customers of the
-- source minus the events recorded as too late; the live view shows the latest run.

-- One row per run: what was checked and how much matched.
CREATE TABLE IF NOT EXISTS stream_reconciliation_runs (
  run_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  checked_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  window_seconds INT UNSIGNED NOT NULL,
  range_start DATETIME NOT NULL COMMENT 'first window start checked',
  range_end DATETIME NOT NULL COMMENT 'last window end checked (now minus the settle time)',
  windows_checked INT UNSIGNED NOT NULL,
  windows_matched INT UNSIGNED NOT NULL,
  source_events BIGINT UNSIGNED NOT NULL COMMENT 'committed customers in the range',
  late_events BIGINT UNSIGNED NOT NULL COMMENT 'of which recorded as too late',
  counted BIGINT UNSIGNED NOT NULL COMMENT 'sum of the stream counts in the range',
  airflow_run_id VARCHAR(250) NULL,
  PRIMARY KEY (run_id),
  KEY idx_checked_at (checked_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- One row per (run, window, store) whose count differs: difference = counted - expected.
CREATE TABLE IF NOT EXISTS stream_reconciliation_mismatches (
  run_id BIGINT UNSIGNED NOT NULL,
  window_start DATETIME NOT NULL,
  window_end DATETIME NOT NULL,
  store_id SMALLINT UNSIGNED NOT NULL,
  source_count BIGINT UNSIGNED NOT NULL,
  late_count BIGINT UNSIGNED NOT NULL,
  expected BIGINT NOT NULL COMMENT 'source_count - late_count',
  counted BIGINT UNSIGNED NULL COMMENT 'NULL: the stream has no row for the window',
  difference BIGINT NOT NULL,
  PRIMARY KEY (run_id, window_start, store_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
