/*
 * tests/unit/test_migrator.c - the migrator's foundations: the outbox
 * (threads -> loop through uv_async: cross-thread delivery, order,
 * coalescing, close), the admin command parser, and the control store
 * client against a throwaway PostgreSQL 15 that this binary initdb's into a
 * temporary folder and removes at the end (schema creation twice and under
 * concurrency, schema constraints, ROUTE TENANT and its refusals, NOTIFY
 * reaching a second client, SHOW ROUTES / SHOW TENANTS, cancelled cookies,
 * control store restart). Every loop test ends with uv_loop_close() == 0.
 */
#include <errno.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

/* cmocka needs stdarg, stddef and setjmp first. */
// clang-format off
#include <cmocka.h>
// clang-format on

#include "common/cm.h"
#include "common/log.h"
#include "migrator/migrator.h"
#include "migrator/migrator_int.h"

#define PG_BIN "/usr/lib/postgresql/15/bin"

/* ---- loop helpers ------------------------------------------------------------------ */

/* A repeating timer keeps uv_run(UV_RUN_ONCE) returning while we wait on other threads. */
typedef struct fixture {
    uv_loop_t loop;
    uv_timer_t ticker;
} fixture_t;

static void ticker_cb(uv_timer_t *t)
{
    (void)t;
}

static void fixture_init(fixture_t *f)
{
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(uv_timer_init(&f->loop, &f->ticker), 0);
    assert_int_equal(uv_timer_start(&f->ticker, ticker_cb, 5, 5), 0);
}

static void fixture_close(fixture_t *f)
{
    uv_close((uv_handle_t *)&f->ticker, NULL);
    while (uv_run(&f->loop, UV_RUN_DEFAULT) != 0)
        ;
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

/* ---- outbox ------------------------------------------------------------------------- */

#define N_THREADS    4
#define N_PER_THREAD 5000

typedef struct box_probe {
    mig_outbox_t box;
    uint64_t n_delivered;
    uint64_t next_seq[N_THREADS]; /* per-sender order check */
    bool order_ok;
    bool close_in_deliver;
    bool closed;
} box_probe_t;

static void box_deliver(void *arg, mig_event_t *ev)
{
    box_probe_t *p = arg;
    uint64_t thread = ev->request_id >> 32, seq = ev->request_id & 0xffffffffu;

    if (thread < N_THREADS) {
        if (p->next_seq[thread] != seq)
            p->order_ok = false;
        p->next_seq[thread] = seq + 1;
    }
    p->n_delivered++;
    mig_event_free(ev);
    if (p->close_in_deliver && !p->box.is_closing)
        mig_outbox_close(&p->box, NULL);
}

static void box_closed(void *arg)
{
    box_probe_t *p = arg;

    p->closed = true;
}

typedef struct sender {
    box_probe_t *probe;
    uint64_t thread;
} sender_t;

static void sender_main(void *arg)
{
    sender_t *s = arg;

    for (uint64_t i = 0; i < N_PER_THREAD; i++) {
        mig_event_t *ev = cm_xcalloc(1, sizeof(*ev));

        ev->kind = MIG_EV_REPLY;
        ev->request_id = (s->thread << 32) | i;
        ev->result = mig_result_new("SHOW", 0, NULL);
        mig_outbox_push(&s->probe->box, ev);
        if (i % 512 == 0)
            usleep(100); /* let the loop drain mid-stream too */
    }
}

static void test_outbox_threads(void **state)
{
    fixture_t f;
    box_probe_t p = { .order_ok = true };
    sender_t senders[N_THREADS];
    uv_thread_t threads[N_THREADS];

    (void)state;
    fixture_init(&f);
    assert_int_equal(mig_outbox_init(&p.box, &f.loop, box_deliver, &p), 0);
    for (int i = 0; i < N_THREADS; i++) {
        senders[i] = (sender_t){ .probe = &p, .thread = (uint64_t)i };
        assert_int_equal(uv_thread_create(&threads[i], sender_main, &senders[i]), 0);
    }
    while (p.n_delivered < N_THREADS * N_PER_THREAD)
        uv_run(&f.loop, UV_RUN_ONCE);
    for (int i = 0; i < N_THREADS; i++)
        uv_thread_join(&threads[i]);
    assert_true(p.order_ok);
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(p.next_seq[i], N_PER_THREAD);
    /* Signals coalesce: far fewer wakeups than events. */
    assert_true(p.box.n_wakeups >= 1);
    assert_true(p.box.n_wakeups < N_THREADS * N_PER_THREAD);
    mig_outbox_close(&p.box, box_closed);
    fixture_close(&f);
    assert_true(p.closed);
}

static mig_event_t *seq_event(uint64_t seq)
{
    mig_event_t *ev = cm_xcalloc(1, sizeof(*ev));

    ev->kind = MIG_EV_ROUTES;
    ev->request_id = seq; /* thread 0 */
    ev->n_routes = 1;
    ev->routes = cm_xcalloc(1, sizeof(mig_route_t));
    ev->routes[0].tenant = cm_xstrdup("t");
    ev->routes[0].store = cm_xstrdup("s");
    ev->routes[0].state = cm_xstrdup("normal");
    return ev;
}

/* Ten pushes before the loop runs are one signal and one drain. */
static void test_outbox_coalesce(void **state)
{
    fixture_t f;
    box_probe_t p = { .order_ok = true };

    (void)state;
    fixture_init(&f);
    assert_int_equal(mig_outbox_init(&p.box, &f.loop, box_deliver, &p), 0);
    for (uint64_t i = 0; i < 10; i++)
        mig_outbox_push(&p.box, seq_event(i));
    uv_run(&f.loop, UV_RUN_NOWAIT);
    assert_int_equal(p.n_delivered, 10);
    assert_int_equal(p.box.n_wakeups, 1);
    assert_true(p.order_ok);
    /* Undelivered events at close are freed, never delivered. */
    for (uint64_t i = 10; i < 15; i++)
        mig_outbox_push(&p.box, seq_event(i));
    mig_outbox_close(&p.box, box_closed);
    fixture_close(&f);
    assert_int_equal(p.n_delivered, 10);
    assert_true(p.closed);
}

/* Closing from inside deliver drops the rest of the batch. */
static void test_outbox_close_in_deliver(void **state)
{
    fixture_t f;
    box_probe_t p = { .order_ok = true, .close_in_deliver = true };

    (void)state;
    fixture_init(&f);
    assert_int_equal(mig_outbox_init(&p.box, &f.loop, box_deliver, &p), 0);
    for (uint64_t i = 0; i < 5; i++)
        mig_outbox_push(&p.box, seq_event(i));
    fixture_close(&f);
    assert_int_equal(p.n_delivered, 1);
}

/* ---- parser ---------------------------------------------------------------------------- */

static void test_cmd_parse(void **state)
{
    mig_cmd_t cmd;
    char *storage = NULL, *err = NULL;

    (void)state;
    assert_int_equal(mig_cmd_parse("show routes", &cmd, &storage, &err), 0);
    assert_int_equal(cmd.kind, MIG_CMD_SHOW_ROUTES);
    free(storage);
    assert_int_equal(mig_cmd_parse("  SHOW TENANTS ; ", &cmd, &storage, &err), 0);
    assert_int_equal(cmd.kind, MIG_CMD_SHOW_TENANTS);
    free(storage);
    assert_int_equal(mig_cmd_parse("route tenant 'o''brien' TO 'store b';", &cmd, &storage, &err),
                     0);
    assert_int_equal(cmd.kind, MIG_CMD_ROUTE_TENANT);
    assert_string_equal(cmd.tenant, "o'brien");
    assert_string_equal(cmd.store, "store b");
    free(storage);
    assert_int_equal(mig_cmd_parse("ROUTE TENANT acme TO secondary", &cmd, &storage, &err), 0);
    assert_string_equal(cmd.tenant, "acme");
    assert_string_equal(cmd.store, "secondary");
    free(storage);
    /* Not ours: the proxy handles it. */
    assert_int_equal(mig_cmd_parse("SHOW CLIENTS", &cmd, &storage, &err), 1);
    free(storage);
    assert_int_equal(mig_cmd_parse("", &cmd, &storage, &err), 1);
    free(storage);
    /* Ours, but malformed. */
    static const char *const bad[] = {
        "ROUTE TENANT 'x'",     "ROUTE TENANT 'x' TO",         "ROUTE TENANT 'x' INTO 'y'",
        "ROUTE TENANT 'x TO y", "ROUTE TENANT 'x' TO 'y' now", "SHOW ROUTES extra",
        "ROUTE 'x' TO 'y'",     "ROUTE TENANT ; TO 'y'",
    };
    for (size_t i = 0; i < CM_ARRAY_LEN(bad); i++) {
        err = NULL;
        assert_int_equal(mig_cmd_parse(bad[i], &cmd, &storage, &err), -EINVAL);
        assert_non_null(err);
        assert_non_null(strstr(err, "syntax error"));
        free(err);
        free(storage);
    }
}

/* A route; store "a" or "b", version v. Owned by the caller's array. */
static mig_route_t rt(const char *tenant, const char *store, int64_t v)
{
    mig_route_t r = { .tenant = cm_xstrdup(tenant),
                      .store = cm_xstrdup(store),
                      .state = cm_xstrdup("normal"),
                      .version = v };
    return r;
}

/* "tenant:store:version,..." of routes. */
static char *routes_str(const mig_route_t *r, size_t n)
{
    cm_buf_t b = { 0 };

    for (size_t i = 0; i < n; i++) {
        char *e = cm_xasprintf("%s%s:%s:%lld", i ? "," : "", r[i].tenant, r[i].store,
                               (long long)r[i].version);

        cm_buf_append(&b, e, strlen(e));
        free(e);
    }
    cm_buf_append_u8(&b, 0);
    return (char *)b.data;
}

static void assert_overlay(const mig_overlay_t *o, const char *want)
{
    size_t n;
    mig_route_t *r = mig_overlay_routes(o, &n);
    char *got;

    assert_non_null(r);
    got = routes_str(r, n);
    assert_string_equal(got, want);
    free(got);
    mig_routes_free(r, n);
}

/*
 * A route a runner published stays in force over loads that began before
 * it (they may predate its commit), and gives way to the first load begun
 * after it - whatever that load says, even that the route is gone.
 */
static void test_route_overlay(void **state)
{
    mig_overlay_t o = { 0 };
    mig_route_t *load;
    mig_route_t pub;
    size_t n;

    (void)state;
    pub = rt("t2", "b", 8);
    mig_overlay_publish(&o, &pub, 5);
    assert_null(mig_overlay_routes(&o, &n)); /* nothing loaded yet: nothing to deliver */
    assert_int_equal(n, 0);

    load = cm_xcalloc(3, sizeof(*load));
    load[0] = rt("t1", "a", 1);
    load[1] = rt("t2", "a", 7);
    load[2] = rt("t3", "a", 1);
    mig_overlay_load(&o, load, 3, 4); /* began before the publication */
    assert_overlay(&o, "t1:a:1,t2:b:8,t3:a:1");

    /* A second publication of the same tenant replaces the first; a new tenant sorts in. */
    mig_route_clear(&pub);
    pub = rt("t2", "a", 9);
    mig_overlay_publish(&o, &pub, 10);
    mig_route_clear(&pub);
    pub = rt("t0", "b", 1);
    mig_overlay_publish(&o, &pub, 11);
    mig_route_clear(&pub);
    assert_overlay(&o, "t0:b:1,t1:a:1,t2:a:9,t3:a:1");

    /* A stale load (began at 6, before both): both publications stay. */
    load = cm_xcalloc(3, sizeof(*load));
    load[0] = rt("t1", "a", 1);
    load[1] = rt("t2", "b", 8);
    load[2] = rt("t3", "a", 1);
    mig_overlay_load(&o, load, 3, 6);
    assert_overlay(&o, "t0:b:1,t1:a:1,t2:a:9,t3:a:1");

    /* Began at 10, with t2's publication: not after it, so nothing gives way. */
    load = cm_xcalloc(2, sizeof(*load));
    load[0] = rt("t1", "a", 1);
    load[1] = rt("t2", "b", 12);
    mig_overlay_load(&o, load, 2, 10);
    assert_overlay(&o, "t0:b:1,t1:a:1,t2:a:9");
    load = cm_xcalloc(2, sizeof(*load));
    load[0] = rt("t1", "a", 1);
    load[1] = rt("t2", "b", 12);
    mig_overlay_load(&o, load, 2, 11); /* after t2's (at 10), not after t0's (at 11) */
    assert_overlay(&o, "t0:b:1,t1:a:1,t2:b:12");

    /* After every publication: the load alone, t0 gone with it. */
    load = cm_xcalloc(1, sizeof(*load));
    load[0] = rt("t1", "a", 2);
    mig_overlay_load(&o, load, 1, 12);
    assert_overlay(&o, "t1:a:2");
    assert_int_equal(o.n_pins, 0);
    mig_overlay_free(&o);
}

static void test_cmd_parse_migrations(void **state)
{
    mig_cmd_t cmd;
    char *storage = NULL, *err = NULL;

    (void)state;
    assert_int_equal(mig_cmd_parse("MIGRATE TENANT 'acme' TO 'b'", &cmd, &storage, &err), 0);
    assert_int_equal(cmd.kind, MIG_CMD_MIGRATE);
    assert_string_equal(cmd.tenant, "acme");
    assert_string_equal(cmd.store, "b");
    assert_null(cmd.options);
    free(storage);
    assert_int_equal(mig_cmd_parse("migrate tenant acme to b with (Batch_Size = 500, "
                                   "max_bulk_copy_rate=0,position_mapping_enabled='off');",
                                   &cmd, &storage, &err),
                     0);
    assert_string_equal(cmd.options, "batch_size=500,max_bulk_copy_rate=0,"
                                     "position_mapping_enabled=off");
    assert_string_equal(cmd.store, "b");
    free(storage);
    assert_int_equal(mig_cmd_parse("SHOW MIGRATIONS", &cmd, &storage, &err), 0);
    assert_int_equal(cmd.kind, MIG_CMD_SHOW_MIGRATIONS);
    free(storage);
    assert_int_equal(mig_cmd_parse("show migration 42;", &cmd, &storage, &err), 0);
    assert_int_equal(cmd.kind, MIG_CMD_SHOW_MIGRATION);
    assert_int_equal(cmd.migration_id, 42);
    free(storage);
    assert_int_equal(mig_cmd_parse("SHOW AUDIT 7", &cmd, &storage, &err), 0);
    assert_int_equal(cmd.kind, MIG_CMD_SHOW_AUDIT);
    assert_int_equal(cmd.migration_id, 7);
    free(storage);
    assert_int_equal(mig_cmd_parse("PAUSE MIGRATION 3 'disk is hot'", &cmd, &storage, &err), 0);
    assert_int_equal(cmd.kind, MIG_CMD_PAUSE_MIGRATION);
    assert_int_equal(cmd.migration_id, 3);
    assert_string_equal(cmd.reason, "disk is hot");
    free(storage);
    assert_int_equal(mig_cmd_parse("RESUME MIGRATION 3", &cmd, &storage, &err), 0);
    assert_int_equal(cmd.kind, MIG_CMD_RESUME_MIGRATION);
    free(storage);
    assert_int_equal(mig_cmd_parse("ABORT MIGRATION 3 'changed my mind'", &cmd, &storage, &err), 0);
    assert_int_equal(cmd.kind, MIG_CMD_ABORT_MIGRATION);
    assert_string_equal(cmd.reason, "changed my mind");
    free(storage);
    assert_int_equal(mig_cmd_parse("ABORT MIGRATION 3", &cmd, &storage, &err), 0);
    assert_null(cmd.reason);
    free(storage);
    assert_int_equal(mig_cmd_parse("WATCH MIGRATION 9", &cmd, &storage, &err), 0);
    assert_int_equal(cmd.kind, MIG_CMD_WATCH_MIGRATION);
    assert_int_equal(cmd.migration_id, 9);
    free(storage);
    assert_int_equal(mig_cmd_parse("verify 12;", &cmd, &storage, &err), 0);
    assert_int_equal(cmd.kind, MIG_CMD_VERIFY);
    assert_int_equal(cmd.migration_id, 12);
    free(storage);
    assert_int_equal(mig_cmd_parse("VERIFY MIGRATION 13", &cmd, &storage, &err), 0);
    assert_int_equal(cmd.kind, MIG_CMD_VERIFY);
    assert_int_equal(cmd.migration_id, 13);
    free(storage);
    assert_int_not_equal(mig_cmd_parse("VERIFY everything", &cmd, &storage, &err), 0);
    assert_non_null(strstr(err, "VERIFY id"));
    free(err);
    err = NULL;
    free(storage);
    storage = NULL;
    /* The proxy's own PAUSE [timeout] and RESUME are not ours. */
    static const char *const theirs[] = { "PAUSE",   "PAUSE 500",  "pause;", "RESUME",
                                          "RESUME;", "SHOW STATS", "ABORT",  "WATCH" };
    for (size_t i = 0; i < CM_ARRAY_LEN(theirs); i++) {
        assert_int_equal(mig_cmd_parse(theirs[i], &cmd, &storage, &err), 1);
        free(storage);
    }
    /* Ours but malformed, or a bad setting (the message names the key). */
    static const struct {
        const char *sql, *needle;
    } bad[] = {
        { "MIGRATE TENANT 'x'", "syntax error" },
        { "MIGRATE 'x' TO 'y'", "syntax error" },
        { "MIGRATE TENANT 'x' TO 'y' WITH", "syntax error" },
        { "MIGRATE TENANT 'x' TO 'y' WITH (batch_size)", "syntax error" },
        { "MIGRATE TENANT 'x' TO 'y' WITH (batch_size = 5", "syntax error" },
        { "MIGRATE TENANT 'x' TO 'y' WITH (batch_size = 0)", "batch_size" },
        { "MIGRATE TENANT 'x' TO 'y' WITH (batch_size = ten)", "batch_size" },
        { "MIGRATE TENANT 'x' TO 'y' WITH (max_bulk_copy_rate = -1)", "max_bulk_copy_rate" },
        { "MIGRATE TENANT 'x' TO 'y' WITH (position_mapping_enabled = maybe)",
          "position_mapping_enabled" },
        { "MIGRATE TENANT 'x' TO 'y' WITH (colour = 'blue')", "colour" },
        { "MIGRATE TENANT 'x' TO 'y' WITH (batch_size = 5, batch_size = 6)", "batch_size" },
        { "MIGRATE TENANT 'x' TO 'y' extra", "syntax error" },
        { "SHOW MIGRATION", "syntax error" },
        { "SHOW MIGRATION abc", "syntax error" },
        { "SHOW MIGRATION 0", "syntax error" },
        { "SHOW MIGRATIONS 4", "syntax error" },
        { "SHOW AUDIT", "syntax error" },
        { "PAUSE MIGRATION", "syntax error" },
        { "PAUSE MIGRATION 1 reason", "syntax error" },
        { "RESUME MIGRATION 1 'why'", "syntax error" },
        { "ABORT MIGRATION x", "syntax error" },
        { "WATCH MIGRATION", "syntax error" },
        { "ABORT MIGRATION 1 'unterminated", "unterminated" },
    };
    for (size_t i = 0; i < CM_ARRAY_LEN(bad); i++) {
        err = NULL;
        if (mig_cmd_parse(bad[i].sql, &cmd, &storage, &err) != -EINVAL)
            fail_msg("%s: not refused", bad[i].sql);
        assert_non_null(err);
        if (strstr(err, bad[i].needle) == NULL)
            fail_msg("%s: \"%s\" lacks \"%s\"", bad[i].sql, err, bad[i].needle);
        free(err);
        free(storage);
    }
    /* Settings by name: what WITH and [migration] accept. */
    {
        mig_settings_t st;

        mig_settings_default(&st);
        assert_int_equal(st.batch_size, 1000);
        assert_int_equal(st.max_bulk_copy_rate, 10000);
        assert_int_equal(st.dual_write_timeout_minutes, 30);
        assert_int_equal(st.cutover_max_lag_events, 100);
        assert_int_equal(st.cutover_timeout_ms, 500);
        assert_true(st.position_mapping_enabled && st.verify_consistency &&
                    st.migrate_subscriptions && !st.auto_cutover);
        assert_int_equal(mig_settings_apply_list(&st, "batch_size=7,auto_cutover=yes", &err), 0);
        assert_int_equal(st.batch_size, 7);
        assert_true(st.auto_cutover);
        err = NULL;
        assert_int_equal(mig_settings_apply_list(&st, "cutover_timeout_ms=0", &err), -EINVAL);
        assert_non_null(strstr(err, "cutover_timeout_ms"));
        free(err);
    }
}

/* ---- a throwaway PostgreSQL ------------------------------------------------------- */

static char pg_dir[64];
static bool pg_as_postgres; /* running as root: PostgreSQL runs as user postgres */

static int sh(const char *fmt, ...) PRINTF_LIKE(1, 2);
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    int rc;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    rc = system(cmd);
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

static const char *pg_as(void)
{
    return pg_as_postgres ? "runuser -u postgres -- " : "";
}

static char *conninfo(const char *db)
{
    return cm_xasprintf("host=%s port=5432 dbname=%s user=postgres", pg_dir, db);
}

static int pg_start(void)
{
    return sh("%s" PG_BIN "/pg_ctl -D %s/data -l %s/log -w -s -o \"-p 5432 -k %s "
              "-c listen_addresses= -c fsync=off\" start",
              pg_as(), pg_dir, pg_dir, pg_dir);
}

static PGconn *db(const char *name)
{
    char *ci = conninfo(name);
    PGconn *c = PQconnectdb(ci);

    free(ci);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("connect %s: %s", name, PQerrorMessage(c));
    return c;
}

/* Run sql; returns "" on success, else the SQLSTATE (static storage). */
static const char *sql_state(PGconn *c, const char *sql)
{
    static char st[8];
    PGresult *res = PQexec(c, sql);

    if (mig_pq_ok(res))
        st[0] = '\0';
    else
        snprintf(st, sizeof(st), "%s", mig_pq_sqlstate(res));
    PQclear(res);
    return st;
}

static void sql_ok(PGconn *c, const char *sql)
{
    PGresult *res = PQexec(c, sql);

    if (!mig_pq_ok(res))
        fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
}

/* First cell of sql's result, owned. */
static char *sql_value(PGconn *c, const char *sql)
{
    PGresult *res = PQexec(c, sql);
    char *v;

    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1)
        fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    v = cm_xstrdup(PQgetisnull(res, 0, 0) ? "<null>" : PQgetvalue(res, 0, 0));
    PQclear(res);
    return v;
}

