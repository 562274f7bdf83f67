/*
 * migrator/migrate.c - the migration admin commands, on the admin worker
 * thread (and the status query, also on the watch worker): MIGRATE TENANT
 * with its preconditions, SHOW MIGRATIONS / MIGRATION / AUDIT, PAUSE, RESUME
 * and ABORT MIGRATION.
 *
 * These commands only change the migration record, its route and the audit
 * log, each in one control-store transaction (so a refusal or a failure
 * changes nothing). The copy itself is done by the migration's runner
 * (copy.c), which reads the record: it sees PAUSE, RESUME and ABORT between
 * two batches, wherever in the cluster of pgshift processes it runs.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "migrator/migrator_int.h"

#define LOG_CTX          "migrate"
#define QUERY_TIMEOUT_MS 30000
#define ABORT_WAIT_MS    60000 /* ABORT answers once the target is clean, or after this */

/* ---- control transactions ------------------------------------------------------ */

/* Run sql on the control connection inside the caller's transaction; NULL + *fail on error. */
static PGresult *tx_exec(const mig_env_t *env, PGconn **control, const char *sql, int n,
                         const char *const *params, mig_result_t **fail)
{
    return mig_control_exec(env, control, sql, n, params, fail);
}

static void tx_rollback(const mig_env_t *env, PGconn **control)
{
    PGresult *res;

    if (*control == NULL)
        return;
    res = mig_pq_exec(*control, env->latch, 5000, "ROLLBACK", 0, NULL);
    if (res == NULL) {
        PQfinish(*control);
        *control = NULL;
    }
    PQclear(res);
}

/* ---- MIGRATE ------------------------------------------------------------------------ */

/* One tenant table as a store has it. */
typedef struct table_shape {
    bool exists;
    bool has_tenant;
    bool has_seq_pos; /* the position column is filled from a sequence */
    size_t n;
    char **names;
    char **types;
} table_shape_t;

static void shape_free(table_shape_t *t)
{
    for (size_t i = 0; i < t->n; i++) {
        free(t->names[i]);
        free(t->types[i]);
    }
    free(t->names);
    free(t->types);
    memset(t, 0, sizeof(*t));
}

/* Read the columns of table on c. Returns NULL or an error result. */
static mig_result_t *read_shape(const mig_env_t *env, PGconn *c, const char *store,
                                const char *table, table_shape_t *out)
{
    char *qt = mig_quote_table(c, table);
    const char *params[] = { qt };
    PGresult *res =
        mig_pq_exec(c, env->latch, QUERY_TIMEOUT_MS,
                    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), "
                    "       to_regclass($1) IS NOT NULL, " MIG_SQL_SEQUENCE_FILLED " "
                    "FROM (SELECT 1) one LEFT JOIN pg_attribute a "
                    "  ON a.attrelid = to_regclass($1) AND a.attnum > 0 "
                    "  AND NOT a.attisdropped AND a.attgenerated = '' " MIG_SQL_ATTRDEF_JOIN
                    "ORDER BY a.attname",
                    1, params);
    mig_result_t *r = NULL;

    free(qt);
    memset(out, 0, sizeof(*out));
    if (res == NULL || !mig_pq_ok(res)) {
        char *m = mig_pq_errmsg(c, res);

        r = mig_result_error("08006", "cannot read table \"%s\" on store \"%s\": %s", table, store,
                             m);
        free(m);
        PQclear(res);
        return r;
    }
    out->exists = PQntuples(res) > 0 && strcmp(PQgetvalue(res, 0, 2), "t") == 0;
    for (int i = 0; out->exists && i < PQntuples(res); i++) {
        if (PQgetisnull(res, i, 0))
            continue;
        out->names = cm_xrealloc(out->names, (out->n + 1) * sizeof(char *));
        out->types = cm_xrealloc(out->types, (out->n + 1) * sizeof(char *));
        out->names[out->n] = cm_xstrdup(PQgetvalue(res, i, 0));
        out->types[out->n] = cm_xstrdup(PQgetvalue(res, i, 1));
        if (strcmp(out->names[out->n], env->tenant_column) == 0)
            out->has_tenant = true;
        if (strcmp(out->names[out->n], env->position_column) == 0)
            out->has_seq_pos = strcmp(PQgetvalue(res, i, 3), "t") == 0;
        out->n++;
    }
    PQclear(res);
    return NULL;
}

static bool shape_has(const table_shape_t *t, const char *col)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->names[i], col) == 0)
            return true;
    return false;
}

