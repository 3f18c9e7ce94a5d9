-- Least privilege per role, on the current database: the sink side (the tables of
-- 20_stream.sql and 30_reconcile.sql). The source's grants are in 50_source_grants.sql; on one
-- database both run, on a split deployment each on its own server (docs/sink.md). The roles
-- reader and reconcile exist on both sides, each with only that side's grants here.
CREATE ROLE IF NOT EXISTS reg_stream_role;
CREATE ROLE IF NOT EXISTS reg_reader_role;
CREATE ROLE IF NOT EXISTS reg_reconcile_role;

-- Stream sink (connection mysql_stream): the Spark job's tables.
GRANT SELECT, INSERT, UPDATE ON registrations_per_window TO reg_stream_role;
GRANT SELECT, INSERT, UPDATE ON stream_quarantine TO reg_stream_role;
GRANT SELECT, INSERT, UPDATE, DELETE ON stream_progress TO reg_stream_role;
GRANT SELECT, INSERT, UPDATE ON stream_late_events TO reg_stream_role;
GRANT SELECT, INSERT, UPDATE ON stream_sink_commits TO reg_stream_role;

-- Live view and lag monitor (connection mysql_reader): what the page shows and nothing more.
-- Of the quarantine only position, reason and time (not the raw message, which may hold a
-- customer's name and e-mail).
GRANT SELECT ON registrations_per_window TO reg_reader_role;
GRANT SELECT ON stream_progress TO reg_reader_role;
GRANT SELECT ON stream_late_events TO reg_reader_role;
GRANT SELECT ON stream_sink_commits TO reg_reader_role;
GRANT SELECT (topic, kafka_partition, kafka_offset, kafka_timestamp, reason, quarantined_at)
  ON stream_quarantine TO reg_reader_role;
GRANT SELECT ON stream_reconciliation_runs TO reg_reader_role;
GRANT SELECT ON stream_reconciliation_mismatches TO reg_reader_role;

-- Reconciliation (connection mysql_reconcile_sink): the stream's counts and too-late events,
-- its own result tables.
GRANT SELECT ON registrations_per_window TO reg_reconcile_role;
GRANT SELECT ON stream_late_events TO reg_reconcile_role;
GRANT SELECT ON stream_sink_commits TO reg_reconcile_role;
GRANT SELECT, INSERT ON stream_reconciliation_runs TO reg_reconcile_role;
GRANT SELECT, INSERT ON stream_reconciliation_mismatches TO reg_reconcile_role;
