/*
 * migrator/copy.c - the runner of one migration: PENDING -> BULK_COPY, the
 * resumable bulk copy, and the clean-up of the target after ABORT or a
 * failure. One thread per migration that needs work (ctl.c starts them),
 * blocking libpq on its own connections, nothing shared but the read-only
 * mig_env_t and its stop latch.
 *
 * Exclusivity. A runner works only while it holds a session advisory lock
 * (RUN_LOCK_CLASS, id) on the control store, so among several pgshift
 * processes exactly one copies a migration; the lock dies with the process
 * (kill -9 included) and another runner - or the restarted process - takes
 * over from the persisted state.
 *
 * The barrier (DESIGN.md, "position order is not commit order"). Before
 * reading anything the copy takes the source's snapshot xmax X0 and waits
 * until the source's snapshot xmin has passed X0: then every transaction
 * that could have been in flight when the migration started has ended. The
 * copy's upper bound is then, per position table, H = the tenant's highest
 * position committed at that point. The copy copies every tenant row with
 * position <= H that is committed when its batch is read: all of those that
 * committed before the barrier, exactly once. Rows that commit later (new
 * writes, or a transaction that took a position <= H and commits after its
 * batch was read) are, by construction, rows whose inserting transaction id
 * is >= X0. That is the hand-over contract with issue #5: DUAL_WRITE starts
 * mirroring the tenant's transactions that begin after the phase flip,
 * takes a second barrier (every source transaction in flight at the flip has
 * ended), then sweeps once the source rows of the tenant whose xmin is
 * >= X0 (age(xmin) <= age(X0)) and are not on the target yet by row key
 * (ON CONFLICT (row_key) DO NOTHING), in position order - no gap (every row
 * is either committed before X0's barrier and bulk-copied, or has xmin >= X0
 * and is swept or mirrored) and no duplicate (row-key idempotence). X0 is
 * persisted as migrations.copy_barrier_xid and H as source_high_water.
 *
 * Exactly once across crashes. Progress lives on the TARGET, in
 * pgshift.target_copy_state, updated in the same transaction as the batch it
 * describes (COPY ... FROM STDIN; UPDATE the state; COMMIT). A crash before
 * the commit loses the batch and its progress together; a crash after it
 * keeps both. The resumed runner reads the state and continues after the
 * last committed batch: no gap, no duplicate, and no delete-and-redo. The
 * control store's counters are a display copy refreshed after each commit.
 *
 * Batches. Each table is walked in key order (the position column, else
 * the primary key; a table without one is copied in one batch): first the
 * key of the batch_size-th row after the last copied key (an index-only
 * query), then COPY (SELECT cols ... WHERE tenant AND key in (last, hi]
 * ORDER BY key) TO STDOUT (FORMAT binary) streamed row by row into COPY ...
 * FROM STDIN (FORMAT binary) on the target: memory does not depend on the
 * tenant's size. The source connection is read-only.
 *
 * Positions. "preserve": rows keep their source positions (the target table
 * was empty at MIGRATE) and the target's sequence is moved past the source's
 * at the barrier, so rows the target assigns meanwhile cannot collide.
 * "map": the batch is COPYed into a temporary table, inserted in source
 * position order so the target assigns increasing positions (stream order
 * kept, I4), and source -> target pairs go to pgshift.target_position_map in
 * the same transaction, then to the control store's pgshift.position_map.
 * Other tables with sequence-filled columns keep their values when the target
 * table was empty at the barrier, else let the target assign them.
 *
 * Rate limit: a virtual clock - a batch of n rows moves the earliest start
 * of the next batch by n / max_bulk_copy_rate seconds. The clock may fall
 * behind real time by RATE_CREDIT_US at most: batches that ran slow (a busy
 * machine, a round trip to the control store) are made up, but a long stall
 * buys no burst, and a pause resets the clock.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "migrator/runner.h"

#define LOG_CTX            "copy"
#define CONNECT_TIMEOUT_MS 10000
#define QUERY_TIMEOUT_MS   600000 /* a batch or a clean-up can take a while */
#define IO_TIMEOUT_MS      120000 /* no byte for this long during a COPY: give up, retry */
#define POLL_MS            200    /* how often waits look at the record (pause, abort) */
#define LOCK_RETRY_MS      1000
#define BACKOFF_FIRST_MS   500
#define BACKOFF_MAX_MS     15000
#define RATE_WINDOW_MS     10000
#define RATE_CREDIT_US     500000 /* a slow batch is made up within this much time */

/* ---- helpers ------------------------------------------------------------------------ */

bool mig_run_stopping(const run_t *r)
{
    return mig_latch_is_set(r->env->latch);
}

void mig_run_set_err(run_t *r, const char *sqlstate, char *msg_owned)
{
    free(r->err);
    r->err = msg_owned;
    snprintf(r->sqlstate, sizeof(r->sqlstate), "%s", sqlstate ? sqlstate : "");
}

/* Classify a failed result (res may be NULL: the connection broke). */
run_rc_t mig_run_classify(run_t *r, PGconn *c, const PGresult *res, const char *what)
{
    const char *st = res ? mig_pq_sqlstate(res) : "";
    char *m;

    if (mig_run_stopping(r))
        return RUN_STOP;
    m = mig_pq_errmsg(c, res);
    mig_run_set_err(r, *st ? st : "08006", cm_xasprintf("%s: %s", what, m));
    free(m);
    if (res == NULL || *st == '\0')
        return RUN_TRANSIENT;
    if (strncmp(st, "08", 2) == 0 || strncmp(st, "53", 2) == 0 || strncmp(st, "57", 2) == 0 ||
        strncmp(st, "58", 2) == 0 || strncmp(st, "40", 2) == 0 || strcmp(st, "55P03") == 0 ||
        strcmp(st, "55006") == 0)
        return RUN_TRANSIENT;
    return RUN_PERMANENT;
}

/* Run sql on c; on failure classify it (and return NULL with *rc set). */
PGresult *mig_run_q(run_t *r, PGconn *c, const char *what, const char *sql, int n,
                    const char *const *params, run_rc_t *rc)
{
    PGresult *res = mig_pq_exec(c, r->env->latch, QUERY_TIMEOUT_MS, sql, n, params);

    if (res != NULL && mig_pq_ok(res)) {
        *rc = RUN_OK;
        return res;
    }
    *rc = mig_run_classify(r, c, res, what);
    PQclear(res);
    return NULL;
}

/* Like q, for statements whose result does not matter. */
run_rc_t mig_run_x(run_t *r, PGconn *c, const char *what, const char *sql, int n,
                   const char *const *params)
{
    run_rc_t rc;
    PGresult *res = mig_run_q(r, c, what, sql, n, params, &rc);

    PQclear(res);
    return rc;
}

char *mig_run_lit(PGconn *c, const char *s)
{
    char *e = PQescapeLiteral(c, s, strlen(s));
    char *o = cm_xstrdup(e ? e : "NULL");

    PQfreemem(e);
    return o;
}

void mig_run_drop_conn(PGconn **c)
{
    if (*c != NULL)
        PQfinish(*c);
    *c = NULL;
}

void mig_run_drop_stores(run_t *r)
{
    mig_run_drop_conn(&r->src);
    mig_run_drop_conn(&r->dst);
    for (size_t i = 0; i < r->n_tabs; i++) {
        free(r->tabs[i].stage); /* temporary tables die with the connection */
        r->tabs[i].stage = NULL;
    }
}

static void tab_free(tab_t *t)
{
    free(t->name);
    free(t->q);
    free(t->mode);
    free(t->all_cols);
    free(t->copy_cols);
    for (size_t k = 0; k < t->n_key; k++) {
        free(t->key_q[k]);
        free(t->key_type[k]);
    }
    free(t->key_q);
    free(t->key_type);
    free(t->hi);
    free(t->last_key);
    free(t->stage);
    free(t->select_cols);
}

static void tabs_free(run_t *r)
{
    for (size_t i = 0; i < r->n_tabs; i++)
        tab_free(&r->tabs[i]);
    free(r->tabs);
    r->tabs = NULL;
    r->n_tabs = 0;
}

static void record_free(run_t *r)
{
    free(r->tenant);
    free(r->phase);
    free(r->position_mode);
    r->tenant = r->phase = r->position_mode = NULL;
}

/* Sleep up to ms; true when stopping. */
bool mig_run_nap(run_t *r, int ms)
{
    return mig_latch_wait(r->env->latch, ms);
}

/* ---- the control store ------------------------------------------------------------ */

static run_rc_t connect_control(run_t *r)
{
    char *err = NULL;
    int rc = mig_pq_connect(r->env->control_conninfo, "pgshift-runner", r->env->latch,
                            CONNECT_TIMEOUT_MS, &r->ctl, &err);

    if (rc == -ECANCELED)
        return RUN_STOP;
    if (rc != 0) {
        mig_run_set_err(r, "08006", cm_xasprintf("control store: %s", err ? err : "unreachable"));
        free(err);
        r->ctl = NULL;
        return RUN_TRANSIENT;
    }
    r->locked = false;
    return RUN_OK;
}