/* Both shapes are sorted by column name: report the first difference. NULL when equal. */
static mig_result_t *compare_shapes(const mig_env_t *env, const char *table, const char *src_store,
                                    const char *dst_store, const table_shape_t *s,
                                    const table_shape_t *d)
{
    (void)env;
    if (s->exists != d->exists)
        return mig_result_error(
            "55000", "table \"%s\" exists on store \"%s\" but not on store \"%s\"", table,
            s->exists ? src_store : dst_store, s->exists ? dst_store : src_store);
    if (s->has_tenant != d->has_tenant)
        return mig_result_error(
            "55000", "table \"%s\" has the tenant column on store \"%s\" but not on store \"%s\"",
            table, s->has_tenant ? src_store : dst_store, s->has_tenant ? dst_store : src_store);
    for (size_t i = 0, j = 0; i < s->n || j < d->n;) {
        int c = i == s->n ? 1 : j == d->n ? -1 : strcmp(s->names[i], d->names[j]);

        if (c < 0)
            return mig_result_error("55000",
                                    "column \"%s\" of table \"%s\" is on store \"%s\" but "
                                    "missing on store \"%s\"",
                                    s->names[i], table, src_store, dst_store);
        if (c > 0)
            return mig_result_error("55000",
                                    "column \"%s\" of table \"%s\" is on store \"%s\" but "
                                    "missing on store \"%s\"",
                                    d->names[j], table, dst_store, src_store);
        if (strcmp(s->types[i], d->types[j]) != 0)
            return mig_result_error("55000",
                                    "column \"%s\" of table \"%s\" is %s on store \"%s\" but %s "
                                    "on store \"%s\"",
                                    s->names[i], table, s->types[i], src_store, d->types[j],
                                    dst_store);
        i++;
        j++;
    }
    return NULL;
}

/* Run a one-row query on a store connection; NULL + *fail on error. */
static PGresult *store_query(const mig_env_t *env, PGconn *c, const char *store, const char *sql,
                             int n, const char *const *params, mig_result_t **fail)
{
    PGresult *res = mig_pq_exec(c, env->latch, QUERY_TIMEOUT_MS, sql, n, params);

    *fail = NULL;
    if (res != NULL && mig_pq_ok(res))
        return res;
    {
        char *m = mig_pq_errmsg(c, res);
        const char *st = res ? mig_pq_sqlstate(res) : "08006";

        *fail = mig_result_error(strlen(st) == 5 ? st : "XX000", "store \"%s\": %s", store, m);
        free(m);
    }
    PQclear(res);
    return NULL;
}

/*
 * The preconditions against the stores: tables equal on both sides, the
 * tenant a valid value with no rows on the target, and positions either
 * preservable or mappable. Sets *position_mode and *n_rows (the tenant's rows
 * on the source now). Returns NULL or the refusal.
 */
