#!/bin/bash
# docker-entrypoint-initdb.d only (docker-compose): after 50_source_grants.sql and
# 51_sink_grants.sql made the roles, create the login accounts with the passwords from the
# environment (.env, never committed) and give each its role. The local stack creates its
# (loopback-only) accounts itself (stackctl).
# Passwords go through MYSQL_PWD and stdin, never a command line.
set -euo pipefail
for role in INGEST PUBLISHER STREAM READER RECONCILE ANALYST; do
  var="REG_${role}_PASSWORD"
  user="reg_$(echo "$role" | tr '[:upper:]' '[:lower:]')"
  if [ -z "${!var:-}" ]; then echo "$var is not set" >&2; exit 1; fi
  MYSQL_PWD="${MYSQL_ROOT_PASSWORD}" mysql --protocol=socket -uroot <<SQL
CREATE USER IF NOT EXISTS '${user}'@'%' IDENTIFIED BY '${!var}';
GRANT ${user}_role TO '${user}'@'%';
SET DEFAULT ROLE ALL TO '${user}'@'%';
SQL
done
