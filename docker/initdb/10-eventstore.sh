#!/bin/sh
# Runs once in each PostgreSQL container on first start
# (/docker-entrypoint-initdb.d): the application role, the event-store
# database and its schema (tests/integration/schema.sql, mounted at
# /schema/schema.sql).
set -eu

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
CREATE ROLE app LOGIN PASSWORD 'app-secret';
CREATE DATABASE eventstore OWNER app;
SQL

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname eventstore \
    -c 'SET ROLE app' -f "${SCHEMA_SQL:-/schema/schema.sql}"