static mig_result_t *check_stores(const mig_env_t *env, const char *tenant, int src, int dst,
                                  const mig_settings_t *set, const char **position_mode,
                                  long long *n_rows)
{
    const char *sname = env->store_names[src], *dname = env->store_names[dst];
    PGconn *sc = NULL, *dc = NULL;
    mig_result_t *r;
    bool need_map = false, any_table = false;

    *n_rows = 0;
    r = mig_connect_store(env, src, &sc);
    if (r != NULL) {
        mig_result_t *e = mig_result_error("08006", "source store \"%s\" is unreachable: %s", sname,
                                           r->err_message);

        mig_result_free(r);
        return e;
    }
    r = mig_connect_store(env, dst, &dc);
    if (r != NULL) {
        mig_result_t *e = mig_result_error("08006", "target store \"%s\" is unreachable: %s", dname,
                                           r->err_message);

        mig_result_free(r);
        PQfinish(sc);
        return e;
    }
    for (size_t t = 0; r == NULL && t < env->n_tables; t++) {
        const char *table = env->tables[t];
        table_shape_t s, d;
        char *tab, *col, *sql;
        PGresult *res;
        const char *params[] = { tenant };

        r = read_shape(env, sc, sname, table, &s);
        if (r != NULL)
            break;
        r = read_shape(env, dc, dname, table, &d);
        if (r != NULL) {
            shape_free(&s);
            break;
        }
        r = compare_shapes(env, table, sname, dname, &s, &d);
        if (r != NULL || !s.exists || !s.has_tenant) {
            shape_free(&s);
            shape_free(&d);
            continue; /* not a tenant table on these stores (e.g. projection_checkpoints) */
        }
        any_table = true;
        tab = mig_quote_table(sc, table);
        col = mig_quote_ident(sc, env->tenant_column);
        /* The tenant must be a valid value of the column: count its rows on the source. */
        sql = cm_xasprintf("SELECT count(*) FROM %s WHERE %s = $1", tab, col);
        res = mig_pq_exec(sc, env->latch, QUERY_TIMEOUT_MS, sql, 1, params);
        free(sql);
        if (res != NULL && !mig_pq_ok(res) && strncmp(mig_pq_sqlstate(res), "22", 2) == 0) {
            char *m = mig_pq_errmsg(sc, res);

            r = mig_result_error("22023", "tenant \"%s\" is not a valid value of %s.%s: %s", tenant,
                                 table, env->tenant_column, m);
            free(m);
        } else if (res == NULL || !mig_pq_ok(res)) {
            char *m = mig_pq_errmsg(sc, res);

            r = mig_result_error("08006", "cannot count rows of table \"%s\" on store \"%s\": %s",
                                 table, sname, m);
            free(m);
        } else {
            *n_rows += strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        }
        PQclear(res);
        if (r == NULL) {
            sql = cm_xasprintf("SELECT EXISTS (SELECT 1 FROM %s WHERE %s = $1)", tab, col);
            res = store_query(env, dc, dname, sql, 1, params, &r);
            free(sql);
            if (res != NULL && strcmp(PQgetvalue(res, 0, 0), "t") == 0)
                r = mig_result_error("55000",
                                     "target store \"%s\" already holds rows of tenant \"%s\" in "
                                     "table \"%s\"",
                                     dname, tenant, table);
            PQclear(res);
        }
        /*
         * Positions: kept when the target table is empty, else mapped (or
         * refused). Tables that only refer to positions (checkpoints) follow.
         */
        if (r == NULL && s.has_seq_pos) {
            sql = cm_xasprintf("SELECT EXISTS (SELECT 1 FROM %s)", tab);
            res = store_query(env, dc, dname, sql, 0, NULL, &r);
            free(sql);
            if (res != NULL && strcmp(PQgetvalue(res, 0, 0), "t") == 0) {
                need_map = true;
                if (!set->position_mapping_enabled)
                    r = mig_result_error(
                        "55000",
                        "positions of table \"%s\" could collide on target store \"%s\" (it "
                        "holds other rows) and position_mapping_enabled is false",
                        table, dname);
                else if (!shape_has(&s, env->row_key))
                    r = mig_result_error("55000",
                                         "positions of table \"%s\" must be mapped on target store "
                                         "\"%s\", but the table has no row key column \"%s\"",
                                         table, dname, env->row_key);
            }
            PQclear(res);
        }
        free(tab);
        free(col);
        shape_free(&s);
        shape_free(&d);
    }
    if (r == NULL && !any_table)
        r = mig_result_error("55000", "no tenant table with column \"%s\" exists on store \"%s\"",
                             env->tenant_column, sname);
    *position_mode = need_map ? "map" : "preserve";
    PQfinish(sc);
    PQfinish(dc);
    return r;
}

