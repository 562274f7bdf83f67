/*
 * migrator/dualwrite.c - DUAL_WRITE and CUTOVER of one migration, on its
 * runner thread (copy.c hands over once the bulk copy is complete).
 *
 * Mirror rows, not statements. The source stays the only store the
 * application writes to until the switch (I3): pgshift forwards the
 * client's write to the source alone and acknowledges it from there. In
 * rounds of dual_write_interval_ms the runner reads the tenant rows that
 * committed on the source since the last round and writes those very rows
 * (every column as the source committed it) to the target, idempotently:
 * ON CONFLICT (row key) DO NOTHING for position tables, upserts by primary
 * key for the others, in position order.
 *
 * Which rows are new: a watermark per table, W = an xid8. Every change of a
 * tenant row by a transaction whose xid is below W is on the target. A
 * round first reads X = xmin of a snapshot S, then copies the tenant rows
 * with xmin >= W (age(xmin) <= age(W)) on later snapshots; afterwards W = X:
 * a change those reads do not see belongs to a transaction running at S
 * (xid >= X), or to one that started later (a transaction without an xid
 * at S gets one later, >= xmax(S)); a snapshot's xmin never goes back. The bulk copy's barrier X0
 * is the first W - the hand-over contract of copy.c: no gap, and no duplicate thanks to the row
 * key.
 *
 * Keeping rounds cheap: the xmin filter needs a scan of the tenant's rows.
 * Position tables are scanned only above a lower bound L: every row at or
 * below L is on the target. L moves with a barrier on virtual transaction
 * ids (what CREATE INDEX CONCURRENTLY waits on): read the table's highest
 * position M, then the vxids of every open transaction; once none of them
 * is left, every row with a position <= M has committed or aborted (its
 * position was drawn before M was read, so inside one of those
 * transactions), the next round's snapshot sees it and copies it, and L
 * becomes M. Tables without a position (outbox, snapshots) are mutable:
 * they are scanned whole for the tenant every second and in the cutover's
 * final sweep, which also removes target rows deleted on the source.
 *
 * Failures of the target never reach clients: a failed round is retried,
 * recorded in pgshift.dual_write_failures (repaired = the first round that
 * succeeds after it, since W did not move), and guarded by a circuit
 * breaker (failure_threshold, recovery_timeout_seconds,
 * half_open_max_calls).
 *
 * CUTOVER (DESIGN.md, "Hard parts"): persist phase CUTOVER with a new attempt
 * number -> every pgshift process holds new work of the tenant, lets the
 * transactions already inside finish, and acknowledges (ctl.c); once every
 * live process has, the runner fences the tenant on the source (a row in
 * pgshift.fence, checked by a trigger on every tenant table, taken under an
 * exclusive advisory lock that waits out every writer of the tenant still
 * in flight, pgshift's or not), runs the exact final round, moves the
 * target's sequence past the source's, and persists the route flip with
 * phase COMPLETED in one control-store transaction. Any failure, an ABORT,
 * or the budget cutover_timeout_ms running out before the flip: the fence
 * is lifted, the phase goes back to DUAL_WRITE, cutover_rolled_back is
 * audited, and the held work resumes on the source. A fenced source
 * refuses every later write of the tenant (SQLSTATE 40001), so a pgshift
 * process with a stale route cannot commit there (I5).
 */
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "migrator/runner.h"

#define LOG_CTX            "dual-write"
#define FENCE_LOCK_CLASS   "1885827945" /* 'pgsi': advisory lock class of tenant fences */
#define STATUS_EVERY_MS    100          /* publish status, look at the record */
#define FULL_SCAN_EVERY_MS 1000         /* mutable tables */
#define STATE_EVERY_MS     1000         /* persist watermarks */
#define CONNECT_TIMEOUT_MS 10000
#define FLIP_RESERVE_MS    5 /* keep this much of the budget for the flip itself */
#define ACK_RTT_MS         5 /* predicted cost of the hold hand-shake */
#define AUTO_RETRY_MS      2000

enum { VERIFY_PENDING, VERIFY_PASSED, VERIFY_FAILED };

typedef enum breaker {
    BRK_CLOSED,
    BRK_OPEN,
    BRK_HALF_OPEN,
} breaker_t;

/* Per table of the plan (same index as r->tabs). */
typedef struct dw_tab {
    char *w;      /* xid8: changes by transactions below it are on the target */
    char *lo;     /* position tables: every row <= lo is on the target; NULL = none known */
    char *bar_hi; /* the pending barrier's highest position; NULL = none */
    char *new_lo; /* set when the barrier passed before this round's snapshot */
    uint64_t last_full_ms;
    long long last_count; /* mutable tables: the tenant's rows after the last full round, -1 */
    char *v_goal;         /* consistency check: the position it checks up to (lo at its start) */
    char *v_upto;         /* ... and has checked up to; NULL = from the start */
    long long v_rows;     /* rows found equal so far */
    bool v_done;
    bool scanned; /* this round read the table */
} dw_tab_t;

typedef struct dw {
    run_t *r;
    dw_tab_t *t;
    PGconn *fence;      /* writable source connection: fence and advisory lock */
    char *bar_vxids;    /* the pending barrier's vxids (text[] literal), NULL = none */
    char *tenant_src;   /* tenant_canon as a literal for the source */
    char *tenant_canon; /* the tenant as the source's tenant column prints it */

    /* settings */
    int interval_ms, max_lag, timeout_ms;
    int failure_threshold, recovery_s, half_open_max;
    int timeout_minutes;
    bool auto_cutover;

    /* status */
    long long applied_total;
    long long lag_events; /* rows the last successful round had to bring over */
    double lag_ewma;
    bool converging;
    uint64_t caught_up_ms;  /* snapshot time of the last successful round */
    uint64_t last_round_ms; /* duration */
    uint64_t last_full_round_ms;
    double ms_per_row;
    int open_txns;
    int64_t oldest_open_ms;
    breaker_t brk;
    int fails;
    uint64_t opened_ms;
    int half_open_calls;
    bool failure_open; /* a dual_write_failures row is open */
    uint64_t started_ms;
    bool warned_timeout;
    uint64_t last_status_ms, last_state_ms;

    /* consistency check (verify_consistency, VERIFY id) */
    bool verify_on;          /* verify_consistency: the cutover waits for a passed check */
    int verify_state;        /* VERIFY_PENDING, VERIFY_PASSED, VERIFY_FAILED */
    char verify_detail[400]; /* what the last check found */
    int64_t verify_seen;     /* the last VERIFY request answered */
    int64_t verify_pending;
    bool verify_running;      /* a check is under way, one chunk per round */
    int64_t verify_request;   /* the request it answers, 0 = the automatic check */
    uint64_t verify_start_ms; /* */

    /* cutover */
    int64_t request_seen; /* the last CUTOVER request answered */
    int64_t request_pending;
    uint64_t next_auto_ms;
    bool target_unfenced; /* lift_target_fence ran */
    char *sweep_prelude;  /* target SQL run in the final sweep's transaction (sequence bumps) */
} dw_t;

static const char *brk_name(breaker_t b)
{
    switch (b) {
    case BRK_CLOSED:
        return "closed";
    case BRK_OPEN:
        return "open";
    case BRK_HALF_OPEN:
        return "half_open";
    }
    return "?";
}

static bool is_target_error(const run_t *r)
{
    return r->err != NULL && strncmp(r->err, "target", 6) == 0;
}

static void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = v ? cm_xstrdup(v) : NULL;
}

static uint64_t realtime_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* s as a JSON string ("..." with escapes), or null. Owned. */
static char *json_str_or_null(const char *s)
{
    cm_buf_t b = { 0 };
    char *out;

    if (s == NULL)
        return cm_xstrdup("null");
    cm_buf_append_json_str(&b, s);
    cm_buf_append_u8(&b, 0);
    out = cm_xstrdup((const char *)b.data);
    cm_buf_free(&b);
    return out;
}

/* Drop notifications queued on c (LISTEN leftovers). */
static void drop_notifies(PGconn *c)
{
    PGnotify *n;

    if (c == NULL)
        return;
    (void)PQconsumeInput(c);
    while ((n = PQnotifies(c)) != NULL)
        PQfreemem(n);
}

/* The low 32 bits of an xid8 text, as the xid the rows' xmin is compared with. */
static void xid32(const char *xid8, char out[16])
{
    unsigned long long v = strtoull(xid8, NULL, 10);

    snprintf(out, 16, "%llu", v & 0xffffffffULL);
}

/*
 * "tcol = T AND age(xmin) <= age(W)[ AND pos > L]": the tenant rows of table
 * i changed since its watermark (above its lower bound, for position
 * tables). Owned.
 */
static char *changed_where(const dw_t *d, size_t i)
{
    const run_t *r = d->r;
    const tab_t *t = &r->tabs[i];
    char w32[16], *lo = NULL, *w;

    xid32(d->t[i].w, w32);
    if (t->has_pos && d->t[i].lo != NULL) {
        char *l = mig_run_lit(r->src, d->t[i].lo);

        lo = cm_xasprintf(" AND %s > %s::%s", t->key_q[0], l, t->key_type[0]);
        free(l);
    }
    w = cm_xasprintf("%s = %s AND age(xmin) <= age('%s'::xid)%s", r->tcol, r->tenant_lit, w32,
                     lo ? lo : "");
    free(lo);
    return w;
}

/* ---- set-up --------------------------------------------------------------------------- */

static void dw_free(dw_t *d)
{
    if (d->t != NULL)
        for (size_t i = 0; i < d->r->n_tabs; i++) {
            free(d->t[i].w);
            free(d->t[i].lo);
            free(d->t[i].bar_hi);
            free(d->t[i].new_lo);
            free(d->t[i].v_goal);
            free(d->t[i].v_upto);
        }
    free(d->t);
    mig_run_drop_conn(&d->fence);
    free(d->bar_vxids);
    free(d->tenant_src);
    free(d->sweep_prelude);
    free(d->tenant_canon);
}

