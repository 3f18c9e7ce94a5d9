"""The streaming job as a package: registrations per store per event-time window, from the
CDC topic into MySQL, exactly once. `spark_jobs/registration_counts.py` is its entry point.

- `contract`: the message contract, derived from the JSON Schemas (pure Python).
- `windows`: windows, event-time bounds and what a batch adds, from its summary (pure Python).
- `parse`: the Spark side of a batch: parse, classify, summarize (pyspark).
- `sink`: the MySQL sink, one transaction per micro-batch, rerun whole on a new connection
  when MySQL goes away (MySQLdb).
- `lifecycle`: stopping, the single-instance lock (taken again after a MariaDB restart),
  test fault injection.
- `report`: the task log's summary line per period (pure Python).
- `job`: arguments, the Spark session, the query: the wiring.

No Python runs on Spark's executors: the batch is DataFrame operations (JVM code) and the
sink runs in the driver's foreachBatch, so executors need none of this package (local,
cluster or compose alike); the driver imports it from the venv or image it runs in.
"""

# One logger for the job's lines, whatever module writes them: the task log shows them as
# `[registration_counts]`, the name the job has always logged under.
LOG_NAME = "registration_counts"