static mig_result_t *migrate(const mig_env_t *env, PGconn **control, const mig_request_t *req)
{
    static const char *const cols[] = { "migration_id", "tenant", "source_store",
                                        "target_store", "phase",  "position_mode" };
    mig_settings_t set = env->defaults;
    char *err = NULL, *config, *source = NULL, *id = NULL;
    const char *position_mode = "preserve";
    mig_result_t *r = NULL, *fail = NULL;
    PGresult *res;
    int dst = mig_env_store_index(env, req->store), src;
    long long n_rows = 0;

    if (mig_settings_apply_list(&set, req->options, &err) != 0) {
        r = mig_result_error("22023", "%s", err);
        free(err);
        return r;
    }
    if (dst < 0)
        return mig_result_error("42704", "store \"%s\" does not exist", req->store);
    {
        const char *params[] = { req->tenant, req->store };

        res = mig_control_exec(env, control,
                               "SELECT r.store, r.state, "
                               "  (SELECT min(id) FROM pgshift.migrations m WHERE m.tenant = $1 "
                               "   AND m.phase NOT IN " TERMINAL_SQL "), "
                               "  (SELECT min(id) FROM pgshift.migrations m WHERE m.tenant = $1 "
                               "   AND m.cleanup_pending AND m.target_store = $2) "
                               "FROM (SELECT 1) one LEFT JOIN pgshift.routes r ON r.tenant = $1",
                               2, params, &fail);
    }
    if (res == NULL)
        return fail;
    if (!PQgetisnull(res, 0, 2) ||
        (!PQgetisnull(res, 0, 1) && strcmp(PQgetvalue(res, 0, 1), "normal") != 0)) {
        r = mig_result_error("55000", "tenant \"%s\" is already being migrated%s%s%s", req->tenant,
                             PQgetisnull(res, 0, 2) ? "" : " (migration ",
                             PQgetisnull(res, 0, 2) ? "" : PQgetvalue(res, 0, 2),
                             PQgetisnull(res, 0, 2) ? "" : ")");
        PQclear(res);
        return r;
    }
    if (!PQgetisnull(res, 0, 3)) {
        /* Its runner's late DELETE on the target would remove what a new copy wrote. */
        r = mig_result_error(
            "55000",
            "migration %s of tenant \"%s\" is still removing its rows from the "
            "target; MIGRATE again once SHOW MIGRATION %s shows cleanup_pending false",
            PQgetvalue(res, 0, 3), req->tenant, PQgetvalue(res, 0, 3));
        PQclear(res);
        return r;
    }
    source = cm_xstrdup(PQgetisnull(res, 0, 0) ? env->default_store : PQgetvalue(res, 0, 0));
    PQclear(res);
    src = mig_env_store_index(env, source);
    if (src < 0) {
        r = mig_result_error("55000", "tenant \"%s\" is on store \"%s\", which is not configured",
                             req->tenant, source);
        goto out;
    }
    if (src == dst) {
        r = mig_result_error("22023", "tenant \"%s\" is already on store \"%s\"", req->tenant,
                             source);
        goto out;
    }
    r = check_stores(env, req->tenant, src, dst, &set, &position_mode, &n_rows);
    if (r != NULL)
        goto out;

    /* Record it: the migration, its route and the audit entry, all or nothing. */
    config = mig_settings_json(&set);
    res = mig_control_exec(env, control, "BEGIN", 0, NULL, &fail);
    PQclear(res);
    if (res == NULL) {
        free(config);
        r = fail;
        goto out;
    }
    {
        char rows[32];
        const char *params[] = { req->tenant,   source,    req->store, config,
                                 position_mode, req->user, rows };

        snprintf(rows, sizeof(rows), "%lld", n_rows);
        res = tx_exec(env, control,
                      "INSERT INTO pgshift.migrations (tenant, source_store, target_store, config, "
                      "    position_mode, operator, events_total, rows_total, status_detail) "
                      "VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $7, 'waiting for its runner') "
                      "RETURNING id::text",
                      7, params, &fail);
        if (res != NULL) {
            id = cm_xstrdup(PQgetvalue(res, 0, 0));
            PQclear(res);
        }
    }
    if (id != NULL) {
        const char *params[] = { req->tenant, source, id };

        res = tx_exec(env, control,
                      "INSERT INTO pgshift.routes AS r (tenant, store, state, migration_id) "
                      "VALUES ($1, $2, 'migrating', $3::bigint) "
                      "ON CONFLICT (tenant) DO UPDATE SET state = 'migrating', "
                      "    migration_id = EXCLUDED.migration_id, version = r.version + 1, "
                      "    updated_at = now() "
                      "    WHERE r.state = 'normal' AND r.store = EXCLUDED.store "
                      "RETURNING version",
                      3, params, &fail);
        if (res != NULL && PQntuples(res) != 1) {
            fail = mig_result_error("55000", "the route of tenant \"%s\" changed meanwhile",
                                    req->tenant);
            PQclear(res);
            res = NULL;
        }
        PQclear(res);
    }
    if (id != NULL && fail == NULL) {
        const char *params[] = { id, req->user, source, req->store, config, position_mode };

        res = tx_exec(env, control,
                      "INSERT INTO pgshift.audit_log (migration_id, event_type, operator, details) "
                      "VALUES ($1::bigint, 'migration_started', $2, jsonb_build_object("
                      "    'source_store', $3::text, 'target_store', $4::text, "
                      "    'config', $5::jsonb, 'position_mode', $6::text, 'phase', 'PENDING'))",
                      6, params, &fail);
        PQclear(res);
    }
    if (id != NULL && fail == NULL) {
        res = tx_exec(env, control, "COMMIT", 0, NULL, &fail);
        PQclear(res);
    }
    free(config);
    if (id == NULL || fail != NULL) {
        tx_rollback(env, control);
        if (fail != NULL && strcmp(fail->err_sqlstate, "23505") == 0) {
            mig_result_free(fail);
            fail =
                mig_result_error("55000", "tenant \"%s\" is already being migrated", req->tenant);
        }
        r = fail;
        goto out;
    }
    LOG_INFO(LOG_CTX, "migration %s: tenant %s from %s to %s (positions: %s)", id, req->tenant,
             source, req->store, position_mode);
    r = mig_result_new("MIGRATE", CM_ARRAY_LEN(cols), cols);
    {
        const char *cells[] = { id, req->tenant, source, req->store, "PENDING", position_mode };

        mig_result_add_row(r, cells);
    }
out:
    free(id);
    free(source);
    return r;
}

/* ---- SHOW MIGRATION(S) ------------------------------------------------------------ */