/* Settings, the saved watermarks and the cutover hand-shake from the record. */
static run_rc_t load_state(dw_t *d)
{
    run_t *r = d->r;
    const char *params[] = { r->ids };
    run_rc_t rc;
    PGresult *res = mig_run_q(
        r, r->ctl, "control store",
        "SELECT coalesce((config->>'dual_write_interval_ms')::int, $d$20$d$::int), "
        "  coalesce((config->>'cutover_max_lag_events')::int, 100), "
        "  coalesce((config->>'cutover_timeout_ms')::int, 500), "
        "  coalesce((config->>'failure_threshold')::int, 5), "
        "  coalesce((config->>'recovery_timeout_seconds')::int, 30), "
        "  coalesce((config->>'half_open_max_calls')::int, 1), "
        "  coalesce((config->>'dual_write_timeout_minutes')::int, 30), "
        "  coalesce((config->>'auto_cutover')::bool, false), "
        "  copy_barrier_xid, dw_state::text, cutover_request, "
        "  coalesce((cutover_result->>'request')::bigint, 0), "
        "  (extract(epoch FROM now() - coalesce(dual_write_started_at, now())) * 1000)::bigint, "
        "  EXISTS (SELECT 1 FROM pgshift.dual_write_failures f WHERE f.migration_id = $1::bigint "
        "    AND f.repaired_at IS NULL), "
        "  coalesce((config->>'verify_consistency')::bool, true), verify_request, "
        "  coalesce((verify_result->>'request')::bigint, 0) "
        "FROM pgshift.migrations WHERE id = $1::bigint",
        1, params, &rc);

    if (res == NULL)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return RUN_RECHECK;
    }
    d->interval_ms = atoi(PQgetvalue(res, 0, 0));
    d->max_lag = atoi(PQgetvalue(res, 0, 1));
    d->timeout_ms = atoi(PQgetvalue(res, 0, 2));
    d->failure_threshold = atoi(PQgetvalue(res, 0, 3));
    d->recovery_s = atoi(PQgetvalue(res, 0, 4));
    d->half_open_max = atoi(PQgetvalue(res, 0, 5));
    d->timeout_minutes = atoi(PQgetvalue(res, 0, 6));
    d->auto_cutover = strcmp(PQgetvalue(res, 0, 7), "t") == 0;
    if (d->interval_ms < 1)
        d->interval_ms = 20;
    d->request_pending = strtoll(PQgetvalue(res, 0, 10), NULL, 10);
    d->request_seen = strtoll(PQgetvalue(res, 0, 11), NULL, 10);
    d->started_ms = cm_now_ms() - (uint64_t)strtoll(PQgetvalue(res, 0, 12), NULL, 10);
    d->failure_open = strcmp(PQgetvalue(res, 0, 13), "t") == 0;
    d->verify_on = strcmp(PQgetvalue(res, 0, 14), "t") == 0;
    d->verify_pending = strtoll(PQgetvalue(res, 0, 15), NULL, 10);
    d->verify_seen = strtoll(PQgetvalue(res, 0, 16), NULL, 10);
    for (size_t i = 0; i < r->n_tabs; i++) {
        const char *x0 = PQgetisnull(res, 0, 8) ? NULL : PQgetvalue(res, 0, 8);
        char *sql = cm_xasprintf("SELECT $1::jsonb #>> '{%s,w}', $1::jsonb #>> '{%s,lo}'",
                                 r->tabs[i].name, r->tabs[i].name);
        const char *p2[] = { PQgetvalue(res, 0, 9) };
        run_rc_t rc2;
        PGresult *st = mig_run_q(r, r->ctl, "control store", sql, 1, p2, &rc2);

        free(sql);
        if (st == NULL) {
            PQclear(res);
            return rc2;
        }
        set_str(&d->t[i].w, PQgetisnull(st, 0, 0) ? x0 : PQgetvalue(st, 0, 0));
        set_str(&d->t[i].lo, PQgetisnull(st, 0, 1) ? NULL : PQgetvalue(st, 0, 1));
        PQclear(st);
        if (d->t[i].w == NULL) {
            PQclear(res);
            mig_run_set_err(r, "XX000", cm_xstrdup("the bulk copy left no barrier to start from"));
            return RUN_PERMANENT;
        }
    }
    PQclear(res);
    return RUN_OK;
}

/*
 * The fence on the source: a table of fenced tenants and a trigger on every
 * tenant table that refuses their writes, under a shared advisory lock per
 * tenant that the cutover takes exclusively. Created once, idempotent.
 */
static run_rc_t install_fence(dw_t *d)
{
    run_t *r = d->r;
    const mig_env_t *env = r->env;
    cm_buf_t sql = { 0 };
    char *tc, *s;
    run_rc_t rc;
    PGresult *res;

    rc = mig_run_connect(r, r->src_idx, "pgshift-fence", "source store", &d->fence);
    if (rc != RUN_OK)
        return rc;
    if (d->tenant_src == NULL && r->n_tabs > 0) {
        /*
         * The tenant as the trigger sees it (NEW.col::text): through the
         * column's type, so '0A1B...' and '0a1b...' are one uuid.
         */
        char *tl = mig_run_lit(d->fence, r->tabs[0].q),
             *cl = mig_run_lit(d->fence, env->tenant_column);
        char *q1 = cm_xasprintf("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                                "attrelid = to_regclass(%s) AND attname = %s",
                                tl, cl);

        res = mig_run_q(r, d->fence, "source store", q1, 0, NULL, &rc);
        free(q1);
        free(tl);
        free(cl);
        if (res == NULL)
            return rc;
        if (PQntuples(res) == 1) {
            char *vl = mig_run_lit(d->fence, r->tenant);
            char *q2 = cm_xasprintf("SELECT (%s::%s)::text", vl, PQgetvalue(res, 0, 0));
            PGresult *cv = mig_run_q(r, d->fence, "source store", q2, 0, NULL, &rc);

            free(vl);
            free(q2);
            if (cv == NULL) {
                PQclear(res);
                return rc;
            }
            d->tenant_canon = cm_xstrdup(PQgetvalue(cv, 0, 0));
            PQclear(cv);
        }
        PQclear(res);
        if (d->tenant_canon == NULL)
            d->tenant_canon = cm_xstrdup(r->tenant);
        d->tenant_src = mig_run_lit(d->fence, d->tenant_canon);
    }
    tc = mig_quote_ident(d->fence, env->tenant_column);
    s = cm_xasprintf(
        "BEGIN;\n"
        "SET LOCAL client_min_messages = warning;\n"
        "SELECT pg_advisory_xact_lock(" FENCE_LOCK_CLASS ", 0);\n"
        "CREATE SCHEMA IF NOT EXISTS pgshift;\n"
        "CREATE TABLE IF NOT EXISTS pgshift.fence (tenant text PRIMARY KEY, migration_id bigint, "
        "  fenced_at timestamptz NOT NULL DEFAULT now());\n"
        "CREATE OR REPLACE FUNCTION pgshift.fence_guard() RETURNS trigger LANGUAGE plpgsql AS "
        "$pgshift$\n"
        "DECLARE t text; m bigint;\n"
        "BEGIN\n"
        "  IF TG_OP = 'DELETE' THEN t := OLD.%s::text; ELSE t := NEW.%s::text; END IF;\n"
        "  IF t IS NOT NULL THEN\n"
        "    PERFORM pg_advisory_xact_lock_shared(" FENCE_LOCK_CLASS ", hashtext(t));\n"
        "    SELECT f.migration_id INTO m FROM pgshift.fence f WHERE f.tenant = t;\n"
        "    IF FOUND THEN\n"
        "      RAISE EXCEPTION 'pgshift: tenant %% has moved to another store (migration %%)', t, "
        "m\n"
        "        USING ERRCODE = '40001', HINT = 'retry: pgshift routes it to its new store';\n"
        "    END IF;\n"
        "  END IF;\n"
        "  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;\n"
        "  RETURN NEW;\n"
        "END $pgshift$;\n",
        tc, tc);
    cm_buf_append(&sql, s, strlen(s));
    free(s);
    free(tc);
    for (size_t i = 0; i < r->n_tabs; i++) {
        char *tl = mig_run_lit(d->fence, r->tabs[i].q);

        s = cm_xasprintf("DO $pgshift$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE "
                         "tgname = 'pgshift_fence' AND tgrelid = %s::regclass) THEN "
                         "CREATE TRIGGER pgshift_fence BEFORE INSERT OR UPDATE OR DELETE ON %s "
                         "FOR EACH ROW EXECUTE FUNCTION pgshift.fence_guard(); END IF; END "
                         "$pgshift$;\n",
                         tl, r->tabs[i].q);
        cm_buf_append(&sql, s, strlen(s));
        free(s);
        free(tl);
    }
    /*
     * Until the flip the source is the tenant's store: no fence may stand
     * (one left by an interrupted attempt, or by an earlier move of the
     * tenant off this store).
     */
    s = cm_xasprintf("DELETE FROM pgshift.fence WHERE tenant = %s;\n"
                     "COMMIT",
                     d->tenant_src);
    cm_buf_append(&sql, s, strlen(s));
    free(s);
    cm_buf_append_u8(&sql, 0);
    rc = mig_run_x(r, d->fence, "source store", (const char *)sql.data, 0, NULL);
    cm_buf_free(&sql);
    if (rc != RUN_OK) {
        mig_run_drop_conn(&d->fence);
        return rc;
    }
    return RUN_OK;
}

/* The target may be a store this tenant was moved off before: lift that fence (once). */
static run_rc_t lift_target_fence(dw_t *d)
{
    run_t *r = d->r;
    char *t;
    run_rc_t rc;

    if (d->target_unfenced)
        return RUN_OK;
    t = cm_xasprintf("DO $pgshift$ BEGIN IF to_regclass('pgshift.fence') IS NOT NULL "
                     "THEN DELETE FROM pgshift.fence WHERE tenant = %s; END IF; END "
                     "$pgshift$",
                     r->tenant_lit);
    rc = mig_run_x(r, r->dst, "target store", t, 0, NULL);
    free(t);
    d->target_unfenced = rc == RUN_OK;
    return rc;
}

/* BULK_COPY (copy complete) -> DUAL_WRITE, persisted and audited. */
static run_rc_t to_dual_write(run_t *r)
{
    const char *params[] = { r->ids };

    LOG_INFO(LOG_CTX, "migration %s: bulk copy complete, dual-write starts", r->ids);
    return mig_run_x(
        r, r->ctl, "control store",
        "WITH m AS (UPDATE pgshift.migrations SET phase = 'DUAL_WRITE', "
        "    dual_write_started_at = now(), updated_at = now(), status_detail = 'dual-write' "
        "  WHERE id = $1::bigint AND phase = 'BULK_COPY' AND bulk_copy_completed_at IS NOT NULL "
        "  AND NOT cleanup_pending RETURNING id) "
        "INSERT INTO pgshift.audit_log (migration_id, event_type, operator, details) "
        "SELECT id, 'phase_changed', 'pgshift', "
        "  '{\"from\": \"BULK_COPY\", \"to\": \"DUAL_WRITE\"}' FROM m",
        1, params);
}

/* ---- one round ------------------------------------------------------------------------ */

/*
 * Read the n results of a simple query sent on c, in order. RUN_OK with
 * every one successful.
 */
static run_rc_t collect_results(run_t *r, PGconn *c, const char *what, PGresult **out, size_t n)
{
    size_t k = 0;
    run_rc_t rc = RUN_OK;
    PGresult *res;

    memset(out, 0, n * sizeof(*out));
    for (;;) {
        while (PQisBusy(c)) {
            if (mig_pq_wait(c, POLLIN, r->env->latch, 30000) <= 0 || !PQconsumeInput(c)) {
                for (size_t i = 0; i < k; i++)
                    PQclear(out[i]);
                return mig_run_classify(r, c, NULL, what);
            }
        }
        res = PQgetResult(c);
        if (res == NULL)
            break;
        if (rc == RUN_OK && !mig_pq_ok(res))
            rc = mig_run_classify(r, c, res, what);
        if (rc == RUN_OK && k < n)
            out[k++] = res;
        else
            PQclear(res);
    }
    if (rc == RUN_OK && k != n) {
        mig_run_set_err(r, "XX000", cm_xasprintf("%s: %zu results, expected %zu", what, k, n));
        rc = RUN_TRANSIENT;
    }
    if (rc != RUN_OK)
        for (size_t i = 0; i < k; i++) {
            PQclear(out[i]);
            out[i] = NULL;
        }
    return rc;
}

/* Run the statements of sql (several, one simple query: one round trip); n results. */
static run_rc_t exec_multi(run_t *r, PGconn *c, const char *what, const char *sql, PGresult **out,
                           size_t n)
{
    if (!PQsendQuery(c, sql))
        return mig_run_classify(r, c, NULL, what);
    return collect_results(r, c, what, out, n);
}

/*
 * The start of a round, in one round trip to the source: the vxid barrier
 * (does the pending one still wait; the highest positions, then the open
 * transactions, for the next one), then a snapshot's xmin X and, per
 * position table, whether it has anything new. *changed[i] for them.
 *
 * Statements run in READ COMMITTED, each on a snapshot of its own, in order:
 * the barrier is looked at before any snapshot the round reads rows with,
 * and X is no newer than any of them (a snapshot's xmin never goes back),
 * so a change that a later read does not see has an xid >= X: taking X as
 * the new watermark is exact.
 */
