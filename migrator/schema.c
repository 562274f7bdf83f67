/*
 * migrator/schema.c - the control schema `pgshift`, as numbered steps that
 * mig_schema_upgrade applies in order, each once, inside one transaction
 * under an advisory lock; and the route table reader.
 *
 * A step is never edited once released: a change is a new step.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "migrator/migrator_int.h"

/* pg_advisory_xact_lock key for schema changes: 0x7067736869667401, "pgshift" + 0x01. */
#define SCHEMA_LOCK_KEY "8099569347131241473"

typedef struct schema_step {
    int version;
    const char *sql;
} schema_step_t;

static const schema_step_t schema_steps[] = {
    { 1,
      /* Routes: tenant -> store. Tenants without a row live on the default store. */
      "CREATE TABLE pgshift.routes (\n"
      "    tenant text PRIMARY KEY,\n"
      "    store text NOT NULL,\n"
      "    state text NOT NULL DEFAULT 'normal' CHECK (state IN ('normal', 'migrating')),\n"
      "    migration_id bigint,\n"
      "    version bigint NOT NULL DEFAULT 1,\n"
      "    updated_at timestamptz NOT NULL DEFAULT now()\n"
      ");\n"
      /* The migration record of issue 4. */
      "CREATE TABLE pgshift.migrations (\n"
      "    id bigserial PRIMARY KEY,\n"
      "    tenant text NOT NULL,\n"
      "    source_store text NOT NULL,\n"
      "    target_store text NOT NULL,\n"
      "    phase text NOT NULL DEFAULT 'PENDING' CHECK (phase IN ('PENDING', 'BULK_COPY',\n"
      "        'DUAL_WRITE', 'CUTOVER', 'COMPLETED', 'ABORTED', 'FAILED')),\n"
      "    paused boolean NOT NULL DEFAULT false,\n"
      "    pause_reason text,\n"
      "    events_total bigint NOT NULL DEFAULT 0,\n"
      "    events_copied bigint NOT NULL DEFAULT 0,\n"
      "    rows_total bigint NOT NULL DEFAULT 0,\n"
      "    rows_copied bigint NOT NULL DEFAULT 0,\n"
      "    last_copied_position bigint,\n"
      "    source_high_water bigint,\n"
      "    copy_progress jsonb NOT NULL DEFAULT '{}',\n"
      "    position_mode text CHECK (position_mode IN ('preserve', 'map')),\n"
      "    config jsonb NOT NULL DEFAULT '{}',\n"
      "    error_count integer NOT NULL DEFAULT 0,\n"
      "    last_error text,\n"
      "    abort_reason text,\n"
      "    operator text,\n"
      "    created_at timestamptz NOT NULL DEFAULT now(),\n"
      "    updated_at timestamptz NOT NULL DEFAULT now(),\n"
      "    bulk_copy_started_at timestamptz,\n"
      "    bulk_copy_completed_at timestamptz,\n"
      "    dual_write_started_at timestamptz,\n"
      "    cutover_started_at timestamptz,\n"
      "    completed_at timestamptz,\n"
      "    aborted_at timestamptz,\n"
      "    failed_at timestamptz,\n"
      "    CHECK (source_store <> target_store)\n"
      ");\n"
      "CREATE UNIQUE INDEX migrations_one_active_per_tenant ON pgshift.migrations (tenant)\n"
      "    WHERE phase NOT IN ('COMPLETED', 'ABORTED', 'FAILED');\n"
      "ALTER TABLE pgshift.routes ADD CONSTRAINT routes_migration_fk\n"
      "    FOREIGN KEY (migration_id) REFERENCES pgshift.migrations (id) ON DELETE SET NULL;\n"
      "CREATE TABLE pgshift.position_map (\n"
      "    migration_id bigint NOT NULL REFERENCES pgshift.migrations (id) ON DELETE CASCADE,\n"
      "    source_position bigint NOT NULL,\n"
      "    target_position bigint NOT NULL,\n"
      "    PRIMARY KEY (migration_id, source_position)\n"
      ");\n"
      "CREATE INDEX position_map_target ON pgshift.position_map (migration_id, target_position);\n"
      "CREATE TABLE pgshift.audit_log (\n"
      "    id bigserial PRIMARY KEY,\n"
      "    migration_id bigint REFERENCES pgshift.migrations (id),\n"
      "    at timestamptz NOT NULL DEFAULT now(),\n"
      "    event_type text NOT NULL CHECK (event_type IN ('migration_started', 'phase_changed',\n"
      "        'migration_paused', 'migration_resumed', 'migration_aborted', 'migration_failed',\n"
      "        'migration_completed', 'cutover_initiated', 'cutover_completed',\n"
      "        'cutover_rolled_back', 'verification_started', 'verification_completed',\n"
      "        'verification_failed', 'error_occurred', 'progress_checkpoint')),\n"
      "    operator text,\n"
      "    details jsonb NOT NULL DEFAULT '{}'\n"
      ");\n"
      "CREATE INDEX audit_log_migration ON pgshift.audit_log (migration_id, id);\n"
      "CREATE FUNCTION pgshift.audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$\n"
      "BEGIN\n"
      "    RAISE EXCEPTION 'pgshift.audit_log is append-only' USING ERRCODE = '42501';\n"
      "END $$;\n"
      "CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON pgshift.audit_log\n"
      "    FOR EACH ROW EXECUTE FUNCTION pgshift.audit_log_append_only();\n"
      "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON pgshift.audit_log\n"
      "    FOR EACH STATEMENT EXECUTE FUNCTION pgshift.audit_log_append_only();\n"
      /* Every change of a route, or of a migration's phase, wakes every pgshift process. */
      "CREATE FUNCTION pgshift.notify_routes() RETURNS trigger LANGUAGE plpgsql AS $$\n"
      "BEGIN\n"
      "    IF TG_LEVEL = 'ROW' AND TG_OP = 'DELETE' THEN\n"
      "        PERFORM pg_notify('" MIG_ROUTES_CHANNEL "', OLD.tenant);\n"
      "    ELSIF TG_LEVEL = 'ROW' THEN\n"
      "        PERFORM pg_notify('" MIG_ROUTES_CHANNEL "', NEW.tenant);\n"
      "    ELSE\n"
      "        PERFORM pg_notify('" MIG_ROUTES_CHANNEL "', '');\n"
      "    END IF;\n"
      "    RETURN NULL;\n"
      "END $$;\n"
      "CREATE TRIGGER routes_notify AFTER INSERT OR UPDATE OR DELETE ON pgshift.routes\n"
      "    FOR EACH ROW EXECUTE FUNCTION pgshift.notify_routes();\n"
      "CREATE TRIGGER routes_notify_truncate AFTER TRUNCATE ON pgshift.routes\n"
      "    FOR EACH STATEMENT EXECUTE FUNCTION pgshift.notify_routes();\n"
      "CREATE TRIGGER migrations_notify AFTER INSERT OR DELETE OR UPDATE OF phase, target_store\n"
      "    ON pgshift.migrations FOR EACH ROW EXECUTE FUNCTION pgshift.notify_routes();\n" },
    { 2,
      /*
       * Bulk copy (issue 4): the barrier the copy started from (an xid8:
       * every source transaction below it had ended before the copy read
       * anything; issue 5's hand-over sweeps what committed after it), the
       * measured rate, what the runner is doing, who runs it, and whether
       * the target still holds rows of an ABORTED/FAILED migration.
       */
      "ALTER TABLE pgshift.migrations\n"
      "    ADD COLUMN copy_barrier_xid text,\n"
      "    ADD COLUMN copy_barrier_at timestamptz,\n"
      "    ADD COLUMN copy_rate double precision,\n"
      "    ADD COLUMN status_detail text,\n"
      "    ADD COLUMN runner text,\n"
      "    ADD COLUMN paused_at timestamptz,\n"
      "    ADD COLUMN cleanup_pending boolean NOT NULL DEFAULT false;\n"
      "CREATE INDEX migrations_runnable ON pgshift.migrations (id)\n"
      "    WHERE phase IN ('PENDING', 'BULK_COPY') OR cleanup_pending;\n" },
    { 3,
      /*
       * Dual-write and cutover (issue 5). The runner's dual-write state
       * (per-table watermarks, so a restart resumes where it was) and its
       * status (lag, breaker, readiness) as JSON; the cutover request/answer
       * hand-shake between the admin worker and the runner; every pgshift
       * process with a lease (heartbeat), and the acknowledgements of their
       * drained holds, which a cutover waits for; dual-write failures of the
       * target, kept until repaired.
       */
      "ALTER TABLE pgshift.migrations\n"
      "    ADD COLUMN dw_state jsonb NOT NULL DEFAULT '{}',\n"
      "    ADD COLUMN dw_status jsonb NOT NULL DEFAULT '{}',\n"
      "    ADD COLUMN cutover_attempt integer NOT NULL DEFAULT 0,\n"
      "    ADD COLUMN cutover_request bigint NOT NULL DEFAULT 0,\n"
      "    ADD COLUMN cutover_request_by text,\n"
      "    ADD COLUMN cutover_result jsonb;\n"
      "CREATE TABLE pgshift.processes (\n"
      "    id text PRIMARY KEY,\n"
      "    host text,\n"
      "    pid integer,\n"
      "    started_at timestamptz NOT NULL DEFAULT now(),\n"
      "    heartbeat_at timestamptz NOT NULL DEFAULT now()\n"
      ");\n"
      "CREATE TABLE pgshift.cutover_acks (\n"
      "    migration_id bigint NOT NULL REFERENCES pgshift.migrations (id) ON DELETE CASCADE,\n"
      "    attempt integer NOT NULL,\n"
      "    process_id text NOT NULL,\n"
      "    acked_at timestamptz NOT NULL DEFAULT now(),\n"
      "    PRIMARY KEY (migration_id, attempt, process_id)\n"
      ");\n"
      "CREATE TABLE pgshift.dual_write_failures (\n"
      "    id bigserial PRIMARY KEY,\n"
      "    migration_id bigint NOT NULL REFERENCES pgshift.migrations (id) ON DELETE CASCADE,\n"
      "    first_failed_at timestamptz NOT NULL DEFAULT now(),\n"
      "    last_failed_at timestamptz NOT NULL DEFAULT now(),\n"
      "    attempts integer NOT NULL DEFAULT 1,\n"
      "    pending_from text,\n"
      "    last_error text,\n"
      "    repaired_at timestamptz\n"
      ");\n"
      "CREATE INDEX dual_write_failures_open ON pgshift.dual_write_failures (migration_id)\n"
      "    WHERE repaired_at IS NULL;\n"
      "DROP INDEX pgshift.migrations_runnable;\n"
      "CREATE INDEX migrations_runnable ON pgshift.migrations (id)\n"
      "    WHERE phase IN ('PENDING', 'BULK_COPY', 'DUAL_WRITE', 'CUTOVER') OR cleanup_pending;\n"
      "DROP TRIGGER migrations_notify ON pgshift.migrations;\n"
      "CREATE TRIGGER migrations_notify AFTER INSERT OR DELETE OR UPDATE OF phase, target_store,\n"
      "    cutover_attempt ON pgshift.migrations FOR EACH ROW\n"
      "    EXECUTE FUNCTION pgshift.notify_routes();\n" },
    /* 4: the consistency check (issue #5: verify_consistency, VERIFY id) */
    { 4, "ALTER TABLE pgshift.migrations\n"
         "    ADD COLUMN verify_request bigint NOT NULL DEFAULT 0,\n"
         "    ADD COLUMN verify_request_by text,\n"
         "    ADD COLUMN verify_result jsonb;\n" },
};