/* Load the record. RUN_OK and *needed: whether this migration still needs a runner. */
static run_rc_t load_record(run_t *r, bool *needed)
{
    const char *params[] = { r->ids };
    run_rc_t rc;
    PGresult *res =
        mig_run_q(r, r->ctl, "control store",
                  "SELECT tenant, source_store, target_store, phase, paused, cleanup_pending, "
                  "  bulk_copy_completed_at IS NOT NULL, "
                  "  coalesce((config->>'batch_size')::int, 1000), "
                  "  coalesce((config->>'max_bulk_copy_rate')::int, 0), "
                  "  coalesce(position_mode, 'preserve'), "
                  "  coalesce((config->>'migrate_subscriptions')::bool, true) "
                  "FROM pgshift.migrations WHERE id = $1::bigint",
                  1, params, &rc);

    *needed = false;
    if (res == NULL)
        return rc;
    record_free(r);
    if (PQntuples(res) == 1) {
        r->tenant = cm_xstrdup(PQgetvalue(res, 0, 0));
        r->src_idx = mig_env_store_index(r->env, PQgetvalue(res, 0, 1));
        r->dst_idx = mig_env_store_index(r->env, PQgetvalue(res, 0, 2));
        r->phase = cm_xstrdup(PQgetvalue(res, 0, 3));
        r->paused = strcmp(PQgetvalue(res, 0, 4), "t") == 0;
        r->cleanup_pending = strcmp(PQgetvalue(res, 0, 5), "t") == 0;
        r->copy_complete = strcmp(PQgetvalue(res, 0, 6), "t") == 0;
        r->batch_size = atoi(PQgetvalue(res, 0, 7));
        r->rate = atoi(PQgetvalue(res, 0, 8));
        r->position_mode = cm_xstrdup(PQgetvalue(res, 0, 9));
        r->migrate_subscriptions = strcmp(PQgetvalue(res, 0, 10), "t") == 0;
        if (r->batch_size < 1)
            r->batch_size = 1000;
        *needed = r->cleanup_pending || strcmp(r->phase, "PENDING") == 0 ||
                  strcmp(r->phase, "BULK_COPY") == 0 || strcmp(r->phase, "DUAL_WRITE") == 0 ||
                  strcmp(r->phase, "CUTOVER") == 0;
    }
    PQclear(res);
    return RUN_OK;
}

static verdict_t verdict_of(const PGresult *res)
{
    if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "BULK_COPY") != 0 ||
        strcmp(PQgetvalue(res, 0, 2), "t") == 0)
        return LEAVE;
    return strcmp(PQgetvalue(res, 0, 1), "t") == 0 ? PAUSE : GO;
}

/* Read phase/paused; RUN_OK with *v. */
run_rc_t mig_run_look(run_t *r, verdict_t *v)
{
    const char *params[] = { r->ids };
    run_rc_t rc;
    PGresult *res = mig_run_q(r, r->ctl, "control store",
                              "SELECT phase, paused, cleanup_pending FROM pgshift.migrations "
                              "WHERE id = $1::bigint",
                              1, params, &rc);

    if (res == NULL)
        return rc;
    *v = verdict_of(res);
    PQclear(res);
    return RUN_OK;
}

run_rc_t mig_run_set_status(run_t *r, const char *detail)
{
    const char *params[] = { r->ids, detail };

    return mig_run_x(r, r->ctl, "control store",
                     "UPDATE pgshift.migrations SET status_detail = $2, updated_at = now() "
                     "WHERE id = $1::bigint",
                     2, params);
}

/*
 * Wait while paused; returns RUN_OK to go on (not paused, still copying),
 * RUN_RECHECK when the migration left BULK_COPY, or an error/stop.
 */
static run_rc_t hold_while_paused(run_t *r)
{
    bool announced = false;

    for (;;) {
        verdict_t v;
        run_rc_t rc = mig_run_look(r, &v);

        if (rc != RUN_OK)
            return rc;
        if (v == LEAVE)
            return RUN_RECHECK;
        if (v == GO) {
            if (announced) {
                r->next_batch_us = cm_now_us(); /* no credit for the pause */
                r->win_n = 0;
                rc = mig_run_set_status(r, "copying");
                if (rc != RUN_OK)
                    return rc;
            }
            return RUN_OK;
        }
        if (!announced) {
            LOG_INFO(LOG_CTX, "migration %s paused", r->ids);
            rc = mig_run_set_status(r, "paused");
            if (rc != RUN_OK)
                return rc;
            announced = true;
        }
        if (mig_run_nap(r, POLL_MS))
            return RUN_STOP;
    }
}

/* The rate limit: wait for the next batch's slot, looking at the record meanwhile. */
static run_rc_t wait_slot(run_t *r)
{
    for (;;) {
        uint64_t now = cm_now_us();
        run_rc_t rc;

        if (r->rate <= 0 || now >= r->next_batch_us)
            return RUN_OK;
        if (mig_run_nap(r, (int)CM_MIN((r->next_batch_us - now + 999) / 1000, (uint64_t)POLL_MS)))
            return RUN_STOP;
        if (r->next_batch_us > cm_now_us()) {
            rc = hold_while_paused(r);
            if (rc != RUN_OK)
                return rc;
        }
    }
}

void mig_run_audit(run_t *r, const char *type, const char *details_json)
{
    const char *params[] = { r->ids, type, details_json };

    (void)mig_run_x(r, r->ctl, "control store",
                    "INSERT INTO pgshift.audit_log (migration_id, event_type, operator, details) "
                    "VALUES ($1::bigint, $2, 'pgshift', $3::jsonb)",
                    3, params);
}

/* Count an error on the record and in the audit log (best effort). */
void mig_run_note_error(run_t *r, bool retrying)
{
    const char *params[] = { r->ids, r->err ? r->err : "unknown error", r->sqlstate,
                             retrying ? "true" : "false" };

    LOG_WARN(LOG_CTX, "migration %s: %s%s", r->ids, r->err ? r->err : "error",
             retrying ? " (retrying)" : "");
    if (r->ctl == NULL)
        return;
    (void)mig_run_x(r, r->ctl, "control store",
                    "WITH m AS (UPDATE pgshift.migrations SET error_count = error_count + 1, "
                    "    last_error = $2, updated_at = now(), "
                    "    status_detail = CASE WHEN $4::bool THEN 'retrying after an error' "
                    "                    ELSE status_detail END "
                    "  WHERE id = $1::bigint RETURNING id) "
                    "INSERT INTO pgshift.audit_log (migration_id, event_type, operator, details) "
                    "SELECT id, 'error_occurred', 'pgshift', jsonb_build_object('error', $2::text, "
                    "  'sqlstate', $3::text, 'retrying', $4::bool) FROM m",
                    4, params);
}

/*
 * A permanent error: FAILED (persisted first, route back to the source,
 * audited), and the target is to be cleaned.
 */
run_rc_t mig_run_fail_migration(run_t *r)
{
    const char *params[] = { r->ids, r->err ? r->err : "unknown error", r->sqlstate };
    run_rc_t rc;

    LOG_ERROR(LOG_CTX, "migration %s failed: %s", r->ids, r->err ? r->err : "?");
    rc = mig_run_x(
        r, r->ctl, "control store",
        "WITH old AS (SELECT id, phase FROM pgshift.migrations WHERE id = $1::bigint "
        "  AND phase NOT IN " TERMINAL_SQL " FOR UPDATE), "
        "m AS (UPDATE pgshift.migrations g SET phase = 'FAILED', failed_at = now(), "
        "    cleanup_pending = true, error_count = error_count + 1, last_error = $2, "
        "    status_detail = NULL, updated_at = now() "
        "  FROM old WHERE g.id = old.id RETURNING g.id, g.tenant, old.phase AS from_phase), "
        "rt AS (UPDATE pgshift.routes SET state = 'normal', migration_id = NULL, "
        "    version = version + 1, updated_at = now() "
        "  WHERE tenant = (SELECT tenant FROM m) AND migration_id = (SELECT id FROM m)) "
        "INSERT INTO pgshift.audit_log (migration_id, event_type, operator, details) "
        "SELECT id, 'phase_changed', 'pgshift', jsonb_build_object('from', from_phase, "
        "  'to', 'FAILED') FROM m "
        "UNION ALL SELECT id, 'migration_failed', 'pgshift', jsonb_build_object('error', "
        "  $2::text, 'sqlstate', $3::text, 'from_phase', from_phase) FROM m",
        3, params);
    return rc == RUN_OK ? RUN_RECHECK : rc;
}

/* ---- stores -------------------------------------------------------------------------- */

run_rc_t mig_run_connect(run_t *r, int idx, const char *app, const char *what, PGconn **out)
{
    const mig_env_t *env = r->env;
    char *err = NULL;
    int rc;

    if (*out != NULL)
        return RUN_OK;
    rc = mig_pq_connect(env->store_conninfos[idx], app, env->latch, CONNECT_TIMEOUT_MS, out, &err);
    if (rc == 0)
        return RUN_OK;
    *out = NULL;
    if (rc == -ECANCELED)
        return RUN_STOP;
    mig_run_set_err(r, "08006",
                    cm_xasprintf("%s \"%s\": %s", what, env->store_names[idx], err ? err : "?"));
    free(err);
    return RUN_TRANSIENT;
}

run_rc_t mig_run_connect_stores(run_t *r)
{
    const mig_env_t *env = r->env;
    run_rc_t rc;

    if (r->src_idx < 0 || r->dst_idx < 0) {
        mig_run_set_err(r, "42704",
                        cm_xstrdup("the source or target store is no longer configured"));
        return RUN_PERMANENT;
    }
    if (r->src == NULL) {
        rc = mig_run_connect(r, r->src_idx, "pgshift-copy", "source store", &r->src);
        if (rc != RUN_OK)
            return rc;
        /* The source is never written: make that a property of the connection. */
        if (mig_run_x(r, r->src, "source store", "SET default_transaction_read_only = on", 0,
                      NULL) != RUN_OK) {
            mig_run_drop_conn(&r->src);
            return RUN_TRANSIENT;
        }
    }
    rc = mig_run_connect(r, r->dst_idx, "pgshift-copy", "target store", &r->dst);
    if (rc != RUN_OK)
        return rc;
    if (r->tenant_lit == NULL) {
        r->tenant_lit = mig_run_lit(r->dst, r->tenant);
        r->tcol = mig_quote_ident(r->dst, env->tenant_column);
    }
    return RUN_OK;
}