static int pg_setup(void **state)
{
    char tmpl[] = "/tmp/pgshift-test-mig-XXXXXX";
    PGconn *c;

    (void)state;
    if (mkdtemp(tmpl) == NULL)
        return -1;
    snprintf(pg_dir, sizeof(pg_dir), "%s", tmpl);
    pg_as_postgres = getuid() == 0;
    if (pg_as_postgres) {
        struct passwd *pw = getpwnam("postgres");

        if (pw == NULL || chown(pg_dir, pw->pw_uid, pw->pw_gid) != 0) {
            fprintf(stderr, "test_migrator: cannot hand %s to user postgres\n", pg_dir);
            return -1;
        }
    }
    if (sh("%s" PG_BIN "/initdb -D %s/data -A trust -U postgres --no-sync -E UTF8 "
           ">%s/initdb.log 2>&1",
           pg_as(), pg_dir, pg_dir) != 0 ||
        pg_start() != 0) {
        fprintf(stderr, "test_migrator: cannot start PostgreSQL in %s\n", pg_dir);
        sh("cat %s/initdb.log %s/log >&2", pg_dir, pg_dir);
        return -1;
    }
    c = db("postgres");
    sql_ok(c, "CREATE DATABASE control");
    sql_ok(c, "CREATE DATABASE store_a");
    sql_ok(c, "CREATE DATABASE store_b");
    sql_ok(c, "CREATE DATABASE concur");
    PQfinish(c);
    /* The tenant tables, on both stores (projection_checkpoints lacks the tenant column). */
    for (int i = 0; i < 2; i++) {
        c = db(i == 0 ? "store_a" : "store_b");
        sql_ok(c, "CREATE TABLE events (global_position bigserial PRIMARY KEY, "
                  "event_id uuid UNIQUE, aggregate_id uuid, tenant_id uuid, payload jsonb)");
        sql_ok(c, "CREATE TABLE snapshots (aggregate_id uuid PRIMARY KEY, tenant_id uuid)");
        sql_ok(c, "CREATE TABLE projection_checkpoints (projection_name text PRIMARY KEY, "
                  "global_position bigint)");
        /* Per-tenant consumer checkpoints: a position as a plain value (I6). */
        sql_ok(c, "CREATE TABLE tenant_checkpoints (tenant_id uuid, projection_name text, "
                  "global_position bigint, PRIMARY KEY (tenant_id, projection_name))");
        PQfinish(c);
    }
    return 0;
}