/*
 * The status columns, computed in SQL from the record. "events" are rows of
 * the tenant tables (all of them), the unit of the rate limit too.
 */
#define STATUS_SQL                                                                                 \
    "SELECT id::text AS id, tenant, source_store, target_store, phase, "                           \
    "  CASE WHEN phase IN " TERMINAL_SQL " THEN lower(phase) || "                                  \
    "         CASE WHEN cleanup_pending THEN ', removing the copied rows from the target' "        \
    "              WHEN phase IN ('ABORTED', 'FAILED') THEN ', target cleaned' ELSE '' END "       \
    "       WHEN paused AND status_detail = 'paused' THEN 'paused' "                               \
    "       WHEN paused THEN 'pausing' "                                                           \
    "       WHEN phase = 'BULK_COPY' AND bulk_copy_completed_at IS NOT NULL "                      \
    "            THEN 'copy complete, starting dual-write' "                                       \
    "       ELSE coalesce(status_detail, lower(phase)) END AS status, "                            \
    "  (bulk_copy_completed_at IS NOT NULL)::text AS copy_complete, "                              \
    "  paused::text AS paused, pause_reason, "                                                     \
    "  CASE WHEN bulk_copy_completed_at IS NOT NULL THEN '100.0' "                                 \
    "       WHEN events_total > 0 THEN round(least(100, 100.0 * events_copied / events_total), "   \
    "1)::text ELSE '0.0' END AS progress_percent, "                                                \
    "  events_total::text AS events_total, events_copied::text AS events_copied, "                 \
    "  greatest(events_total - events_copied, 0)::text AS events_remaining, "                      \
    "  CASE WHEN phase = 'BULK_COPY' AND bulk_copy_completed_at IS NULL AND NOT paused "           \
    "       THEN round(coalesce(copy_rate, 0))::bigint::text ELSE '0' END AS rate_events_per_s, "  \
    "  CASE WHEN phase = 'BULK_COPY' AND bulk_copy_completed_at IS NULL AND NOT paused "           \
    "       AND copy_rate > 0 THEN ceil(greatest(events_total - events_copied, 0) / copy_rate)"    \
    "::bigint::text END AS eta_seconds, "                                                          \
    "  CASE WHEN phase = 'BULK_COPY' AND bulk_copy_completed_at IS NULL AND NOT paused "           \
    "       AND copy_rate > 0 THEN (now() + make_interval(secs => "                                \
    "       ceil(greatest(events_total - events_copied, 0) / copy_rate)))::text "                  \
    "       END AS estimated_completion, "                                                         \
    "  error_count::text AS error_count, last_error, position_mode, "                              \
    "  source_high_water::text AS source_high_water, "                                             \
    "  config->>'batch_size' AS batch_size, config->>'max_bulk_copy_rate' AS max_bulk_copy_rate, " \
    "  operator, abort_reason, cleanup_pending::text AS cleanup_pending, "                         \
    "  created_at::text AS created_at, bulk_copy_started_at::text AS bulk_copy_started_at, "       \
    "  bulk_copy_completed_at::text AS bulk_copy_completed_at, updated_at::text AS updated_at, "   \
    "  dual_write_started_at::text AS dual_write_started_at, "                                     \
    "  CASE WHEN phase IN ('DUAL_WRITE', 'CUTOVER') THEN dw_status->>'lag_events' END "            \
    "    AS lag_events, "                                                                          \
    "  CASE WHEN phase IN ('DUAL_WRITE', 'CUTOVER') THEN dw_status->>'lag_age_ms' END "            \
    "    AS lag_age_ms, "                                                                          \
    "  CASE WHEN phase IN ('DUAL_WRITE', 'CUTOVER') THEN dw_status->>'converging' END "            \
    "    AS lag_converging, "                                                                      \
    "  CASE WHEN phase IN ('DUAL_WRITE', 'CUTOVER') THEN dw_status->>'breaker' END "               \
    "    AS breaker_state, "                                                                       \
    "  (SELECT count(*) FROM pgshift.dual_write_failures f WHERE f.migration_id = "                \
    "    migrations.id AND f.repaired_at IS NULL)::text AS unrepaired_failures, "                  \
    "  (phase = 'DUAL_WRITE' AND NOT paused AND coalesce((dw_status->>'ready')::bool, false) "     \
    "    AND coalesce((dw_status->>'at_ms')::double precision, 0) > "                              \
    "    extract(epoch FROM clock_timestamp()) * 1000 - 3000)::text AS cutover_ready, "            \
    "  CASE WHEN phase <> 'DUAL_WRITE' THEN 'phase is ' || phase "                                 \
    "       WHEN paused THEN 'paused' "                                                            \
    "       WHEN coalesce((dw_status->>'at_ms')::double precision, 0) <= "                         \
    "            extract(epoch FROM clock_timestamp()) * 1000 - 3000 "                             \
    "            THEN 'no runner keeps the target in sync' "                                       \
    "       ELSE dw_status->>'not_ready' END AS cutover_not_ready_reason, "                        \
    "  dw_status->>'predicted_pause_ms' AS predicted_pause_ms, "                                   \
    "  dw_status->>'open_tenant_transactions' AS open_tenant_transactions, "                       \
    "  coalesce(dw_status->>'applied', '0') AS dual_write_rows_applied, "                          \
    "  dw_status->>'warning' AS dual_write_warning, "                                              \
    "  CASE WHEN verify_result IS NOT NULL AND (verify_result->>'passed')::bool THEN 'passed' "    \
    "       WHEN verify_result IS NOT NULL THEN 'failed' "                                         \
    "       WHEN NOT coalesce((config->>'verify_consistency')::bool, true) THEN 'off' "            \
    "       ELSE 'pending' END AS consistency_check, "                                             \
    "  verify_result->>'detail' AS consistency_detail, "                                           \
    "  cutover_attempt::text AS cutover_attempts, cutover_result::text AS last_cutover, "          \
    "  completed_at::text AS completed_at, "                                                       \
    "  (phase IN " TERMINAL_SQL " AND NOT cleanup_pending)::text AS is_terminal "                  \
    "FROM pgshift.migrations "