/* Run sql; on failure fill *err and return -EPROTO, or -ECONNRESET/-ECANCELED when c broke. */
static int run(PGconn *c, int latch, const char *sql, int n_params, const char *const *params,
               PGresult **keep, char **err)
{
    PGresult *res = mig_pq_exec(c, latch, 30000, sql, n_params, params);

    if (res == NULL) {
        if (latch >= 0 && mig_latch_is_set(latch))
            return -ECANCELED;
        *err = mig_pq_errmsg(c, NULL);
        return -ECONNRESET;
    }
    if (!mig_pq_ok(res)) {
        char *m = mig_pq_errmsg(c, res);

        *err = cm_xasprintf("control schema: %s (SQLSTATE %s)", m, mig_pq_sqlstate(res));
        free(m);
        PQclear(res);
        return -EPROTO;
    }
    if (keep != NULL)
        *keep = res;
    else
        PQclear(res);
    return 0;
}

int mig_schema_upgrade(PGconn *c, int latch, int *version, char **err)
{
    PGresult *res = NULL;
    int rc, cur;

    rc = run(c, latch,
             "BEGIN;\n"
             "SET LOCAL client_min_messages = warning;\n"
             "SELECT pg_advisory_xact_lock(" SCHEMA_LOCK_KEY ");\n"
             "CREATE SCHEMA IF NOT EXISTS pgshift;\n"
             "CREATE TABLE IF NOT EXISTS pgshift.schema_version (version integer NOT NULL);\n"
             "INSERT INTO pgshift.schema_version SELECT 0\n"
             "    WHERE NOT EXISTS (SELECT 1 FROM pgshift.schema_version);\n"
             "SELECT max(version) FROM pgshift.schema_version",
             0, NULL, &res, err);
    if (rc != 0)
        goto fail;
    cur = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    for (size_t i = 0; i < CM_ARRAY_LEN(schema_steps); i++) {
        if (schema_steps[i].version <= cur)
            continue;
        rc = run(c, latch, schema_steps[i].sql, 0, NULL, NULL, err);
        if (rc != 0)
            goto fail;
        cur = schema_steps[i].version;
    }
    {
        char v[16];
        const char *params[] = { v };

        snprintf(v, sizeof(v), "%d", cur);
        rc = run(c, latch, "UPDATE pgshift.schema_version SET version = $1", 1, params, NULL, err);
        if (rc != 0)
            goto fail;
    }
    rc = run(c, latch, "COMMIT", 0, NULL, NULL, err);
    if (rc != 0)
        goto fail;
    *version = cur;
    return 0;

fail:
    if (rc == -EPROTO) {
        PGresult *r = mig_pq_exec(c, latch, 5000, "ROLLBACK", 0, NULL);

        PQclear(r);
    }
    return rc;
}