static run_rc_t round_start(dw_t *d, int timeout_ms, const bool *due, bool *changed,
                            long long *counts, char **snap_xmin)
{
    run_t *r = d->r;
    cm_buf_t sql = { 0 };
    size_t n_pos = 0, n_res = 0, k = 0;
    PGresult **res;
    run_rc_t rc;
    char *s;
    bool passed = true;

    for (size_t i = 0; i < r->n_tabs; i++)
        n_pos += r->tabs[i].has_pos;
    if (timeout_ms > 0) {
        /* The cutover's sweep: bounded by what is left of the budget. */
        s = cm_xasprintf("SET statement_timeout = %d;\n", timeout_ms);
        cm_buf_append(&sql, s, strlen(s));
        free(s);
        n_res++;
        k++;
    }
    if (n_pos > 0) {
        if (d->bar_vxids != NULL) {
            char *l = mig_run_lit(r->src, d->bar_vxids);

            s = cm_xasprintf("SELECT NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = "
                             "'virtualxid' AND virtualxid = ANY (%s::text[]));\n",
                             l);
            free(l);
            cm_buf_append(&sql, s, strlen(s));
            free(s);
            n_res++;
        }
        for (size_t i = 0; i < r->n_tabs; i++) {
            if (!r->tabs[i].has_pos)
                continue;
            s = cm_xasprintf("SELECT max(%s)::text FROM %s;\n", r->tabs[i].key_q[0], r->tabs[i].q);
            cm_buf_append(&sql, s, strlen(s));
            free(s);
            n_res++;
        }
        cm_buf_append_cstr(&sql, "SELECT coalesce(array_agg(virtualxid), '{}')::text FROM "
                                 "pg_locks WHERE locktype = 'virtualxid' AND pid <> "
                                 "pg_backend_pid();\n");
        sql.len--;
        n_res++;
    }
    cm_buf_append_cstr(&sql, "SELECT pg_snapshot_xmin(pg_current_snapshot())::text");
    sql.len--;
    n_res++;
    for (size_t i = 0; i < r->n_tabs; i++) {
        const tab_t *t = &r->tabs[i];
        char *w;

        /*
         * Per position table: anything changed since W above L. Per mutable
         * table due for a scan: the same, and how many rows (a delete changes
         * nothing's xmin, only the count).
         */
        if (!t->has_pos && !due[i])
            continue;
        w = changed_where(d, i);
        if (t->has_pos)
            s = cm_xasprintf(", EXISTS (SELECT 1 FROM %s WHERE %s)", t->q, w);
        else
            s = cm_xasprintf(", EXISTS (SELECT 1 FROM %s WHERE %s), (SELECT count(*) FROM %s "
                             "WHERE %s = %s)",
                             t->q, w, t->q, r->tcol, r->tenant_lit);
        free(w);
        cm_buf_append(&sql, s, strlen(s));
        free(s);
    }
    cm_buf_append_u8(&sql, 0);
    res = cm_xcalloc(n_res, sizeof(*res));
    rc = exec_multi(r, r->src, "source store", (const char *)sql.data, res, n_res);
    cm_buf_free(&sql);
    if (rc != RUN_OK) {
        free(res);
        return rc;
    }
    if (n_pos > 0) {
        if (d->bar_vxids != NULL)
            passed = strcmp(PQgetvalue(res[k++], 0, 0), "t") == 0;
        if (passed) {
            /* The pending barrier passed (before the snapshot below): its bounds hold. */
            for (size_t i = 0; i < r->n_tabs; i++) {
                if (d->bar_vxids != NULL)
                    set_str(&d->t[i].new_lo, d->t[i].bar_hi);
                set_str(&d->t[i].bar_hi, NULL);
            }
            for (size_t i = 0; i < r->n_tabs; i++)
                if (r->tabs[i].has_pos) {
                    set_str(&d->t[i].bar_hi,
                            PQgetisnull(res[k], 0, 0) ? NULL : PQgetvalue(res[k], 0, 0));
                    k++;
                }
            set_str(&d->bar_vxids, PQgetvalue(res[k++], 0, 0));
        } else {
            k += n_pos + 1;
        }
    }
    *snap_xmin = cm_xstrdup(PQgetvalue(res[k], 0, 0));
    for (size_t i = 0, col = 1; i < r->n_tabs; i++) {
        counts[i] = -1;
        if (r->tabs[i].has_pos) {
            changed[i] = strcmp(PQgetvalue(res[k], 0, (int)col++), "t") == 0;
        } else if (due[i]) {
            changed[i] = strcmp(PQgetvalue(res[k], 0, (int)col++), "t") == 0;
            counts[i] = strtoll(PQgetvalue(res[k], 0, (int)col++), NULL, 10);
            changed[i] |= counts[i] != d->t[i].last_count;
        }
    }
    for (size_t i = 0; i < n_res; i++)
        PQclear(res[i]);
    free(res);
    return RUN_OK;
}

/* "a = EXCLUDED.a, ..." for the columns of cols (a quoted list) that are not key columns. */
static char *excluded_set(const tab_t *t)
{
    cm_buf_t b = { 0 };
    char *cols = cm_xstrdup(t->copy_cols), *save = NULL, *s;

    for (char *c = strtok_r(cols, ",", &save); c != NULL; c = strtok_r(NULL, ",", &save)) {
        bool is_key = false;

        while (*c == ' ')
            c++;
        for (size_t k = 0; k < t->n_key; k++)
            if (strcmp(c, t->key_q[k]) == 0)
                is_key = true;
        if (is_key)
            continue;
        if (b.len)
            cm_buf_append(&b, ", ", 2);
        s = cm_xasprintf("%s = EXCLUDED.%s", c, c);
        cm_buf_append(&b, s, strlen(s));
        free(s);
    }
    cm_buf_append_u8(&b, 0);
    s = cm_xstrdup((const char *)b.data);
    cm_buf_free(&b);
    free(cols);
    return s;
}

/*
 * A round's two queries: on the source, its COPYs out; on the target, its
 * transaction - BEGIN, the COPYs in, then the statements that apply what
 * they staged and the COMMIT. tab[k] is the table of apply's statement k.
 */
typedef struct round_sql {
    cm_buf_t out; /* "COPY (...) TO STDOUT ...; " */
    cm_buf_t in;  /* "BEGIN ...; [CREATE ...;] COPY ... FROM STDIN ...; " */
    size_t n_copy;
    cm_buf_t apply; /* "INSERT ...; DELETE ...; " */
    size_t *tab;
    size_t n;
} round_sql_t;

static void buf_stmt(cm_buf_t *b, char *sql_owned)
{
    cm_buf_append(b, sql_owned, strlen(sql_owned));
    cm_buf_append(b, "; ", 2);
    free(sql_owned);
}

static void round_sql_copy(round_sql_t *q, char *out_owned, char *in_owned)
{
    buf_stmt(&q->out, out_owned);
    buf_stmt(&q->in, in_owned);
    q->n_copy++;
}

static void round_sql_add(round_sql_t *q, size_t i, char *sql_owned)
{
    buf_stmt(&q->apply, sql_owned);
    q->tab[q->n++] = i;
}

/*
 * Table i's part of a round: a COPY of its changed rows into its stage on
 * the target, and on full rounds one of a mutable table's current keys into
 * a key table; the statements that apply them (insert, upsert, delete), in
 * order. An empty stage applies nothing.
 */
static void round_table(dw_t *d, size_t i, round_sql_t *q)
{
    run_t *r = d->r;
    const mig_env_t *env = r->env;
    tab_t *t = &r->tabs[i];
    char *where, *order, *sql, *stage;
    bool map = strcmp(t->mode, "map") == 0;
    char *rk = mig_quote_ident(r->dst, env->row_key);

    stage = mig_run_stage_sql(t, i);
    if (stage != NULL)
        buf_stmt(&q->in, stage);
    where = changed_where(d, i);
    order = t->n_key ? mig_run_key_order(t, false) : NULL;
    round_sql_copy(q,
                   cm_xasprintf("COPY (SELECT %s FROM %s WHERE %s%s%s) TO STDOUT (FORMAT binary)",
                                t->all_cols, t->q, where, order ? " ORDER BY " : "",
                                order ? order : ""),
                   cm_xasprintf("COPY %s (%s) FROM STDIN (FORMAT binary)", t->stage, t->all_cols));
    free(where);
    if (t->has_pos && map) {
        /* The target assigns positions, in source order (I4); record the pairs. */
        char *pos = mig_quote_ident(r->dst, env->position_column);

        sql = cm_xasprintf("WITH ins AS (INSERT INTO %s (%s) SELECT %s FROM %s s WHERE NOT "
                           "EXISTS (SELECT 1 FROM %s x WHERE x.%s = s.%s) ORDER BY s.%s "
                           "ON CONFLICT DO NOTHING RETURNING %s AS pgshift_tpos, %s AS "
                           "pgshift_rk) "
                           "INSERT INTO pgshift.target_position_map (migration_id, "
                           "source_position, target_position) "
                           "SELECT %s, s.%s, ins.pgshift_tpos FROM ins JOIN %s s "
                           "ON s.%s = ins.pgshift_rk ON CONFLICT DO NOTHING",
                           t->q, t->copy_cols, t->copy_cols, t->stage, t->q, rk, rk, pos, pos, rk,
                           r->ids, pos, t->stage, rk);
        free(pos);
    } else if (t->has_pos || !t->keys_written) {
        char *sel = mig_run_select_list(r, t);

        /* A row already there (by its row key where that is unique) is left as it is. */
        sql = cm_xasprintf("INSERT INTO %s (%s) SELECT %s FROM %s s%s%s ON CONFLICT %s%s%s "
                           "DO NOTHING",
                           t->q, t->copy_cols, sel, t->stage, order ? " ORDER BY " : "",
                           order ? order : "", t->rk_unique ? "(" : "", t->rk_unique ? rk : "",
                           t->rk_unique ? ")" : "");
        free(sel);
    } else {
        /* Mutable rows: upsert by key; a checkpoint's position is translated (I6). */
        char *tuple = mig_run_key_tuple(t), *set = excluded_set(t);
        char *sel = mig_run_select_list(r, t);

        sql = cm_xasprintf("INSERT INTO %s (%s) SELECT %s FROM %s s ORDER BY %s ON CONFLICT "
                           "%s %s%s",
                           t->q, t->copy_cols, sel, t->stage, order, tuple,
                           *set ? "DO UPDATE SET " : "DO NOTHING", set);
        free(sel);
        free(tuple);
        free(set);
    }
    free(rk);
    round_sql_add(q, i, sql);
    /* Rows deleted on the source: mutable tables, on full rounds. */
    if (!t->has_pos && t->keys_written) {
        char *tuple = mig_run_key_tuple(t), *keys = cm_xstrndup(tuple + 1, strlen(tuple) - 2);
        cm_buf_t cond = { 0 };

        buf_stmt(&q->in, cm_xasprintf("CREATE TEMP TABLE IF NOT EXISTS pgshift_keys_%zu ON COMMIT "
                                      "DELETE ROWS AS SELECT %s FROM %s LIMIT 0",
                                      i, keys, t->q));
        round_sql_copy(q,
                       cm_xasprintf("COPY (SELECT %s FROM %s WHERE %s = %s) TO STDOUT (FORMAT "
                                    "binary)",
                                    keys, t->q, r->tcol, r->tenant_lit),
                       cm_xasprintf("COPY pg_temp.pgshift_keys_%zu (%s) FROM STDIN (FORMAT "
                                    "binary)",
                                    i, keys));
        for (size_t k = 0; k < t->n_key; k++) {
            char *e = cm_xasprintf("%sk.%s = d.%s", k ? " AND " : "", t->key_q[k], t->key_q[k]);

            cm_buf_append(&cond, e, strlen(e));
            free(e);
        }
        cm_buf_append_u8(&cond, 0);
        round_sql_add(q, i,
                      cm_xasprintf("DELETE FROM %s d WHERE d.%s = %s AND NOT EXISTS (SELECT 1 "
                                   "FROM pg_temp.pgshift_keys_%zu k WHERE %s)",
                                   t->q, r->tcol, r->tenant_lit, i, (const char *)cond.data));
        cm_buf_free(&cond);
        free(tuple);
        free(keys);
    }
    free(order);
}