/* Turn a result into a mig_result, leaving out columns named in skip (NULL-terminated). */
static mig_result_t *to_result(const PGresult *res, const char *tag, const char *const *skip)
{
    mig_result_t *r = mig_result_new(tag, 0, NULL);
    int n = PQnfields(res);
    int *keep = cm_xcalloc((size_t)n + 1, sizeof(int));
    size_t k = 0;
    const char **cells = cm_xcalloc((size_t)n + 1, sizeof(char *));

    for (int j = 0; j < n; j++) {
        bool skipped = false;

        for (const char *const *s = skip; s != NULL && *s != NULL; s++)
            if (strcmp(PQfname(res, j), *s) == 0)
                skipped = true;
        if (!skipped) {
            keep[k++] = j;
            mig_result_add_col(r, PQfname(res, j));
        }
    }
    for (int i = 0; i < PQntuples(res); i++) {
        for (size_t c = 0; c < k; c++)
            cells[c] = PQgetisnull(res, i, keep[c]) ? NULL : PQgetvalue(res, i, keep[c]);
        mig_result_add_row(r, cells);
    }
    free(cells);
    free(keep);
    return r;
}

static const char *const status_skip[] = { "is_terminal", NULL };

mig_result_t *mig_migration_status(const mig_env_t *env, PGconn **control, int64_t id,
                                   bool *terminal)
{
    char ids[32];
    const char *params[] = { ids };
    mig_result_t *fail, *r;
    PGresult *res;

    snprintf(ids, sizeof(ids), "%lld", (long long)id);
    *terminal = false;
    res = mig_control_exec(env, control, STATUS_SQL "WHERE id = $1::bigint", 1, params, &fail);
    if (res == NULL)
        return fail;
    if (PQntuples(res) == 0) {
        PQclear(res);
        *terminal = true;
        return mig_result_error("42704", "migration %lld does not exist", (long long)id);
    }
    *terminal = strcmp(PQgetvalue(res, 0, PQfnumber(res, "is_terminal")), "true") == 0;
    r = to_result(res, "SHOW", status_skip);
    PQclear(res);
    return r;
}

static mig_result_t *show_migrations(const mig_env_t *env, PGconn **control)
{
    static const char *const skip[] = {
        "pause_reason",         "events_remaining",       "eta_seconds",
        "estimated_completion", "source_high_water",      "batch_size",
        "max_bulk_copy_rate",   "abort_reason",           "cleanup_pending",
        "bulk_copy_started_at", "bulk_copy_completed_at", "is_terminal",
        "copy_complete",        "pause_reason",           NULL
    };
    mig_result_t *fail, *r;
    PGresult *res = mig_control_exec(env, control, STATUS_SQL "ORDER BY id DESC", 0, NULL, &fail);

    if (res == NULL)
        return fail;
    r = to_result(res, "SHOW", skip);
    PQclear(res);
    return r;
}