/* The state tables on the target; created once, concurrently safe. */
static run_rc_t ensure_target_schema(run_t *r)
{
    return mig_run_x(r, r->dst, "target store",
                     "BEGIN;\n"
                     "SET LOCAL client_min_messages = warning;\n"
                     "SELECT pg_advisory_xact_lock(" RUN_LOCK_CLASS ", 0);\n"
                     "CREATE SCHEMA IF NOT EXISTS pgshift;\n"
                     "CREATE TABLE IF NOT EXISTS pgshift.target_copy_state (\n"
                     "    migration_id bigint NOT NULL,\n"
                     "    table_name text NOT NULL,\n"
                     "    mode text NOT NULL,\n"
                     "    barrier_xid text,\n"
                     "    hi_bound text,\n"
                     "    last_key text,\n"
                     "    rows_total bigint NOT NULL DEFAULT 0,\n"
                     "    rows_copied bigint NOT NULL DEFAULT 0,\n"
                     "    done boolean NOT NULL DEFAULT false,\n"
                     "    updated_at timestamptz NOT NULL DEFAULT now(),\n"
                     "    PRIMARY KEY (migration_id, table_name));\n"
                     "CREATE TABLE IF NOT EXISTS pgshift.target_position_map (\n"
                     "    migration_id bigint NOT NULL,\n"
                     "    source_position bigint NOT NULL,\n"
                     "    target_position bigint NOT NULL,\n"
                     "    PRIMARY KEY (migration_id, source_position));\n"
                     "COMMIT",
                     0, NULL);
}

/* Columns of table on c: "name|type|is_serial_on_c" rows, sorted by attnum. */
static PGresult *columns_of(run_t *r, PGconn *c, const char *what, const char *table, run_rc_t *rc)
{
    char *qt = mig_quote_table(c, table);
    const char *params[] = { qt };
    PGresult *res = mig_run_q(
        r, c, what,
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), " MIG_SQL_SEQUENCE_FILLED " "
        "FROM pg_attribute a " MIG_SQL_ATTRDEF_JOIN
        "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 "
        "  AND NOT a.attisdropped AND a.attgenerated = '' "
        "ORDER BY a.attnum",
        1, params, rc);

    free(qt);
    return res;
}

static int col_index(const PGresult *cols, const char *name)
{
    for (int i = 0; i < PQntuples(cols); i++)
        if (strcmp(PQgetvalue(cols, i, 0), name) == 0)
            return i;
    return -1;
}

/* Quoted, comma-separated columns of cols; skip_serial leaves out sequence-filled ones,
 * skip names one more column to leave out. */
static char *col_list(PGconn *c, const PGresult *cols, bool skip_serial, const char *skip)
{
    cm_buf_t b = { 0 };
    char *s;

    for (int i = 0; i < PQntuples(cols); i++) {
        char *qi;

        if (skip_serial && strcmp(PQgetvalue(cols, i, 2), "t") == 0)
            continue;
        if (skip != NULL && strcmp(PQgetvalue(cols, i, 0), skip) == 0)
            continue;
        qi = mig_quote_ident(c, PQgetvalue(cols, i, 0));
        if (b.len > 0)
            cm_buf_append(&b, ", ", 2);
        cm_buf_append(&b, qi, strlen(qi));
        free(qi);
    }
    cm_buf_append_u8(&b, 0);
    s = cm_xstrdup((const char *)b.data);
    cm_buf_free(&b);
    return s;
}

/*
 * Translate mode: the select list of cols (a column result, "name|type|..."
 * rows) from a stage row "s", with the position column (a checkpoint)
 * turned into a position on the target that skips no event (I6): one less
 * than the lowest target position of an event after the checkpoint, else
 * the highest target position at or before it, else 0. Target positions
 * follow insertion, so an event mapped later lands above every one of
 * these, and a consumer that goes on from the translated value re-reads at
 * most the events inserted out of source order. Owned.
 */
static char *translate_select(run_t *r, const PGresult *cols)
{
    cm_buf_t b = { 0 };
    char *out;

    for (int i = 0; i < PQntuples(cols); i++) {
        char *q = mig_quote_ident(r->src, PQgetvalue(cols, i, 0)), *e;

        if (strcmp(PQgetvalue(cols, i, 0), r->env->position_column) == 0)
            e = cm_xasprintf(
                "CASE WHEN s.%s IS NULL THEN NULL ELSE coalesce("
                "(SELECT min(m.target_position) - 1 FROM pgshift.target_position_map m "
                "WHERE m.migration_id = %s AND m.source_position > s.%s), "
                "(SELECT max(m.target_position) FROM pgshift.target_position_map m "
                "WHERE m.migration_id = %s AND m.source_position <= s.%s), 0) END",
                q, r->ids, q, r->ids, q);
        else
            e = cm_xasprintf("s.%s", q);
        if (b.len > 0)
            cm_buf_append(&b, ", ", 2);
        cm_buf_append(&b, e, strlen(e));
        free(e);
        free(q);
    }
    cm_buf_append_u8(&b, 0);
    out = cm_xstrdup((const char *)b.data);
    cm_buf_free(&b);
    return out;
}

/* Whether every key column of t is among the columns written on the target. */
static bool keys_written(const tab_t *t)
{
    char *hay = cm_xasprintf(",%s,", t->copy_cols);
    bool found = true;

    /* copy_cols is "a, b, c": drop the blanks after the commas */
    for (char *p = hay, *o = hay;; p++) {
        if (!(*p == ' ' && p > hay && p[-1] == ','))
            *o++ = *p;
        if (*p == '\0')
            break;
    }
    for (size_t k = 0; found && k < t->n_key; k++) {
        char *needle = cm_xasprintf(",%s,", t->key_q[k]);

        found = strstr(hay, needle) != NULL;
        free(needle);
    }
    free(hay);
    return found;
}

/*
 * Build the per-table structure (columns, cursor) for table i of the env;
 * false when the table is not a tenant table on the source.
 */
static run_rc_t describe_table(run_t *r, const char *table, const char *mode, tab_t *t,
                               bool *is_tenant_table)
{
    const mig_env_t *env = r->env;
    run_rc_t rc;
    PGresult *scols, *dcols, *pk;
    char *qt;

    *is_tenant_table = false;
    memset(t, 0, sizeof(*t));
    scols = columns_of(r, r->src, "source store", table, &rc);
    if (scols == NULL)
        return rc;
    if (PQntuples(scols) == 0 || col_index(scols, env->tenant_column) < 0) {
        PQclear(scols);
        return RUN_OK;
    }
    dcols = columns_of(r, r->dst, "target store", table, &rc);
    if (dcols == NULL) {
        PQclear(scols);
        return rc;
    }
    if (PQntuples(dcols) == 0) {
        mig_run_set_err(r, "42P01",
                        cm_xasprintf("table \"%s\" is missing on the target store", table));
        PQclear(scols);
        PQclear(dcols);
        return RUN_PERMANENT;
    }
    *is_tenant_table = true;
    t->name = cm_xstrdup(table);
    t->q = mig_quote_table(r->src, table);
    t->mode = cm_xstrdup(mode);
    {
        /* Whether the row key alone is unique on the target: the conflict target of dual-write. */
        const char *params[] = { t->q, env->row_key };
        PGresult *u = mig_run_q(
            r, r->dst, "target store",
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = "
            "i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass($1) AND "
            "i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL AND a.attname = $2)",
            2, params, &rc);

        if (u == NULL) {
            PQclear(scols);
            PQclear(dcols);
            return rc;
        }
        t->rk_unique = strcmp(PQgetvalue(u, 0, 0), "t") == 0;
        PQclear(u);
    }
    {
        int pi = col_index(scols, env->position_column);

        t->has_pos = pi >= 0 && strcmp(PQgetvalue(scols, pi, 2), "t") == 0;
        t->pos_ref = pi >= 0 && !t->has_pos;
    }
    t->all_cols = col_list(r->src, scols, false, NULL);
    if (strcmp(mode, "map") == 0)
        t->copy_cols = col_list(r->src, scols, false, env->position_column);
    else if (strcmp(mode, "assign") == 0)
        t->copy_cols = col_list(r->src, dcols, true, NULL);
    else
        t->copy_cols = cm_xstrdup(t->all_cols);
    if (strcmp(mode, "translate") == 0)
        t->select_cols = translate_select(r, scols);
    if (t->has_pos) {
        int i = col_index(scols, env->position_column);

        t->n_key = 1;
        t->key_q = cm_xcalloc(1, sizeof(char *));
        t->key_type = cm_xcalloc(1, sizeof(char *));
        t->key_q[0] = mig_quote_ident(r->src, env->position_column);
        t->key_type[0] = cm_xstrdup(PQgetvalue(scols, i, 1));
    } else {
        qt = mig_quote_table(r->src, table);
        {
            const char *params[] = { qt };

            pk = mig_run_q(
                r, r->src, "source store",
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) "
                "FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(n, o) "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n "
                "WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY k.o",
                1, params, &rc);
        }
        free(qt);
        if (pk == NULL) {
            PQclear(scols);
            PQclear(dcols);
            return rc;
        }
        t->n_key = (size_t)PQntuples(pk);
        t->key_q = cm_xcalloc(t->n_key + 1, sizeof(char *));
        t->key_type = cm_xcalloc(t->n_key + 1, sizeof(char *));
        for (size_t k = 0; k < t->n_key; k++) {
            t->key_q[k] = mig_quote_ident(r->src, PQgetvalue(pk, (int)k, 0));
            t->key_type[k] = cm_xstrdup(PQgetvalue(pk, (int)k, 1));
        }
        PQclear(pk);
    }
    PQclear(scols);
    PQclear(dcols);
    t->keys_written = t->n_key > 0 && keys_written(t);
    if (!t->has_pos && !t->rk_unique && !t->keys_written) {
        /*
         * Dual-write reads a row again now and then (a round re-reads what
         * may still have been in flight): with no key of its own on the
         * target and no unique row key, a row it wrote could not be told
         * from a new one, so it would be written twice (I2). Refuse.
         */
        mig_run_set_err(
            r, "55000",
            cm_xasprintf("table \"%s\" cannot be mirrored without duplicates: no key of its own "
                         "is written on the target (it has none, or the target assigns it because "
                         "the table already had rows at MIGRATE) and there is no unique index on "
                         "\"%s\" alone; add one on the target, or migrate into an empty table",
                         table, env->row_key));
        tab_free(t);
        memset(t, 0, sizeof(*t));
        return RUN_PERMANENT;
    }
    return RUN_OK;
}