static int pg_teardown(void **state)
{
    (void)state;
    if (pg_dir[0] == '\0')
        return 0;
    sh("%s" PG_BIN "/pg_ctl -D %s/data -m immediate -w -s stop >/dev/null 2>&1", pg_as(), pg_dir);
    sh("rm -rf %s", pg_dir);
    return 0;
}

/* ---- schema ----------------------------------------------------------------------------- */

static void test_schema_idempotent(void **state)
{
    PGconn *c = db("control");
    char *err = NULL, *v;
    int version = 0;

    (void)state;
    assert_int_equal(mig_schema_upgrade(c, -1, &version, &err), 0);
    assert_int_equal(version, MIG_SCHEMA_VERSION);
    assert_int_equal(mig_schema_upgrade(c, -1, &version, &err), 0);
    assert_int_equal(version, MIG_SCHEMA_VERSION);
    v = sql_value(c, "SELECT count(*)::text || '/' || max(version) FROM pgshift.schema_version");
    assert_string_equal(v, "1/4");
    free(v);
    v = sql_value(c, "SELECT count(*) FROM pg_tables WHERE schemaname = 'pgshift'");
    /* schema_version routes migrations position_map audit_log processes cutover_acks
     * dual_write_failures */
    assert_string_equal(v, "8");
    free(v);
    PQfinish(c);
}

typedef struct upgrader {
    int rc;
    int version;
} upgrader_t;

static void upgrader_main(void *arg)
{
    upgrader_t *u = arg;
    char *ci = conninfo("concur"), *err = NULL;
    PGconn *c = PQconnectdb(ci);

    u->rc = PQstatus(c) == CONNECTION_OK ? mig_schema_upgrade(c, -1, &u->version, &err) : -1;
    if (err != NULL)
        fprintf(stderr, "upgrade: %s\n", err);
    free(err);
    free(ci);
    PQfinish(c);
}

/* Several pgshift processes starting at once: the advisory lock serialises them. */
static void test_schema_concurrent(void **state)
{
    upgrader_t u[6];
    uv_thread_t t[6];
    PGconn *c;
    char *v;

    (void)state;
    for (int i = 0; i < 6; i++) {
        u[i].rc = -99;
        assert_int_equal(uv_thread_create(&t[i], upgrader_main, &u[i]), 0);
    }
    for (int i = 0; i < 6; i++) {
        uv_thread_join(&t[i]);
        assert_int_equal(u[i].rc, 0);
        assert_int_equal(u[i].version, MIG_SCHEMA_VERSION);
    }
    c = db("concur");
    v = sql_value(c, "SELECT count(*)::text || '/' || max(version) FROM pgshift.schema_version");
    assert_string_equal(v, "1/4");
    free(v);
    PQfinish(c);
}

static void test_schema_constraints(void **state)
{
    PGconn *c = db("control");
    char *err = NULL;
    int version;

    (void)state;
    assert_int_equal(mig_schema_upgrade(c, -1, &version, &err), 0);
    sql_ok(c, "INSERT INTO pgshift.migrations (tenant, source_store, target_store, operator) "
              "VALUES ('m1', 'store_a', 'store_b', 'admin')");
    /* At most one active migration per tenant. */
    assert_string_equal(sql_state(c, "INSERT INTO pgshift.migrations (tenant, source_store, "
                                     "target_store) VALUES ('m1', 'store_a', 'store_b')"),
                        "23505");
    assert_string_equal(sql_state(c, "INSERT INTO pgshift.migrations (tenant, source_store, "
                                     "target_store) VALUES ('m2', 'store_a', 'store_a')"),
                        "23514");
    assert_string_equal(sql_state(c, "UPDATE pgshift.migrations SET phase = 'WHATEVER'"), "23514");
    sql_ok(c, "UPDATE pgshift.migrations SET phase = 'ABORTED' WHERE tenant = 'm1'");
    sql_ok(c, "INSERT INTO pgshift.migrations (tenant, source_store, target_store) "
              "VALUES ('m1', 'store_a', 'store_b')");
    /* The audit log is append-only and knows its event types. */
    sql_ok(c, "INSERT INTO pgshift.audit_log (migration_id, event_type, operator, details) "
              "SELECT min(id), 'migration_started', 'admin', '{\"k\": 1}' FROM pgshift.migrations");
    assert_string_equal(sql_state(c, "INSERT INTO pgshift.audit_log (event_type) VALUES ('oops')"),
                        "23514");
    assert_string_equal(sql_state(c, "UPDATE pgshift.audit_log SET operator = 'x'"), "42501");
    assert_string_equal(sql_state(c, "DELETE FROM pgshift.audit_log"), "42501");
    assert_string_equal(sql_state(c, "TRUNCATE pgshift.audit_log"), "42501");
    /* Leave no active migration behind for the route tests. */
    sql_ok(c, "UPDATE pgshift.migrations SET phase = 'ABORTED'");
    PQfinish(c);
}

/* ---- the control client ------------------------------------------------------------ */

#define MAX_EVENTS 512

typedef struct probe {
    mig_ctl_t *ctl;
    mig_event_t *evs[MAX_EVENTS]; /* owned */
    size_t n;
    bool stop_in_cb;
} probe_t;

static void probe_cb(void *arg, mig_event_t *ev)
{
    probe_t *p = arg;

    BUG_ON(p->n >= MAX_EVENTS, "too many events");
    p->evs[p->n++] = ev;
    if (p->stop_in_cb) {
        p->stop_in_cb = false;
        mig_ctl_stop(p->ctl);
        p->ctl = NULL;
    }
}

static void probe_free(probe_t *p)
{
    for (size_t i = 0; i < p->n; i++)
        mig_event_free(p->evs[i]);
    p->n = 0;
}

/* Index of the first event of kind at or after `from` (and with cookie, for replies). */
static long wait_event(fixture_t *f, probe_t *p, size_t from, mig_event_kind_t kind, void *cookie,
                       int timeout_ms)
{
    uint64_t deadline = cm_now_ms() + (uint64_t)timeout_ms;

    for (;;) {
        for (size_t i = from; i < p->n; i++)
            if (p->evs[i]->kind == kind && (kind != MIG_EV_REPLY || p->evs[i]->cookie == cookie))
                return (long)i;
        if (cm_now_ms() > deadline)
            return -1;
        uv_run(&f->loop, UV_RUN_ONCE);
    }
}

/* Wait for a ROUTES event after `from` in which tenant has store and version. */
static long wait_route(fixture_t *f, probe_t *p, size_t from, const char *tenant, const char *store,
                       int64_t version, int timeout_ms)
{
    uint64_t deadline = cm_now_ms() + (uint64_t)timeout_ms;

    for (;;) {
        long i = wait_event(f, p, from, MIG_EV_ROUTES, NULL,
                            (int)(deadline > cm_now_ms() ? deadline - cm_now_ms() : 0));

        if (i < 0)
            return -1;
        for (size_t r = 0; r < p->evs[i]->n_routes; r++) {
            const mig_route_t *rt = &p->evs[i]->routes[r];

            if (strcmp(rt->tenant, tenant) == 0 &&
                (store == NULL ? false : strcmp(rt->store, store) == 0) && rt->version == version)
                return i;
        }
        from = (size_t)i + 1;
    }
}

static const char *const store_names[] = { "store_a", "store_b" };
static const char *const tables[] = { "events", "snapshots", "projection_checkpoints",
                                      "missing_table" };

static void start_ctl(fixture_t *f, probe_t *p)
{
    char *ci = conninfo("control"), *a = conninfo("store_a"), *b = conninfo("store_b");
    const char *conninfos[] = { a, b };
    mig_tenancy_t ten = { .n_tables = CM_ARRAY_LEN(tables),
                          .tables = tables,
                          .tenant_column = "tenant_id",
                          .default_store = "store_a" };

    memset(p, 0, sizeof(*p));
    assert_int_equal(
        mig_ctl_start(&f->loop, ci, store_names, conninfos, 2, &ten, probe_cb, p, &p->ctl), 0);
    free(ci);
    free(a);
    free(b);
    /* Never during the call: the first routes come on a later turn. */
    assert_int_equal(p->n, 0);
    assert_true(wait_event(f, p, 0, MIG_EV_ROUTES, NULL, 2000) == 0);
}

static void stop_ctl(probe_t *p)
{
    if (p->ctl != NULL)
        mig_ctl_stop(p->ctl);
    p->ctl = NULL;
}

/* Run cmd through p; returns the reply's result (owned by the probe's event list). */
static const mig_result_t *request(fixture_t *f, probe_t *p, const char *text)
{
    static int cookies[64];
    static size_t next_cookie;
    void *cookie = &cookies[next_cookie++ % 64];
    mig_cmd_t cmd;
    char *storage = NULL, *err = NULL;
    long i;

    assert_int_equal(mig_cmd_parse(text, &cmd, &storage, &err), 0);
    mig_ctl_request(p->ctl, &cmd, cookie);
    free(storage);
    i = wait_event(f, p, 0, MIG_EV_REPLY, cookie, 20000);
    assert_true(i >= 0);
    p->evs[i]->cookie = NULL; /* so a later request with this cookie finds its own reply */
    assert_non_null(p->evs[i]->result);
    return p->evs[i]->result;
}

static const char *cell(const mig_result_t *r, size_t row, const char *col)
{
    for (size_t c = 0; c < r->n_cols; c++)
        if (strcmp(r->cols[c], col) == 0) {
            BUG_ON(row >= r->n_rows, "no row %zu", row);
            return r->cells[row * r->n_cols + c];
        }
    fail_msg("no column %s", col);
    return NULL;
}

static long find_row(const mig_result_t *r, const char *tenant)
{
    for (size_t i = 0; i < r->n_rows; i++)
        if (strcmp(cell(r, i, "tenant"), tenant) == 0)
            return (long)i;
    return -1;
}

static void assert_error(const mig_result_t *r, const char *sqlstate, const char *needle)
{
    if (r->err_sqlstate == NULL)
        fail_msg("expected %s, got success", sqlstate);
    assert_string_equal(r->err_sqlstate, sqlstate);
    if (strstr(r->err_message, needle) == NULL)
        fail_msg("message \"%s\" lacks \"%s\"", r->err_message, needle);
    assert_int_equal(r->n_rows, 0);
}

#define T_ROWS_A "11111111-1111-1111-1111-111111111111" /* rows on store_a (its store) */
#define T_ROWS_B "22222222-2222-2222-2222-222222222222" /* rows on store_b only */
#define T_EMPTY  "33333333-3333-3333-3333-333333333333" /* no rows anywhere */