/*
 * One round: everything of the tenant that committed on the source since
 * the watermarks, onto the target, in one target transaction. exact: every
 * table (the cutover's final sweep). *applied = rows written.
 */
static run_rc_t round_once(dw_t *d, bool exact, int timeout_ms, long long *applied,
                           long long *events)
{
    run_t *r = d->r;
    uint64_t t0 = cm_now_ms(), now;
    run_rc_t rc;
    char *snap_xmin = NULL;
    bool full = exact, dst_open = false, *changed, *due;
    long long *counts;
    round_sql_t q = { 0 };

    *applied = *events = 0;
    rc = mig_run_connect_stores(r);
    if (rc != RUN_OK)
        return rc;
    rc = lift_target_fence(d);
    if (rc != RUN_OK)
        return rc;
    changed = cm_xcalloc(r->n_tabs ? r->n_tabs : 1, sizeof(*changed));
    due = cm_xcalloc(r->n_tabs ? r->n_tabs : 1, sizeof(*due));
    counts = cm_xcalloc(r->n_tabs ? r->n_tabs : 1, sizeof(*counts));
    for (size_t i = 0; i < r->n_tabs; i++)
        due[i] = r->tabs[i].has_pos || full || t0 - d->t[i].last_full_ms >= FULL_SCAN_EVERY_MS;
    rc = round_start(d, timeout_ms, due, changed, counts, &snap_xmin);
    if (rc != RUN_OK) {
        free(changed);
        free(due);
        free(counts);
        return rc;
    }
    /*
     * Two queries, started in the same round trip: the source's COPYs out,
     * and the target's whole transaction (BEGIN, the COPYs in, the
     * statements that apply them, COMMIT). Each COPY costs the target one
     * round trip more; everything else rides along.
     */
    q.tab = cm_xcalloc(2 * r->n_tabs + 1, sizeof(*q.tab));
    for (size_t i = 0; i < r->n_tabs; i++) {
        d->t[i].scanned = false;
        if (!due[i])
            continue;
        if (!changed[i]) {
            d->t[i].scanned = true; /* nothing new: the watermark moves all the same */
            continue;
        }
        if (!dst_open) {
            if (timeout_ms > 0)
                buf_stmt(&q.in, cm_xasprintf("BEGIN; SET LOCAL statement_timeout = %d%s%s",
                                             timeout_ms, d->sweep_prelude ? "; " : "",
                                             d->sweep_prelude ? d->sweep_prelude : ""));
            else
                buf_stmt(&q.in, cm_xstrdup("BEGIN"));
            dst_open = true;
        }
        round_table(d, i, &q);
        d->t[i].scanned = true;
    }
    if (dst_open) {
        PGresult **res = cm_xcalloc(q.n + 1, sizeof(*res));
        long long *rows = cm_xcalloc(q.n_copy + 1, sizeof(*rows));

        cm_buf_append(&q.in, q.apply.data, q.apply.len);
        cm_buf_append_cstr(&q.in, "COMMIT");
        cm_buf_append_u8(&q.out, 0);
        rc = mig_run_stream_n(r, (const char *)q.out.data, (const char *)q.in.data, q.n_copy, rows);
        if (rc == RUN_OK && timeout_ms > 0)
            set_str(&d->sweep_prelude, NULL); /* done: setval does not roll back */
        if (rc == RUN_OK)
            rc = collect_results(r, r->dst, "target store", res, q.n + 1);
        for (size_t k = 0; rc == RUN_OK && k <= q.n; k++) {
            if (k < q.n) {
                long long n = strtoll(PQcmdTuples(res[k]), NULL, 10);

                *applied += n;
                if (r->tabs[q.tab[k]].has_pos)
                    *events += n;
            }
            PQclear(res[k]);
        }
        free(res);
        free(rows);
    }
    cm_buf_free(&q.out);
    cm_buf_free(&q.in);
    cm_buf_free(&q.apply);
    free(q.tab);
    if (rc == RUN_OK)
        for (size_t i = 0; i < r->n_tabs; i++)
            if (d->t[i].scanned && !r->tabs[i].has_pos)
                d->t[i].last_count = counts[i]; /* the target matches it now */
    free(changed);
    free(due);
    free(counts);
    if (rc != RUN_OK) {
        free(snap_xmin);
        return rc; /* the caller drops both connections: their transactions die with them */
    }
    now = cm_now_ms();
    for (size_t i = 0; i < r->n_tabs; i++) {
        dw_tab_t *dt = &d->t[i];

        if (!dt->scanned)
            continue;
        set_str(&dt->w, snap_xmin);
        if (!r->tabs[i].has_pos)
            dt->last_full_ms = t0;
        if (dt->new_lo != NULL) {
            set_str(&dt->lo, dt->new_lo);
            set_str(&dt->new_lo, NULL);
        }
    }
    free(snap_xmin);
    /* The cutover mirrors the position map after its flip, outside the pause. */
    if (strcmp(r->position_mode, "map") == 0 && *events > 0 && !exact) {
        rc = mig_run_mirror_map(r);
        if (rc != RUN_OK)
            return rc;
    }
    d->last_round_ms = now - t0;
    if (full)
        d->last_full_round_ms = now - t0;
    d->caught_up_ms = t0;
    if (*applied > 0)
        d->ms_per_row = 0.8 * d->ms_per_row + 0.2 * ((double)(now - t0) / (double)*applied);
    return RUN_OK;
}

/* ---- status ---------------------------------------------------------------------------- */

/* Why the migration is not ready for a cutover, or NULL. */
static const char *not_ready(const dw_t *d, char *buf, size_t len, long long *predicted)
{
    *predicted = ACK_RTT_MS + (long long)d->last_full_round_ms + (long long)d->last_round_ms +
                 (long long)(d->ms_per_row * (double)d->lag_events);
    /* First: it does not go away by itself. */
    if (d->verify_on && d->verify_state == VERIFY_FAILED) {
        snprintf(buf, len, "the consistency check failed: %s (VERIFY %s runs it again)",
                 d->verify_detail, d->r->ids);
        return buf;
    }
    if (d->brk != BRK_CLOSED) {
        snprintf(buf, len, "the target's circuit breaker is %s", brk_name(d->brk));
        return buf;
    }
    if (d->failure_open || d->fails > 0) {
        snprintf(buf, len, "dual-write failures are not repaired yet");
        return buf;
    }
    if (d->caught_up_ms == 0) {
        snprintf(buf, len, "the target has not caught up yet");
        return buf;
    }
    if (d->lag_events > d->max_lag) {
        snprintf(buf, len, "lag of %lld events exceeds cutover_max_lag_events (%d)", d->lag_events,
                 d->max_lag);
        return buf;
    }
    if (*predicted > d->timeout_ms) {
        snprintf(buf, len, "predicted pause of %lld ms exceeds cutover_timeout_ms (%d)", *predicted,
                 d->timeout_ms);
        return buf;
    }
    if (d->verify_on && d->verify_state == VERIFY_PENDING) {
        long long rows = 0;

        for (size_t i = 0; i < d->r->n_tabs; i++)
            rows += d->t[i].v_rows;
        if (d->verify_running)
            snprintf(buf, len,
                     "the consistency check (verify_consistency) is under way: %lld "
                     "rows compared",
                     rows);
        else
            snprintf(buf, len, "the consistency check (verify_consistency) has not run yet");
        return buf;
    }
    return NULL;
}

/* The tenant's open write transactions on the source (they hold the fence's shared lock). */
static void sample_open_txns(dw_t *d)
{
    run_t *r = d->r;
    const char *params[] = { d->tenant_canon ? d->tenant_canon : r->tenant };
    run_rc_t rc;
    PGresult *res =
        mig_run_q(r, r->src, "source store",
                  "SELECT count(*), coalesce(max(extract(epoch FROM now() - a.xact_start) * "
                  "1000), 0)::bigint FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                  "WHERE l.locktype = 'advisory' AND l.classid = " FENCE_LOCK_CLASS
                  "::bigint::oid AND l.objid = hashtext($1)::oid AND l.granted "
                  "AND l.mode = 'ShareLock'",
                  1, params, &rc);

    if (res == NULL)
        return;
    d->open_txns = atoi(PQgetvalue(res, 0, 0));
    d->oldest_open_ms = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    PQclear(res);
}

/*
 * Publish the status and read what the record asks for (phase, paused,
 * cutover requests). *phase_ok: still DUAL_WRITE and not to be cleaned.
 */
static run_rc_t publish_status(dw_t *d, bool *phase_ok, bool *paused)
{
    run_t *r = d->r;
    char buf[512], js[2048], *state;
    const char *why;
    long long predicted;
    uint64_t now = cm_now_ms();
    run_rc_t rc;
    PGresult *res;
    cm_buf_t st = { 0 };
    const char *warn = NULL;

    if (r->src != NULL)
        sample_open_txns(d);
    why = not_ready(d, buf, sizeof(buf), &predicted);
    if (d->timeout_minutes > 0 && now - d->started_ms > (uint64_t)d->timeout_minutes * 60000)
        warn = "dual_write_timeout_minutes exceeded: cut over or abort";
    {
        char *why_js = json_str_or_null(why);
        char *warn_js = json_str_or_null(warn);

        snprintf(js, sizeof(js),
                 "{\"at_ms\": %" PRIu64 ", \"lag_events\": %lld, \"lag_age_ms\": %" PRIu64
                 ", \"converging\": %s, \"breaker\": \"%s\", \"ready\": %s, \"not_ready\": %s, "
                 "\"applied\": %lld, \"predicted_pause_ms\": %lld, \"round_ms\": %" PRIu64
                 ", \"open_tenant_transactions\": %d, \"oldest_open_tenant_transaction_ms\": "
                 "%" PRId64 ", \"warning\": %s}",
                 realtime_ms(), d->lag_events,
                 d->caught_up_ms ? (d->lag_events > 0 || d->fails > 0 ? now - d->caught_up_ms : 0)
                                 : now - d->started_ms,
                 d->converging ? "true" : "false", brk_name(d->brk), why ? "false" : "true", why_js,
                 d->applied_total, predicted, d->last_round_ms, d->open_txns, d->oldest_open_ms,
                 warn_js);
        free(why_js);
        free(warn_js);
    }
    /* The watermarks, so a restart resumes from here (stale is fine: rounds are idempotent). */
    cm_buf_append_u8(&st, '{');
    for (size_t i = 0; i < r->n_tabs; i++) {
        char *e = cm_xasprintf("%s\"%s\": {\"w\": \"%s\", \"lo\": %s%s%s}", i ? ", " : "",
                               r->tabs[i].name, d->t[i].w, d->t[i].lo ? "\"" : "",
                               d->t[i].lo ? d->t[i].lo : "null", d->t[i].lo ? "\"" : "");

        cm_buf_append(&st, e, strlen(e));
        free(e);
    }
    cm_buf_append_cstr(&st, "}");
    state = (char *)st.data;
    {
        const char *params[] = { r->ids, js, state };

        res =
            mig_run_q(r, r->ctl, "control store",
                      "UPDATE pgshift.migrations SET dw_status = $2::jsonb, dw_state = $3::jsonb, "
                      "  updated_at = now() WHERE id = $1::bigint "
                      "RETURNING phase, cleanup_pending, paused, cutover_request, verify_request",
                      3, params, &rc);
    }
    cm_buf_free(&st);
    if (res == NULL)
        return rc;
    *phase_ok = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "DUAL_WRITE") == 0 &&
                strcmp(PQgetvalue(res, 0, 1), "f") == 0;
    *paused = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 2), "t") == 0;
    if (PQntuples(res) == 1) {
        d->request_pending = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
        d->verify_pending = strtoll(PQgetvalue(res, 0, 4), NULL, 10);
    }
    PQclear(res);
    d->last_status_ms = now;
    if (warn != NULL && !d->warned_timeout) {
        d->warned_timeout = true;
        mig_run_audit(r, "progress_checkpoint",
                      "{\"warning\": \"dual_write_timeout_minutes exceeded; the operator "
                      "decides: CUTOVER or ABORT\"}");
    }
    return RUN_OK;
}