/* ---- the plan ------------------------------------------------------------------------ */

/*
 * The barrier on the source: X0 = xmax of the current snapshot, then wait
 * until no transaction older than X0 is running. *xid = X0 (owned).
 */
static run_rc_t barrier(run_t *r, char **xid)
{
    run_rc_t rc;
    PGresult *res = mig_run_q(r, r->src, "source store",
                              "SELECT pg_snapshot_xmax(pg_current_snapshot())::text", 0, NULL, &rc);
    bool announced = false;

    if (res == NULL)
        return rc;
    *xid = cm_xstrdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    for (;;) {
        const char *params[] = { *xid };
        bool passed;
        verdict_t v;

        res =
            mig_run_q(r, r->src, "source store",
                      "SELECT pg_snapshot_xmin(pg_current_snapshot()) >= $1::xid8", 1, params, &rc);
        if (res == NULL)
            break;
        passed = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        PQclear(res);
        if (passed)
            return RUN_OK;
        if (!announced) {
            rc =
                mig_run_set_status(r, "waiting for source transactions older than the copy to end");
            if (rc != RUN_OK)
                break;
            announced = true;
        }
        rc = mig_run_look(r, &v);
        if (rc != RUN_OK)
            break;
        if (v == LEAVE) {
            rc = RUN_RECHECK;
            break;
        }
        if (mig_run_nap(r, 50)) {
            rc = RUN_STOP;
            break;
        }
    }
    free(*xid);
    *xid = NULL;
    return rc;
}

/* Read the plan from the target. *found = whether there is one. */
run_rc_t mig_run_read_plan(run_t *r, bool *found)
{
    const char *params[] = { r->ids };
    run_rc_t rc;
    PGresult *res =
        mig_run_q(r, r->dst, "target store",
                  "SELECT table_name, mode, hi_bound, last_key, rows_total, rows_copied, done, "
                  "  barrier_xid "
                  "FROM pgshift.target_copy_state WHERE migration_id = $1::bigint",
                  1, params, &rc);

    *found = false;
    if (res == NULL)
        return rc;
    tabs_free(r);
    r->total = r->copied = 0;
    *found = PQntuples(res) > 0;
    /* In configuration order, so the copy order is stable across restarts. */
    for (size_t i = 0; *found && i < r->env->n_tables; i++) {
        for (int row = 0; row < PQntuples(res); row++) {
            tab_t t;
            bool is_tenant;

            if (strcmp(PQgetvalue(res, row, 0), r->env->tables[i]) != 0)
                continue;
            rc = describe_table(r, r->env->tables[i], PQgetvalue(res, row, 1), &t, &is_tenant);
            if (rc != RUN_OK) {
                PQclear(res);
                return rc;
            }
            if (!is_tenant) {
                mig_run_set_err(r, "42P01",
                                cm_xasprintf("table \"%s\" lost its tenant column on the source",
                                             r->env->tables[i]));
                PQclear(res);
                return RUN_PERMANENT;
            }
            t.hi = PQgetisnull(res, row, 2) ? NULL : cm_xstrdup(PQgetvalue(res, row, 2));
            t.last_key = PQgetisnull(res, row, 3) ? NULL : cm_xstrdup(PQgetvalue(res, row, 3));
            t.total = strtoll(PQgetvalue(res, row, 4), NULL, 10);
            t.copied = strtoll(PQgetvalue(res, row, 5), NULL, 10);
            t.done = strcmp(PQgetvalue(res, row, 6), "t") == 0;
            if (!PQgetisnull(res, row, 7)) {
                free(r->barrier_xid);
                r->barrier_xid = cm_xstrdup(PQgetvalue(res, row, 7));
            }
            r->tabs = cm_xrealloc(r->tabs, (r->n_tabs + 1) * sizeof(*r->tabs));
            r->tabs[r->n_tabs++] = t;
            r->total += t.total;
            r->copied += t.copied;
        }
    }
    PQclear(res);
    /*
     * Tables that refer to positions come last, in the copy and in every
     * round: their translation then sees the events of the same batch.
     */
    for (size_t i = 0, k = 0; i < r->n_tabs; i++) {
        if (strcmp(r->tabs[i].mode, "translate") == 0)
            continue;
        if (i != k) {
            tab_t t = r->tabs[i];

            memmove(&r->tabs[k + 1], &r->tabs[k], (i - k) * sizeof(*r->tabs));
            r->tabs[k] = t;
        }
        k++;
    }
    return RUN_OK;
}

/* Move the target's sequence of the position column past the source's. */
run_rc_t mig_run_bump_sequence(run_t *r, const tab_t *t)
{
    const char *params[] = { t->q, r->env->position_column };
    run_rc_t rc;
    PGresult *res;
    char *src_last = NULL;

    res = mig_run_q(r, r->src, "source store",
                    "SELECT s.last_value::text FROM pg_sequences s "
                    "WHERE format('%I.%I', s.schemaname, s.sequencename)::regclass = "
                    "  pg_get_serial_sequence($1, $2)::regclass",
                    2, params, &rc);
    if (res == NULL)
        return rc;
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
        src_last = cm_xstrdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    if (src_last == NULL)
        return RUN_OK; /* no sequence, or never used */
    {
        const char *p3[] = { t->q, r->env->position_column, src_last };

        rc = mig_run_x(
            r, r->dst, "target store",
            "SELECT setval(s, greatest($3::bigint, (SELECT coalesce(last_value, 0) "
            "  FROM pg_sequences WHERE format('%I.%I', schemaname, sequencename)::regclass "
            "  = s::regclass))) "
            "FROM pg_get_serial_sequence($1, $2) s WHERE s IS NOT NULL",
            3, p3);
    }
    free(src_last);
    return rc;
}

/* Make the plan after the barrier and store it on the target (one transaction). */
static run_rc_t make_plan(run_t *r)
{
    const mig_env_t *env = r->env;
    char *xid = NULL;
    run_rc_t rc = barrier(r, &xid);
    cm_buf_t sql = { 0 };
    char *xid_lit, *sql_s;

    if (rc != RUN_OK)
        return rc;
    rc = mig_run_set_status(r, "planning the copy");
    if (rc != RUN_OK)
        goto out;
    tabs_free(r);
    xid_lit = mig_run_lit(r->dst, xid);
    cm_buf_append_cstr(&sql, "BEGIN;\n");
    sql.len--;
    for (size_t i = 0; i < env->n_tables; i++) {
        tab_t t;
        bool is_tenant;
        const char *mode = "preserve";
        PGresult *res;
        char *s, *hi_lit, *name_lit;
        long long total;

        /* The mode needs the columns first: describe with a provisional mode, then again. */
        rc = describe_table(r, env->tables[i], "preserve", &t, &is_tenant);
        if (rc != RUN_OK || !is_tenant)
            goto next;
        if (t.pos_ref && !r->migrate_subscriptions) {
            /* Checkpoints stay behind: consumers start over on the target (no skip, I6). */
            LOG_INFO(LOG_CTX,
                     "migration %s: table %s refers to positions and "
                     "migrate_subscriptions is off: not moved",
                     r->ids, t.name);
            tab_free(&t);
            is_tenant = false;
            goto next;
        }
        if (t.has_pos) {
            mode = r->position_mode;
        } else if (t.pos_ref && strcmp(r->position_mode, "map") == 0) {
            mode = "translate"; /* checkpoints follow the mapped positions (I6) */
        } else {
            /* Sequence-filled columns keep their values only on an empty target table. */
            s = cm_xasprintf("SELECT EXISTS (SELECT 1 FROM %s)", t.q);
            res = mig_run_q(r, r->dst, "target store", s, 0, NULL, &rc);
            free(s);
            if (res == NULL)
                goto next;
            mode = strcmp(PQgetvalue(res, 0, 0), "t") == 0 ? "assign" : "preserve";
            PQclear(res);
        }
        if (t.has_pos)
            s = cm_xasprintf("SELECT count(*), max(%s)::text FROM %s WHERE %s = %s", t.key_q[0],
                             t.q, r->tcol, r->tenant_lit);
        else
            s = cm_xasprintf("SELECT count(*), NULL FROM %s WHERE %s = %s", t.q, r->tcol,
                             r->tenant_lit);
        res = mig_run_q(r, r->src, "source store", s, 0, NULL, &rc);
        free(s);
        if (res == NULL)
            goto next;
        total = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        hi_lit = PQgetisnull(res, 0, 1) ? cm_xstrdup("NULL")
                                        : mig_run_lit(r->dst, PQgetvalue(res, 0, 1));
        PQclear(res);
        if (t.has_pos && strcmp(mode, "preserve") == 0) {
            rc = mig_run_bump_sequence(r, &t);
            if (rc != RUN_OK) {
                free(hi_lit);
                goto next;
            }
        }
        name_lit = mig_run_lit(r->dst, t.name);
        s = cm_xasprintf("INSERT INTO pgshift.target_copy_state (migration_id, table_name, mode, "
                         "barrier_xid, hi_bound, rows_total, done) VALUES (%s, %s, '%s', %s, %s, "
                         "%lld, %s) ON CONFLICT DO NOTHING;\n",
                         r->ids, name_lit, mode, xid_lit, hi_lit, total,
                         (total == 0 || (t.has_pos && strcmp(hi_lit, "NULL") == 0)) ? "true"
                                                                                    : "false");
        cm_buf_append(&sql, s, strlen(s));
        free(s);
        free(name_lit);
        free(hi_lit);
    next:
        if (is_tenant) {
            tab_t *tp = &t;

            r->tabs = cm_xrealloc(r->tabs, (r->n_tabs + 1) * sizeof(*r->tabs));
            r->tabs[r->n_tabs++] = *tp; /* freed with the plan; re-read below */
        }
        if (rc != RUN_OK)
            break;
    }
    free(xid_lit);
    if (rc == RUN_OK) {
        cm_buf_append_cstr(&sql, "COMMIT");
        sql_s = (char *)sql.data;
        rc = mig_run_x(r, r->dst, "target store", sql_s, 0, NULL);
        if (rc != RUN_OK)
            (void)mig_run_x(r, r->dst, "target store", "ROLLBACK", 0, NULL);
    }
    cm_buf_free(&sql);
    if (rc == RUN_OK) {
        bool found;

        rc = mig_run_read_plan(r, &found);
        if (rc == RUN_OK && !found) {
            /* No tenant table at all: an empty plan, nothing to copy. */
            r->n_tabs = 0;
        }
    }
    if (rc == RUN_OK) {
        /* The barrier and the bounds, for display and for issue #5's hand-over. */
        const char *params[] = { r->ids, xid };

        rc = mig_run_x(
            r, r->ctl, "control store",
            "UPDATE pgshift.migrations SET copy_barrier_xid = $2, copy_barrier_at = now(), "
            "  updated_at = now() WHERE id = $1::bigint",
            2, params);
        LOG_INFO(LOG_CTX, "migration %s: barrier passed at xid %s", r->ids, xid);
    }
out:
    free(xid);
    return rc;
}