static char *dup_or_null(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : cm_xstrdup(PQgetvalue(res, row, col));
}

int mig_routes_load(PGconn *c, int latch, mig_route_t **routes, size_t *n, char **err)
{
    PGresult *res = NULL;
    mig_route_t *r;
    size_t rows;
    int rc;

    rc = run(c, latch,
             "SELECT r.tenant, r.store, r.state, m.phase, m.target_store,\n"
             "       coalesce(r.migration_id, 0), r.version,\n"
             "       CASE WHEN m.phase = 'CUTOVER' THEN m.cutover_attempt ELSE 0 END\n"
             "FROM pgshift.routes r LEFT JOIN pgshift.migrations m ON m.id = r.migration_id\n"
             "ORDER BY r.tenant",
             0, NULL, &res, err);
    if (rc != 0)
        return rc;
    rows = (size_t)PQntuples(res);
    r = cm_xcalloc(rows ? rows : 1, sizeof(*r));
    for (size_t i = 0; i < rows; i++) {
        int row = (int)i;

        r[i].tenant = dup_or_null(res, row, 0);
        r[i].store = dup_or_null(res, row, 1);
        r[i].state = dup_or_null(res, row, 2);
        r[i].phase = dup_or_null(res, row, 3);
        r[i].target_store = dup_or_null(res, row, 4);
        r[i].migration_id = strtoll(PQgetvalue(res, row, 5), NULL, 10);
        r[i].version = strtoll(PQgetvalue(res, row, 6), NULL, 10);
        r[i].cutover_attempt = strtoll(PQgetvalue(res, row, 7), NULL, 10);
    }
    PQclear(res);
    *routes = r;
    *n = rows;
    return 0;
}
