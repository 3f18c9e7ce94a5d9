#!/bin/bash
# docker-entrypoint-initdb.d only (docker-compose): create the role users with the passwords
# from the environment (.env, never committed) before 50_grants.sql grants them. The local
# stack creates them itself (stackctl/services.py).
set -euo pipefail
for role in INGEST PUBLISHER STREAM READER; do
  var="REG_${role}_PASSWORD"
  user="reg_$(echo "$role" | tr '[:upper:]' '[:lower:]')"
  if [ -z "${!var:-}" ]; then echo "$var is not set" >&2; exit 1; fi
  mysql --protocol=socket -uroot -p"${MYSQL_ROOT_PASSWORD}" -e \
    "CREATE USER IF NOT EXISTS '${user}'@'%' IDENTIFIED BY '${!var}';"
done