/* Publish totals and the per-table progress; returns the record's verdict. */
static run_rc_t publish(run_t *r, const char *detail, verdict_t *v)
{
    cm_buf_t js = { 0 };
    char copied[24], total[24], rate[32];
    const char *high = NULL;
    run_rc_t rc;
    PGresult *res;

    cm_buf_append_u8(&js, '{');
    for (size_t i = 0; i < r->n_tabs; i++) {
        const tab_t *t = &r->tabs[i];
        char *e = cm_xasprintf("%s\"%s\": {\"mode\": \"%s\", \"total\": %lld, \"copied\": %lld, "
                               "\"done\": %s}",
                               i ? ", " : "", t->name, t->mode, t->total, t->copied,
                               t->done ? "true" : "false");

        cm_buf_append(&js, e, strlen(e));
        free(e);
        if (t->has_pos && t->hi != NULL)
            high = t->hi;
    }
    cm_buf_append_cstr(&js, "}");
    snprintf(copied, sizeof(copied), "%lld", r->copied);
    snprintf(total, sizeof(total), "%lld", r->total);
    snprintf(rate, sizeof(rate), "%.1f", r->rate_now);
    {
        const char *params[] = { r->ids, copied,        total, rate, detail, (const char *)js.data,
                                 high,   r->barrier_xid };

        res = mig_run_q(
            r, r->ctl, "control store",
            "UPDATE pgshift.migrations SET events_copied = $2::bigint, "
            "  rows_copied = $2::bigint, events_total = $3::bigint, rows_total = $3::bigint, "
            "  copy_rate = $4::float8, status_detail = $5, copy_progress = $6::jsonb, "
            "  source_high_water = coalesce($7::bigint, source_high_water), "
            "  copy_barrier_xid = coalesce(copy_barrier_xid, $8), "
            "  copy_barrier_at = coalesce(copy_barrier_at, now()), updated_at = now() "
            "WHERE id = $1::bigint RETURNING phase, paused, cleanup_pending",
            8, params, &rc);
    }
    cm_buf_free(&js);
    if (res == NULL)
        return rc;
    *v = verdict_of(res);
    PQclear(res);
    return RUN_OK;
}

/* ---- a batch ------------------------------------------------------------------------- */

/* Wait for the next result of c (NULL at the end); *broken on failure. */
static PGresult *next_result(run_t *r, PGconn *c, bool *broken)
{
    *broken = false;
    while (PQisBusy(c)) {
        if (mig_pq_wait(c, POLLIN, r->env->latch, IO_TIMEOUT_MS) <= 0 || !PQconsumeInput(c)) {
            *broken = true;
            return NULL;
        }
    }
    return PQgetResult(c);
}

/* Read results until NULL; keep the first failure (or the last success). */
static PGresult *finish_results(run_t *r, PGconn *c, bool *broken)
{
    PGresult *keep = NULL, *res;

    while ((res = next_result(r, c, broken)) != NULL) {
        if (keep == NULL || (mig_pq_ok(keep) && !mig_pq_ok(res))) {
            PQclear(keep);
            keep = res;
        } else {
            PQclear(res);
        }
    }
    if (*broken) {
        PQclear(keep);
        return NULL;
    }
    return keep;
}

/* Flush c's output (non-blocking mode) within the I/O timeout. */
static bool flush_all(run_t *r, PGconn *c)
{
    int f;

    while ((f = PQflush(c)) == 1)
        if (mig_pq_wait(c, POLLOUT, r->env->latch, IO_TIMEOUT_MS) <= 0)
            return false;
    return f == 0;
}

/* Read the rest of c's query: RUN_OK when nothing of it failed. */
static run_rc_t finish_query(run_t *r, PGconn *c, const char *what)
{
    bool broken;
    PGresult *res = finish_results(r, c, &broken);
    run_rc_t rc = RUN_OK;

    if (broken || (res != NULL && !mig_pq_ok(res))) {
        rc = mig_run_classify(r, c, res, what);
        if (rc == RUN_OK)
            rc = RUN_TRANSIENT;
    }
    PQclear(res);
    return rc;
}

/*
 * Skip c's plain successes (BEGIN, CREATE ... before a COPY) up to the start
 * of its k-th COPY, which must have status want. RUN_OK, or why not.
 */
static run_rc_t await_copy(run_t *r, PGconn *c, const char *what, ExecStatusType want, size_t k,
                           bool *broken)
{
    PGresult *res;
    run_rc_t rc;

    while ((res = next_result(r, c, broken)) != NULL &&
           (PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK))
        PQclear(res);
    if (res != NULL && PQresultStatus(res) == want) {
        PQclear(res);
        return RUN_OK;
    }
    rc = mig_run_classify(r, c, res, what);
    if (rc == RUN_OK) {
        mig_run_set_err(r, "XX000", cm_xasprintf("%s: no COPY %zu", what, k + 1));
        rc = RUN_TRANSIENT;
    }
    PQclear(res);
    return rc;
}

run_rc_t mig_run_stream_n(run_t *r, const char *out_sql, const char *in_sql, size_t n,
                          long long *rows)
{
    PGresult *res;
    bool broken;
    run_rc_t rc = RUN_OK;

    /* Both sides start in the same round trip. */
    if (!PQsendQuery(r->dst, in_sql))
        return mig_run_classify(r, r->dst, NULL, "target store");
    if (!PQsendQuery(r->src, out_sql)) {
        rc = mig_run_classify(r, r->src, NULL, "source store");
        mig_run_drop_stores(r); /* the target's COPY is half-started */
        return rc;
    }
    for (size_t k = 0; k < n; k++) {
        bool src_failed = false;

        rows[k] = 0;
        rc = await_copy(r, r->dst, "target store", PGRES_COPY_IN, k, &broken);
        if (rc != RUN_OK) {
            mig_run_drop_stores(r); /* the source is streaming its COPY: start both afresh */
            return rc;
        }
        rc = await_copy(r, r->src, "source store", PGRES_COPY_OUT, k, &broken);
        if (rc != RUN_OK) {
            (void)PQputCopyEnd(r->dst, "pgshift: source failed");
            return rc;
        }
        if (PQsetnonblocking(r->dst, 1) != 0)
            return mig_run_classify(r, r->dst, NULL, "target store");
        for (;;) {
            char *buf = NULL;
            int got = PQgetCopyData(r->src, &buf, 1);

            if (got > 0) {
                int put;

                while ((put = PQputCopyData(r->dst, buf, got)) == 0)
                    if (mig_pq_wait(r->dst, POLLOUT, r->env->latch, IO_TIMEOUT_MS) <= 0 ||
                        PQflush(r->dst) < 0) {
                        put = -1;
                        break;
                    }
                PQfreemem(buf);
                if (put < 0) {
                    rc = mig_run_classify(r, r->dst, NULL, "target store");
                    break;
                }
                continue;
            }
            if (got == 0) {
                /* Send what is buffered before sleeping on the source. */
                if (PQflush(r->dst) < 0) {
                    rc = mig_run_classify(r, r->dst, NULL, "target store");
                    break;
                }
                if (mig_pq_wait(r->src, POLLIN, r->env->latch, IO_TIMEOUT_MS) <= 0 ||
                    !PQconsumeInput(r->src)) {
                    rc = mig_run_classify(r, r->src, NULL, "source store");
                    break;
                }
                continue;
            }
            if (got == -2)
                src_failed = true;
            /* This COPY's own result; the source goes on to the next statement by itself. */
            res = next_result(r, r->src, &broken);
            if (res == NULL || !mig_pq_ok(res) || src_failed) {
                rc = mig_run_classify(r, r->src, res, "source store");
                if (rc == RUN_OK)
                    rc = RUN_TRANSIENT;
            }
            PQclear(res);
            break;
        }
        if (rc != RUN_OK) {
            /* The caller drops both connections: the target's transaction dies with it. */
            return rc;
        }
        if (PQputCopyEnd(r->dst, NULL) < 0 || !flush_all(r, r->dst) ||
            PQsetnonblocking(r->dst, 0) != 0)
            return mig_run_classify(r, r->dst, NULL, "target store");
        res = next_result(r, r->dst, &broken);
        if (res == NULL || !mig_pq_ok(res)) {
            rc = mig_run_classify(r, r->dst, res, "target store");
            PQclear(res);
            return rc;
        }
        rows[k] = strtoll(PQcmdTuples(res), NULL, 10);
        PQclear(res);
    }
    /* The source's query ends with its last COPY. */
    return finish_query(r, r->src, "source store");
}

