-- Least privilege per role, on the current database: the source side (the tables of
-- 01_sakila_core.sql to 11_customer_create_date.sql). The sink's grants are in
-- 51_sink_grants.sql; on one database both run, on a split deployment each on its own server
-- (docs/sink.md). Privileges go to MariaDB roles; the accounts that log in
-- (reg_ingest@127.0.0.1 on the local stack, reg_ingest@'%' in docker-compose) are created
-- with generated passwords by stackctl or 90_create_users.sh, and get their role as default
-- role. (90_create_users.sh is the MySQL 8 form.)
CREATE ROLE IF NOT EXISTS reg_ingest_role;
CREATE ROLE IF NOT EXISTS reg_publisher_role;
CREATE ROLE IF NOT EXISTS reg_reader_role;
CREATE ROLE IF NOT EXISTS reg_reconcile_role;

-- Ingest writer: reads reference data, writes customers and their addresses.
GRANT SELECT ON country TO reg_ingest_role;
GRANT SELECT ON city TO reg_ingest_role;
GRANT SELECT ON store TO reg_ingest_role;
GRANT SELECT, INSERT ON address TO reg_ingest_role;
GRANT SELECT, INSERT ON customer TO reg_ingest_role;
GRANT SELECT, INSERT, UPDATE ON ingest_batches TO reg_ingest_role;

-- CDC publisher: reads events, owns its watermark. PROCESS lets it see which transactions
-- are still open (information_schema.INNODB_TRX), to know when an id gap is final.
GRANT SELECT ON users_change_events TO reg_publisher_role;
GRANT SELECT, INSERT, UPDATE ON latest_cdc_timestamp TO reg_publisher_role;
GRANT PROCESS ON *.* TO reg_publisher_role;

-- Live view and lag monitor (connection mysql_reader_source): no customer rows, of the change
-- events only id and capture time (the backlog), the publisher's watermark.
GRANT SELECT ON latest_cdc_timestamp TO reg_reader_role;
GRANT SELECT (event_id, captured_at) ON users_change_events TO reg_reader_role;

-- Reconciliation (connection mysql_reconcile): of customers only the store and the
-- registration time (no names, e-mails or addresses), of the change events only when each was
-- captured (to leave windows that just got a row to settle).
GRANT SELECT (customer_id, store_id, create_date) ON customer TO reg_reconcile_role;
GRANT SELECT (event_id, customer_id, captured_at) ON users_change_events TO reg_reconcile_role;
