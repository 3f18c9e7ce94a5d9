-- Least privilege per role, on the current database. The users themselves are created with
-- generated passwords by stackctl (local) or 00_create_users.sh (docker-compose).

-- Ingest writer: reads reference data, writes customers and their addresses.
GRANT SELECT ON country TO 'reg_ingest'@'%';
GRANT SELECT ON city TO 'reg_ingest'@'%';
GRANT SELECT ON store TO 'reg_ingest'@'%';
GRANT SELECT, INSERT ON address TO 'reg_ingest'@'%';
GRANT SELECT, INSERT ON customer TO 'reg_ingest'@'%';
GRANT SELECT, INSERT, UPDATE ON ingest_batches TO 'reg_ingest'@'%';

-- CDC publisher: reads events, owns its watermark. PROCESS lets it see which transactions
-- are still open (information_schema.INNODB_TRX), to know when an id gap is final.
GRANT SELECT ON users_change_events TO 'reg_publisher'@'%';
GRANT SELECT, INSERT, UPDATE ON latest_cdc_timestamp TO 'reg_publisher'@'%';
GRANT PROCESS ON *.* TO 'reg_publisher'@'%';

-- Stream sink: the Spark job's three tables.
GRANT SELECT, INSERT, UPDATE ON registrations_per_window TO 'reg_stream'@'%';
GRANT SELECT, INSERT, UPDATE ON stream_quarantine TO 'reg_stream'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON stream_progress TO 'reg_stream'@'%';

-- Read-only role for the live view and analysts.
GRANT SELECT ON registrations_per_window TO 'reg_reader'@'%';
GRANT SELECT ON stream_progress TO 'reg_reader'@'%';
GRANT SELECT ON stream_quarantine TO 'reg_reader'@'%';
GRANT SELECT ON latest_cdc_timestamp TO 'reg_reader'@'%';
GRANT SELECT ON users_change_events TO 'reg_reader'@'%';
GRANT SELECT ON customer TO 'reg_reader'@'%';
GRANT SELECT ON store TO 'reg_reader'@'%';