static mig_result_t *show_audit(const mig_env_t *env, PGconn **control, int64_t id)
{
    char ids[32];
    const char *params[] = { ids };
    mig_result_t *fail, *r;
    PGresult *res;

    snprintf(ids, sizeof(ids), "%lld", (long long)id);
    res = mig_control_exec(env, control,
                           "SELECT a.id::text AS id, a.at::text AS at, a.event_type, a.operator, "
                           "       a.details::text AS details, m.id IS NOT NULL AS known "
                           "FROM (SELECT 1) one "
                           "LEFT JOIN pgshift.migrations m ON m.id = $1::bigint "
                           "LEFT JOIN pgshift.audit_log a ON a.migration_id = m.id "
                           "ORDER BY a.id",
                           1, params, &fail);
    if (res == NULL)
        return fail;
    if (PQntuples(res) == 0 || strcmp(PQgetvalue(res, 0, 5), "t") != 0) {
        PQclear(res);
        return mig_result_error("42704", "migration %lld does not exist", (long long)id);
    }
    {
        static const char *const skip[] = { "known", NULL };

        r = to_result(res, "SHOW", skip);
        /* A migration with no audit entry yet gives one all-NULL row from the join. */
        if (r->n_rows == 1 && r->cells[0] == NULL) {
            free(r->cells[0]);
            for (size_t c = 1; c < r->n_cols; c++)
                free(r->cells[c]);
            r->n_rows = 0;
        }
    }
    PQclear(res);
    return r;
}

/* ---- PAUSE / RESUME / ABORT ------------------------------------------------------------- */

/* Why migration id cannot be paused/resumed/aborted: an error result. */
static mig_result_t *explain_refusal(const mig_env_t *env, PGconn **control, int64_t id,
                                     const char *what)
{
    char ids[32];
    const char *params[] = { ids };
    mig_result_t *fail, *r;
    PGresult *res;

    snprintf(ids, sizeof(ids), "%lld", (long long)id);
    res = mig_control_exec(env, control,
                           "SELECT phase, paused FROM pgshift.migrations WHERE id = $1::bigint", 1,
                           params, &fail);
    if (res == NULL)
        return fail;
    if (PQntuples(res) == 0)
        r = mig_result_error("42704", "migration %lld does not exist", (long long)id);
    else if (strcmp(what, "abort") != 0 && strcmp(PQgetvalue(res, 0, 0), "COMPLETED") != 0 &&
             strcmp(PQgetvalue(res, 0, 0), "ABORTED") != 0 &&
             strcmp(PQgetvalue(res, 0, 0), "FAILED") != 0)
        r = mig_result_error("55000", "migration %lld is %s", (long long)id,
                             strcmp(what, "pause") == 0 ? "already paused" : "not paused");
    else
        r = mig_result_error("55000", "cannot %s migration %lld: it is %s", what, (long long)id,
                             PQgetvalue(res, 0, 0));
    PQclear(res);
    return r;
}

static mig_result_t *pause_resume(const mig_env_t *env, PGconn **control, const mig_request_t *req,
                                  bool pause)
{
    static const char *const cols[] = { "migration_id", "phase", "paused" };
    char ids[32];
    const char *params[] = { ids, req->reason, req->user };
    mig_result_t *fail, *r;
    PGresult *res;

    snprintf(ids, sizeof(ids), "%lld", (long long)req->migration_id);
    res = mig_control_exec(
        env, control,
        pause ? "WITH m AS (UPDATE pgshift.migrations SET paused = true, pause_reason = $2, "
                "    paused_at = now(), updated_at = now() "
                "  WHERE id = $1::bigint AND NOT paused AND phase NOT IN " TERMINAL_SQL
                "  RETURNING id, phase), "
                "a AS (INSERT INTO pgshift.audit_log (migration_id, event_type, operator, details) "
                "  SELECT id, 'migration_paused', $3, jsonb_build_object('reason', $2::text, "
                "  'phase', phase) FROM m) "
                "SELECT id::text, phase FROM m"
              : "WITH m AS (UPDATE pgshift.migrations SET paused = false, pause_reason = NULL, "
                "    updated_at = now() "
                "  WHERE id = $1::bigint AND paused AND phase NOT IN " TERMINAL_SQL
                "  RETURNING id, phase, now() - paused_at AS paused_for), "
                "a AS (INSERT INTO pgshift.audit_log (migration_id, event_type, operator, details) "
                "  SELECT id, 'migration_resumed', $3, jsonb_build_object('phase', phase, "
                "  'paused_seconds', round(extract(epoch FROM paused_for)::numeric, 3), "
                "  'note', $2::text) FROM m) "
                "SELECT id::text, phase FROM m",
        3, params, &fail);
    if (res == NULL)
        return fail;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return explain_refusal(env, control, req->migration_id, pause ? "pause" : "resume");
    }
    LOG_INFO(LOG_CTX, "migration %s %s", ids, pause ? "paused" : "resumed");
    r = mig_result_new(pause ? "PAUSE" : "RESUME", CM_ARRAY_LEN(cols), cols);
    {
        const char *cells[] = { PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
                                pause ? "true" : "false" };

        mig_result_add_row(r, cells);
    }
    PQclear(res);
    return r;
}