run_rc_t mig_run_stream(run_t *r, const char *out_sql, const char *in_sql, long long *rows)
{
    run_rc_t rc = mig_run_stream_n(r, out_sql, in_sql, 1, rows);

    return rc != RUN_OK ? rc : finish_query(r, r->dst, "target store");
}

/* "(k1, k2)" */
char *mig_run_key_tuple(const tab_t *t)
{
    cm_buf_t b = { 0 };
    char *s;

    cm_buf_append_u8(&b, '(');
    for (size_t k = 0; k < t->n_key; k++) {
        if (k)
            cm_buf_append(&b, ", ", 2);
        cm_buf_append(&b, t->key_q[k], strlen(t->key_q[k]));
    }
    cm_buf_append_cstr(&b, ")");
    s = cm_xstrdup((const char *)b.data);
    cm_buf_free(&b);
    return s;
}

/* "((L::text[])[1]::type1, ...)" for a text[] literal L (already quoted). */
static char *key_values(const tab_t *t, const char *arr_lit)
{
    cm_buf_t b = { 0 };
    char *s;

    cm_buf_append_u8(&b, '(');
    for (size_t k = 0; k < t->n_key; k++) {
        char *e =
            cm_xasprintf("%s(%s::text[])[%zu]::%s", k ? ", " : "", arr_lit, k + 1, t->key_type[k]);

        cm_buf_append(&b, e, strlen(e));
        free(e);
    }
    cm_buf_append_cstr(&b, ")");
    s = cm_xstrdup((const char *)b.data);
    cm_buf_free(&b);
    return s;
}

/* "k1 DESC, k2 DESC" or "k1, k2" */
char *mig_run_key_order(const tab_t *t, bool desc)
{
    cm_buf_t b = { 0 };
    char *s;

    for (size_t k = 0; k < t->n_key; k++) {
        if (k)
            cm_buf_append(&b, ", ", 2);
        cm_buf_append(&b, t->key_q[k], strlen(t->key_q[k]));
        if (desc)
            cm_buf_append(&b, " DESC", 5);
    }
    cm_buf_append_u8(&b, 0);
    s = cm_xstrdup(b.data ? (const char *)b.data : "");
    cm_buf_free(&b);
    return s;
}

/* The WHERE of a batch: tenant, after last, up to `upto` (a text[] literal or NULL), within hi. */
static char *batch_where(run_t *r, const tab_t *t, const char *upto_lit)
{
    char *tuple = t->n_key ? mig_run_key_tuple(t) : NULL;
    char *after = NULL, *upper = NULL, *hi = NULL, *w;

    if (t->n_key && t->last_key != NULL) {
        char *l = mig_run_lit(r->src, t->last_key), *v = key_values(t, l);

        after = cm_xasprintf(" AND %s > %s", tuple, v);
        free(l);
        free(v);
    }
    if (t->n_key && upto_lit != NULL) {
        char *v = key_values(t, upto_lit);

        upper = cm_xasprintf(" AND %s <= %s", tuple, v);
        free(v);
    }
    if (t->has_pos && t->hi != NULL) {
        char *l = mig_run_lit(r->src, t->hi);

        hi = cm_xasprintf(" AND %s <= %s::%s", t->key_q[0], l, t->key_type[0]);
        free(l);
    }
    w = cm_xasprintf("%s = %s%s%s%s", r->tcol, r->tenant_lit, after ? after : "",
                     upper ? upper : "", hi ? hi : "");
    free(tuple);
    free(after);
    free(upper);
    free(hi);
    return w;
}

/* Map mode: the temporary stage table for t on the target connection. */
char *mig_run_stage_sql(tab_t *t, size_t i)
{
    if (t->stage != NULL)
        return NULL;
    t->stage = cm_xasprintf("pg_temp.pgshift_stage_%zu", i);
    return cm_xasprintf("CREATE TEMP TABLE IF NOT EXISTS pgshift_stage_%zu (LIKE %s) ON COMMIT "
                        "DELETE ROWS",
                        i, t->q);
}

/* The columns to write from a stage row "s" of table t (translate mode: I6). Owned. */
char *mig_run_select_list(run_t *r, const tab_t *t)
{
    (void)r;
    return cm_xstrdup(t->select_cols != NULL ? t->select_cols : t->copy_cols);
}

/*
 * Copy one batch of table i. *finished when the table has nothing more.
 */
static run_rc_t copy_batch(run_t *r, size_t i, bool *finished)
{
    tab_t *t = &r->tabs[i];
    const mig_env_t *env = r->env;
    char *where = NULL, *upto = NULL, *upto_lit = NULL, *sql, *out_sql, *in_sql, *order;
    long long expected = 0, rows = 0;
    run_rc_t rc;
    PGresult *res;
    bool map = strcmp(t->mode, "map") == 0, translate = strcmp(t->mode, "translate") == 0;
    uint64_t t_start = cm_now_us(), t_bound = 0, t_stream = 0;

    *finished = false;
    /* 1. The last key of this batch (an index-only walk of at most batch_size keys). */
    if (t->n_key > 0) {
        char *tuple = mig_run_key_tuple(t), *asc = mig_run_key_order(t, false),
             *desc = mig_run_key_order(t, true);
        cm_buf_t arr = { 0 };

        for (size_t k = 0; k < t->n_key; k++) {
            char *e = cm_xasprintf("%s%s::text", k ? ", " : "", t->key_q[k]);

            cm_buf_append(&arr, e, strlen(e));
            free(e);
        }
        cm_buf_append_u8(&arr, 0);
        where = batch_where(r, t, NULL);
        {
            char *cols = cm_xstrndup(tuple + 1, strlen(tuple) - 2);

            sql = cm_xasprintf("SELECT (ARRAY[%s])::text, count(*) OVER () FROM (SELECT %s FROM "
                               "%s WHERE %s ORDER BY %s LIMIT %d) s ORDER BY %s LIMIT 1",
                               (const char *)arr.data, cols, t->q, where, asc, r->batch_size, desc);
            free(cols);
        }
        cm_buf_free(&arr);
        free(tuple);
        free(asc);
        free(desc);
        free(where);
        where = NULL;
        res = mig_run_q(r, r->src, "source store", sql, 0, NULL, &rc);
        free(sql);
        if (res == NULL)
            return rc;
        if (PQntuples(res) == 0) {
            PQclear(res);
            *finished = true;
        } else {
            upto = cm_xstrdup(PQgetvalue(res, 0, 0));
            expected = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
            PQclear(res);
        }
    }
    if (*finished) {
        /* Nothing after the last key: mark the table done. */
        const char *params[] = { r->ids, t->name };

        rc = mig_run_x(r, r->dst, "target store",
                       "UPDATE pgshift.target_copy_state SET done = true, updated_at = now() "
                       "WHERE migration_id = $1::bigint AND table_name = $2",
                       2, params);
        if (rc == RUN_OK)
            t->done = true;
        return rc;
    }

    /* 2. The batch, in one target transaction with its progress. */
    if (upto != NULL)
        upto_lit = mig_run_lit(r->src, upto);
    where = batch_where(r, t, upto_lit);
    order = t->n_key ? mig_run_key_order(t, false) : NULL;
    out_sql = cm_xasprintf("COPY (SELECT %s FROM %s WHERE %s%s%s) TO STDOUT (FORMAT binary)",
                           map || translate ? t->all_cols : t->copy_cols, t->q, where,
                           order ? " ORDER BY " : "", order ? order : "");
    /* BEGIN, and the stage where one is needed, ride with the COPY's start. */
    {
        char *stage = map || translate ? mig_run_stage_sql(t, i) : NULL;

        in_sql = map || translate
                     ? cm_xasprintf("BEGIN; %s%sCOPY %s (%s) FROM STDIN (FORMAT binary)",
                                    stage ? stage : "", stage ? "; " : "", t->stage, t->all_cols)
                     : cm_xasprintf("BEGIN; COPY %s (%s) FROM STDIN (FORMAT binary)", t->q,
                                    t->copy_cols);
        free(stage);
    }
    t_bound = cm_now_us();
    rc = mig_run_stream(r, out_sql, in_sql, &rows);
    t_stream = cm_now_us();
    free(out_sql);
    free(in_sql);
    free(order);
    if (rc != RUN_OK)
        goto out;
    if (map) {
        /* Insert in source position order: the target's positions increase the same way. */
        char *pos = mig_quote_ident(r->dst, env->position_column);
        char *rk = mig_quote_ident(r->dst, env->row_key);

        sql = cm_xasprintf("WITH ins AS (INSERT INTO %s (%s) SELECT %s FROM %s ORDER BY %s "
                           "RETURNING %s AS pgshift_tpos, %s AS pgshift_rk) "
                           "INSERT INTO pgshift.target_position_map (migration_id, "
                           "source_position, target_position) "
                           "SELECT %s, s.%s, ins.pgshift_tpos FROM ins JOIN %s s "
                           "ON s.%s = ins.pgshift_rk",
                           t->q, t->copy_cols, t->copy_cols, t->stage, pos, pos, rk, r->ids, pos,
                           t->stage, rk);
        free(pos);
        free(rk);
        rc = mig_run_x(r, r->dst, "target store", sql, 0, NULL);
        free(sql);
        if (rc != RUN_OK)
            goto out;
    } else if (translate) {
        char *sel = mig_run_select_list(r, t);

        sql = cm_xasprintf("INSERT INTO %s (%s) SELECT %s FROM %s s", t->q, t->copy_cols, sel,
                           t->stage);
        free(sel);
        rc = mig_run_x(r, r->dst, "target store", sql, 0, NULL);
        free(sql);
        if (rc != RUN_OK)
            goto out;
    }
    {
        char n[24];
        const char *params[] = { r->ids, t->name, upto, n,
                                 (t->n_key == 0 || expected < r->batch_size) ? "true" : "false" };

        snprintf(n, sizeof(n), "%lld", rows);
        rc = mig_run_x(
            r, r->dst, "target store",
            "UPDATE pgshift.target_copy_state SET last_key = coalesce($3, last_key), "
            "  rows_copied = rows_copied + $4::bigint, done = $5::bool, updated_at = now() "
            "WHERE migration_id = $1::bigint AND table_name = $2",
            5, params);
        if (rc != RUN_OK)
            goto out;
        rc = mig_run_x(r, r->dst, "target store", "COMMIT", 0, NULL);
        if (rc != RUN_OK)
            goto out;
        /* Committed: now it is true. */
        if (upto != NULL) {
            free(t->last_key);
            t->last_key = upto;
            upto = NULL;
        }
        t->copied += rows;
        r->copied += rows;
        t->done = t->n_key == 0 || expected < r->batch_size;
        *finished = t->done;
        LOG_DEBUG(LOG_CTX,
                  "migration %s: %s: %lld rows, bound %.1f ms, copy %.1f ms, commit %.1f ms",
                  r->ids, t->name, rows, (double)(t_bound - t_start) / 1000.0,
                  (double)(t_stream - t_bound) / 1000.0, (double)(cm_now_us() - t_stream) / 1000.0);
    }
out:
    free(where);
    free(upto);
    free(upto_lit);
    if (rc == RUN_OK && r->rate > 0)
        r->next_batch_us += (uint64_t)((double)rows * 1e6 / r->rate);
    return rc;
}