static void test_ctl_route_and_notify(void **state)
{
    fixture_t f;
    probe_t a, b;
    const mig_result_t *r;
    PGconn *c;
    uint64_t t0;
    long i;

    (void)state;
    fixture_init(&f);
    start_ctl(&f, &a);
    start_ctl(&f, &b);

    /* Placed through a, seen by b (NOTIFY) within a second. */
    r = request(&f, &a, "ROUTE TENANT '" T_EMPTY "' TO 'store_b'");
    assert_null(r->err_sqlstate);
    assert_string_equal(r->tag, "ROUTE");
    assert_string_equal(cell(r, 0, "store"), "store_b");
    assert_string_equal(cell(r, 0, "version"), "1");
    t0 = cm_now_ms();
    assert_true(wait_route(&f, &b, 0, T_EMPTY, "store_b", 1, 1000) >= 0);
    assert_true(wait_route(&f, &a, 0, T_EMPTY, "store_b", 1, 1000) >= 0);
    assert_true(cm_now_ms() - t0 < 1000);

    /* Again: version + 1. A non-uuid tenant cannot have rows in a uuid column. */
    r = request(&f, &b, "ROUTE TENANT '" T_EMPTY "' TO 'store_a'");
    assert_null(r->err_sqlstate);
    assert_string_equal(cell(r, 0, "version"), "2");
    assert_true(wait_route(&f, &a, 0, T_EMPTY, "store_a", 2, 1000) >= 0);
    r = request(&f, &a, "ROUTE TENANT 'plain-name' TO 'store_b'");
    assert_null(r->err_sqlstate);

    /* A change made by anyone else in the control store is delivered too. */
    c = db("control");
    sql_ok(c, "UPDATE pgshift.routes SET store = 'store_b', version = version + 1 "
              "WHERE tenant = '" T_EMPTY "'");
    assert_true(wait_route(&f, &a, 0, T_EMPTY, "store_b", 3, 1000) >= 0);
    assert_true(wait_route(&f, &b, 0, T_EMPTY, "store_b", 3, 1000) >= 0);

    r = request(&f, &b, "SHOW ROUTES");
    assert_null(r->err_sqlstate);
    assert_string_equal(r->tag, "SHOW");
    assert_int_equal(r->n_cols, 5);
    assert_int_equal(r->n_rows, 2);
    i = find_row(r, T_EMPTY);
    assert_true(i >= 0);
    assert_string_equal(cell(r, (size_t)i, "store"), "store_b");
    assert_string_equal(cell(r, (size_t)i, "state"), "normal");
    assert_null(cell(r, (size_t)i, "migration_id"));
    assert_string_equal(cell(r, (size_t)i, "version"), "3");

    /* A migration's phase shows in the routes; an active migration blocks ROUTE TENANT. */
    sql_ok(c, "WITH m AS (INSERT INTO pgshift.migrations (tenant, source_store, target_store) "
              "VALUES ('plain-name', 'store_b', 'store_a') RETURNING id) "
              "UPDATE pgshift.routes SET state = 'migrating', migration_id = (SELECT id FROM m), "
              "version = version + 1 WHERE tenant = 'plain-name'");
    i = wait_route(&f, &a, 0, "plain-name", "store_b", 2, 1000);
    assert_true(i >= 0);
    for (size_t k = 0; k < a.evs[i]->n_routes; k++)
        if (strcmp(a.evs[i]->routes[k].tenant, "plain-name") == 0) {
            assert_string_equal(a.evs[i]->routes[k].state, "migrating");
            assert_string_equal(a.evs[i]->routes[k].phase, "PENDING");
            assert_string_equal(a.evs[i]->routes[k].target_store, "store_a");
            assert_true(a.evs[i]->routes[k].migration_id > 0);
        }
    r = request(&f, &a, "ROUTE TENANT 'plain-name' TO 'store_a'");
    assert_error(r, "55000", "being migrated");
    sql_ok(c, "UPDATE pgshift.migrations SET phase = 'ABORTED' WHERE tenant = 'plain-name'");
    sql_ok(c, "UPDATE pgshift.routes SET state = 'normal', migration_id = NULL, "
              "version = version + 1 WHERE tenant = 'plain-name'");
    PQfinish(c);

    stop_ctl(&a);
    stop_ctl(&b);
    fixture_close(&f);
    probe_free(&a);
    probe_free(&b);
}

static void test_ctl_refusals_and_tenants(void **state)
{
    fixture_t f;
    probe_t p;
    const mig_result_t *r;
    PGconn *sa = db("store_a"), *sb = db("store_b");
    long i;

    (void)state;
    sql_ok(sa, "INSERT INTO events (event_id, tenant_id) SELECT gen_random_uuid(), '" T_ROWS_A
               "' FROM generate_series(1, 3)");
    sql_ok(sa, "INSERT INTO snapshots VALUES (gen_random_uuid(), '" T_ROWS_A "')");
    sql_ok(sb, "INSERT INTO snapshots VALUES (gen_random_uuid(), '" T_ROWS_B "')");
    fixture_init(&f);
    start_ctl(&f, &p);

    r = request(&f, &p, "ROUTE TENANT '" T_EMPTY "' TO 'nowhere'");
    assert_error(r, "42704", "store \"nowhere\" does not exist");
    /* Rows on its current store (the default store: no route yet). */
    r = request(&f, &p, "ROUTE TENANT '" T_ROWS_A "' TO 'store_b'");
    assert_error(r, "55000", "has rows in table \"events\" on store \"store_a\"");
    assert_non_null(strstr(r->err_message, "MIGRATE"));
    /* Rows on the target store. */
    r = request(&f, &p, "ROUTE TENANT '" T_ROWS_B "' TO 'store_b'");
    assert_error(r, "55000", "has rows in table \"snapshots\" on store \"store_b\"");
    /* Routing to where the rows already are is also refused: it is no placement. */
    r = request(&f, &p, "ROUTE TENANT '" T_ROWS_A "' TO 'store_a'");
    assert_error(r, "55000", "store_a");

    r = request(&f, &p, "SHOW TENANTS");
    assert_null(r->err_sqlstate);
    assert_int_equal(r->n_cols, 7);
    assert_string_equal(r->cols[5], "rows_store_a");
    assert_string_equal(r->cols[6], "rows_store_b");
    i = find_row(r, T_ROWS_A);
    assert_true(i >= 0);
    assert_string_equal(cell(r, (size_t)i, "store"), "store_a");
    assert_string_equal(cell(r, (size_t)i, "rows"), "4");
    assert_string_equal(cell(r, (size_t)i, "rows_store_a"), "4");
    assert_string_equal(cell(r, (size_t)i, "rows_store_b"), "0");
    i = find_row(r, T_ROWS_B);
    assert_true(i >= 0);
    assert_string_equal(cell(r, (size_t)i, "store"), "store_a"); /* no route: default */
    assert_string_equal(cell(r, (size_t)i, "rows"), "0");
    assert_string_equal(cell(r, (size_t)i, "rows_store_b"), "1");
    i = find_row(r, T_EMPTY); /* routed by the previous test, no rows */
    assert_true(i >= 0);
    assert_string_equal(cell(r, (size_t)i, "store"), "store_b");
    assert_string_equal(cell(r, (size_t)i, "rows"), "0");
    i = find_row(r, "plain-name");
    assert_true(i >= 0);

    /* Nothing of the refusals reached the control store. */
    r = request(&f, &p, "SHOW ROUTES");
    assert_int_equal(find_row(r, T_ROWS_A), -1);
    assert_int_equal(find_row(r, T_ROWS_B), -1);

    stop_ctl(&p);
    fixture_close(&f);
    probe_free(&p);
    PQfinish(sa);
    PQfinish(sb);
}

/* A cancelled cookie gets no reply, even when its address is reused at once. */
static void test_ctl_cancel(void **state)
{
    fixture_t f;
    probe_t p;
    int cookie;
    mig_cmd_t cmd = { .kind = MIG_CMD_SHOW_ROUTES };
    size_t replies = 0;
    long i;

    (void)state;
    fixture_init(&f);
    start_ctl(&f, &p);
    mig_ctl_request(p.ctl, &cmd, &cookie);
    mig_ctl_request(p.ctl, &cmd, &cookie);
    mig_ctl_cancel(p.ctl, &cookie);
    mig_ctl_request(p.ctl, &cmd, &cookie); /* the same address, a new client */
    i = wait_event(&f, &p, 0, MIG_EV_REPLY, &cookie, 10000);
    assert_true(i >= 0);
    /* Give the cancelled replies time to arrive, had they been delivered. */
    for (uint64_t t = cm_now_ms(); cm_now_ms() - t < 300;)
        uv_run(&f.loop, UV_RUN_ONCE);
    for (size_t k = 0; k < p.n; k++)
        if (p.evs[k]->kind == MIG_EV_REPLY)
            replies++;
    assert_int_equal(replies, 1);

    /* Stopping with requests queued and a stop inside the callback are both clean. */
    mig_ctl_request(p.ctl, &cmd, &cookie);
    mig_ctl_request(p.ctl, &cmd, &cookie);
    p.stop_in_cb = true;
    i = wait_event(&f, &p, (size_t)i + 1, MIG_EV_REPLY, &cookie, 10000);
    assert_true(i >= 0);
    assert_null(p.ctl);
    fixture_close(&f);
    probe_free(&p);
}

/* The control store restarts: DOWN, then UP and fresh routes; admin commands recover. */
static void test_ctl_reconnect(void **state)
{
    fixture_t f;
    probe_t p;
    const mig_result_t *r;
    long down, up, routes;

    (void)state;
    fixture_init(&f);
    start_ctl(&f, &p);
    r = request(&f, &p, "SHOW ROUTES"); /* the worker connects */
    assert_null(r->err_sqlstate);
    assert_int_equal(sh("%s" PG_BIN "/pg_ctl -D %s/data -m fast -w -s stop", pg_as(), pg_dir), 0);
    down = wait_event(&f, &p, 0, MIG_EV_CONTROL_DOWN, NULL, 10000);
    assert_true(down >= 0);
    /* While it is down, admin commands fail cleanly. */
    r = request(&f, &p, "SHOW ROUTES");
    assert_error(r, "08006", "control store");
    assert_int_equal(pg_start(), 0);
    up = wait_event(&f, &p, (size_t)down, MIG_EV_CONTROL_UP, NULL, 15000);
    assert_true(up > down);
    routes = wait_event(&f, &p, (size_t)up, MIG_EV_ROUTES, NULL, 5000);
    assert_true(routes > up);
    assert_true(p.evs[routes]->n_routes >= 2);
    r = request(&f, &p, "SHOW ROUTES");
    assert_null(r->err_sqlstate);
    assert_true(r->n_rows >= 2);
    /* And the LISTEN was renewed: a change still arrives. */
    r = request(&f, &p, "ROUTE TENANT 'after-restart' TO 'store_b'");
    assert_null(r->err_sqlstate);
    assert_true(wait_route(&f, &p, (size_t)routes, "after-restart", "store_b", 1, 1000) >= 0);
    stop_ctl(&p);
    fixture_close(&f);
    probe_free(&p);
}

/* ---- key lookups ------------------------------------------------------------------ */

#define AGG_A    "aaaaaaaa-0000-0000-0000-000000000001" /* events on store_a, tenant T_ROWS_A */
#define AGG_B    "aaaaaaaa-0000-0000-0000-000000000002" /* events on store_b only, T_ROWS_B */
#define AGG_NULL "aaaaaaaa-0000-0000-0000-000000000003" /* on store_a with a NULL tenant */
#define AGG_NONE "aaaaaaaa-0000-0000-0000-000000000004" /* nowhere */

static void start_ctl_with(fixture_t *f, probe_t *p, const char *store_b_conninfo)
{
    char *ci = conninfo("control"), *a = conninfo("store_a");
    const char *conninfos[] = { a, store_b_conninfo };
    mig_tenancy_t ten = { .n_tables = CM_ARRAY_LEN(tables),
                          .tables = tables,
                          .tenant_column = "tenant_id",
                          .default_store = "store_a" };

    memset(p, 0, sizeof(*p));
    assert_int_equal(
        mig_ctl_start(&f->loop, ci, store_names, conninfos, 2, &ten, probe_cb, p, &p->ctl), 0);
    free(ci);
    free(a);
    assert_true(wait_event(f, p, 0, MIG_EV_ROUTES, NULL, 2000) == 0);
}

/* Send a lookup; returns the reply's index in p (waits up to timeout_ms), or -1. */
static long lookup(fixture_t *f, probe_t *p, const char *column, const char *value, void *cookie,
                   int timeout_ms)
{
    mig_cmd_t cmd = { .kind = MIG_CMD_LOOKUP_KEY };
    char col[64], val[128];
    long i;

    /* The strings are borrowed: prove it by scribbling over them after the call. */
    snprintf(col, sizeof(col), "%s", column);
    snprintf(val, sizeof(val), "%s", value);
    cmd.key_column = col;
    cmd.key_value = val;
    mig_ctl_request(p->ctl, &cmd, cookie);
    memset(col, 'x', sizeof(col) - 1);
    memset(val, 'x', sizeof(val) - 1);
    i = wait_event(f, p, 0, MIG_EV_REPLY, cookie, timeout_ms);
    if (i >= 0)
        p->evs[i]->cookie = NULL;
    return i;
}

/* The reply of a lookup: (key, tenant), one row. Returns the tenant (NULL = SQL NULL). */
static const char *lookup_tenant(fixture_t *f, probe_t *p, const char *column, const char *value)
{
    int cookie;
    long i = lookup(f, p, column, value, &cookie, 10000);
    const mig_result_t *r;

    assert_true(i >= 0);
    r = p->evs[i]->result;
    if (r->err_sqlstate != NULL)
        fail_msg("lookup %s = %s: %s", column, value, r->err_message);
    assert_string_equal(r->tag, "LOOKUP");
    assert_int_equal(r->n_cols, 2);
    assert_string_equal(r->cols[0], "key");
    assert_string_equal(r->cols[1], "tenant");
    assert_int_equal(r->n_rows, 1);
    assert_string_equal(r->cells[0], value);
    return r->cells[1];
}