/* ---- failures and the breaker ---------------------------------------------------------- */

static void record_failure(dw_t *d)
{
    run_t *r = d->r;
    const char *params[] = { r->ids, r->err ? r->err : "?", r->n_tabs ? d->t[0].w : NULL };

    d->fails++;
    if (d->brk == BRK_HALF_OPEN || (d->brk == BRK_CLOSED && d->fails >= d->failure_threshold)) {
        if (d->brk != BRK_OPEN)
            LOG_WARN(LOG_CTX, "migration %s: target failing (%s): circuit breaker open", r->ids,
                     r->err ? r->err : "?");
        d->brk = BRK_OPEN;
        d->opened_ms = cm_now_ms();
    }
    if (r->ctl == NULL)
        return;
    if (!d->failure_open) {
        if (mig_run_x(r, r->ctl, "control store",
                      "INSERT INTO pgshift.dual_write_failures (migration_id, last_error, "
                      "pending_from) VALUES ($1::bigint, $2, $3)",
                      3, params) == RUN_OK)
            d->failure_open = true;
        mig_run_note_error(r, true);
    } else {
        (void)mig_run_x(r, r->ctl, "control store",
                        "UPDATE pgshift.dual_write_failures SET attempts = attempts + 1, "
                        "  last_failed_at = now(), last_error = $2 "
                        "WHERE migration_id = $1::bigint AND repaired_at IS NULL",
                        2, params);
    }
}

static void record_success(dw_t *d)
{
    run_t *r = d->r;
    const char *params[] = { r->ids };

    if (d->brk != BRK_CLOSED)
        LOG_INFO(LOG_CTX, "migration %s: target back, circuit breaker closed", r->ids);
    d->brk = BRK_CLOSED;
    d->fails = 0;
    d->half_open_calls = 0;
    if (d->failure_open && mig_run_x(r, r->ctl, "control store",
                                     "UPDATE pgshift.dual_write_failures SET repaired_at = now() "
                                     "WHERE migration_id = $1::bigint AND repaired_at IS NULL",
                                     1, params) == RUN_OK) {
        d->failure_open = false;
        mig_run_audit(r, "progress_checkpoint", "{\"dual_write\": \"failures repaired\"}");
    }
}

/* Whether the breaker lets a round through now. */
static bool breaker_allows(dw_t *d)
{
    if (d->brk == BRK_OPEN) {
        if (cm_now_ms() - d->opened_ms < (uint64_t)d->recovery_s * 1000)
            return false;
        d->brk = BRK_HALF_OPEN;
        d->half_open_calls = 0;
    }
    if (d->brk == BRK_HALF_OPEN)
        return d->half_open_calls++ < d->half_open_max;
    return true;
}

/* ---- cutover --------------------------------------------------------------------------- */

typedef struct outcome {
    bool success;
    long long pause_ms;
    long long synced;
    char error[300];
} outcome_t;

/* Persist the outcome of request (0 = automatic) in the record, for CUTOVER's answer. */
static char *outcome_json(const outcome_t *o, int64_t request, int attempt)
{
    char *e = NULL, pause[40] = "";
    char *j;

    if (!o->success) {
        /* a JSON string: escape what the message may hold */
        cm_buf_t b = { 0 };

        cm_buf_append_u8(&b, '"');
        for (const char *p = o->error; *p; p++) {
            if (*p == '"' || *p == '\\')
                cm_buf_append_u8(&b, '\\');
            if ((unsigned char)*p >= 0x20)
                cm_buf_append_u8(&b, (uint8_t)*p);
        }
        cm_buf_append_cstr(&b, "\"");
        e = cm_xstrdup((const char *)b.data);
        cm_buf_free(&b);
    }
    if (o->pause_ms >= 0)
        snprintf(pause, sizeof(pause), ", \"pause_ms\": %lld", o->pause_ms);
    j = cm_xasprintf("{\"request\": %" PRId64 ", \"attempt\": %d, \"success\": %s%s, "
                     "\"events_synced\": %lld, \"error\": %s}",
                     request, attempt, o->success ? "true" : "false", pause, o->synced,
                     e ? e : "null");
    free(e);
    return j;
}

/* Lift the fence (if set) and release the lock: the source takes the tenant's writes again. */
static void unfence(dw_t *d, bool fenced, bool locked)
{
    run_t *r = d->r;

    if (d->fence == NULL)
        return;
    if (fenced) {
        char *s = cm_xasprintf("DELETE FROM pgshift.fence WHERE tenant = %s", d->tenant_src);

        if (mig_run_x(r, d->fence, "source store", s, 0, NULL) != RUN_OK)
            mig_run_drop_conn(&d->fence); /* the row stays: see recover_cutover */
        free(s);
    }
    if (locked && d->fence != NULL) {
        /* Dropping the connection releases the lock too. */
        if (mig_run_x(r, d->fence, "source store",
                      "SELECT pg_advisory_unlock_all(); RESET lock_timeout", 0, NULL) != RUN_OK)
            mig_run_drop_conn(&d->fence);
    }
}

/* Back to DUAL_WRITE after a failed attempt; persisted with the outcome and audited. */
/*
 * This process's router learns the tenant's route as just committed by a
 * cutover (its hold, flip or roll-back) at once; other processes learn it
 * from the NOTIFY. res row 0 from column col on: the route's store, state
 * and version (NULL: no route row, nothing to tell). phase NULL: no
 * migration any more (after the flip). sent_us: cm_now_us() before the
 * committing statement was sent (see mig_publish_route).
 */
static void publish_route(dw_t *d, const PGresult *res, int col, const char *phase, int attempt,
                          uint64_t sent_us)
{
    run_t *r = d->r;
    mig_route_t rt = { 0 };

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, col) || PQgetisnull(res, 0, col + 2))
        return;
    rt.tenant = r->tenant;
    rt.store = PQgetvalue(res, 0, col);
    rt.state = PQgetvalue(res, 0, col + 1);
    rt.version = strtoll(PQgetvalue(res, 0, col + 2), NULL, 10);
    if (phase != NULL) {
        rt.phase = (char *)phase;
        rt.target_store = r->env->store_names[r->dst_idx];
        rt.migration_id = r->id;
        rt.cutover_attempt = attempt;
    }
    mig_publish_route(r->env, &rt, sent_us);
}

/*
 * The pause as clients saw it ends when the statement that releases them
 * (the flip, or the roll-back) has committed, so it is known only after:
 * that statement records the outcome without it (its audit row too, which
 * stays so: the audit log is append-only), and this adds it to the record.
 * The CUTOVER answer waits for it a little (cutover.c GRACE_MS) and goes
 * out without it if this fails.
 */
static void record_pause(dw_t *d, long long pause_ms)
{
    run_t *r = d->r;
    char pm[24];
    const char *params[] = { r->ids, pm };

    snprintf(pm, sizeof(pm), "%lld", pause_ms);
    if (mig_run_x(r, r->ctl, "control store",
                  "UPDATE pgshift.migrations SET cutover_result = cutover_result || "
                  "jsonb_build_object('pause_ms', $2::bigint) WHERE id = $1::bigint",
                  2, params) != RUN_OK)
        LOG_WARN(LOG_CTX, "migration %s: the pause (%lld ms) is not recorded: %s", r->ids, pause_ms,
                 r->err ? r->err : "?");
}

static run_rc_t roll_back(dw_t *d, int attempt, int64_t request, outcome_t *o, uint64_t t0)
{
    run_t *r = d->r;
    char att[16], *res_js;
    run_rc_t rc;

    o->success = false;
    o->pause_ms = -1; /* known once the roll-back has committed: record_pause */
    snprintf(att, sizeof(att), "%d", attempt);
    res_js = outcome_json(o, request, attempt);
    {
        const char *params[] = { r->ids, att, res_js };

        uint64_t sent_us = cm_now_us();
        PGresult *res = mig_run_q(
            r, r->ctl, "control store",
            "WITH m AS (UPDATE pgshift.migrations SET phase = 'DUAL_WRITE', updated_at = now(), "
            "    cutover_result = $3::jsonb, status_detail = 'dual-write' "
            "  WHERE id = $1::bigint AND phase = 'CUTOVER' AND cutover_attempt = $2::int "
            "  RETURNING id, tenant), "
            "a AS (INSERT INTO pgshift.audit_log (migration_id, event_type, operator, details) "
            "  SELECT id, 'phase_changed', 'pgshift', "
            "    '{\"from\": \"CUTOVER\", \"to\": \"DUAL_WRITE\"}' FROM m "
            "  UNION ALL SELECT id, 'cutover_rolled_back', 'pgshift', $3::jsonb FROM m) "
            "SELECT rt.store, rt.state, rt.version FROM m JOIN pgshift.routes rt "
            "  ON rt.tenant = m.tenant",
            3, params, &rc);

        o->pause_ms = (long long)(cm_now_ms() - t0);
        if (res != NULL) {
            publish_route(d, res, 0, "DUAL_WRITE", 0, sent_us); /* held work: back to the source */
            PQclear(res);
        }
        if (rc == RUN_OK) {
            /* Aborted meanwhile: still answer the request. */
            const char *p3[] = { r->ids, res_js };

            rc = mig_run_x(r, r->ctl, "control store",
                           "UPDATE pgshift.migrations SET cutover_result = $2::jsonb "
                           "WHERE id = $1::bigint AND phase IN ('ABORTED', 'FAILED')",
                           2, p3);
        }
    }
    free(res_js);
    if (rc == RUN_OK)
        record_pause(d, o->pause_ms);
    LOG_WARN(LOG_CTX, "migration %s: cutover attempt %d rolled back after %lld ms: %s", r->ids,
             attempt, o->pause_ms, o->error);
    return rc;
}