/* Map mode: copy the target's new pairs to the control store (idempotent). */
run_rc_t mig_run_mirror_map(run_t *r)
{
    const char *params[] = { r->ids, r->mirror_from ? r->mirror_from : "-9223372036854775808" };
    run_rc_t rc;
    PGresult *res =
        mig_run_q(r, r->dst, "target store",
                  "SELECT coalesce(array_agg(source_position ORDER BY source_position), "
                  "'{}')::text, coalesce(array_agg(target_position ORDER BY source_position), "
                  "'{}')::text, max(source_position)::text "
                  "FROM pgshift.target_position_map "
                  "WHERE migration_id = $1::bigint AND source_position > $2::bigint",
                  2, params, &rc);

    if (res == NULL)
        return rc;
    if (!PQgetisnull(res, 0, 2)) {
        const char *p2[] = { r->ids, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1) };

        rc = mig_run_x(r, r->ctl, "control store",
                       "INSERT INTO pgshift.position_map (migration_id, source_position, "
                       "target_position) SELECT $1::bigint, s, t "
                       "FROM unnest($2::bigint[], $3::bigint[]) AS u(s, t) ON CONFLICT DO NOTHING",
                       3, p2);
        if (rc == RUN_OK) {
            free(r->mirror_from);
            r->mirror_from = cm_xstrdup(PQgetvalue(res, 0, 2));
        }
    }
    PQclear(res);
    return rc;
}

static void rate_sample(run_t *r)
{
    uint64_t now = cm_now_ms();
    size_t k = 0;

    /* Keep the samples of the window (plus one older one as the baseline). */
    while (r->win_n - k > 1 && now - r->win_ms[k + 1] >= RATE_WINDOW_MS)
        k++;
    if (k > 0) {
        memmove(r->win_ms, r->win_ms + k, (r->win_n - k) * sizeof(r->win_ms[0]));
        memmove(r->win_rows, r->win_rows + k, (r->win_n - k) * sizeof(r->win_rows[0]));
        r->win_n -= k;
    }
    if (r->win_n == CM_ARRAY_LEN(r->win_ms)) {
        memmove(r->win_ms, r->win_ms + 1, (r->win_n - 1) * sizeof(r->win_ms[0]));
        memmove(r->win_rows, r->win_rows + 1, (r->win_n - 1) * sizeof(r->win_rows[0]));
        r->win_n--;
    }
    r->win_ms[r->win_n] = now;
    r->win_rows[r->win_n] = r->copied;
    r->win_n++;
    if (r->win_n >= 2 && now > r->win_ms[0])
        r->rate_now = (double)(r->copied - r->win_rows[0]) * 1000.0 / (double)(now - r->win_ms[0]);
}

/* ---- the copy ------------------------------------------------------------------------ */

static run_rc_t to_bulk_copy(run_t *r)
{
    const char *params[] = { r->ids };

    return mig_run_x(
        r, r->ctl, "control store",
        "WITH m AS (UPDATE pgshift.migrations SET phase = 'BULK_COPY', "
        "    bulk_copy_started_at = now(), updated_at = now(), status_detail = 'starting' "
        "  WHERE id = $1::bigint AND phase = 'PENDING' AND NOT cleanup_pending "
        "  RETURNING id) "
        "INSERT INTO pgshift.audit_log (migration_id, event_type, operator, details) "
        "SELECT id, 'phase_changed', 'pgshift', "
        "  '{\"from\": \"PENDING\", \"to\": \"BULK_COPY\"}' FROM m",
        1, params);
}

static run_rc_t copy_complete(run_t *r, uint64_t started_ms)
{
    char copied[24], secs[32];
    const char *params[] = { r->ids, copied, secs };

    snprintf(copied, sizeof(copied), "%lld", r->copied);
    snprintf(secs, sizeof(secs), "%.3f", (double)(cm_now_ms() - started_ms) / 1000.0);
    LOG_INFO(LOG_CTX, "migration %s: bulk copy complete, %s rows", r->ids, copied);
    return mig_run_x(
        r, r->ctl, "control store",
        "WITH m AS (UPDATE pgshift.migrations SET bulk_copy_completed_at = now(), "
        "    events_copied = $2::bigint, rows_copied = $2::bigint, copy_rate = 0, "
        "    status_detail = NULL, updated_at = now() "
        "  WHERE id = $1::bigint AND phase = 'BULK_COPY' AND bulk_copy_completed_at IS NULL "
        "  AND NOT cleanup_pending RETURNING id) "
        "INSERT INTO pgshift.audit_log (migration_id, event_type, operator, details) "
        "SELECT id, 'progress_checkpoint', 'pgshift', jsonb_build_object('bulk_copy', "
        "  'complete', 'events_copied', $2::bigint, 'seconds_this_run', $3::numeric) FROM m",
        3, params);
}

static run_rc_t do_copy(run_t *r)
{
    run_rc_t rc;
    bool found;
    verdict_t v;
    uint64_t started = cm_now_ms();

    rc = mig_run_connect_stores(r);
    if (rc != RUN_OK)
        return rc;
    rc = ensure_target_schema(r);
    if (rc != RUN_OK)
        return rc;
    rc = mig_run_read_plan(r, &found);
    if (rc != RUN_OK)
        return rc;
    if (!found) {
        rc = make_plan(r);
        if (rc != RUN_OK)
            return rc;
    }
    if (strcmp(r->position_mode, "map") == 0 && r->mirror_from == NULL) {
        const char *params[] = { r->ids };
        PGresult *res = mig_run_q(r, r->ctl, "control store",
                                  "SELECT max(source_position)::text FROM pgshift.position_map "
                                  "WHERE migration_id = $1::bigint",
                                  1, params, &rc);

        if (res == NULL)
            return rc;
        if (!PQgetisnull(res, 0, 0))
            r->mirror_from = cm_xstrdup(PQgetvalue(res, 0, 0));
        PQclear(res);
        rc = mig_run_mirror_map(r); /* what a crash left unmirrored */
        if (rc != RUN_OK)
            return rc;
    }
    r->last_percent_audited = r->total > 0 ? (int)(r->copied * 100 / r->total) / 10 * 10 : 0;
    r->next_batch_us = cm_now_us();
    r->win_n = 0;
    rate_sample(r);
    rc = publish(r, "copying", &v);
    if (rc != RUN_OK)
        return rc;
    if (v == LEAVE)
        return RUN_RECHECK;
    for (size_t i = 0; i < r->n_tabs; i++) {
        bool finished = r->tabs[i].done;

        while (!finished) {
            uint64_t now;
            int pct;

            if (v == PAUSE) {
                rc = hold_while_paused(r);
                if (rc != RUN_OK)
                    return rc;
            }
            rc = wait_slot(r);
            if (rc != RUN_OK)
                return rc;
            now = cm_now_us();
            if (r->next_batch_us + RATE_CREDIT_US < now)
                r->next_batch_us = now - RATE_CREDIT_US; /* credit of RATE_CREDIT_US at most */
            rc = copy_batch(r, i, &finished);
            if (rc != RUN_OK)
                return rc;
            if (strcmp(r->tabs[i].mode, "map") == 0) {
                rc = mig_run_mirror_map(r);
                if (rc != RUN_OK)
                    return rc;
            }
            rate_sample(r);
            rc = publish(r, "copying", &v);
            if (rc != RUN_OK)
                return rc;
            pct = r->total > 0 ? (int)(CM_MIN(r->copied, r->total) * 100 / r->total) : 100;
            if (pct / 10 * 10 > r->last_percent_audited && pct < 100) {
                char *d = cm_xasprintf("{\"percent\": %d, \"events_copied\": %lld, "
                                       "\"events_total\": %lld, \"rate_events_per_s\": %.0f}",
                                       pct / 10 * 10, r->copied, r->total, r->rate_now);

                r->last_percent_audited = pct / 10 * 10;
                mig_run_audit(r, "progress_checkpoint", d);
                free(d);
            }
            if (v == LEAVE)
                return RUN_RECHECK;
        }
    }
    return copy_complete(r, started);
}