static void test_ctl_lookup(void **state)
{
    fixture_t f;
    probe_t p;
    PGconn *sa = db("store_a"), *sb = db("store_b"), *lock;
    const char *t;
    int slow_cookie, fast_cookie;
    long i;
    uint64_t t0;
    char *b = conninfo("store_b");

    (void)state;
    sql_ok(sa, "INSERT INTO events (event_id, aggregate_id, tenant_id) VALUES "
               "(gen_random_uuid(), '" AGG_A "', '" T_ROWS_A "'), "
               "(gen_random_uuid(), '" AGG_A "', '" T_ROWS_A "'), "
               "(gen_random_uuid(), '" AGG_NULL "', NULL)");
    sql_ok(sb, "INSERT INTO events (event_id, aggregate_id, tenant_id) VALUES "
               "(gen_random_uuid(), '" AGG_B "', '" T_ROWS_B "')");
    fixture_init(&f);
    start_ctl_with(&f, &p, b);

    t = lookup_tenant(&f, &p, "aggregate_id", AGG_A);
    assert_non_null(t);
    assert_string_equal(t, T_ROWS_A);
    /* Not on the default store: found on the next one. */
    t = lookup_tenant(&f, &p, "aggregate_id", AGG_B);
    assert_non_null(t);
    assert_string_equal(t, T_ROWS_B);
    /* A row without a tenant, no row, a value the column's type rejects: all NULL. */
    assert_null(lookup_tenant(&f, &p, "aggregate_id", AGG_NULL));
    assert_null(lookup_tenant(&f, &p, "aggregate_id", AGG_NONE));
    assert_null(lookup_tenant(&f, &p, "aggregate_id", "not-a-uuid"));
    /* A column no tenant table has, or only a table without the tenant column has. */
    assert_null(lookup_tenant(&f, &p, "no_such_column", "1"));
    assert_null(lookup_tenant(&f, &p, "projection_name", "p1"));
    /* The tenant column itself is a key too; identifiers are quoted, not spliced. */
    t = lookup_tenant(&f, &p, "tenant_id", T_ROWS_B);
    assert_non_null(t);
    assert_string_equal(t, T_ROWS_B);
    assert_null(lookup_tenant(&f, &p, "aggregate_id\"; DROP TABLE events; --", AGG_A));
    {
        char *v = sql_value(sa, "SELECT count(*) > 0 FROM events");

        assert_string_equal(v, "t");
        free(v);
    }

    /* The cached table survives a schema change: the column moves, the lookup follows. */
    sql_ok(sb, "ALTER TABLE events RENAME COLUMN aggregate_id TO agg_old");
    sql_ok(sb, "ALTER TABLE snapshots ADD COLUMN IF NOT EXISTS dummy int");
    sql_ok(sb,
           "INSERT INTO snapshots (aggregate_id, tenant_id) VALUES ('" AGG_B "', '" T_ROWS_B "')");
    t = lookup_tenant(&f, &p, "aggregate_id", AGG_B);
    assert_non_null(t);
    assert_string_equal(t, T_ROWS_B);
    sql_ok(sb, "DELETE FROM snapshots WHERE aggregate_id = '" AGG_B "'");
    sql_ok(sb, "ALTER TABLE events RENAME COLUMN agg_old TO aggregate_id");
    sql_ok(sb, "ALTER TABLE snapshots DROP COLUMN dummy");
    /* The cache still names snapshots on store_b for a while (RESOLVE_TTL_MS): start afresh. */
    stop_ctl(&p);
    probe_free(&p);
    start_ctl_with(&f, &p, b);

    /* Many lookups in a row are quick (one connection per store, kept open). */
    t0 = cm_now_ms();
    for (int k = 0; k < 200; k++)
        assert_non_null(lookup_tenant(&f, &p, "aggregate_id", AGG_B));
    assert_true(cm_now_ms() - t0 < 5000);

    /* A slow admin command does not hold lookups back: SHOW TENANTS waits on a lock. */
    lock = db("store_b");
    sql_ok(lock, "BEGIN");
    sql_ok(lock, "LOCK TABLE snapshots IN ACCESS EXCLUSIVE MODE");
    {
        mig_cmd_t cmd = { .kind = MIG_CMD_SHOW_TENANTS };

        mig_ctl_request(p.ctl, &cmd, &slow_cookie);
    }
    usleep(200 * 1000); /* the admin worker is now blocked on store_b */
    t0 = cm_now_ms();
    i = lookup(&f, &p, "aggregate_id", AGG_A, &fast_cookie, 1500);
    assert_true(i >= 0);
    assert_true(cm_now_ms() - t0 < 1000);
    assert_string_equal(p.evs[i]->result->cells[1], T_ROWS_A);
    assert_int_equal(wait_event(&f, &p, 0, MIG_EV_REPLY, &slow_cookie, 0), -1);
    sql_ok(lock, "ROLLBACK");
    PQfinish(lock);
    assert_true(wait_event(&f, &p, 0, MIG_EV_REPLY, &slow_cookie, 10000) >= 0);
    stop_ctl(&p);
    probe_free(&p);

    /* store_b unreachable: keys on store_a still resolve; others fail with the reason. */
    start_ctl_with(&f, &p, "host=/nonexistent-dir port=1 dbname=x");
    t = lookup_tenant(&f, &p, "aggregate_id", AGG_A);
    assert_non_null(t);
    assert_string_equal(t, T_ROWS_A);
    {
        int cookie;

        i = lookup(&f, &p, "aggregate_id", AGG_NONE, &cookie, 10000);
        assert_true(i >= 0);
        assert_error(p.evs[i]->result, "08006", "store \"store_b\"");
    }
    stop_ctl(&p);
    probe_free(&p);

    /* A store that comes back is used again (reconnect after the back-off). */
    start_ctl_with(&f, &p, b);
    assert_int_equal(sh("%s" PG_BIN "/pg_ctl -D %s/data -m fast -w -s stop", pg_as(), pg_dir), 0);
    {
        int cookie;

        i = lookup(&f, &p, "aggregate_id", AGG_A, &cookie, 10000);
        assert_true(i >= 0);
        assert_error(p.evs[i]->result, "08006", "cannot look up");
    }
    assert_int_equal(pg_start(), 0);
    usleep(1100 * 1000);
    t = lookup_tenant(&f, &p, "aggregate_id", AGG_A);
    assert_non_null(t);
    assert_string_equal(t, T_ROWS_A);
    stop_ctl(&p);
    fixture_close(&f);
    probe_free(&p);
    free(b);
    PQfinish(sa);
    PQfinish(sb);
}

/* ---- migrations ------------------------------------------------------------------- */

#define T_MIG   "44444444-4444-4444-4444-444444444444" /* the tenant that moves */
#define T_OTHER "55555555-5555-5555-5555-555555555555" /* a neighbour that stays */

static const char *const mig_names[] = { "msrc", "mdst", "mshared" };
static const char *const mig_dbs[] = { "mig_src", "mig_dst", "mig_shared" };
static const char *const mig_tables[] = { "events", "event_outbox", "snapshots",
                                          "projection_checkpoints", "tenant_checkpoints" };

/* Fresh source/target databases with the event-store shape, and a tenant of n events. */
static void mig_dbs_reset(long n_events)
{
    PGconn *c = db("postgres");
    char sql[512];

    for (size_t i = 0; i < CM_ARRAY_LEN(mig_dbs); i++) {
        snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", mig_dbs[i]);
        sql_ok(c, sql);
        snprintf(sql, sizeof(sql), "CREATE DATABASE %s", mig_dbs[i]);
        sql_ok(c, sql);
    }
    PQfinish(c);
    for (size_t i = 0; i < CM_ARRAY_LEN(mig_dbs); i++) {
        c = db(mig_dbs[i]);
        sql_ok(c, "CREATE TABLE events (global_position bigserial PRIMARY KEY, "
                  "event_id uuid NOT NULL UNIQUE, aggregate_id uuid NOT NULL, tenant_id uuid, "
                  "version int NOT NULL, payload jsonb NOT NULL, "
                  "created_at timestamptz NOT NULL DEFAULT now())");
        sql_ok(c, "CREATE INDEX ON events (tenant_id, global_position)");
        /* event_id unique: a target that assigns the outbox's ids can still tell its rows. */
        sql_ok(c, "CREATE TABLE event_outbox (id bigserial PRIMARY KEY, event_id uuid NOT NULL "
                  "UNIQUE, tenant_id uuid, payload jsonb NOT NULL)");
        sql_ok(c, "CREATE TABLE snapshots (aggregate_id uuid, aggregate_type text, tenant_id uuid, "
                  "state jsonb, PRIMARY KEY (aggregate_id, aggregate_type))");
        sql_ok(c, "CREATE TABLE projection_checkpoints (projection_name text PRIMARY KEY, "
                  "global_position bigint)");
        /* Per-tenant consumer checkpoints: a position as a plain value (I6). */
        sql_ok(c, "CREATE TABLE tenant_checkpoints (tenant_id uuid, projection_name text, "
                  "global_position bigint, PRIMARY KEY (tenant_id, projection_name))");
        PQfinish(c);
    }
    c = db("mig_src");
    /* Interleaved tenants: the moving tenant's positions have gaps. */
    snprintf(sql, sizeof(sql),
             "INSERT INTO events (event_id, aggregate_id, tenant_id, version, payload) "
             "SELECT gen_random_uuid(), md5((g / 10)::text)::uuid, "
             "  CASE WHEN g %% 3 = 0 THEN '" T_OTHER "'::uuid ELSE '" T_MIG "'::uuid END, "
             "  g %% 10 + 1, jsonb_build_object('n', g, 's', repeat('x', g %% 50)) "
             "FROM generate_series(1, %ld) g",
             n_events * 3 / 2);
    sql_ok(c, sql);
    sql_ok(c, "INSERT INTO events (event_id, aggregate_id, tenant_id, version, payload) "
              "VALUES (gen_random_uuid(), gen_random_uuid(), NULL, 1, '{}')");
    sql_ok(c, "INSERT INTO event_outbox (event_id, tenant_id, payload) "
              "SELECT event_id, tenant_id, payload FROM events WHERE global_position % 7 = 0");
    sql_ok(c, "INSERT INTO snapshots SELECT DISTINCT ON (aggregate_id) aggregate_id, 'order', "
              "tenant_id, payload FROM events WHERE tenant_id IS NOT NULL");
    sql_ok(c, "INSERT INTO projection_checkpoints VALUES ('p1', 10)");
    /* Checkpoints at nothing read, at an event, in a gap (a neighbour's event), at the end. */
    sql_ok(c, "INSERT INTO tenant_checkpoints VALUES "
              "('" T_MIG "', 'zero', 0), ('" T_MIG "', 'none', NULL), "
              "('" T_MIG "', 'mid', (SELECT global_position FROM events WHERE tenant_id = '" T_MIG
              "' ORDER BY global_position OFFSET 100 LIMIT 1)), "
              "('" T_MIG
              "', 'gap', (SELECT min(global_position) FROM events WHERE tenant_id = '" T_OTHER
              "' AND global_position > 300)), "
              "('" T_MIG "', 'end', (SELECT max(global_position) FROM events)), "
              "('" T_OTHER "', 'mid', 42)");
    PQfinish(c);
    /* The shared target already holds another tenant: positions must be mapped there. */
    c = db("mig_shared");
    sql_ok(c, "INSERT INTO events (event_id, aggregate_id, tenant_id, version, payload) "
              "SELECT gen_random_uuid(), gen_random_uuid(), '" T_OTHER "', 1, '{}' "
              "FROM generate_series(1, 5000)");
    sql_ok(c, "INSERT INTO event_outbox (event_id, tenant_id, payload) "
              "SELECT gen_random_uuid(), '" T_OTHER "', '{}' FROM generate_series(1, 100)");
    PQfinish(c);
}

static void start_mig_ctl(fixture_t *f, probe_t *p, const char *dst_conninfo)
{
    char *ci = conninfo("control");
    char *infos[3];
    mig_settings_t def;
    mig_tenancy_t ten = { .n_tables = CM_ARRAY_LEN(mig_tables),
                          .tables = mig_tables,
                          .tenant_column = "tenant_id",
                          .default_store = "msrc",
                          .position_column = "global_position",
                          .row_key = "event_id",
                          .defaults = &def };

    mig_settings_default(&def);
    def.batch_size = 700;
    for (int i = 0; i < 3; i++)
        infos[i] = conninfo(mig_dbs[i]);
    if (dst_conninfo != NULL) {
        free(infos[1]);
        infos[1] = cm_xstrdup(dst_conninfo);
    }
    memset(p, 0, sizeof(*p));
    assert_int_equal(mig_ctl_start(&f->loop, ci, mig_names, (const char *const *)infos, 3, &ten,
                                   probe_cb, p, &p->ctl),
                     0);
    for (int i = 0; i < 3; i++)
        free(infos[i]);
    free(ci);
    assert_true(wait_event(f, p, 0, MIG_EV_ROUTES, NULL, 2000) == 0);
}