/* Wait until every live pgshift process acknowledged attempt, or the deadline. */
static run_rc_t wait_acks(dw_t *d, int attempt, uint64_t deadline, bool *all, char *why,
                          size_t why_len)
{
    run_t *r = d->r;
    char att[16], lease[16], prefix[64];
    const char *params[] = { r->ids, att, lease };
    PGresult *live = NULL;
    bool *acked = NULL;
    int n_live = 0, n_acked = 0;
    uint64_t last_query = 0;
    run_rc_t rc = RUN_OK;

    snprintf(att, sizeof(att), "%d", attempt);
    snprintf(lease, sizeof(lease), "%d", MIG_PROCESS_LEASE_MS);
    snprintf(prefix, sizeof(prefix), "%s:%d:", r->ids, attempt);
    *all = false;
    for (;;) {
        uint64_t now = cm_now_ms();

        /*
         * The processes not acknowledged yet: asked at the start and then
         * only when notifications stall (a lease that expired meanwhile, a
         * missed notification); in between, the ack worker's NOTIFYs
         * ("id:attempt:process") tick them off without a query.
         */
        if (live == NULL || now - last_query >= 25) {
            PQclear(live);
            live = mig_run_q(r, r->ctl, "control store",
                             "SELECT p.id FROM pgshift.processes p WHERE p.heartbeat_at > "
                             "clock_timestamp() - make_interval(secs => $3::int / 1000.0) "
                             "AND NOT EXISTS (SELECT 1 FROM pgshift.cutover_acks a WHERE "
                             "a.process_id = p.id AND a.migration_id = $1::bigint AND "
                             "a.attempt = $2::int)",
                             3, params, &rc);
            if (live == NULL)
                break;
            n_live = PQntuples(live);
            free(acked);
            acked = cm_xcalloc((size_t)n_live + 1, sizeof(*acked));
            n_acked = 0;
            last_query = now;
        }
        if (n_acked == n_live) {
            *all = true;
            break;
        }
        if (now + FLIP_RESERVE_MS >= deadline) {
            snprintf(why, why_len,
                     "%d pgshift process(es) did not drain the tenant's transactions within "
                     "cutover_timeout_ms",
                     n_live - n_acked);
            break;
        }
        if (PQconsumeInput(r->ctl) == 0) {
            rc = mig_run_classify(r, r->ctl, NULL, "control store");
            break;
        }
        {
            PGnotify *n;
            bool any = false;

            /* This process's own acknowledgement, without the control store's round trip. */
            if (atomic_load((atomic_ullong *)&r->env->local_ack) == MIG_LOCAL_ACK(r->id, attempt))
                for (int i = 0; i < n_live; i++)
                    if (!acked[i] && strcmp(PQgetvalue(live, i, 0), r->env->process_id) == 0) {
                        acked[i] = true;
                        n_acked++;
                        any = true;
                    }
            while ((n = PQnotifies(r->ctl)) != NULL) {
                if (strncmp(n->extra, prefix, strlen(prefix)) == 0)
                    for (int i = 0; i < n_live; i++)
                        if (!acked[i] &&
                            strcmp(n->extra + strlen(prefix), PQgetvalue(live, i, 0)) == 0) {
                            acked[i] = true;
                            n_acked++;
                            any = true;
                        }
                PQfreemem(n);
            }
            if (!any &&
                mig_pq_wait_readable(r->ctl, r->env->latch, (int)CM_MIN(deadline - now, 1)) < 0) {
                rc = mig_run_stopping(r) ? RUN_STOP
                                         : mig_run_classify(r, r->ctl, NULL, "control store");
                break;
            }
        }
    }
    PQclear(live);
    free(acked);
    return rc;
}

/*
 * Test hook: PGSHIFT_FAILPOINT=name in the environment kills the process
 * (SIGKILL, as kill -9) when the runner reaches that point, so that the
 * tests can crash pgshift exactly there. Points: cutover_after_flip.
 */
static void failpoint(const char *name)
{
    const char *fp = getenv("PGSHIFT_FAILPOINT");

    if (fp != NULL && strcmp(fp, name) == 0) {
        LOG_WARN(LOG_CTX, "failpoint %s: killing the process (PGSHIFT_FAILPOINT)", name);
        raise(SIGKILL);
    }
}

/* SQL reading the source sequence's last value behind position table t (literals on c). */
static char *seq_last_sql(run_t *r, PGconn *c, const tab_t *t)
{
    char *tl = mig_run_lit(c, t->q), *cl = mig_run_lit(c, r->env->position_column), *s;

    s = cm_xasprintf("SELECT s.last_value::text FROM pg_sequences s WHERE format('%%I.%%I', "
                     "s.schemaname, s.sequencename)::regclass = pg_get_serial_sequence(%s, "
                     "%s)::regclass",
                     tl, cl);
    free(tl);
    free(cl);
    return s;
}

/* SQL moving the target's sequence behind t to at least last (never back). */
static char *setval_sql(run_t *r, const tab_t *t, const char *last)
{
    char *tl = mig_run_lit(r->dst, t->q), *cl = mig_run_lit(r->dst, r->env->position_column);
    char *ll = mig_run_lit(r->dst, last), *s;

    s = cm_xasprintf(
        "SELECT setval(s, greatest(%s::bigint, (SELECT coalesce(last_value, 0) "
        "FROM pg_sequences WHERE format('%%I.%%I', schemaname, sequencename)::regclass "
        "= s::regclass))) FROM pg_get_serial_sequence(%s, %s) s WHERE s IS NOT NULL",
        ll, tl, cl);
    free(tl);
    free(cl);
    free(ll);
    return s;
}

/*
 * One cutover attempt. request: the CUTOVER request answered (0 = auto).
 * Returns RUN_OK whether it succeeded or rolled back (d says which through
 * *completed); an error return leaves recovery to recover_cutover.
 */
static run_rc_t cutover(dw_t *d, int64_t request, bool *completed)
{
    run_t *r = d->r;
    outcome_t o = { 0 };
    uint64_t t0, deadline, t_acked = 0, t_fenced = 0, t_swept = 0, sent_us;
    int attempt = 0;
    bool fenced = false, locked = false, all = false;
    run_rc_t rc;
    PGresult *res;
    char lt[32];

    *completed = false;
    /* Both stores connected before the hold (a failed sweep dropped them), not inside it. */
    rc = mig_run_connect_stores(r);
    if (rc != RUN_OK)
        return rc;
    /* Listen before the phase change, so no acknowledgement is missed. */
    rc = mig_run_x(r, r->ctl, "control store", "LISTEN " MIG_ACKS_CHANNEL, 0, NULL);
    if (rc != RUN_OK)
        return rc;
    {
        char reqs[24];
        const char *params[] = { r->ids, reqs };

        sent_us = cm_now_us();
        snprintf(reqs, sizeof(reqs), "%" PRId64, request);
        res = mig_run_q(
            r, r->ctl, "control store",
            "WITH m AS (UPDATE pgshift.migrations SET phase = 'CUTOVER', "
            "    cutover_attempt = cutover_attempt + 1, cutover_started_at = now(), "
            "    updated_at = now(), status_detail = 'cutover' "
            "  WHERE id = $1::bigint AND phase = 'DUAL_WRITE' AND NOT paused "
            "  RETURNING id, tenant, cutover_attempt, cutover_request_by), "
            "a AS (INSERT INTO pgshift.audit_log (migration_id, event_type, operator, details) "
            "  SELECT id, 'phase_changed', coalesce(cutover_request_by, 'pgshift'), "
            "    '{\"from\": \"DUAL_WRITE\", \"to\": \"CUTOVER\"}' FROM m "
            "  UNION ALL SELECT id, 'cutover_initiated', coalesce(cutover_request_by, 'pgshift'), "
            "    jsonb_build_object('attempt', cutover_attempt, 'request', $2::bigint, "
            "    'automatic', $2::bigint = 0) FROM m) "
            "SELECT m.cutover_attempt, rt.store, rt.state, rt.version FROM m "
            "  LEFT JOIN pgshift.routes rt ON rt.tenant = m.tenant",
            2, params, &rc);
    }
    if (res == NULL)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return RUN_RECHECK;
    }
    attempt = atoi(PQgetvalue(res, 0, 0));
    publish_route(d, res, 1, "CUTOVER", attempt, sent_us); /* this process holds from here */
    PQclear(res);
    t0 = cm_now_ms();
    deadline = t0 + (uint64_t)d->timeout_ms;
    LOG_INFO(LOG_CTX, "migration %s: cutover attempt %d, budget %d ms: holding", r->ids, attempt,
             d->timeout_ms);

    /* 1. Every live process holds the tenant's new work and has drained what was inside. */
    rc = wait_acks(d, attempt, deadline, &all, o.error, sizeof(o.error));
    t_acked = cm_now_ms();
    if (rc != RUN_OK)
        goto failed;
    if (!all)
        goto rollback;
    /* 2. The fence: wait out the tenant's writers still in flight (any client), then refuse. */
    if (d->fence == NULL) {
        rc = install_fence(d);
        if (rc != RUN_OK)
            goto failed;
    }
    {
        uint64_t now = cm_now_ms();
        long long left = (long long)deadline - (long long)now - FLIP_RESERVE_MS;
        char *s;

        if (left < 1) {
            snprintf(o.error, sizeof(o.error), "cutover_timeout_ms spent before the fence");
            goto rollback;
        }
        snprintf(lt, sizeof(lt), "%lld", left);
        /*
         * One round trip: the lock (waits out the writers), the fence row,
         * and the source's sequences, final for the tenant from here on.
         */
        {
            cm_buf_t q = { 0 };
            PGresult **res3 = cm_xcalloc(3 + r->n_tabs, sizeof(*res3));
            size_t n_seq = 0, *seq_tab = cm_xcalloc(r->n_tabs + 1, sizeof(*seq_tab));

            s = cm_xasprintf("SET lock_timeout = %s; SELECT pg_advisory_lock(" FENCE_LOCK_CLASS
                             ", hashtext(%s)); INSERT INTO pgshift.fence (tenant, migration_id) "
                             "VALUES (%s, %s) ON CONFLICT (tenant) DO UPDATE SET migration_id = "
                             "EXCLUDED.migration_id",
                             lt, d->tenant_src, d->tenant_src, r->ids);
            cm_buf_append(&q, s, strlen(s));
            free(s);
            for (size_t i = 0; i < r->n_tabs; i++) {
                if (!r->tabs[i].has_pos || strcmp(r->tabs[i].mode, "preserve") != 0)
                    continue;
                s = seq_last_sql(r, d->fence, &r->tabs[i]);
                cm_buf_append(&q, "; ", 2);
                cm_buf_append(&q, s, strlen(s));
                free(s);
                seq_tab[n_seq++] = i;
            }
            cm_buf_append_u8(&q, 0);
            rc = exec_multi(r, d->fence, "source store", (const char *)q.data, res3, 3 + n_seq);
            cm_buf_free(&q);
            if (rc == RUN_OK) {
                cm_buf_t pre = { 0 };

                for (size_t k = 0; k < n_seq; k++) {
                    if (PQntuples(res3[3 + k]) == 1 && !PQgetisnull(res3[3 + k], 0, 0)) {
                        s = setval_sql(r, &r->tabs[seq_tab[k]], PQgetvalue(res3[3 + k], 0, 0));
                        if (pre.len > 0)
                            cm_buf_append(&pre, "; ", 2);
                        cm_buf_append(&pre, s, strlen(s));
                        free(s);
                    }
                }
                for (size_t k = 0; k < 3 + n_seq; k++)
                    PQclear(res3[k]);
                cm_buf_append_u8(&pre, 0);
                set_str(&d->sweep_prelude, pre.len > 1 ? (const char *)pre.data : NULL);
                cm_buf_free(&pre);
            }
            free(res3);
            free(seq_tab);
        }
        locked = true; /* maybe: unfence releases every advisory lock and resets the timeout */
        if (rc != RUN_OK) {
            if (strcmp(r->sqlstate, "55P03") == 0) {
                snprintf(o.error, sizeof(o.error),
                         "a transaction of the tenant on the source did not end within "
                         "cutover_timeout_ms");
                rc = RUN_OK;
                goto rollback;
            }
            goto failed;
        }
        fenced = true;
    }
    t_fenced = cm_now_ms();
    /* 3. The exact final sweep: nothing of the tenant can commit on the source any more. */
    {
        long long applied = 0, events = 0;

        rc = round_once(
            d, true,
            (int)CM_MAX((long long)deadline - (long long)cm_now_ms() - FLIP_RESERVE_MS, 1LL),
            &applied, &events);
        if (rc != RUN_OK) {
            snprintf(o.error, sizeof(o.error), "final sweep: %s", r->err ? r->err : "failed");
            mig_run_drop_stores(r);
            rc = RUN_OK;
            goto rollback;
        }
        o.synced = events;
        d->applied_total += applied;
    }
    t_swept = cm_now_ms();
    /*
     * 4. The target's sequences past the source's, before the target takes
     * its first write: in the sweep's transaction, unless the sweep had
     * nothing to write.
     */
    if (d->sweep_prelude != NULL) {
        rc = mig_run_x(r, r->dst, "target store", d->sweep_prelude, 0, NULL);
        set_str(&d->sweep_prelude, NULL);
        if (rc != RUN_OK) {
            snprintf(o.error, sizeof(o.error), "sequence: %s", r->err ? r->err : "failed");
            rc = RUN_OK;
            goto rollback;
        }
    }
    if (cm_now_ms() + FLIP_RESERVE_MS > deadline) {
        snprintf(o.error, sizeof(o.error), "cutover_timeout_ms (%d) would be exceeded",
                 d->timeout_ms);
        goto rollback;
    }
    /* 5. The flip, in one control-store transaction. */
    {
        char att[16], *res_js;
        const char *params[3];

        o.success = true;
        o.pause_ms = -1; /* known once the flip has committed: record_pause */
        snprintf(att, sizeof(att), "%d", attempt);
        res_js = outcome_json(&o, request, attempt);
        params[0] = r->ids;
        params[1] = att;
        params[2] = res_js;
        sent_us = cm_now_us();
        res = mig_run_q(
            r, r->ctl, "control store",
            "WITH m AS (UPDATE pgshift.migrations SET phase = 'COMPLETED', completed_at = now(), "
            "    updated_at = now(), cutover_result = $3::jsonb, status_detail = NULL "
            "  WHERE id = $1::bigint AND phase = 'CUTOVER' AND cutover_attempt = $2::int "
            "  RETURNING id, tenant, target_store, cutover_request_by), "
            "rt AS (UPDATE pgshift.routes SET store = (SELECT target_store FROM m), "
            "    state = 'normal', migration_id = NULL, version = version + 1, updated_at = now() "
            "  WHERE tenant = (SELECT tenant FROM m) RETURNING tenant, store, state, version), "
            "a AS (INSERT INTO pgshift.audit_log (migration_id, event_type, operator, details) "
            "  SELECT id, 'phase_changed', 'pgshift', '{\"from\": \"CUTOVER\", \"to\": "
            "    \"COMPLETED\"}' FROM m "
            "  UNION ALL SELECT id, 'cutover_completed', coalesce(cutover_request_by, 'pgshift'), "
            "    $3::jsonb FROM m "
            "  UNION ALL SELECT id, 'migration_completed', 'pgshift', jsonb_build_object("
            "    'target_store', target_store) FROM m) "
            "SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM rt), "
            "  (SELECT store FROM rt), (SELECT state FROM rt), (SELECT version FROM rt)",
            3, params, &rc);
        free(res_js);
        if (res == NULL) {
            /*
             * Unknown whether it committed: keep the fence (the tenant may
             * live on the target now) and let the record decide - COMPLETED
             * stays, CUTOVER is recovered by recover_cutover.
             */
            unfence(d, false, locked);
            return rc;
        }
        if (strcmp(PQgetvalue(res, 0, 0), "1") != 0) {
            PQclear(res);
            o.success = false;
            snprintf(o.error, sizeof(o.error), "the migration left CUTOVER (aborted?)");
            goto rollback;
        }
        publish_route(d, res, 2, NULL, 0, sent_us); /* held work goes to the target */
        PQclear(res);
    }
    failpoint("cutover_after_flip"); /* persisted, nothing after it done: restart -> COMPLETED */
    o.pause_ms = (long long)(cm_now_ms() - t0);
    record_pause(d, o.pause_ms);
    unfence(d, false, locked); /* the fence stays: the source refuses the tenant for good */
    if (strcmp(r->position_mode, "map") == 0)
        (void)mig_run_mirror_map(r); /* the final sweep's pairs, now outside the pause */
    (void)mig_run_x(r, r->ctl, "control store", "UNLISTEN *", 0, NULL);
    drop_notifies(r->ctl);
    LOG_INFO(LOG_CTX,
             "migration %s: cutover complete in %lld ms (drained %" PRIu64 ", fenced %" PRIu64
             ", swept %" PRIu64 ", flipped %" PRIu64 " ms after the hold), %lld events in the "
             "final sweep",
             r->ids, o.pause_ms, t_acked - t0, t_fenced - t0, t_swept - t0, cm_now_ms() - t0,
             o.synced);
    *completed = true;
    return RUN_OK;