/* ---- clean-up after ABORT / FAILED --------------------------------------------------- */

static run_rc_t do_cleanup(run_t *r)
{
    const mig_env_t *env = r->env;
    long long removed = 0;
    run_rc_t rc;
    PGresult *res;

    if (r->dst_idx < 0) {
        mig_run_set_err(r, "42704", cm_xstrdup("the target store is no longer configured"));
        return RUN_TRANSIENT;
    }
    rc = mig_run_connect(r, r->dst_idx, "pgshift-copy", "cannot clean target store", &r->dst);
    if (rc != RUN_OK)
        return rc;
    (void)mig_run_set_status(r, "removing the copied rows from the target");
    rc = mig_run_x(r, r->dst, "target store", "BEGIN", 0, NULL);
    if (rc != RUN_OK)
        return rc;
    /* Only tenant rows: the target held none before MIGRATE (a precondition). */
    for (size_t i = 0; i < env->n_tables; i++) {
        char *qt = mig_quote_table(r->dst, env->tables[i]);
        char *tc = mig_quote_ident(r->dst, env->tenant_column);
        char *tl = mig_run_lit(r->dst, r->tenant);
        const char *params[] = { qt, env->tenant_column };
        bool has;

        res = mig_run_q(r, r->dst, "target store",
                        "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass($1) "
                        "AND attname = $2 AND NOT attisdropped",
                        2, params, &rc);
        has = res != NULL && strcmp(PQgetvalue(res, 0, 0), "1") == 0;
        PQclear(res);
        if (rc == RUN_OK && has) {
            char *d = cm_xasprintf("DELETE FROM %s WHERE %s = %s", qt, tc, tl);

            res = mig_run_q(r, r->dst, "target store", d, 0, NULL, &rc);
            free(d);
            if (res != NULL)
                removed += strtoll(PQcmdTuples(res), NULL, 10);
            PQclear(res);
        }
        free(qt);
        free(tc);
        free(tl);
        if (rc != RUN_OK)
            return rc;
    }
    {
        const char *params[] = { r->ids };

        res =
            mig_run_q(r, r->dst, "target store",
                      "SELECT to_regclass('pgshift.target_copy_state') IS NOT NULL", 0, NULL, &rc);
        if (res != NULL && strcmp(PQgetvalue(res, 0, 0), "t") == 0) {
            PQclear(res);
            rc = mig_run_x(r, r->dst, "target store",
                           "DELETE FROM pgshift.target_copy_state WHERE migration_id = $1::bigint",
                           1, params);
            if (rc == RUN_OK)
                rc = mig_run_x(
                    r, r->dst, "target store",
                    "DELETE FROM pgshift.target_position_map WHERE migration_id = $1::bigint", 1,
                    params);
        } else {
            PQclear(res);
        }
    }
    if (rc != RUN_OK)
        return rc;
    rc = mig_run_x(r, r->dst, "target store", "COMMIT", 0, NULL);
    if (rc != RUN_OK)
        return rc;
    {
        char n[24];
        const char *params[] = { r->ids, n };

        snprintf(n, sizeof(n), "%lld", removed);
        rc =
            mig_run_x(r, r->ctl, "control store",
                      "WITH m AS (UPDATE pgshift.migrations SET cleanup_pending = false, "
                      "    status_detail = NULL, updated_at = now() "
                      "  WHERE id = $1::bigint AND cleanup_pending RETURNING id), "
                      "d AS (DELETE FROM pgshift.position_map WHERE migration_id = $1::bigint) "
                      "INSERT INTO pgshift.audit_log (migration_id, event_type, operator, details) "
                      "SELECT id, 'progress_checkpoint', 'pgshift', jsonb_build_object("
                      "  'target_cleaned', true, 'rows_removed', $2::bigint) FROM m",
                      2, params);
    }
    LOG_INFO(LOG_CTX, "migration %s: removed %lld copied rows from the target", r->ids, removed);
    return rc;
}

/* ---- the runner ---------------------------------------------------------------------- */

static run_rc_t take_lock(run_t *r, bool *got)
{
    const char *params[] = { r->ids };
    run_rc_t rc;
    PGresult *res =
        mig_run_q(r, r->ctl, "control store",
                  "SELECT pg_try_advisory_lock(" RUN_LOCK_CLASS ", $1::int)", 1, params, &rc);

    *got = false;
    if (res == NULL)
        return rc;
    *got = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (*got) {
        char who[300], host[256] = "?";
        const char *p2[] = { r->ids, who };

        (void)gethostname(host, sizeof(host) - 1);
        snprintf(who, sizeof(who), "%s:%ld", host, (long)getpid());
        rc = mig_run_x(r, r->ctl, "control store",
                       "UPDATE pgshift.migrations SET runner = $2 WHERE id = $1::bigint", 2, p2);
    }
    return rc;
}

void mig_runner_main(const mig_env_t *env, int64_t id)
{
    run_t r = { .env = env, .id = id, .src_idx = -1, .dst_idx = -1 };
    int backoff = BACKOFF_FIRST_MS;

    snprintf(r.ids, sizeof(r.ids), "%lld", (long long)id);
    while (!mig_run_stopping(&r)) {
        run_rc_t rc = RUN_OK;
        bool needed = false;

        if (r.ctl == NULL)
            rc = connect_control(&r);
        if (rc == RUN_OK && !r.locked) {
            bool got = false;

            rc = take_lock(&r, &got);
            if (rc == RUN_OK && !got) {
                /* Another process runs it; wait, unless it no longer needs anyone. */
                rc = load_record(&r, &needed);
                if (rc == RUN_OK && !needed)
                    break;
                if (mig_run_nap(&r, LOCK_RETRY_MS))
                    break;
                continue;
            }
            r.locked = got;
        }
        if (rc == RUN_OK)
            rc = load_record(&r, &needed);
        if (rc == RUN_OK && !needed)
            break;
        if (rc == RUN_OK && r.cleanup_pending) {
            mig_run_drop_conn(&r.src);
            rc = do_cleanup(&r);
            if (rc == RUN_OK)
                continue; /* the record says what is left: nothing, normally */
        } else if (rc == RUN_OK) {
            if (strcmp(r.phase, "PENDING") == 0)
                rc = to_bulk_copy(&r);
            if (rc == RUN_OK)
                rc = load_record(&r, &needed);
            if (rc == RUN_OK && needed && !r.cleanup_pending &&
                ((strcmp(r.phase, "BULK_COPY") == 0 && r.copy_complete) ||
                 strcmp(r.phase, "DUAL_WRITE") == 0 || strcmp(r.phase, "CUTOVER") == 0)) {
                rc = mig_dw_run(&r);
            } else if (rc == RUN_OK && needed && !r.cleanup_pending &&
                       strcmp(r.phase, "BULK_COPY") == 0) {
                rc = hold_while_paused(&r);
                if (rc == RUN_OK)
                    rc = do_copy(&r);
            }
            if (rc == RUN_OK) {
                backoff = BACKOFF_FIRST_MS;
                continue;
            }
        }
        switch (rc) {
        case RUN_OK:
            break;
        case RUN_RECHECK:
            mig_run_drop_stores(&r);
            continue;
        case RUN_STOP:
            goto out;
        case RUN_TRANSIENT:
            mig_run_note_error(&r, true);
            mig_run_drop_stores(&r);
            if (r.ctl != NULL && PQstatus(r.ctl) != CONNECTION_OK) {
                mig_run_drop_conn(&r.ctl);
                r.locked = false;
            }
            if (mig_run_nap(&r, backoff))
                goto out;
            backoff = CM_MIN(backoff * 2, BACKOFF_MAX_MS);
            break;
        case RUN_PERMANENT:
            mig_run_drop_stores(&r);
            if (r.cleanup_pending && r.ctl != NULL)
                mig_run_note_error(&r, true); /* an ended migration: retry, never spin */
            if (r.ctl == NULL || r.cleanup_pending || mig_run_fail_migration(&r) != RUN_RECHECK) {
                if (mig_run_nap(&r, backoff))
                    goto out;
                backoff = CM_MIN(backoff * 2, BACKOFF_MAX_MS);
            }
            break;
        }
    }
out:
    mig_run_drop_stores(&r);
    mig_run_drop_conn(&r.ctl); /* releases the advisory lock */
    tabs_free(&r);
    record_free(&r);
    free(r.tenant_lit);
    free(r.tcol);
    free(r.mirror_from);
    free(r.barrier_xid);
    free(r.err);
}