/* Drop the probe's delivered events (keeps MAX_EVENTS from filling up in long tests). */
static void probe_trim(probe_t *p)
{
    probe_free(p);
}

/* SHOW MIGRATION id: the value of col (owned copy). */
static char *mig_field(fixture_t *f, probe_t *p, long id, const char *col)
{
    char sql[64];
    const mig_result_t *r;
    const char *v;

    snprintf(sql, sizeof(sql), "SHOW MIGRATION %ld", id);
    r = request(f, p, sql);
    if (r->err_sqlstate != NULL)
        fail_msg("%s: %s", sql, r->err_message);
    assert_int_equal(r->n_rows, 1);
    v = cell(r, 0, col);
    return cm_xstrdup(v ? v : "<null>");
}

/* Wait until SHOW MIGRATION id has col = want. */
static bool mig_wait(fixture_t *f, probe_t *p, long id, const char *col, const char *want,
                     int timeout_ms)
{
    uint64_t deadline = cm_now_ms() + (uint64_t)timeout_ms;

    for (;;) {
        char *v = mig_field(f, p, id, col);
        bool ok = strcmp(v, want) == 0;

        free(v);
        probe_trim(p);
        if (ok)
            return true;
        if (cm_now_ms() > deadline)
            return false;
        for (uint64_t t = cm_now_ms(); cm_now_ms() - t < 50;)
            uv_run(&f->loop, UV_RUN_ONCE);
    }
}

static long migrate(fixture_t *f, probe_t *p, const char *sql)
{
    const mig_result_t *r = request(f, p, sql);
    long id;

    if (r->err_sqlstate != NULL)
        fail_msg("%s: %s", sql, r->err_message);
    assert_string_equal(r->tag, "MIGRATE");
    assert_string_equal(cell(r, 0, "phase"), "PENDING");
    id = strtol(cell(r, 0, "migration_id"), NULL, 10);
    assert_true(id > 0);
    probe_trim(p);
    return id;
}