rollback:
    unfence(d, fenced, locked);
    if (r->src != NULL &&
        mig_run_x(r, r->src, "source store", "RESET statement_timeout", 0, NULL) != RUN_OK)
        mig_run_drop_stores(r); /* the sweep's bound must not outlive the attempt */
    (void)mig_run_x(r, r->ctl, "control store", "UNLISTEN *", 0, NULL);
    drop_notifies(r->ctl);
    return roll_back(d, attempt, request, &o, t0);
failed:
    /* An error (connection, stop): lift what we can; recover_cutover finishes the job. */
    unfence(d, fenced, locked);
    if (r->ctl != NULL && PQstatus(r->ctl) == CONNECTION_OK && !mig_run_stopping(r)) {
        snprintf(o.error, sizeof(o.error), "%s", r->err ? r->err : "cutover failed");
        (void)roll_back(d, attempt, request, &o, t0);
    }
    return rc;
}

/*
 * The record says CUTOVER but no attempt runs here (a restart, or an error
 * mid-attempt): the flip was not persisted (else it would say COMPLETED),
 * so lift the fence and go back to DUAL_WRITE.
 */
static run_rc_t recover_cutover(dw_t *d)
{
    run_t *r = d->r;
    outcome_t o = { 0 };
    const char *params[] = { r->ids };
    run_rc_t rc;
    PGresult *res;
    int attempt;
    int64_t request;

    res = mig_run_q(r, r->ctl, "control store",
                    "SELECT cutover_attempt, cutover_request FROM pgshift.migrations "
                    "WHERE id = $1::bigint AND phase = 'CUTOVER'",
                    1, params, &rc);
    if (res == NULL)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return RUN_OK;
    }
    attempt = atoi(PQgetvalue(res, 0, 0));
    request = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    PQclear(res);
    rc = install_fence(d); /* lifts the fence of the interrupted attempt */
    if (rc != RUN_OK)
        return rc;
    snprintf(o.error, sizeof(o.error),
             "the cutover was interrupted (pgshift restarted or lost a store); back to dual-write");
    return roll_back(d, attempt, request, &o, cm_now_ms());
}

/* ---- the loop --------------------------------------------------------------------------- */

/* ---- consistency check ------------------------------------------------------------------ */

/*
 * Whether every position table has a lower bound to check up to (or had no
 * row at all when the last barrier was read).
 */
static bool verify_possible(const dw_t *d)
{
    const run_t *r = d->r;

    if (d->caught_up_ms == 0)
        return false;
    for (size_t i = 0; i < r->n_tabs; i++)
        if (r->tabs[i].has_pos && d->t[i].lo == NULL && d->t[i].bar_hi != NULL)
            return false;
    return true;
}

/* Settings that change how rows print as text: the same on both stores while checking. */
#define VERIFY_TXN_SQL                                                                \
    "BEGIN READ ONLY; SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, MDY'; " \
    "SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 3; "        \
    "SET LOCAL bytea_output = 'hex'"

/* Order-free digest of rows: the sum of a 60-bit prefix of each row's md5 (of text). */
#define VERIFY_HASH(text) \
    "coalesce(sum(('x' || left(md5(" text "), 15))::bit(60)::bigint::numeric), 0)"

/*
 * The next chunk of position table i on the source: count, digest and the
 * highest position of the tenant's first batch_size rows above v_upto
 * and at or below v_goal. Rows keep their source position in preserve mode;
 * in map mode the position is part of the digested text, as the target pairs
 * its rows with their source positions. Owned.
 */
static char *verify_src_sql(const dw_t *d, size_t i)
{
    const run_t *r = d->r;
    const tab_t *t = &r->tabs[i];
    const char *pos = t->key_q[0];
    bool map = strcmp(t->mode, "map") == 0;
    char *goal = mig_run_lit(r->src, d->t[i].v_goal), *from = NULL, *sql;

    if (d->t[i].v_upto != NULL) {
        char *l = mig_run_lit(r->src, d->t[i].v_upto);

        from = cm_xasprintf(" AND %s > %s::%s", pos, l, t->key_type[0]);
        free(l);
    }
    sql = cm_xasprintf(
        "SELECT count(*), " VERIFY_HASH(
            "x.pgshift_row") ", max(x.pgshift_pos)::text "
                             "FROM (SELECT ROW(%s)::text%s%s AS pgshift_row, %s AS pgshift_pos "
                             "FROM %s "
                             "WHERE %s = %s AND %s <= %s::%s%s ORDER BY %s LIMIT %d) x",
        map ? t->copy_cols : t->all_cols, map ? " || ':' || " : "", map ? pos : "", pos, t->q,
        r->tcol, d->tenant_src, pos, goal, t->key_type[0], from ? from : "", pos, r->batch_size);
    free(goal);
    free(from);
    return sql;
}

/* The same rows on the target: positions above v_upto and at or below hi. Owned. */
static char *verify_dst_sql(const dw_t *d, size_t i, const char *hi)
{
    const run_t *r = d->r;
    const tab_t *t = &r->tabs[i];
    const char *pos = t->key_q[0];
    const char *col = strcmp(t->mode, "map") == 0 ? "m.source_position" : NULL;
    char *h = mig_run_lit(r->dst, hi), *from = NULL, *sql;
    char *spos = col ? cm_xstrdup(col) : cm_xasprintf("%s.%s", t->q, pos);

    if (d->t[i].v_upto != NULL) {
        char *l = mig_run_lit(r->dst, d->t[i].v_upto);

        from = cm_xasprintf(" AND %s > %s::%s", spos, l, t->key_type[0]);
        free(l);
    }
    if (col == NULL)
        sql = cm_xasprintf("SELECT count(*), " VERIFY_HASH("ROW(%s)::text") " FROM %s WHERE %s = "
                                                                            "%s AND %s <= %s::%s%s",
                           t->all_cols, t->q, r->tcol, r->tenant_lit, spos, h, t->key_type[0],
                           from ? from : "");
    else
        sql = cm_xasprintf("SELECT count(*), " VERIFY_HASH(
                               "ROW(%s)::text || ':' || "
                               "m.source_position") " "
                                                    "FROM %s JOIN pgshift.target_position_map m ON "
                                                    "m.migration_id = %s "
                                                    "AND m.target_position = %s.%s WHERE %s = %s "
                                                    "AND %s <= %s::%s%s",
                           t->copy_cols, t->q, r->ids, t->q, pos, r->tcol, r->tenant_lit, spos, h,
                           t->key_type[0], from ? from : "");
    free(h);
    free(from);
    free(spos);
    return sql;
}

