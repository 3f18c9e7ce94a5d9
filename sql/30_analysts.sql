-- Analysts' SQL access (docs/analysts.md): read-only views of the stream's counts, one per
-- window length, and an account whose every statement is stopped after 30 s, so that a heavy
-- query cannot hold the locks or the I/O the stream's sink needs. Apart from the live view's
-- reader (reg_reader): an analyst's client never sees the pipeline's internal tables.
--
-- Each view sums the stream's windows into its bucket where that is exact: windows that tile
-- time (each starts at a multiple of its length, as Spark's tumbling windows do) and whose
-- length divides the bucket. Sliding windows, or windows longer than the bucket, are left out
-- (a sum would count an event once per window it falls in). stream_window_seconds says which
-- windows a row sums: filter on it if the stream ran with more than one window length.
CREATE OR REPLACE SQL SECURITY DEFINER VIEW analyst_registrations_1_minute AS
SELECT FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(window_start) / 60) * 60) AS window_start,
       FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(window_start) / 60) * 60 + 60) AS window_end,
       store_id, SUM(registrations) AS registrations,
       TIMESTAMPDIFF(SECOND, window_start, window_end) AS stream_window_seconds,
       MAX(last_updated) AS last_updated
FROM registrations_per_window
WHERE MOD(60, TIMESTAMPDIFF(SECOND, window_start, window_end)) = 0
  AND MOD(UNIX_TIMESTAMP(window_start), TIMESTAMPDIFF(SECOND, window_start, window_end)) = 0
GROUP BY 1, 2, store_id, stream_window_seconds;

CREATE OR REPLACE SQL SECURITY DEFINER VIEW analyst_registrations_5_minutes AS
SELECT FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(window_start) / 300) * 300) AS window_start,
       FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(window_start) / 300) * 300 + 300) AS window_end,
       store_id, SUM(registrations) AS registrations,
       TIMESTAMPDIFF(SECOND, window_start, window_end) AS stream_window_seconds,
       MAX(last_updated) AS last_updated
FROM registrations_per_window
WHERE MOD(300, TIMESTAMPDIFF(SECOND, window_start, window_end)) = 0
  AND MOD(UNIX_TIMESTAMP(window_start), TIMESTAMPDIFF(SECOND, window_start, window_end)) = 0
GROUP BY 1, 2, store_id, stream_window_seconds;

CREATE OR REPLACE SQL SECURITY DEFINER VIEW analyst_registrations_15_minutes AS
SELECT FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(window_start) / 900) * 900) AS window_start,
       FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(window_start) / 900) * 900 + 900) AS window_end,
       store_id, SUM(registrations) AS registrations,
       TIMESTAMPDIFF(SECOND, window_start, window_end) AS stream_window_seconds,
       MAX(last_updated) AS last_updated
FROM registrations_per_window
WHERE MOD(900, TIMESTAMPDIFF(SECOND, window_start, window_end)) = 0
  AND MOD(UNIX_TIMESTAMP(window_start), TIMESTAMPDIFF(SECOND, window_start, window_end)) = 0
GROUP BY 1, 2, store_id, stream_window_seconds;

CREATE OR REPLACE SQL SECURITY DEFINER VIEW analyst_registrations_1_hour AS
SELECT FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(window_start) / 3600) * 3600) AS window_start,
       FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(window_start) / 3600) * 3600 + 3600) AS window_end,
       store_id, SUM(registrations) AS registrations,
       TIMESTAMPDIFF(SECOND, window_start, window_end) AS stream_window_seconds,
       MAX(last_updated) AS last_updated
FROM registrations_per_window
WHERE MOD(3600, TIMESTAMPDIFF(SECOND, window_start, window_end)) = 0
  AND MOD(UNIX_TIMESTAMP(window_start), TIMESTAMPDIFF(SECOND, window_start, window_end)) = 0
GROUP BY 1, 2, store_id, stream_window_seconds;

CREATE OR REPLACE SQL SECURITY DEFINER VIEW analyst_registrations_1_day AS
SELECT FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(window_start) / 86400) * 86400) AS window_start,
       FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(window_start) / 86400) * 86400 + 86400) AS window_end,
       store_id, SUM(registrations) AS registrations,
       TIMESTAMPDIFF(SECOND, window_start, window_end) AS stream_window_seconds,
       MAX(last_updated) AS last_updated
FROM registrations_per_window
WHERE MOD(86400, TIMESTAMPDIFF(SECOND, window_start, window_end)) = 0
  AND MOD(UNIX_TIMESTAMP(window_start), TIMESTAMPDIFF(SECOND, window_start, window_end)) = 0
GROUP BY 1, 2, store_id, stream_window_seconds;

CREATE ROLE IF NOT EXISTS reg_analyst_role;
GRANT SELECT ON analyst_registrations_1_minute TO reg_analyst_role;
GRANT SELECT ON analyst_registrations_5_minutes TO reg_analyst_role;
GRANT SELECT ON analyst_registrations_15_minutes TO reg_analyst_role;
GRANT SELECT ON analyst_registrations_1_hour TO reg_analyst_role;
GRANT SELECT ON analyst_registrations_1_day TO reg_analyst_role;

-- MariaDB keeps a statement time limit per account, not per role, and stackctl creates the
-- local stack's accounts (127.0.0.1) after the sql/ files have run. So the account is made
-- here first, with a throwaway random password that stackctl then replaces with the
-- generated one (its ALTER USER ... IDENTIFIED BY keeps the limit). MySQL 8 (docker-compose)
-- has no per-account statement limit (docs/analysts.md): there both statements are `DO 0`.
SET @reg_on_mariadb = VERSION() LIKE '%MariaDB%';
SET @reg_analyst_sql = IF(@reg_on_mariadb, CONCAT(
  "CREATE USER IF NOT EXISTS 'reg_analyst'@'127.0.0.1' IDENTIFIED BY '",
  MD5(RAND()), MD5(RAND()), "'"), 'DO 0');
PREPARE reg_analyst_stmt FROM @reg_analyst_sql;
EXECUTE reg_analyst_stmt;
SET @reg_analyst_sql = IF(@reg_on_mariadb,
  "ALTER USER 'reg_analyst'@'127.0.0.1' WITH MAX_STATEMENT_TIME 30", 'DO 0');
PREPARE reg_analyst_stmt FROM @reg_analyst_sql;
EXECUTE reg_analyst_stmt;
DEALLOCATE PREPARE reg_analyst_stmt;
SET @reg_analyst_sql = NULL;