/* Every column of the tenant's rows (positions apart), in an order-independent digest. */
static char *digest(const char *dbname, const char *table, const char *tenant, bool with_pos)
{
    PGconn *c = db(dbname);
    char sql[1024];
    char *v;

    if (strcmp(table, "events") == 0)
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) || ':' || coalesce(md5(string_agg(event_id::text || "
                 "aggregate_id || version || payload::text || created_at::text%s, ',' "
                 "ORDER BY event_id)), '-') FROM events WHERE tenant_id %s",
                 with_pos ? " || global_position" : "", tenant ? "= $$x$$" : "IS NULL");
    else if (strcmp(table, "event_outbox") == 0)
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) || ':' || coalesce(md5(string_agg(event_id::text || "
                 "payload::text, ',' ORDER BY event_id)), '-') FROM event_outbox "
                 "WHERE tenant_id %s",
                 tenant ? "= $$x$$" : "IS NULL");
    else
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) || ':' || coalesce(md5(string_agg(aggregate_id::text || "
                 "aggregate_type || state::text, ',' ORDER BY aggregate_id)), '-') "
                 "FROM snapshots WHERE tenant_id %s",
                 tenant ? "= $$x$$" : "IS NULL");
    if (tenant != NULL) {
        char *p = strstr(sql, "$$x$$");
        char buf[1024];

        snprintf(buf, sizeof(buf), "%.*s'%s'%s", (int)(p - sql), sql, tenant, p + 5);
        snprintf(sql, sizeof(sql), "%s", buf);
    }
    v = sql_value(c, sql);
    PQfinish(c);
    return v;
}

static void assert_same(const char *table, const char *db1, const char *db2, const char *tenant,
                        bool with_pos)
{
    char *a = digest(db1, table, tenant, with_pos), *b = digest(db2, table, tenant, with_pos);

    if (strcmp(a, b) != 0)
        fail_msg("%s of %s differs: %s %s, %s %s", table, tenant ? tenant : "NULL", db1, a, db2, b);
    free(a);
    free(b);
}

static char *db_value(const char *dbname, const char *sql)
{
    PGconn *c = db(dbname);
    char *v = sql_value(c, sql);

    PQfinish(c);
    return v;
}

static void assert_db_value(const char *dbname, const char *sql, const char *want)
{
    char *v = db_value(dbname, sql);

    if (strcmp(v, want) != 0)
        fail_msg("%s on %s: got %s, want %s", sql, dbname, v, want);
    free(v);
}

/*
 * The tenant's checkpoints on dst_db skip no event (I6): for each, the
 * tenant's events after it there are as many as after the source's value on
 * mig_src (equal in preserve mode, also equal here because the copy keeps
 * source order); NULL stays NULL. Returns the number of checkpoints.
 */
static int assert_checkpoints_skip_nothing(const char *dst_db)
{
    PGconn *s = db("mig_src"), *t = db(dst_db);
    PGresult *a = PQexec(s, "SELECT projection_name, global_position, (SELECT count(*) FROM "
                            "events e WHERE e.tenant_id = c.tenant_id AND e.global_position > "
                            "c.global_position) FROM tenant_checkpoints c WHERE tenant_id = '" T_MIG
                            "' ORDER BY 1");
    int n;

    assert_int_equal(PQresultStatus(a), PGRES_TUPLES_OK);
    n = PQntuples(a);
    for (int k = 0; k < n; k++) {
        char sql[512], *v;

        snprintf(sql, sizeof(sql),
                 "SELECT CASE WHEN c.global_position IS NULL THEN 'null' ELSE (SELECT count(*) "
                 "FROM events e WHERE e.tenant_id = c.tenant_id AND e.global_position > "
                 "c.global_position)::text END "
                 "FROM tenant_checkpoints c WHERE tenant_id = '" T_MIG
                 "' AND projection_name = '%s'",
                 PQgetvalue(a, k, 0));
        v = sql_value(t, sql);
        if (strcmp(v, PQgetisnull(a, k, 1) ? "null" : PQgetvalue(a, k, 2)) != 0)
            fail_msg("checkpoint %s (%s on the source, %s events after it): %s events after it "
                     "on %s",
                     PQgetvalue(a, k, 0), PQgetvalue(a, k, 1), PQgetvalue(a, k, 2), v, dst_db);
        free(v);
    }
    PQclear(a);
    PQfinish(s);
    PQfinish(t);
    return n;
}

/* The audit event types of migration id, in order, joined by ','. */
static char *audit_types(long id)
{
    char sql[256];

    snprintf(sql, sizeof(sql),
             "SELECT string_agg(event_type, ',' ORDER BY id) FROM pgshift.audit_log "
             "WHERE migration_id = %ld",
             id);
    return db_value("control", sql);
}

static void test_mig_refusals(void **state)
{
    fixture_t f;
    probe_t p;
    const mig_result_t *r;
    PGconn *c;
    long id;
    char *before, *after;

    (void)state;
    mig_dbs_reset(300);
    fixture_init(&f);
    start_mig_ctl(&f, &p, NULL);
    before = db_value("control", "SELECT count(*) || '/' || (SELECT count(*) FROM "
                                 "pgshift.audit_log) || '/' || (SELECT count(*) FROM "
                                 "pgshift.routes) FROM pgshift.migrations");

    r = request(&f, &p, "MIGRATE TENANT '" T_MIG "' TO 'nowhere'");
    assert_error(r, "42704", "store \"nowhere\" does not exist");
    r = request(&f, &p, "MIGRATE TENANT '" T_MIG "' TO 'msrc'");
    assert_error(r, "22023", "already on store \"msrc\"");
    r = request(&f, &p, "MIGRATE TENANT 'not-a-uuid' TO 'mdst'");
    assert_error(r, "22023", "not a valid value");
    /* The target already holds rows of the tenant. */
    c = db("mig_dst");
    sql_ok(c, "INSERT INTO snapshots VALUES (gen_random_uuid(), 'x', '" T_MIG "', '{}')");
    r = request(&f, &p, "MIGRATE TENANT '" T_MIG "' TO 'mdst'");
    assert_error(r, "55000", "already holds rows of tenant");
    assert_non_null(strstr(r->err_message, "snapshots"));
    sql_ok(c, "DELETE FROM snapshots");
    /* Columns or types differ. */
    sql_ok(c, "ALTER TABLE events ADD COLUMN extra int");
    r = request(&f, &p, "MIGRATE TENANT '" T_MIG "' TO 'mdst'");
    assert_error(r, "55000", "column \"extra\" of table \"events\" is on store \"mdst\"");
    sql_ok(c, "ALTER TABLE events DROP COLUMN extra");
    sql_ok(c, "ALTER TABLE snapshots ALTER COLUMN state TYPE json");
    r = request(&f, &p, "MIGRATE TENANT '" T_MIG "' TO 'mdst'");
    assert_error(r, "55000", "column \"state\" of table \"snapshots\" is jsonb on store \"msrc\"");
    sql_ok(c, "ALTER TABLE snapshots ALTER COLUMN state TYPE jsonb");
    PQfinish(c);
    /* Positions could collide and mapping is off. */
    r = request(&f, &p,
                "MIGRATE TENANT '" T_MIG "' TO 'mshared' WITH (position_mapping_enabled = false)");
    assert_error(r, "55000", "position_mapping_enabled is false");
    after = db_value("control", "SELECT count(*) || '/' || (SELECT count(*) FROM "
                                "pgshift.audit_log) || '/' || (SELECT count(*) FROM "
                                "pgshift.routes) FROM pgshift.migrations");
    assert_string_equal(before, after); /* nothing recorded by any refusal */
    free(after);

    /* Already migrating: a paused migration holds the tenant. */
    id = migrate(&f, &p, "MIGRATE TENANT '" T_MIG "' TO 'mdst' WITH (max_bulk_copy_rate = 50)");
    r = request(&f, &p, "PAUSE MIGRATION 999999");
    assert_error(r, "42704", "does not exist");
    r = request(&f, &p, "MIGRATE TENANT '" T_MIG "' TO 'mshared'");
    assert_error(r, "55000", "already being migrated");
    r = request(&f, &p, "ROUTE TENANT '" T_MIG "' TO 'mshared'");
    assert_error(r, "55000", "being migrated");
    {
        char sql[64];

        snprintf(sql, sizeof(sql), "ABORT MIGRATION %ld 'test over'", id);
        r = request(&f, &p, sql);
        assert_null(r->err_sqlstate);
        assert_string_equal(cell(r, 0, "target_cleaned"), "true");
        r = request(&f, &p, sql);
        assert_error(r, "55000", "it is ABORTED");
        snprintf(sql, sizeof(sql), "RESUME MIGRATION %ld", id);
        r = request(&f, &p, sql);
        assert_error(r, "55000", "it is ABORTED");
    }
    stop_ctl(&p);
    probe_free(&p);

    /* The target is unreachable. */
    start_mig_ctl(&f, &p, "host=/nonexistent-dir port=1 dbname=x connect_timeout=2");
    r = request(&f, &p, "MIGRATE TENANT '" T_MIG "' TO 'mdst'");
    assert_error(r, "08006", "target store \"mdst\" is unreachable");
    after = db_value("control", "SELECT count(*) FROM pgshift.migrations WHERE phase <> 'ABORTED' "
                                "AND tenant = '" T_MIG "'");
    assert_string_equal(after, "0");
    free(after);
    stop_ctl(&p);
    probe_free(&p);
    fixture_close(&f);
    free(before);
}

static void test_mig_copy_and_abort(void **state)
{
    fixture_t f;
    probe_t p;
    const mig_result_t *r;
    long id;
    char sql[128], *v;
    long i;

    (void)state;
    mig_dbs_reset(20000);
    fixture_init(&f);
    start_mig_ctl(&f, &p, NULL);
    id = migrate(&f, &p, "MIGRATE TENANT '" T_MIG "' TO 'mdst' WITH (max_bulk_copy_rate = 0)");
    /* The route shows the migration at once; the tenant still lives on its source. */
    i = wait_event(&f, &p, 0, MIG_EV_ROUTES, NULL, 2000);
    assert_true(i >= 0);
    assert_true(mig_wait(&f, &p, id, "copy_complete", "true", 60000));
    /* A complete copy hands over to dual-write by itself (issue #5). */
    assert_true(mig_wait(&f, &p, id, "phase", "DUAL_WRITE", 30000));
    v = mig_field(&f, &p, id, "status");
    assert_string_equal(v, "dual-write");
    free(v);
    v = mig_field(&f, &p, id, "progress_percent");
    assert_string_equal(v, "100.0");
    free(v);
    v = mig_field(&f, &p, id, "events_remaining");
    assert_string_equal(v, "0");
    free(v);
    v = mig_field(&f, &p, id, "position_mode");
    assert_string_equal(v, "preserve");
    free(v);
    probe_trim(&p);
    r = request(&f, &p, "SHOW ROUTES");
    {
        long row = find_row(r, T_MIG);

        assert_true(row >= 0);
        assert_string_equal(cell(r, (size_t)row, "store"), "msrc");
        assert_string_equal(cell(r, (size_t)row, "state"), "migrating");
    }
    probe_trim(&p);
    /* Every column of every row, positions included; nothing else on the target. */
    assert_same("events", "mig_src", "mig_dst", T_MIG, true);
    assert_same("event_outbox", "mig_src", "mig_dst", T_MIG, false);
    assert_same("snapshots", "mig_src", "mig_dst", T_MIG, false);
    assert_db_value(
        "mig_dst", "SELECT count(*) FROM events WHERE tenant_id IS DISTINCT FROM '" T_MIG "'", "0");
    assert_db_value("mig_dst", "SELECT count(*) FROM projection_checkpoints", "0");
    v = digest("mig_src", "events", T_MIG, false);
    assert_non_null(strstr(v, "20000:"));
    free(v);
    /* Checkpoints keep their values with the positions, and their updates are mirrored. */
    assert_int_equal(assert_checkpoints_skip_nothing("mig_dst"), 5);
    v = db_value("mig_src", "SELECT string_agg(projection_name || '=' || "
                            "coalesce(global_position::text, '-'), ',' ORDER BY projection_name) "
                            "FROM tenant_checkpoints WHERE tenant_id = '" T_MIG "'");
    assert_db_value("mig_dst",
                    "SELECT string_agg(projection_name || '=' || coalesce(global_position::text, "
                    "'-'), ',' ORDER BY projection_name) FROM tenant_checkpoints",
                    v);
    free(v);
    {
        PGconn *c = db("mig_src");

        sql_ok(c, "UPDATE tenant_checkpoints SET global_position = global_position + 7 "
                  "WHERE tenant_id = '" T_MIG "' AND projection_name = 'mid'");
        PQfinish(c);
    }
    v = db_value("mig_src",
                 "SELECT global_position FROM tenant_checkpoints WHERE tenant_id = '" T_MIG
                 "' AND projection_name = 'mid'");
    for (uint64_t end = cm_now_ms() + 10000;; usleep(20000)) {
        char *w = db_value("mig_dst", "SELECT global_position FROM tenant_checkpoints "
                                      "WHERE projection_name = 'mid'");
        bool same = strcmp(v, w) == 0;

        free(w);
        if (same)
            break;
        if (cm_now_ms() > end)
            fail_msg("the checkpoint's update (to %s) did not reach the target", v);
    }
    free(v);
    /* The consistency check ran by itself (verify_consistency) and passed. */
    assert_true(mig_wait(&f, &p, id, "consistency_check", "passed", 30000));
    /* A target row changed behind pgshift's back: VERIFY finds it, the cutover waits. */
    {
        PGconn *c = db("mig_dst");
        char vq[64];

        sql_ok(c, "UPDATE events SET version = version + 1000 WHERE global_position = (SELECT "
                  "min(global_position) FROM events)");
        snprintf(vq, sizeof(vq), "VERIFY %ld", id);
        r = request(&f, &p, vq);
        assert_null(r->err_sqlstate);
        assert_string_equal(cell(r, 0, "passed"), "f");
        assert_non_null(strstr(cell(r, 0, "detail"), "events: rows at positions from the start"));
        assert_non_null(strstr(cell(r, 0, "detail"), "differ"));
        probe_trim(&p);
        assert_true(mig_wait(&f, &p, id, "consistency_check", "failed", 5000));
        /* The status follows in the next statement: give it a moment, not more. */
        for (uint64_t end = cm_now_ms() + 2000;; usleep(20000)) {
            v = mig_field(&f, &p, id, "cutover_not_ready_reason");
            if (v != NULL && strstr(v, "consistency check failed") != NULL)
                break;
            if (cm_now_ms() > end)
                fail_msg("cutover_not_ready_reason: %s", v ? v : "(null)");
            free(v);
        }
        free(v);
        sql_ok(c, "UPDATE events SET version = version - 1000 WHERE global_position = (SELECT "
                  "min(global_position) FROM events)");
        PQfinish(c);
        r = request(&f, &p, vq);
        assert_null(r->err_sqlstate);
        assert_string_equal(cell(r, 0, "passed"), "t");
        assert_true(atoll(cell(r, 0, "rows")) > 0);
        probe_trim(&p);
        r = request(&f, &p, "VERIFY 999999");
        assert_error(r, "42704", "does not exist");
        probe_trim(&p);
    }
    /* The barrier and the copy's upper bound are recorded for the dual-write hand-over. */
    {
        char *hw = db_value(
            "mig_src", "SELECT max(global_position) FROM events WHERE tenant_id = '" T_MIG "'");

        snprintf(sql, sizeof(sql),
                 "SELECT copy_barrier_xid ~ '^[0-9]+$' AND source_high_water = %s "
                 "FROM pgshift.migrations WHERE id = %ld",
                 hw, id);
        assert_db_value("control", sql, "t");
        free(hw);
    }
    /* The target's sequence is past every source position. */
    assert_db_value("mig_dst",
                    "SELECT nextval('events_global_position_seq') > "
                    "(SELECT max(global_position) FROM events)",
                    "t");
    /* The audit trail. */
    v = audit_types(id);
    if (strncmp(v, "migration_started,phase_changed", 31) != 0 ||
        strstr(v, "progress_checkpoint") == NULL)
        fail_msg("audit: %s", v);
    free(v);
    snprintf(sql, sizeof(sql), "SHOW AUDIT %ld", id);
    r = request(&f, &p, sql);
    assert_null(r->err_sqlstate);
    assert_true(r->n_rows >= 3);
    assert_string_equal(cell(r, 0, "event_type"), "migration_started");
    assert_non_null(strstr(cell(r, 0, "details"), "\"target_store\": \"mdst\""));
    probe_trim(&p);
    r = request(&f, &p, "SHOW MIGRATIONS");
    assert_null(r->err_sqlstate);
    assert_true(r->n_rows >= 1);
    probe_trim(&p);

    /* ABORT: the target loses what the copy put there, the source keeps everything. */
    v = digest("mig_src", "events", T_MIG, true);
    snprintf(sql, sizeof(sql), "ABORT MIGRATION %ld", id);
    r = request(&f, &p, sql);
    assert_null(r->err_sqlstate);
    assert_string_equal(cell(r, 0, "phase"), "ABORTED");
    assert_string_equal(cell(r, 0, "target_cleaned"), "true");
    probe_trim(&p);
    assert_db_value("mig_dst", "SELECT count(*) FROM events", "0");
    assert_db_value("mig_dst", "SELECT count(*) FROM snapshots", "0");
    assert_db_value("mig_dst", "SELECT count(*) FROM event_outbox", "0");
    assert_db_value("mig_dst", "SELECT count(*) FROM pgshift.target_copy_state", "0");
    {
        char *w = digest("mig_src", "events", T_MIG, true);

        assert_string_equal(v, w);
        free(w);
    }
    free(v);
    r = request(&f, &p, "SHOW ROUTES");
    {
        long row = find_row(r, T_MIG);

        assert_true(row >= 0);
        assert_string_equal(cell(r, (size_t)row, "state"), "normal");
        assert_string_equal(cell(r, (size_t)row, "store"), "msrc");
    }
    probe_trim(&p);
    v = audit_types(id);
    if (strstr(v, "migration_aborted") == NULL)
        fail_msg("audit: %s", v);
    free(v);
    v = mig_field(&f, &p, id, "status");
    assert_string_equal(v, "aborted, target cleaned");
    free(v);
    /* And the tenant can be migrated again. */
    id = migrate(&f, &p, "MIGRATE TENANT '" T_MIG "' TO 'mdst' WITH (max_bulk_copy_rate = 0)");
    assert_true(mig_wait(&f, &p, id, "copy_complete", "true", 60000));
    assert_same("events", "mig_src", "mig_dst", T_MIG, true);
    snprintf(sql, sizeof(sql), "ABORT MIGRATION %ld", id);
    r = request(&f, &p, sql);
    assert_null(r->err_sqlstate);
    stop_ctl(&p);
    probe_free(&p);
    fixture_close(&f);
}

/* Positions mapped on a shared target: increasing in source order, recorded in both stores. */
static void test_mig_map_positions(void **state)
{
    fixture_t f;
    probe_t p;
    long id;
    char sql[512], *v;

    (void)state;
    mig_dbs_reset(5000);
    fixture_init(&f);
    start_mig_ctl(&f, &p, NULL);
    id = migrate(&f, &p,
                 "MIGRATE TENANT '" T_MIG "' TO 'mshared' WITH (max_bulk_copy_rate = 0, "
                 "batch_size = 333)");
    v = mig_field(&f, &p, id, "position_mode");
    assert_string_equal(v, "map");
    free(v);
    assert_true(mig_wait(&f, &p, id, "copy_complete", "true", 60000));
    assert_same("events", "mig_src", "mig_shared", T_MIG, false);
    assert_same("event_outbox", "mig_src", "mig_shared", T_MIG, false);
    assert_same("snapshots", "mig_src", "mig_shared", T_MIG, false);
    /* Checkpoints are translated to target positions and skip no event (I6). */
    assert_int_equal(assert_checkpoints_skip_nothing("mig_shared"), 5);
    assert_db_value("mig_shared",
                    "SELECT count(*) FROM tenant_checkpoints WHERE tenant_id = '" T_OTHER "'", "0");
    /* The neighbour's rows on the target are untouched. */
    assert_db_value("mig_shared", "SELECT count(*) FROM events WHERE tenant_id = '" T_OTHER "'",
                    "5000");
    assert_db_value("mig_shared",
                    "SELECT count(*) FROM event_outbox WHERE tenant_id = '" T_OTHER "'", "100");
    /* One pair per event, target positions increasing with source positions. */
    snprintf(sql, sizeof(sql),
             "SELECT count(*) || '/' || bool_and(ok) FROM (SELECT target_position > lag("
             "target_position, 1, 0::bigint) OVER (ORDER BY source_position) AS ok "
             "FROM pgshift.target_position_map WHERE migration_id = %ld) s",
             id);
    v = db_value("mig_shared", sql);
    assert_string_equal(v, "5000/true");
    free(v);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM pgshift.position_map WHERE migration_id = %ld",
             id);
    assert_db_value("control", sql, "5000");
    /* The pairs point at the same rows. */
    {
        PGconn *s = db("mig_src"), *t = db("mig_shared");
        PGresult *a =
            PQexec(s, "SELECT global_position, event_id FROM events WHERE tenant_id = '" T_MIG
                      "' ORDER BY global_position LIMIT 50");
        assert_int_equal(PQresultStatus(a), PGRES_TUPLES_OK);
        for (int k = 0; k < PQntuples(a); k++) {
            snprintf(sql, sizeof(sql),
                     "SELECT e.event_id FROM pgshift.target_position_map m JOIN events e ON "
                     "e.global_position = m.target_position WHERE m.migration_id = %ld AND "
                     "m.source_position = %s",
                     id, PQgetvalue(a, k, 0));
            v = sql_value(t, sql);
            assert_string_equal(v, PQgetvalue(a, k, 1));
            free(v);
        }
        PQclear(a);
        PQfinish(s);
        PQfinish(t);
    }
    /* In dual-write: new events, and a checkpoint moved among them, stay exact. */
    assert_true(mig_wait(&f, &p, id, "phase", "DUAL_WRITE", 30000));
    {
        PGconn *c = db("mig_src");

        sql_ok(c, "INSERT INTO events (event_id, aggregate_id, tenant_id, version, payload) "
                  "SELECT gen_random_uuid(), gen_random_uuid(), '" T_MIG "', 1, '{}' "
                  "FROM generate_series(1, 10)");
        sql_ok(c, "UPDATE tenant_checkpoints SET global_position = (SELECT global_position FROM "
                  "events WHERE tenant_id = '" T_MIG "' ORDER BY global_position DESC OFFSET 4 "
                  "LIMIT 1) WHERE tenant_id = '" T_MIG "' AND projection_name = 'mid'");
        /* An outbox row, on a target that assigns the outbox's ids: told apart by event_id. */
        sql_ok(c, "INSERT INTO event_outbox (event_id, tenant_id, payload) SELECT event_id, "
                  "tenant_id, '{}' FROM events WHERE tenant_id = '" T_MIG "' ORDER BY "
                  "global_position DESC LIMIT 1");
        PQfinish(c);
    }
    for (uint64_t end = cm_now_ms() + 10000;; usleep(20000)) {
        char *w = db_value("mig_shared",
                           "SELECT (SELECT count(*) FROM events WHERE tenant_id = '" T_MIG "') || "
                           "'/' || (SELECT count(*) FROM events e, tenant_checkpoints c WHERE "
                           "e.tenant_id = c.tenant_id AND c.projection_name = 'mid' AND "
                           "e.global_position > c.global_position) || '/' || (SELECT count(*) "
                           "FROM event_outbox WHERE tenant_id = '" T_MIG "')");
        char *want = db_value("mig_src", "SELECT '5010/4/' || count(*) FROM event_outbox WHERE "
                                         "tenant_id = '" T_MIG "'");
        bool done = strcmp(w, want) == 0;

        free(want);

        free(w);
        if (done)
            break;
        if (cm_now_ms() > end)
            fail_msg("the new events and the moved checkpoint did not reach the target exactly");
    }
    /* The consistency check pairs the rows through the map, and passes. */
    assert_true(mig_wait(&f, &p, id, "consistency_check", "passed", 30000));
    assert_int_equal(assert_checkpoints_skip_nothing("mig_shared"), 5);
    snprintf(sql, sizeof(sql), "ABORT MIGRATION %ld", id);
    {
        const mig_result_t *r = request(&f, &p, sql);

        assert_null(r->err_sqlstate);
        assert_string_equal(cell(r, 0, "target_cleaned"), "true");
    }
    assert_db_value("mig_shared", "SELECT count(*) FROM events", "5000");
    assert_db_value("mig_shared", "SELECT count(*) FROM event_outbox", "100");
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM pgshift.position_map WHERE migration_id = %ld",
             id);
    assert_db_value("control", sql, "0");
    stop_ctl(&p);
    probe_free(&p);
    fixture_close(&f);
}

/* The rate limit, PAUSE / RESUME, a stop mid-copy and a restart that resumes exactly. */
static void test_mig_rate_pause_restart(void **state)
{
    fixture_t f;
    probe_t p;
    const mig_result_t *r;
    long id;
    char sql[128], *v, *w;
    long long c1, c2;
    uint64_t t0;
    double rate;

    (void)state;
    mig_dbs_reset(12000);
    fixture_init(&f);
    start_mig_ctl(&f, &p, NULL);
    id = migrate(&f, &p,
                 "MIGRATE TENANT '" T_MIG "' TO 'mdst' WITH (max_bulk_copy_rate = 3000, "
                 "batch_size = 300, migrate_subscriptions = false)");
    assert_true(mig_wait(&f, &p, id, "status", "copying", 10000));
    v = mig_field(&f, &p, id, "events_copied");
    t0 = cm_now_ms();
    c1 = atoll(v);
    free(v);
    for (uint64_t t = cm_now_ms(); cm_now_ms() - t < 2000;)
        uv_run(&f.loop, UV_RUN_ONCE);
    v = mig_field(&f, &p, id, "events_copied");
    c2 = atoll(v);
    free(v);
    rate = (double)(c2 - c1) * 1000.0 / (double)(cm_now_ms() - t0);
    if (rate < 2000 || rate > 3600)
        fail_msg("rate %.0f rows/s, limit 3000", rate);
    v = mig_field(&f, &p, id, "rate_events_per_s");
    assert_true(atoi(v) > 1500 && atoi(v) < 4000);
    free(v);
    v = mig_field(&f, &p, id, "eta_seconds");
    assert_true(strcmp(v, "<null>") != 0 && atoi(v) > 0);
    free(v);

    /* PAUSE: nothing more is copied until RESUME. */
    snprintf(sql, sizeof(sql), "PAUSE MIGRATION %ld 'maintenance'", id);
    r = request(&f, &p, sql);
    assert_null(r->err_sqlstate);
    assert_string_equal(cell(r, 0, "paused"), "true");
    r = request(&f, &p, sql);
    assert_error(r, "55000", "already paused");
    probe_trim(&p);
    assert_true(mig_wait(&f, &p, id, "status", "paused", 5000));
    v = mig_field(&f, &p, id, "events_copied");
    for (uint64_t t = cm_now_ms(); cm_now_ms() - t < 1000;)
        uv_run(&f.loop, UV_RUN_ONCE);
    w = mig_field(&f, &p, id, "events_copied");
    assert_string_equal(v, w);
    free(v);
    free(w);
    v = mig_field(&f, &p, id, "pause_reason");
    assert_string_equal(v, "maintenance");
    free(v);
    snprintf(sql, sizeof(sql), "RESUME MIGRATION %ld", id);
    r = request(&f, &p, sql);
    assert_null(r->err_sqlstate);
    r = request(&f, &p, sql);
    assert_error(r, "55000", "not paused");
    probe_trim(&p);
    assert_true(mig_wait(&f, &p, id, "status", "copying", 5000));

    /* Stop pgshift mid-copy; a new one resumes from the target's state. */
    stop_ctl(&p);
    probe_free(&p);
    v = db_value("mig_dst", "SELECT count(*) FROM events");
    assert_true(atoll(v) > 0 && atoll(v) < 12000);
    free(v);
    start_mig_ctl(&f, &p, NULL);
    {
        char q[128];

        snprintf(q, sizeof(q),
                 "UPDATE pgshift.migrations SET config = config || "
                 "'{\"max_bulk_copy_rate\": 0}' WHERE id = %ld",
                 id);
        PGconn *c = db("control");

        sql_ok(c, q); /* the rest at full speed */
        PQfinish(c);
    }
    assert_true(mig_wait(&f, &p, id, "copy_complete", "true", 60000));
    assert_same("events", "mig_src", "mig_dst", T_MIG, true);
    assert_same("event_outbox", "mig_src", "mig_dst", T_MIG, false);
    assert_same("snapshots", "mig_src", "mig_dst", T_MIG, false);
    /* migrate_subscriptions = false: the tenant's checkpoints stay behind. */
    assert_db_value("mig_dst", "SELECT count(*) FROM tenant_checkpoints", "0");
    v = audit_types(id);
    if (strstr(v, "migration_paused") == NULL || strstr(v, "migration_resumed") == NULL)
        fail_msg("audit: %s", v);
    free(v);
    snprintf(sql, sizeof(sql), "ABORT MIGRATION %ld", id);
    r = request(&f, &p, sql);
    assert_null(r->err_sqlstate);
    stop_ctl(&p);
    probe_free(&p);
    fixture_close(&f);
}

/* WATCH streams a row a second (more = true) and ends with the terminal row (more = false). */
static void test_mig_watch(void **state)
{
    fixture_t f;
    probe_t p;
    mig_cmd_t cmd = { .kind = MIG_CMD_WATCH_MIGRATION };
    int cookie, cancelled_cookie;
    long id, last = -1;
    size_t rows = 0;
    char sql[64];
    uint64_t t0;

    (void)state;
    mig_dbs_reset(3000);
    fixture_init(&f);
    start_mig_ctl(&f, &p, NULL);
    id = migrate(&f, &p, "MIGRATE TENANT '" T_MIG "' TO 'mdst' WITH (max_bulk_copy_rate = 500)");
    cmd.migration_id = id;
    mig_ctl_request(p.ctl, &cmd, &cookie);
    mig_ctl_request(p.ctl, &cmd, &cancelled_cookie);
    t0 = cm_now_ms();
    /* Three streamed rows, about a second apart. */
    while (rows < 3) {
        long i = wait_event(&f, &p, (size_t)(last + 1), MIG_EV_REPLY, &cookie, 3000);

        assert_true(i >= 0);
        assert_null(p.evs[i]->result->err_sqlstate);
        assert_true(p.evs[i]->result->more);
        assert_int_equal(p.evs[i]->result->n_rows, 1);
        assert_string_equal(p.evs[i]->result->tag, "WATCH");
        assert_non_null(cell(p.evs[i]->result, 0, "progress_percent"));
        last = i;
        rows++;
    }
    assert_true(cm_now_ms() - t0 >= 1500);
    /* The client of the second watch leaves: nothing more for it. */
    mig_ctl_cancel(p.ctl, &cancelled_cookie);
    snprintf(sql, sizeof(sql), "ABORT MIGRATION %ld", id);
    {
        mig_cmd_t ab = { .kind = MIG_CMD_ABORT_MIGRATION, .migration_id = id };
        int ab_cookie;
        long i;

        mig_ctl_request(p.ctl, &ab, &ab_cookie);
        assert_true(wait_event(&f, &p, 0, MIG_EV_REPLY, &ab_cookie, 20000) >= 0);
        /* The watch ends with the terminal row. */
        for (;;) {
            i = wait_event(&f, &p, (size_t)(last + 1), MIG_EV_REPLY, &cookie, 5000);
            assert_true(i >= 0);
            last = i;
            if (!p.evs[i]->result->more)
                break;
        }
        assert_int_equal(p.evs[i]->result->n_rows, 1);
        assert_string_equal(cell(p.evs[i]->result, 0, "phase"), "ABORTED");
    }
    {
        size_t cancelled_rows_after = 0;

        for (uint64_t t = cm_now_ms(); cm_now_ms() - t < 1500;)
            uv_run(&f.loop, UV_RUN_ONCE);
        for (size_t k = 0; k < p.n; k++)
            if (p.evs[k]->kind == MIG_EV_REPLY && p.evs[k]->cookie == &cancelled_cookie &&
                !p.evs[k]->result->more)
                cancelled_rows_after++;
        assert_int_equal(cancelled_rows_after, 0);
    }
    /* WATCH of an unknown migration: one error, the last event. */
    cmd.migration_id = 987654;
    mig_ctl_request(p.ctl, &cmd, &cookie);
    {
        long i = wait_event(&f, &p, (size_t)(last + 1), MIG_EV_REPLY, &cookie, 5000);

        assert_true(i >= 0);
        assert_false(p.evs[i]->result->more);
        assert_error(p.evs[i]->result, "42704", "does not exist");
    }
    stop_ctl(&p);
    probe_free(&p);
    fixture_close(&f);
}

static void test_ctl_start_fails(void **state)
{
    fixture_t f;
    probe_t p = { 0 };
    mig_ctl_t *m = NULL;
    char *a = conninfo("store_a");
    const char *conninfos[] = { a, a };
    mig_tenancy_t ten = {
        .n_tables = 1, .tables = tables, .tenant_column = "tenant_id", .default_store = "store_a"
    };
    mig_tenancy_t bad = ten;

    (void)state;
    fixture_init(&f);
    bad.default_store = "nope";
    assert_int_equal(
        mig_ctl_start(&f.loop, "dbname=x", store_names, conninfos, 2, &bad, probe_cb, &p, &m),
        -EINVAL);
    assert_int_equal(mig_ctl_start(&f.loop, "host=/nonexistent-dir port=1 connect_timeout=2",
                                   store_names, conninfos, 2, &ten, probe_cb, &p, &m),
                     -ECONNREFUSED);
    assert_null(m);
    free(a);
    fixture_close(&f);
    assert_int_equal(p.n, 0);
}

int main(void)
{
    const struct CMUnitTest local[] = {
        cmocka_unit_test(test_outbox_threads),          cmocka_unit_test(test_outbox_coalesce),
        cmocka_unit_test(test_outbox_close_in_deliver), cmocka_unit_test(test_cmd_parse),
        cmocka_unit_test(test_cmd_parse_migrations),    cmocka_unit_test(test_route_overlay),
    };
    const struct CMUnitTest pg[] = {
        cmocka_unit_test(test_schema_idempotent),
        cmocka_unit_test(test_schema_concurrent),
        cmocka_unit_test(test_schema_constraints),
        cmocka_unit_test(test_ctl_start_fails),
        cmocka_unit_test(test_ctl_route_and_notify),
        cmocka_unit_test(test_ctl_refusals_and_tenants),
        cmocka_unit_test(test_ctl_cancel),
        cmocka_unit_test(test_ctl_reconnect),
        cmocka_unit_test(test_ctl_lookup),
        cmocka_unit_test(test_mig_refusals),
        cmocka_unit_test(test_mig_copy_and_abort),
        cmocka_unit_test(test_mig_map_positions),
        cmocka_unit_test(test_mig_rate_pause_restart),
        cmocka_unit_test(test_mig_watch),
    };
    int failed;

    cm_log_set_level(CM_LOG_ERROR);
    failed = cmocka_run_group_tests_name("migrator", local, NULL, NULL);
    failed += cmocka_run_group_tests_name("migrator_control_store", pg, pg_setup, pg_teardown);
    return failed;
}