/* Start a check (request 0 = the automatic one): every position table up to its lower bound. */
static void verify_start(dw_t *d, int64_t request)
{
    run_t *r = d->r;

    for (size_t i = 0; i < r->n_tabs; i++) {
        set_str(&d->t[i].v_goal, d->t[i].lo);
        set_str(&d->t[i].v_upto, NULL);
        d->t[i].v_rows = 0;
        /* nothing to compare: not a position table, or no row was there at the last barrier */
        d->t[i].v_done = !r->tabs[i].has_pos || d->t[i].lo == NULL;
    }
    d->verify_running = true;
    d->verify_request = request;
    d->verify_start_ms = cm_now_ms();
}

/* Record the outcome of the check in verify_result and the audit log. */
static run_rc_t verify_finish(dw_t *d, bool ok, const char *detail)
{
    run_t *r = d->r;
    char rq[24], rw[24], ms[24];
    long long rows = 0;
    const char *params[] = { r->ids, rq, ok ? "true" : "false", rw, ms, detail };
    PGresult *res;
    run_rc_t rc = RUN_OK;

    for (size_t i = 0; i < r->n_tabs; i++)
        rows += d->t[i].v_rows;
    d->verify_running = false;
    d->verify_state = ok ? VERIFY_PASSED : VERIFY_FAILED;
    snprintf(d->verify_detail, sizeof(d->verify_detail), "%s", detail);
    snprintf(rq, sizeof(rq), "%" PRId64, d->verify_request);
    snprintf(rw, sizeof(rw), "%lld", rows);
    snprintf(ms, sizeof(ms), "%" PRIu64, cm_now_ms() - d->verify_start_ms);
    res = mig_run_q(r, r->ctl, "control store",
                    "UPDATE pgshift.migrations SET verify_result = jsonb_build_object("
                    "  'request', $2::bigint, 'passed', $3::bool, 'rows', $4::bigint, "
                    "  'ms', $5::bigint, 'detail', $6::text) "
                    "WHERE id = $1::bigint RETURNING verify_result::text",
                    6, params, &rc);
    if (res != NULL && PQntuples(res) == 1)
        mig_run_audit(r, ok ? "verification_completed" : "verification_failed",
                      PQgetvalue(res, 0, 0));
    PQclear(res);
    LOG_INFO(LOG_CTX, "migration %s: consistency check %s in %s ms: %s", r->ids,
             ok ? "passed" : "FAILED", ms, d->verify_detail);
    d->verify_seen = CM_MAX(d->verify_seen, d->verify_request);
    if (rc == RUN_OK) {
        /* The readiness that follows from it, right after (never "failed" next to "ready" for
         * long). */
        bool phase_ok, paused;

        rc = publish_status(d, &phase_ok, &paused);
    }
    d->last_status_ms = 0; /* and the loop looks at the record again */
    return rc;
}

/*
 * One step of the consistency check, between two rounds: the next chunk of
 * the first position table not done, compared by count and digest between
 * the stores. The rows it covers, at or below the table's lower bound when
 * the check began, are all on the target and final (position tables are
 * append-only), so the check is exact and can go on in chunks while
 * dual-write runs; rows above it and the mutable tables are made exact by
 * the cutover's final sweep, under the fence. The last step records the
 * outcome. A source or control failure returns it; a target failure is
 * returned too (the caller counts it as a failed round), and the check goes
 * on from where it was.
 */
static run_rc_t verify_step(dw_t *d)
{
    run_t *r = d->r;
    size_t i;
    run_rc_t rc;
    PGresult *a = NULL, *b = NULL;
    char *sql;

    for (i = 0; i < r->n_tabs && d->t[i].v_done; i++)
        ;
    if (i == r->n_tabs) {
        cm_buf_t det = { 0 };
        run_rc_t frc;

        for (size_t k = 0; k < r->n_tabs; k++) {
            char *e;

            if (!r->tabs[k].has_pos || d->t[k].v_goal == NULL)
                continue;
            e = cm_xasprintf("%s%s: %lld rows up to position %s equal", det.len ? "; " : "",
                             r->tabs[k].name, d->t[k].v_rows, d->t[k].v_goal);
            cm_buf_append(&det, e, strlen(e));
            free(e);
        }
        if (det.len == 0)
            cm_buf_append_cstr(&det, "no position table rows to compare yet");
        else
            cm_buf_append_u8(&det, 0);
        frc = verify_finish(d, true, (const char *)det.data);
        cm_buf_free(&det);
        return frc;
    }
    rc = mig_run_x(r, r->src, "source store", VERIFY_TXN_SQL, 0, NULL);
    if (rc == RUN_OK)
        rc = mig_run_x(r, r->dst, "target store", VERIFY_TXN_SQL, 0, NULL);
    if (rc == RUN_OK) {
        sql = verify_src_sql(d, i);
        a = mig_run_q(r, r->src, "source store", sql, 0, NULL, &rc);
        free(sql);
    }
    if (a != NULL && !PQgetisnull(a, 0, 2)) {
        sql = verify_dst_sql(d, i, PQgetvalue(a, 0, 2));
        b = mig_run_q(r, r->dst, "target store", sql, 0, NULL, &rc);
        free(sql);
    }
    if (rc == RUN_OK)
        rc = mig_run_x(r, r->src, "source store", "COMMIT", 0, NULL);
    if (rc == RUN_OK)
        rc = mig_run_x(r, r->dst, "target store", "COMMIT", 0, NULL);
    if (rc != RUN_OK) {
        PQclear(a);
        PQclear(b);
        mig_run_drop_stores(r); /* their transactions die with them */
        return rc;
    }
    if (b == NULL) {
        d->t[i].v_done = true; /* nothing left up to the goal */
    } else if (strcmp(PQgetvalue(a, 0, 0), PQgetvalue(b, 0, 0)) != 0 ||
               strcmp(PQgetvalue(a, 0, 1), PQgetvalue(b, 0, 1)) != 0) {
        char *det = cm_xasprintf("%s: rows at positions %s%s to %s differ (%s on the source, %s "
                                 "on the target, or their contents)",
                                 r->tabs[i].name, d->t[i].v_upto ? "after " : "from the start",
                                 d->t[i].v_upto ? d->t[i].v_upto : "", PQgetvalue(a, 0, 2),
                                 PQgetvalue(a, 0, 0), PQgetvalue(b, 0, 0));

        PQclear(a);
        PQclear(b);
        rc = verify_finish(d, false, det);
        free(det);
        return rc;
    } else {
        d->t[i].v_rows += strtoll(PQgetvalue(a, 0, 0), NULL, 10);
        set_str(&d->t[i].v_upto, PQgetvalue(a, 0, 2));
    }
    PQclear(a);
    PQclear(b);
    return RUN_OK;
}

static run_rc_t dw_loop(dw_t *d)
{
    run_t *r = d->r;
    uint64_t next_round = 0;

    for (;;) {
        uint64_t now = cm_now_ms();
        bool phase_ok = true, paused = false;
        run_rc_t rc;

        if (mig_run_stopping(r))
            return RUN_STOP;
        if (now - d->last_status_ms >= STATUS_EVERY_MS) {
            rc = publish_status(d, &phase_ok, &paused);
            if (rc != RUN_OK)
                return rc;
            if (!phase_ok)
                return RUN_RECHECK;
        }
        /* A CUTOVER request, or auto_cutover once ready. */
        {
            char buf[512];
            long long predicted;
            const char *why = not_ready(d, buf, sizeof(buf), &predicted);
            int64_t req = d->request_pending > d->request_seen ? d->request_pending : 0;
            bool autogo = d->auto_cutover && why == NULL && now >= d->next_auto_ms && !paused;

            if (req > 0 || autogo) {
                bool completed = false;

                if (req > 0 && (why != NULL || paused)) {
                    /* Refused: nothing changed. */
                    outcome_t o = { 0 };
                    char *js;

                    snprintf(o.error, sizeof(o.error), "not ready for cutover: %s",
                             paused ? "the migration is paused" : why);
                    js = outcome_json(&o, req, 0);
                    {
                        const char *params[] = { r->ids, js };

                        rc = mig_run_x(r, r->ctl, "control store",
                                       "UPDATE pgshift.migrations SET cutover_result = "
                                       "$2::jsonb WHERE id = $1::bigint",
                                       2, params);
                    }
                    free(js);
                    if (rc != RUN_OK)
                        return rc;
                    d->request_seen = req;
                    continue;
                }
                d->request_seen = CM_MAX(d->request_seen, req);
                rc = cutover(d, req, &completed);
                if (rc != RUN_OK)
                    return rc;
                if (completed)
                    return RUN_OK;
                d->next_auto_ms = cm_now_ms() + AUTO_RETRY_MS;
                d->last_status_ms = 0;
                continue;
            }
        }
        if (now < next_round) {
            if (mig_run_nap(r, (int)CM_MIN(next_round - now, (uint64_t)STATUS_EVERY_MS)))
                return RUN_STOP;
            continue;
        }
        next_round = now + (uint64_t)d->interval_ms;
        if (paused || !breaker_allows(d))
            continue;
        {
            long long applied = 0, events = 0;

            rc = round_once(d, false, 0, &applied, &events);
            if (rc == RUN_STOP)
                return rc;
            if ((rc == RUN_PERMANENT || rc == RUN_TRANSIENT) && !is_target_error(r))
                return rc; /* the source or the control store: the runner retries */
            if (rc != RUN_OK) {
                mig_run_drop_stores(r);
                record_failure(d);
                continue;
            }
            record_success(d);
            d->applied_total += applied;
            d->converging = (double)events <= d->lag_ewma + 0.5 || events <= d->max_lag;
            d->lag_ewma = 0.8 * d->lag_ewma + 0.2 * (double)events;
            d->lag_events = events;
            /* The consistency check: a new request restarts it; one chunk per round. */
            if (d->verify_pending > d->verify_seen &&
                (!d->verify_running || d->verify_request != d->verify_pending) &&
                verify_possible(d))
                verify_start(d, d->verify_pending);
            else if (!d->verify_running && d->verify_on && d->verify_state == VERIFY_PENDING &&
                     verify_possible(d))
                verify_start(d, 0);
            if (d->verify_running) {
                rc = verify_step(d);
                if (rc != RUN_OK && is_target_error(r)) {
                    record_failure(d); /* the check waits for the target, like the rounds */
                    continue;
                }
                if (rc != RUN_OK)
                    return rc;
            }
            if (d->last_full_round_ms == 0)
                d->last_full_round_ms = d->last_round_ms;
            else {
                bool full = false;

                for (size_t i = 0; i < r->n_tabs; i++)
                    full |= !r->tabs[i].has_pos && d->t[i].scanned;
                if (full)
                    d->last_full_round_ms = d->last_round_ms;
            }
        }
    }
}

run_rc_t mig_dw_run(run_t *r)
{
    dw_t d = { .r = r };
    run_rc_t rc;
    bool found = false;

    if (strcmp(r->phase, "BULK_COPY") == 0) {
        rc = to_dual_write(r);
        if (rc != RUN_OK)
            return rc;
    }
    rc = mig_run_connect_stores(r);
    if (rc != RUN_OK)
        return rc;
    if (r->n_tabs == 0) {
        rc = mig_run_read_plan(r, &found);
        if (rc != RUN_OK)
            return rc;
    }
    d.t = cm_xcalloc(r->n_tabs ? r->n_tabs : 1, sizeof(*d.t));
    for (size_t i = 0; i < r->n_tabs; i++)
        d.t[i].last_count = -1;
    rc = load_state(&d);
    if (rc == RUN_OK)
        rc = install_fence(&d);
    if (rc == RUN_OK && strcmp(r->phase, "CUTOVER") == 0)
        rc = recover_cutover(&d);
    if (rc == RUN_OK) {
        d.last_status_ms = 0;
        rc = dw_loop(&d);
    }
    dw_free(&d);
    return rc;
}
