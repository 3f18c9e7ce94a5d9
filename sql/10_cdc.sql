-- Change data capture of customer registrations, and the publisher's watermark.
-- Safe on a live database and on stock sakila: creates only what is missing, changes no rows.

-- One row per registration, written by the trigger below from NEW.* in the same transaction
-- as the customer row, so it commits (or rolls back) with it.
CREATE TABLE IF NOT EXISTS users_change_events (
  event_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  event_type VARCHAR(32) NOT NULL,
  customer_id INT UNSIGNED NOT NULL,
  store_id SMALLINT UNSIGNED NOT NULL,
  first_name VARCHAR(45) NOT NULL,
  last_name VARCHAR(45) NOT NULL,
  email VARCHAR(50) DEFAULT NULL,
  address_id INT UNSIGNED NOT NULL,
  create_date DATETIME NOT NULL COMMENT 'registration time (UTC), the event time',
  captured_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) COMMENT 'when the trigger ran',
  PRIMARY KEY (event_id),
  KEY idx_customer_id (customer_id),
  KEY idx_captured_at (captured_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Tables made before idx_captured_at: the lag monitor and the reconciliation look events up by
-- capture time (a prepared statement: CREATE INDEX IF NOT EXISTS is MariaDB-only).
SET @ddl = IF((SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()
                 AND TABLE_NAME = 'users_change_events' AND INDEX_NAME = 'idx_captured_at') = 0,
  'ALTER TABLE users_change_events ADD KEY idx_captured_at (captured_at)', 'DO 0');
PREPARE add_captured_at FROM @ddl;
EXECUTE add_captured_at;
DEALLOCATE PREPARE add_captured_at;

-- IF NOT EXISTS (MariaDB 10.1+, MySQL 8.0.29+) rather than drop-and-create: dropping a
-- capture trigger on a live table loses the registrations that land in between.
CREATE TRIGGER IF NOT EXISTS customer_after_insert_cdc
  AFTER INSERT ON customer FOR EACH ROW
  INSERT INTO users_change_events
    (event_type, customer_id, store_id, first_name, last_name, email, address_id,
     create_date, captured_at)
  VALUES
    ('customer_registered', NEW.customer_id, NEW.store_id, NEW.first_name, NEW.last_name,
     NEW.email, NEW.address_id, NEW.create_date, UTC_TIMESTAMP(6));

-- The CDC watermark, one row per topic. last_event_id is the highest event id published;
-- pending_gaps lists lower ids not yet seen whose transactions may still commit (see
-- plugins/regstream/watermark.py). A copy: the publisher commits the watermark to Kafka in
-- the same transaction as the events, and writes this row after that commit.
CREATE TABLE IF NOT EXISTS latest_cdc_timestamp (
  pipeline VARCHAR(100) NOT NULL,
  last_event_id BIGINT UNSIGNED NOT NULL DEFAULT 0,
  last_captured_at TIMESTAMP(6) NULL DEFAULT NULL,
  pending_gaps TEXT NULL,
  events_published BIGINT UNSIGNED NOT NULL DEFAULT 0,
  updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  PRIMARY KEY (pipeline)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Ledger of ingest runs: one row per (DAG, data interval), inserted in the same transaction as
-- its customers, so a re-run or a cleared run inserts nothing twice.
CREATE TABLE IF NOT EXISTS ingest_batches (
  batch_key VARCHAR(190) NOT NULL,
  interval_start DATETIME(6) NOT NULL,
  interval_end DATETIME(6) NOT NULL,
  seed BIGINT UNSIGNED NOT NULL,
  customers INT UNSIGNED NOT NULL,
  first_customer_id INT UNSIGNED NULL,
  last_customer_id INT UNSIGNED NULL,
  loaded_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (batch_key)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