static mig_result_t *abort_migration(const mig_env_t *env, PGconn **control,
                                     const mig_request_t *req)
{
    static const char *const cols[] = { "migration_id", "phase", "target_cleaned" };
    char ids[32];
    const char *params[] = { ids, req->reason, req->user };
    mig_result_t *fail, *r;
    PGresult *res;
    uint64_t deadline;
    bool cleaned = false;

    snprintf(ids, sizeof(ids), "%lld", (long long)req->migration_id);
    /*
     * One statement, so one transaction: the phase (persisted before the
     * runner acts on it), the route back to normal on the source, and the
     * audit entries. The runner then stops and removes the copied rows.
     */
    res = mig_control_exec(
        env, control,
        "WITH old AS (SELECT id, phase FROM pgshift.migrations "
        "  WHERE id = $1::bigint AND phase NOT IN " TERMINAL_SQL " FOR UPDATE), "
        "m AS (UPDATE pgshift.migrations g SET phase = 'ABORTED', aborted_at = now(), "
        "    abort_reason = coalesce($2, 'aborted by the operator'), paused = false, "
        "    cleanup_pending = true, updated_at = now(), status_detail = NULL "
        "  FROM old WHERE g.id = old.id RETURNING g.id, g.tenant, old.phase AS from_phase), "
        "r AS (UPDATE pgshift.routes SET state = 'normal', migration_id = NULL, "
        "    version = version + 1, updated_at = now() "
        "  WHERE tenant = (SELECT tenant FROM m) AND migration_id = (SELECT id FROM m)), "
        "a AS (INSERT INTO pgshift.audit_log (migration_id, event_type, operator, details) "
        "  SELECT id, 'phase_changed', $3, jsonb_build_object('from', from_phase, "
        "    'to', 'ABORTED') FROM m "
        "  UNION ALL SELECT id, 'migration_aborted', $3, jsonb_build_object('reason', "
        "    coalesce($2, 'aborted by the operator'), 'from_phase', from_phase) FROM m) "
        "SELECT id::text FROM m",
        3, params, &fail);
    if (res == NULL)
        return fail;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return explain_refusal(env, control, req->migration_id, "abort");
    }
    PQclear(res);
    LOG_INFO(LOG_CTX, "migration %s aborted: %s", ids, req->reason ? req->reason : "by operator");
    /* The runner (in this process or another) cleans the target; answer when it has. */
    deadline = cm_now_ms() + ABORT_WAIT_MS;
    while (cm_now_ms() < deadline) {
        res = mig_control_exec(env, control,
                               "SELECT cleanup_pending FROM pgshift.migrations "
                               "WHERE id = $1::bigint",
                               1, params, &fail);
        if (res == NULL) {
            mig_result_free(fail);
            break;
        }
        cleaned = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "f") == 0;
        PQclear(res);
        if (cleaned || mig_latch_wait(env->latch, 50))
            break;
    }
    r = mig_result_new("ABORT", CM_ARRAY_LEN(cols), cols);
    {
        const char *cells[] = { ids, "ABORTED", cleaned ? "true" : "false" };

        mig_result_add_row(r, cells);
    }
    return r;
}

mig_result_t *mig_migration_execute(const mig_env_t *env, PGconn **control,
                                    const mig_request_t *req)
{
    bool terminal;

    switch (req->kind) {
    case MIG_CMD_MIGRATE:
        return migrate(env, control, req);
    case MIG_CMD_SHOW_MIGRATIONS:
        return show_migrations(env, control);
    case MIG_CMD_SHOW_MIGRATION:
        return mig_migration_status(env, control, req->migration_id, &terminal);
    case MIG_CMD_PAUSE_MIGRATION:
        return pause_resume(env, control, req, true);
    case MIG_CMD_RESUME_MIGRATION:
        return pause_resume(env, control, req, false);
    case MIG_CMD_ABORT_MIGRATION:
        return abort_migration(env, control, req);
    case MIG_CMD_SHOW_AUDIT:
        return show_audit(env, control, req->migration_id);
    case MIG_CMD_CUTOVER:
        return mig_cutover_request(env, control, req);
    case MIG_CMD_VERIFY:
        return mig_verify_request(env, control, req);
    case MIG_CMD_SHOW_ROUTES:
    case MIG_CMD_SHOW_TENANTS:
    case MIG_CMD_ROUTE_TENANT:
    case MIG_CMD_LOOKUP_KEY:
    case MIG_CMD_WATCH_MIGRATION:
    default:
        BUG_ON(1, "not a migration command: %d", (int)req->kind);
    }
    return NULL;
}
