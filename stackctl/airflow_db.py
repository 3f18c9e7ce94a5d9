"""Settings for Airflow's SQLite metadata database (standalone, local stack only).

SQLite allows one writer at a time; the scheduler, dag processor, API server and CLI
commands such as `airflow backfill create` write concurrently. sqlite3's default busy
timeout (5 s) turns a short wait into "database is locked"; wait up to 60 s instead.
Referenced by AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS in stackctl/services.py.
"""

SQLITE_CONNECT_ARGS: dict = {"timeout": 60}
