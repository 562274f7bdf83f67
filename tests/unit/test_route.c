/*
 * tests/unit/test_route.c - routing/: the classifier on every statement
 * shape of the event store, the route decision rule by rule, the route
 * table, the aggregate map and the classification cache.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* cmocka.h needs the headers above first. */
#include <cmocka.h>

#include "routing/routing.h"

/* ---- rendering classifier output as compact strings ------------------ */

static void put_val(char *buf, size_t cap, const char *label, const route_val_t *v)
{
    size_t n = strlen(buf);

    if (v->kind == ROUTE_VAL_NONE)
        return;
    if (n > 0 && buf[n - 1] != '{')
        snprintf(buf + n, cap - n, " ");
    n = strlen(buf);
    switch (v->kind) {
    case ROUTE_VAL_LITERAL:
        snprintf(buf + n, cap - n, "%s'%s'", label, v->text);
        break;
    case ROUTE_VAL_PARAM:
        snprintf(buf + n, cap - n, "%s$%d", label, v->param);
        break;
    case ROUTE_VAL_NULL:
        snprintf(buf + n, cap - n, "%sNULL", label);
        break;
    case ROUTE_VAL_EXPR:
        snprintf(buf + n, cap - n, "%sEXPR", label);
        break;
    case ROUTE_VAL_NONE:
        break;
    }
}

static void render_vals(char *buf, size_t cap, const route_val_t *v, size_t n)
{
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++)
        put_val(buf, cap, "", &v[i]);
}

static void render_rows(char *buf, size_t cap, const route_stmt_t *st)
{
    buf[0] = '\0';
    for (size_t i = 0; i < st->n_rows; i++) {
        size_t n = strlen(buf);
        snprintf(buf + n, cap - n, "%s{", i ? " " : "");
        put_val(buf, cap, "t=", &st->rows[i].tenant);
        put_val(buf, cap, "k=", &st->rows[i].key);
        put_val(buf, cap, "rk=", &st->rows[i].row_key);
        put_val(buf, cap, "pos=", &st->rows[i].position);
        n = strlen(buf);
        snprintf(buf + n, cap - n, "}");
    }
}

static void render_tables(char *buf, size_t cap, const route_stmt_t *st)
{
    buf[0] = '\0';
    for (size_t i = 0; i < st->n_tables; i++) {
        size_t n = strlen(buf);
        snprintf(buf + n, cap - n, "%s%s", i ? " " : "", st->tables[i]);
    }
}

/* ---- classifier cases --------------------------------------------------- */

#define ANY (-1)

typedef struct ccase {
    const char *sql;
    route_kind_t kind;
    int is_write;       /* 0, 1 or ANY */
    int tenant_table;   /* 0, 1 or ANY */
    const char *tables; /* NULL = not checked */
    const char *tenants;
    const char *keys;
    const char *rows;
    int returning;         /* 0, 1 or ANY */
    const char *position;  /* position_min rendered, NULL = not checked */
    route_set_op_t set_op; /* checked always */
    const char *set_value; /* NULL = not checked */
    int set_local;         /* 0, 1 or ANY */
} ccase_t;

#define UUID_A  "11111111-2222-3333-4444-555555555555"
#define UUID_AU "{11111111-2222-3333-4444-555555555555}"

static const ccase_t ccases[] = {
    /* The append transaction: the version probe, then the INSERT. */
    { "SELECT COALESCE(MAX(version),0) FROM events WHERE aggregate_id=$1 AND aggregate_type=$2",
      ROUTE_KIND_READ, 0, 1, "events", "", "$1", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT COALESCE(MAX(version),0) FROM events WHERE aggregate_id='AAAAAAAA-0000-4000-8000-"
      "00000000000A' AND aggregate_type='Order'",
      ROUTE_KIND_READ, 0, 1, "events", "", "'aaaaaaaa-0000-4000-8000-00000000000a'", "", 0, "",
      ROUTE_SET_NONE, NULL, ANY },
    { "INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, tenant_id, "
      "actor_id, version, timestamp, payload) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) RETURNING "
      "global_position",
      ROUTE_KIND_WRITE, 1, 1, "events", "$5", "$2", "{t=$5 k=$2 rk=$1}", 1, "", ROUTE_SET_NONE,
      NULL, ANY },
    { "INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, tenant_id, "
      "actor_id, version, timestamp, payload) VALUES ('E7A0F1C2-0000-4000-8000-000000000001', "
      "'a1', 'Order', 'Created', '" UUID_AU "', 'u', 1, now(), '{}') RETURNING global_position",
      ROUTE_KIND_WRITE, 1, 1, "events", "'" UUID_A "'", "'a1'",
      "{t='" UUID_A "' k='a1' rk='e7a0f1c2-0000-4000-8000-000000000001'}", 1, "", ROUTE_SET_NONE,
      NULL, ANY },
    /* $n under casts */
    { "INSERT INTO events (event_id, aggregate_id, tenant_id, version) VALUES ($1::uuid, "
      "$2::text::uuid, $3::uuid, $4)",
      ROUTE_KIND_WRITE, 1, 1, "events", "$3", "$2", "{t=$3 k=$2 rk=$1}", 0, "", ROUTE_SET_NONE,
      NULL, ANY },
    /* multi-row: every row's tenant */
    { "INSERT INTO events (event_id, aggregate_id, tenant_id, version) VALUES ('e1','a1','ta',1),"
      " ('e2','a2','tb',1), ('e3','a1','ta',2)",
      ROUTE_KIND_WRITE, 1, 1, "events", "'ta' 'tb'", "'a1' 'a2'",
      "{t='ta' k='a1' rk='e1'} {t='tb' k='a2' rk='e2'} {t='ta' k='a1' rk='e3'}", 0, "",
      ROUTE_SET_NONE, NULL, ANY },
    { "INSERT INTO events (event_id, aggregate_id, tenant_id) VALUES ($1,$2,$3), ($4,$5,$6)",
      ROUTE_KIND_WRITE, 1, 1, "events", "$3 $6", "$2 $5", "{t=$3 k=$2 rk=$1} {t=$6 k=$5 rk=$4}", 0,
      "", ROUTE_SET_NONE, NULL, ANY },
    /* tenant NULL / DEFAULT: a row without a usable tenant */
    { "INSERT INTO events (event_id, aggregate_id, tenant_id) VALUES ('e1', 'a1', NULL)",
      ROUTE_KIND_WRITE, 1, 1, "events", "", "'a1'", "{t=NULL k='a1' rk='e1'}", 0, "",
      ROUTE_SET_NONE, NULL, ANY },
    { "INSERT INTO events (event_id, aggregate_id, tenant_id) VALUES ('e1', 'a1', DEFAULT)",
      ROUTE_KIND_WRITE, 1, 1, "events", "", "'a1'", "{t=EXPR k='a1' rk='e1'}", 0, "",
      ROUTE_SET_NONE, NULL, ANY },
    /* no column list: columns unknown without the schema */
    { "INSERT INTO events VALUES ('e1', 'a1', 'ta')", ROUTE_KIND_WRITE, 1, 1, "events", "", "", "",
      0, "", ROUTE_SET_NONE, NULL, ANY },
    /* stream read */
    { "SELECT event_id, event_type, version, payload FROM events WHERE aggregate_id = $1 AND "
      "aggregate_type = $2 AND version > $3 ORDER BY version",
      ROUTE_KIND_READ, 0, 1, "events", "", "$1", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT * FROM events WHERE tenant_id = $1 AND aggregate_id = $2 ORDER BY version",
      ROUTE_KIND_READ, 0, 1, "events", "$1", "$2", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    /* global feed, with and without tenant */
    { "SELECT * FROM events WHERE global_position > $1 ORDER BY global_position LIMIT 500",
      ROUTE_KIND_READ, 0, 1, "events", "", "", "", 0, "$1", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT * FROM events WHERE global_position > $1 AND tenant_id = $2 ORDER BY "
      "global_position LIMIT 500",
      ROUTE_KIND_READ, 0, 1, "events", "$2", "", "", 0, "$1", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT * FROM events WHERE 100 <= global_position AND 'ta' = tenant_id ORDER BY "
      "global_position LIMIT 10",
      ROUTE_KIND_READ, 0, 1, "events", "'ta'", "", "", 0, "'100'", ROUTE_SET_NONE, NULL, ANY },
    /* outbox insert */
    { "INSERT INTO event_outbox (id, event_id, tenant_id, aggregate_id, topic, payload) VALUES "
      "($1, $2, $3, $4, $5, $6)",
      ROUTE_KIND_WRITE, 1, 1, "event_outbox", "$3", "$4", "{t=$3 k=$4 rk=$2}", 0, "",
      ROUTE_SET_NONE, NULL, ANY },
    /* snapshot upsert and read */
    { "INSERT INTO snapshots (aggregate_id, aggregate_type, tenant_id, version, state) VALUES "
      "($1, $2, $3, $4, $5) ON CONFLICT (aggregate_id, aggregate_type) DO UPDATE SET version = "
      "EXCLUDED.version, state = EXCLUDED.state, tenant_id = EXCLUDED.tenant_id",
      ROUTE_KIND_WRITE, 1, 1, "snapshots", "$3", "$1", "{t=$3 k=$1}", 0, "", ROUTE_SET_NONE, NULL,
      ANY },
    { "SELECT version, state FROM snapshots WHERE aggregate_id = $1 AND aggregate_type = $2",
      ROUTE_KIND_READ, 0, 1, "snapshots", "", "$1", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    /* checkpoint upsert, read, update */
    { "INSERT INTO projection_checkpoints (projection_name, tenant_id, global_position) VALUES "
      "('orders', 'ta', 42) ON CONFLICT (projection_name, tenant_id) DO UPDATE SET "
      "global_position = EXCLUDED.global_position",
      ROUTE_KIND_WRITE, 1, 1, "projection_checkpoints", "'ta'", "", "{t='ta' pos='42'}", 0, "",
      ROUTE_SET_NONE, NULL, ANY },
    { "SELECT global_position FROM projection_checkpoints WHERE projection_name = $1 AND "
      "tenant_id = $2",
      ROUTE_KIND_READ, 0, 1, "projection_checkpoints", "$2", "", "", 0, "", ROUTE_SET_NONE, NULL,
      ANY },
    { "UPDATE projection_checkpoints SET global_position = $1 WHERE projection_name = $2 AND "
      "tenant_id = $3",
      ROUTE_KIND_WRITE, 1, 1, "projection_checkpoints", "$3", "", "", 0, "", ROUTE_SET_NONE, NULL,
      ANY },
    /* WHERE forms: reversed, qualified, casts, IN, OR, nested AND */
    { "SELECT * FROM events e WHERE e.tenant_id = '" UUID_AU "'::uuid AND $1::uuid = "
      "e.aggregate_id",
      ROUTE_KIND_READ, 0, 1, "events", "'" UUID_A "'", "$1", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT * FROM public.events WHERE public.events.tenant_id = $1::uuid", ROUTE_KIND_READ, 0, 1,
      "public.events", "$1", "", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT * FROM events WHERE tenant_id IN ('ta', 'tb', 'ta')", ROUTE_KIND_READ, 0, 1, "events",
      "'ta' 'tb'", "", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT * FROM events WHERE tenant_id = 'ta' OR tenant_id = 'tb'", ROUTE_KIND_READ, 0, 1,
      "events", "'ta' 'tb'", "", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT * FROM events WHERE (tenant_id = 'ta' AND version > 1) OR (aggregate_id = $1 "
      "AND tenant_id = 'tb')",
      ROUTE_KIND_READ, 0, 1, "events", "'ta' 'tb'", "", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    /* a disjunct without a tenant can match any tenant: the OR names none */
    { "SELECT * FROM events WHERE tenant_id = 'ta' OR version = 1", ROUTE_KIND_READ, 0, 1, "events",
      "", "", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT * FROM events WHERE (tenant_id = 'ta' OR version = 1) OR tenant_id = 'tb'",
      ROUTE_KIND_READ, 0, 1, "events", "", "", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT * FROM events WHERE tenant_id = 'tc' AND (tenant_id = 'ta' OR version = 1)",
      ROUTE_KIND_READ, 0, 1, "events", "'tc'", "", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT * FROM events WHERE (version > 1 AND (tenant_id = 'ta' AND aggregate_id = 'k'))",
      ROUTE_KIND_READ, 0, 1, "events", "'ta'", "'k'", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT * FROM events WHERE tenant_id = lower('TA')", ROUTE_KIND_READ, 0, 1, "events", "", "",
      "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    /* a tenant in one branch, a key in the other: neither names the statement's rows */
    { "SELECT * FROM events WHERE tenant_id = -1 OR aggregate_id = 0", ROUTE_KIND_READ, 0, 1,
      "events", "", "", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT * FROM events WHERE aggregate_id = 'k1' OR (aggregate_id = 'k2' AND tenant_id = "
      "'ta')",
      ROUTE_KIND_READ, 0, 1, "events", "", "'k1' 'k2'", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT * FROM events WHERE tenant_id = -12 AND aggregate_id = 0", ROUTE_KIND_READ, 0, 1,
      "events", "'-12'", "'0'", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT * FROM events WHERE tenant_id = 'it''s \"q\" \\ é'", ROUTE_KIND_READ, 0, 1, "events",
      "'it's \"q\" \\ é'", "", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT * FROM events a JOIN snapshots s ON s.aggregate_id = a.aggregate_id AND "
      "s.tenant_id = 'ta'",
      ROUTE_KIND_READ, 0, 1, "events snapshots", "'ta'", "", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    { "SELECT * FROM accounts WHERE id = 3", ROUTE_KIND_READ, 0, 0, "accounts", "", "", "", 0, "",
      ROUTE_SET_NONE, NULL, ANY },
    /* UPDATE / DELETE */
    { "UPDATE event_outbox SET published_at = now() WHERE id = $1 AND tenant_id = $2 RETURNING "
      "id",
      ROUTE_KIND_WRITE, 1, 1, "event_outbox", "$2", "", "", 1, "", ROUTE_SET_NONE, NULL, ANY },
    { "UPDATE snapshots SET tenant_id = 'tb' WHERE tenant_id = 'ta'", ROUTE_KIND_WRITE, 1, 1,
      "snapshots", "'tb' 'ta'", "", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    { "DELETE FROM snapshots WHERE aggregate_id = $1", ROUTE_KIND_WRITE, 1, 1, "snapshots", "",
      "$1", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    /* writes hidden in reads */
    { "WITH x AS (INSERT INTO events (tenant_id, aggregate_id) VALUES ('ta', 'k') RETURNING *) "
      "SELECT * FROM x",
      ROUTE_KIND_WRITE, 1, 1, NULL, "'ta'", "'k'", "{t='ta' k='k'}", 1, "", ROUTE_SET_NONE, NULL,
      ANY },
    { "INSERT INTO event_outbox (event_id, tenant_id) SELECT event_id, tenant_id FROM events "
      "WHERE tenant_id = $1 AND global_position > $2",
      ROUTE_KIND_WRITE, 1, 1, "event_outbox events", "$1", "", "", 0, "$2", ROUTE_SET_NONE, NULL,
      ANY },
    { "SELECT 1 INTO scratch", ROUTE_KIND_DDL, 1, 0, "scratch", "", "", "", 0, "", ROUTE_SET_NONE,
      NULL, ANY },
    { "EXPLAIN SELECT * FROM events WHERE tenant_id = 'ta'", ROUTE_KIND_READ, 0, 1, "events",
      "'ta'", "", "", 0, "", ROUTE_SET_NONE, NULL, ANY },
    /* the tenant setting */
    { "SET pgshift.tenant = 'ta'", ROUTE_KIND_SESSION_SET, 0, 0, "", "", "", "", 0, "",
      ROUTE_SET_TENANT, "'ta'", 0 },
    { "SET SESSION pgshift.tenant TO ta", ROUTE_KIND_SESSION_SET, 0, 0, "", "", "", "", 0, "",
      ROUTE_SET_TENANT, "'ta'", 0 },
    { "set PGSHIFT.TENANT to '" UUID_AU "'", ROUTE_KIND_SESSION_SET, 0, 0, "", "", "", "", 0, "",
      ROUTE_SET_TENANT, "'" UUID_A "'", 0 },
    { "SET LOCAL pgshift.tenant = 'ta'", ROUTE_KIND_SESSION_SET, 0, 0, "", "", "", "", 0, "",
      ROUTE_SET_TENANT, "'ta'", 1 },
    { "SET pgshift.tenant = ''", ROUTE_KIND_SESSION_SET, 0, 0, "", "", "", "", 0, "",
      ROUTE_SET_RESET, "", ANY },
    { "RESET pgshift.tenant", ROUTE_KIND_SESSION_SET, 0, 0, "", "", "", "", 0, "", ROUTE_SET_RESET,
      "", ANY },
    { "SET pgshift.tenant TO DEFAULT", ROUTE_KIND_SESSION_SET, 0, 0, "", "", "", "", 0, "",
      ROUTE_SET_RESET, "", ANY },
    { "SELECT set_config('pgshift.tenant', $1, false)", ROUTE_KIND_SESSION_SET, 0, 0, "", "", "",
      "", 0, "", ROUTE_SET_TENANT, "$1", 0 },
    { "SELECT pg_catalog.set_config('pgshift.tenant', 'tb', true)", ROUTE_KIND_SESSION_SET, 0, 0,
      "", "", "", "", 0, "", ROUTE_SET_TENANT, "'tb'", 1 },
    { "SELECT set_config('search_path', 'x', false)", ROUTE_KIND_READ, 0, 0, "", "", "", "", 0, "",
      ROUTE_SET_NONE, "", ANY },
    /* other session statements */
    { "SET search_path = app, public", ROUTE_KIND_SESSION_OTHER, 0, 0, "", "", "", "", 0, "",
      ROUTE_SET_NONE, "", ANY },
    { "SET application_name TO 'x'", ROUTE_KIND_SESSION_OTHER, 0, 0, "", "", "", "", 0, "",
      ROUTE_SET_NONE, "", ANY },
    { "RESET ALL", ROUTE_KIND_SESSION_OTHER, 0, 0, "", "", "", "", 0, "", ROUTE_SET_RESET, "",
      ANY },
    { "DISCARD ALL", ROUTE_KIND_SESSION_OTHER, 0, 0, "", "", "", "", 0, "", ROUTE_SET_RESET, "",
      ANY },
    { "DISCARD PLANS", ROUTE_KIND_SESSION_OTHER, 0, 0, "", "", "", "", 0, "", ROUTE_SET_NONE, "",
      ANY },
    { "SHOW pgshift.tenant", ROUTE_KIND_SESSION_OTHER, 0, 0, "", "", "", "", 0, "", ROUTE_SET_NONE,
      "", ANY },
    { "LISTEN events_channel", ROUTE_KIND_SESSION_OTHER, 0, 0, "", "", "", "", 0, "",
      ROUTE_SET_NONE, "", ANY },
    { "UNLISTEN *", ROUTE_KIND_SESSION_OTHER, 0, 0, "", "", "", "", 0, "", ROUTE_SET_NONE, "",
      ANY },
    { "NOTIFY events_channel, 'x'", ROUTE_KIND_SESSION_OTHER, 0, 0, "", "", "", "", 0, "",
      ROUTE_SET_NONE, "", ANY },
    /* transaction control */
    { "BEGIN", ROUTE_KIND_TXN_BEGIN, 0, 0, "", "", "", "", 0, "", ROUTE_SET_NONE, "", ANY },
    { "START TRANSACTION ISOLATION LEVEL SERIALIZABLE", ROUTE_KIND_TXN_BEGIN, 0, 0, "", "", "", "",
      0, "", ROUTE_SET_NONE, "", ANY },
    { "COMMIT", ROUTE_KIND_TXN_COMMIT, 0, 0, "", "", "", "", 0, "", ROUTE_SET_NONE, "", ANY },
    { "END", ROUTE_KIND_TXN_COMMIT, 0, 0, "", "", "", "", 0, "", ROUTE_SET_NONE, "", ANY },
    { "PREPARE TRANSACTION 'x'", ROUTE_KIND_TXN_COMMIT, 0, 0, "", "", "", "", 0, "", ROUTE_SET_NONE,
      "", ANY },
    { "ROLLBACK", ROUTE_KIND_TXN_ROLLBACK, 0, 0, "", "", "", "", 0, "", ROUTE_SET_NONE, "", ANY },
    { "ABORT", ROUTE_KIND_TXN_ROLLBACK, 0, 0, "", "", "", "", 0, "", ROUTE_SET_NONE, "", ANY },
    { "SAVEPOINT s1", ROUTE_KIND_TXN_OTHER, 0, 0, "", "", "", "", 0, "", ROUTE_SET_NONE, "", ANY },
    { "RELEASE SAVEPOINT s1", ROUTE_KIND_TXN_OTHER, 0, 0, "", "", "", "", 0, "", ROUTE_SET_NONE, "",
      ANY },
    { "ROLLBACK TO SAVEPOINT s1", ROUTE_KIND_TXN_OTHER, 0, 0, "", "", "", "", 0, "", ROUTE_SET_NONE,
      "", ANY },
    { "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", ROUTE_KIND_TXN_OTHER, 0, 0, "", "", "", "",
      0, "", ROUTE_SET_NONE, "", ANY },
    { "SET CONSTRAINTS ALL DEFERRED", ROUTE_KIND_TXN_OTHER, 0, 0, "", "", "", "", 0, "",
      ROUTE_SET_NONE, "", ANY },
    /* DDL and utility */
    { "CREATE TABLE IF NOT EXISTS events (global_position BIGSERIAL PRIMARY KEY, event_id UUID "
      "UNIQUE, tenant_id UUID NULL)",
      ROUTE_KIND_DDL, 1, 1, "events", "", "", "", 0, "", ROUTE_SET_NONE, "", ANY },
    { "ALTER TABLE events ADD COLUMN x int", ROUTE_KIND_DDL, 1, 1, "events", "", "", "", 0, "",
      ROUTE_SET_NONE, "", ANY },
    { "CREATE INDEX ON events (tenant_id, global_position)", ROUTE_KIND_DDL, 1, 1, "events", "", "",
      "", 0, "", ROUTE_SET_NONE, "", ANY },
    { "DROP TABLE scratch", ROUTE_KIND_DDL, 1, 0, "", "", "", "", 0, "", ROUTE_SET_NONE, "", ANY },
    { "GRANT SELECT ON events TO reader", ROUTE_KIND_DDL, 1, 1, "events", "", "", "", 0, "",
      ROUTE_SET_NONE, "", ANY },
    { "COMMENT ON TABLE events IS 'x'", ROUTE_KIND_DDL, 1, ANY, NULL, "", "", "", 0, "",
      ROUTE_SET_NONE, "", ANY },
    { "CREATE EXTENSION IF NOT EXISTS pgcrypto", ROUTE_KIND_DDL, 1, 0, "", "", "", "", 0, "",
      ROUTE_SET_NONE, "", ANY },
    { "TRUNCATE events", ROUTE_KIND_WRITE, 1, 1, "events", "", "", "", 0, "", ROUTE_SET_NONE, "",
      ANY },
    { "VACUUM ANALYZE events", ROUTE_KIND_UTILITY, 0, 1, "events", "", "", "", 0, "",
      ROUTE_SET_NONE, "", ANY },
    { "LOCK TABLE events IN SHARE MODE", ROUTE_KIND_UTILITY, 0, 1, "events", "", "", "", 0, "",
      ROUTE_SET_NONE, "", ANY },
    { "DO $$ BEGIN PERFORM 1; END $$", ROUTE_KIND_UTILITY, 1, 0, "", "", "", "", 0, "",
      ROUTE_SET_NONE, "", ANY },
    { "COPY events FROM STDIN WITH (FORMAT binary)", ROUTE_KIND_COPY_IN, 1, 1, "events", "", "", "",
      0, "", ROUTE_SET_NONE, "", ANY },
    { "COPY events (event_id, tenant_id) TO STDOUT", ROUTE_KIND_COPY_OUT, 0, 1, "events", "", "",
      "", 0, "", ROUTE_SET_NONE, "", ANY },
    { "COPY (SELECT * FROM events WHERE tenant_id = $1) TO STDOUT", ROUTE_KIND_COPY_OUT, 0, 1,
      "events", "$1", "", "", 0, "", ROUTE_SET_NONE, "", ANY },
    /* garbage */
    { "SELEKT * FROM events", ROUTE_KIND_UNKNOWN, 0, 0, "", "", "", "", 0, "", ROUTE_SET_NONE, "",
      ANY },
    { "INSERT INTO events (tenant_id VALUES", ROUTE_KIND_UNKNOWN, 0, 0, "", "", "", "", 0, "",
      ROUTE_SET_NONE, "", ANY },
    { "'unterminated", ROUTE_KIND_UNKNOWN, 0, 0, "", "", "", "", 0, "", ROUTE_SET_NONE, "", ANY },
};

static route_tenancy_t g_ten;

static int setup_ten(void **state)
{
    (void)state;
    route_tenancy_init(&g_ten, NULL, NULL, NULL, NULL, NULL);
    return 0;
}

static int teardown_ten(void **state)
{
    (void)state;
    route_tenancy_destroy(&g_ten);
    return 0;
}

static void check_ccase(const ccase_t *c)
{
    char buf[1024];
    route_class_t *cl = route_classify(c->sql, strlen(c->sql), &g_ten);
    const route_stmt_t *st;

    print_message("case: %s\n", c->sql);
    assert_int_equal(cl->n_stmts, 1);
    st = &cl->stmts[0];
    assert_string_equal(route_kind_str(st->kind), route_kind_str(c->kind));
    assert_int_equal(cl->is_error, c->kind == ROUTE_KIND_UNKNOWN);
    if (cl->is_error)
        assert_non_null(cl->error);
    if (c->is_write != ANY)
        assert_int_equal(st->is_write, c->is_write);
    if (c->tenant_table != ANY)
        assert_int_equal(st->touches_tenant_table, c->tenant_table);
    if (c->tables != NULL) {
        render_tables(buf, sizeof(buf), st);
        assert_string_equal(buf, c->tables);
    }
    render_vals(buf, sizeof(buf), st->tenants, st->n_tenants);
    assert_string_equal(buf, c->tenants);
    render_vals(buf, sizeof(buf), st->keys, st->n_keys);
    assert_string_equal(buf, c->keys);
    render_rows(buf, sizeof(buf), st);
    assert_string_equal(buf, c->rows);
    assert_int_equal(st->has_tenant_info, st->n_tenants > 0 || st->n_keys > 0);
    if (c->returning != ANY)
        assert_int_equal(st->has_returning, c->returning);
    if (c->position != NULL) {
        render_vals(buf, sizeof(buf), &st->position_min, 1);
        assert_string_equal(buf, c->position);
    }
    assert_int_equal(st->set_op, c->set_op);
    if (c->set_value != NULL) {
        render_vals(buf, sizeof(buf), &st->set_value, 1);
        assert_string_equal(buf, c->set_value);
    }
    if (c->set_local != ANY)
        assert_int_equal(st->set_is_local, c->set_local);
    /* Of ccases only LISTEN pins the session; pcases covers the flag. */
    assert_int_equal(st->pins_session, strncmp(c->sql, "LISTEN ", 7) == 0);
    route_class_unref(cl);
}

static void test_classify_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(ccases) / sizeof(ccases[0]); i++)
        check_ccase(&ccases[i]);
}

/*
 * pins_session: statements whose backend state a pooled server connection
 * cannot carry to another client, and near misses that must not pin. The
 * kind is checked too: the flag changes no other field of the classification.
 */
typedef struct pcase {
    const char *sql;
    route_kind_t kind;
    int pins; /* 0 or 1 */
} pcase_t;

static const pcase_t pcases[] = {
    /* LISTEN, not UNLISTEN or NOTIFY */
    { "LISTEN orders", ROUTE_KIND_SESSION_OTHER, 1 },
    { "listen \"Orders\"", ROUTE_KIND_SESSION_OTHER, 1 },
    { "UNLISTEN orders", ROUTE_KIND_SESSION_OTHER, 0 },
    { "UNLISTEN *", ROUTE_KIND_SESSION_OTHER, 0 },
    { "NOTIFY orders, 'x'", ROUTE_KIND_SESSION_OTHER, 0 },
    { "SELECT pg_notify('orders', 'x')", ROUTE_KIND_READ, 0 },
    /* SQL PREPARE, not EXECUTE, DEALLOCATE or PREPARE TRANSACTION */
    { "PREPARE p (uuid) AS SELECT * FROM events WHERE tenant_id = $1", ROUTE_KIND_UTILITY, 1 },
    { "PREPARE ins AS INSERT INTO accounts VALUES (1)", ROUTE_KIND_UTILITY, 1 },
    { "EXECUTE p('ta')", ROUTE_KIND_UTILITY, 0 },
    { "DEALLOCATE p", ROUTE_KIND_UTILITY, 0 },
    { "DEALLOCATE ALL", ROUTE_KIND_UTILITY, 0 },
    { "PREPARE TRANSACTION 'gx1'", ROUTE_KIND_TXN_COMMIT, 0 },
    { "COMMIT PREPARED 'gx1'", ROUTE_KIND_TXN_OTHER, 0 },
    /* cursors WITH HOLD outlive the transaction; others do not */
    { "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM accounts", ROUTE_KIND_UTILITY, 1 },
    { "DECLARE c BINARY SCROLL CURSOR WITH HOLD FOR SELECT 1", ROUTE_KIND_UTILITY, 1 },
    { "DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT * FROM events WHERE tenant_id = 'ta'",
      ROUTE_KIND_UTILITY, 1 },
    { "DECLARE c CURSOR FOR SELECT 1", ROUTE_KIND_UTILITY, 0 },
    { "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", ROUTE_KIND_UTILITY, 0 },
    { "DECLARE c BINARY INSENSITIVE SCROLL CURSOR FOR SELECT 1", ROUTE_KIND_UTILITY, 0 },
    { "FETCH 10 FROM c", ROUTE_KIND_UTILITY, 0 },
    { "CLOSE c", ROUTE_KIND_UTILITY, 0 },
    /* temporary relations, however created */
    { "CREATE TEMP TABLE scratch (id int)", ROUTE_KIND_DDL, 1 },
    { "CREATE TEMPORARY TABLE scratch (id int) ON COMMIT DELETE ROWS", ROUTE_KIND_DDL, 1 },
    { "CREATE LOCAL TEMP TABLE IF NOT EXISTS scratch (LIKE accounts)", ROUTE_KIND_DDL, 1 },
    { "CREATE TEMP TABLE scratch AS SELECT * FROM accounts", ROUTE_KIND_DDL, 1 },
    { "CREATE TEMPORARY TABLE scratch AS SELECT * FROM events WHERE tenant_id = 'ta'",
      ROUTE_KIND_DDL, 1 },
    { "CREATE TEMP VIEW v AS SELECT 1", ROUTE_KIND_DDL, 1 },
    { "CREATE OR REPLACE TEMPORARY VIEW v AS SELECT * FROM accounts", ROUTE_KIND_DDL, 1 },
    { "CREATE TEMP SEQUENCE s", ROUTE_KIND_DDL, 1 },
    { "CREATE TEMPORARY SEQUENCE IF NOT EXISTS s START 5", ROUTE_KIND_DDL, 1 },
    { "SELECT * INTO TEMP scratch FROM accounts", ROUTE_KIND_DDL, 1 },
    { "SELECT * INTO TEMPORARY TABLE scratch FROM accounts", ROUTE_KIND_DDL, 1 },
    { "CREATE TABLE pg_temp.scratch (id int)", ROUTE_KIND_DDL, 1 },
    { "INSERT INTO pg_temp.scratch VALUES (1)", ROUTE_KIND_WRITE, 1 },
    { "SELECT * FROM pg_temp_3.scratch", ROUTE_KIND_READ, 1 },
    { "CREATE TABLE scratch (id int)", ROUTE_KIND_DDL, 0 },
    { "CREATE UNLOGGED TABLE scratch (id int)", ROUTE_KIND_DDL, 0 },
    { "CREATE TABLE scratch AS SELECT * FROM accounts", ROUTE_KIND_DDL, 0 },
    { "CREATE VIEW v AS SELECT 1", ROUTE_KIND_DDL, 0 },
    { "CREATE SEQUENCE s", ROUTE_KIND_DDL, 0 },
    { "SELECT 1 INTO scratch", ROUTE_KIND_DDL, 0 },
    { "SELECT * FROM temp_accounts", ROUTE_KIND_READ, 0 },
    { "SELECT * FROM pg_temporary", ROUTE_KIND_READ, 0 },
    { "SELECT * FROM pg_temptation.t", ROUTE_KIND_READ, 0 },
    { "DROP TABLE pg_temp_scratch", ROUTE_KIND_DDL, 0 },
    /* LOAD */
    { "LOAD 'auto_explain'", ROUTE_KIND_UTILITY, 1 },
    /* session-level advisory locks, wherever the call is */
    { "SELECT pg_advisory_lock(1)", ROUTE_KIND_READ, 1 },
    { "SELECT pg_advisory_lock_shared(1, 2)", ROUTE_KIND_READ, 1 },
    { "SELECT pg_try_advisory_lock(hashtext('job'))", ROUTE_KIND_READ, 1 },
    { "select PG_TRY_ADVISORY_LOCK_SHARED(7)", ROUTE_KIND_READ, 1 },
    { "SELECT pg_catalog.pg_advisory_lock(42)", ROUTE_KIND_READ, 1 },
    { "SELECT pg_advisory_lock($1)", ROUTE_KIND_READ, 1 },
    { "SELECT id FROM accounts WHERE pg_try_advisory_lock(id) LIMIT 1", ROUTE_KIND_READ, 1 },
    { "SELECT * FROM accounts a JOIN LATERAL (SELECT pg_advisory_lock(a.id)) l ON true",
      ROUTE_KIND_READ, 1 },
    { "SELECT * FROM pg_try_advisory_lock(5) AS got", ROUTE_KIND_READ, 1 },
    { "SELECT CASE WHEN n > 0 THEN pg_advisory_lock(n) END FROM accounts", ROUTE_KIND_READ, 1 },
    { "WITH l AS (SELECT pg_advisory_lock(1)) SELECT * FROM l", ROUTE_KIND_READ, 1 },
    { "SELECT * FROM events WHERE tenant_id = 'ta' AND pg_try_advisory_lock(1)", ROUTE_KIND_READ,
      1 },
    { "UPDATE accounts SET v = 1 WHERE pg_try_advisory_lock(id)", ROUTE_KIND_WRITE, 1 },
    { "INSERT INTO accounts VALUES (pg_try_advisory_lock(1)::int)", ROUTE_KIND_WRITE, 1 },
    { "EXPLAIN ANALYZE SELECT pg_advisory_lock(1)", ROUTE_KIND_READ, 1 },
    { "SELECT pg_advisory_xact_lock(1)", ROUTE_KIND_READ, 0 },
    { "SELECT pg_try_advisory_xact_lock(1)", ROUTE_KIND_READ, 0 },
    { "SELECT pg_advisory_xact_lock_shared(1)", ROUTE_KIND_READ, 0 },
    { "SELECT pg_try_advisory_xact_lock_shared(1, 2)", ROUTE_KIND_READ, 0 },
    { "SELECT id FROM accounts WHERE pg_try_advisory_xact_lock(id)", ROUTE_KIND_READ, 0 },
    { "SELECT pg_advisory_unlock(1)", ROUTE_KIND_READ, 0 },
    { "SELECT pg_advisory_unlock_all()", ROUTE_KIND_READ, 0 },
    { "SELECT 'pg_advisory_lock(1)'", ROUTE_KIND_READ, 0 },
    { "SELECT * FROM pg_locks WHERE locktype = 'advisory'", ROUTE_KIND_READ, 0 },
    { "SELECT 1 AS pg_advisory_lock", ROUTE_KIND_READ, 0 },
    /* other session statements do not pin */
    { "SET search_path = app", ROUTE_KIND_SESSION_OTHER, 0 },
    { "SET pgshift.tenant = 'ta'", ROUTE_KIND_SESSION_SET, 0 },
    { "RESET ALL", ROUTE_KIND_SESSION_OTHER, 0 },
    { "DISCARD ALL", ROUTE_KIND_SESSION_OTHER, 0 },
    { "SHOW search_path", ROUTE_KIND_SESSION_OTHER, 0 },
    { "BEGIN", ROUTE_KIND_TXN_BEGIN, 0 },
    { "SELECT 1", ROUTE_KIND_READ, 0 },
    /* unparseable text pins nothing */
    { "LISTEN", ROUTE_KIND_UNKNOWN, 0 },
};

static void test_classify_pins(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(pcases) / sizeof(pcases[0]); i++) {
        const pcase_t *p = &pcases[i];
        route_class_t *cl = route_classify(p->sql, strlen(p->sql), &g_ten);

        print_message("case: %s -> pins %d\n", p->sql, p->pins);
        assert_int_equal(cl->n_stmts, 1);
        assert_string_equal(route_kind_str(cl->stmts[0].kind), route_kind_str(p->kind));
        assert_int_equal(cl->stmts[0].pins_session, p->pins);
        route_class_unref(cl);
    }
}

/* SHOW and NOTIFY change no session state: they are not replayed on other servers. */
static void test_classify_show_notify(void **state)
{
    static const struct {
        const char *sql;
        bool is_show, is_notify;
    } cases[] = {
        { "SHOW DateStyle", true, false },
        { "SHOW pgshift.tenant", true, false },
        { "SHOW ALL", true, false },
        { "NOTIFY ch", false, true },
        { "NOTIFY ch, 'x'", false, true },
        { "LISTEN ch", false, false },
        { "SET DateStyle = ISO", false, false },
        { "UNLISTEN *", false, false },
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        route_class_t *cl = route_classify(cases[i].sql, strlen(cases[i].sql), &g_ten);

        print_message("case: %s\n", cases[i].sql);
        assert_int_equal(cl->n_stmts, 1);
        assert_int_equal(cl->stmts[0].kind, ROUTE_KIND_SESSION_OTHER);
        assert_int_equal(cl->stmts[0].is_show, cases[i].is_show);
        assert_int_equal(cl->stmts[0].is_notify, cases[i].is_notify);
        route_class_unref(cl);
    }
}

static void test_classify_multi(void **state)
{
    const char *sql = "BEGIN; SELECT COALESCE(MAX(version),0) FROM events WHERE aggregate_id = "
                      "'k1'; INSERT INTO events (event_id, aggregate_id, tenant_id) VALUES ('e', "
                      "'k1', 'ta'); COMMIT";
    route_class_t *cl = route_classify(sql, strlen(sql), &g_ten);

    (void)state;
    assert_false(cl->is_error);
    assert_int_equal(cl->n_stmts, 4);
    assert_int_equal(cl->stmts[0].kind, ROUTE_KIND_TXN_BEGIN);
    assert_int_equal(cl->stmts[1].kind, ROUTE_KIND_READ);
    assert_int_equal(cl->stmts[2].kind, ROUTE_KIND_WRITE);
    assert_int_equal(cl->stmts[3].kind, ROUTE_KIND_TXN_COMMIT);
    assert_int_equal(cl->stmts[0].loc, 0);
    assert_int_equal(cl->stmts[0].len, 5);
    assert_memory_equal(sql + cl->stmts[1].loc, " SELECT", 7);
    assert_memory_equal(sql + cl->stmts[2].loc, " INSERT", 7);
    assert_memory_equal(sql + cl->stmts[3].loc, " COMMIT", 7);
    assert_int_equal(cl->stmts[3].len, 0); /* the last runs to the end */
    assert_int_equal(cl->stmts[2].n_rows, 1);
    assert_string_equal(cl->stmts[2].tenants[0].text, "ta");
    assert_string_equal(cl->stmts[1].keys[0].text, "k1");
    route_class_unref(cl);

    /* pins_session belongs to the statement that pins, not to its neighbours */
    sql = "BEGIN; SELECT pg_advisory_lock(1); LISTEN jobs; UNLISTEN jobs; COMMIT";
    cl = route_classify(sql, strlen(sql), &g_ten);
    assert_false(cl->is_error);
    assert_int_equal(cl->n_stmts, 5);
    assert_false(cl->stmts[0].pins_session);
    assert_true(cl->stmts[1].pins_session);
    assert_true(cl->stmts[2].pins_session);
    assert_false(cl->stmts[3].pins_session);
    assert_false(cl->stmts[4].pins_session);
    route_class_unref(cl);

    /* one bad statement makes the whole text unparseable, as for PostgreSQL */
    cl = route_classify("SELECT 1; SELEKT 2", 18, &g_ten);
    assert_true(cl->is_error);
    assert_int_equal(cl->n_stmts, 1);
    assert_int_equal(cl->stmts[0].kind, ROUTE_KIND_UNKNOWN);
    route_class_unref(cl);
}

static void test_classify_edges(void **state)
{
    route_class_t *cl;
    const char with_nul[] = "SELECT 1\0garbage garbage";

    (void)state;
    /* empty text: no statements */
    cl = route_classify("", 0, &g_ten);
    assert_false(cl->is_error);
    assert_int_equal(cl->n_stmts, 0);
    route_class_unref(cl);
    cl = route_classify(" ; -- nothing\n;", 15, &g_ten);
    assert_false(cl->is_error);
    assert_int_equal(cl->n_stmts, 0);
    route_class_unref(cl);
    /* not NUL-terminated: only len bytes count */
    cl = route_classify("SELECT 1garbage", 8, &g_ten);
    assert_false(cl->is_error);
    assert_int_equal(cl->n_stmts, 1);
    route_class_unref(cl);
    /* an embedded NUL ends the text */
    cl = route_classify(with_nul, sizeof(with_nul) - 1, &g_ten);
    assert_false(cl->is_error);
    route_class_unref(cl);
    /* max_param */
    cl = route_classify("SELECT $3, $12 FROM events WHERE tenant_id = $7", 47, &g_ten);
    assert_int_equal(cl->max_param, 12);
    route_class_unref(cl);
    /* deep nesting never crashes */
    {
        size_t n = 20000, k = 0;
        char *deep = malloc(2 * n + 16);
        k += (size_t)sprintf(deep, "SELECT ");
        for (size_t i = 0; i < n; i++)
            deep[k++] = '(';
        deep[k++] = '1';
        for (size_t i = 0; i < n; i++)
            deep[k++] = ')';
        cl = route_classify(deep, k, &g_ten);
        assert_int_equal(cl->n_stmts, 1);
        assert_int_equal(cl->stmts[0].kind, ROUTE_KIND_UNKNOWN);
        route_class_unref(cl);
        free(deep);
    }
}

static void test_classify_custom_tenancy(void **state)
{
    route_tenancy_t t;
    route_class_t *cl;
    const char *sql = "INSERT INTO app.Orders (order_id, org_id, customer_id) VALUES (1, 'o1', "
                      "'c9')";

    (void)state;
    route_tenancy_init(&t, " app.orders , invoices", "ORG_ID", "order_id, customer_id", "seq",
                       "order_id");
    assert_int_equal(t.n_tables, 2);
    assert_string_equal(t.tables[0], "app.orders");
    assert_string_equal(t.tenant_column, "org_id");
    cl = route_classify(sql, strlen(sql), &t);
    assert_int_equal(cl->stmts[0].kind, ROUTE_KIND_WRITE);
    assert_true(cl->stmts[0].touches_tenant_table);
    assert_int_equal(cl->stmts[0].n_tenants, 1);
    assert_string_equal(cl->stmts[0].tenants[0].text, "o1");
    assert_int_equal(cl->stmts[0].n_keys, 2);
    assert_string_equal(cl->stmts[0].keys[0].text, "1");
    assert_int_equal(cl->stmts[0].keys[0].column, 0);
    assert_string_equal(cl->stmts[0].keys[1].text, "c9");
    assert_int_equal(cl->stmts[0].keys[1].column, 1);
    assert_int_equal(cl->stmts[0].n_rows, 1);
    assert_string_equal(cl->stmts[0].rows[0].key.text, "1"); /* the first key column */
    route_class_unref(cl);
    /* a different schema is not the tenant table app.orders */
    cl = route_classify("SELECT * FROM other.orders", 26, &t);
    assert_false(cl->stmts[0].touches_tenant_table);
    route_class_unref(cl);
    /* default tenancy does not know org_id */
    cl = route_classify(sql, strlen(sql), &g_ten);
    assert_int_equal(cl->stmts[0].n_tenants, 0);
    assert_false(cl->stmts[0].touches_tenant_table);
    route_class_unref(cl);
    route_tenancy_destroy(&t);
}

static void test_uuid_canon(void **state)
{
    char out[37];

    (void)state;
    assert_true(route_uuid_canon("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", 36, out));
    assert_string_equal(out, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_true(route_uuid_canon("{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", 38, out));
    assert_string_equal(out, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_true(route_uuid_canon("a0eebc999c0b4ef8bb6d6bb9bd380a11", 32, out));
    assert_string_equal(out, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_true(route_uuid_canon("a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11", 39, out));
    assert_string_equal(out, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_false(route_uuid_canon("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", 35, out));
    assert_false(route_uuid_canon("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111", 37, out));
    assert_false(route_uuid_canon("g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", 36, out));
    assert_false(route_uuid_canon("{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", 37, out));
    assert_false(route_uuid_canon("a0eeb-c99-9c0b-4ef8-bb6d-6bb9bd380a11", 37, out));
    assert_false(route_uuid_canon("tenant-a", 8, out));
    assert_false(route_uuid_canon("", 0, out));
}

/* ---- route table ---------------------------------------------------------- */

#define S_MAIN 0
#define S_EAST 1
#define S_WEST 2

/* The route-table generation at which tenant tcut's cutover hold began. */
#define CUT_GEN 5

static route_table_t *make_table(void)
{
    static const char *const names[] = { "main", "east", "west" };
    route_table_t *t = route_table_new(3, names);
    route_entry_t e = {
        .state = ROUTE_STATE_NORMAL, .phase = ROUTE_PHASE_NONE, .target_store = -1, .version = 1
    };

    e.tenant = "ta", e.store = S_EAST;
    route_table_put(t, &e);
    e.tenant = "tb", e.store = S_WEST;
    route_table_put(t, &e);
    e.tenant = "tc", e.store = S_MAIN;
    route_table_put(t, &e);
    e.tenant = "TA-UPPER", e.store = S_WEST;
    route_table_put(t, &e);
    e.tenant = UUID_AU, e.store = S_WEST; /* stored canonical */
    route_table_put(t, &e);
    e.state = ROUTE_STATE_MIGRATING;
    e.target_store = S_WEST;
    e.tenant = "tm", e.store = S_EAST, e.phase = ROUTE_PHASE_DUAL_WRITE;
    route_table_put(t, &e);
    e.tenant = "tcut", e.store = S_EAST, e.phase = ROUTE_PHASE_CUTOVER;
    e.migration_id = 7, e.cutover_attempt = 1, e.hold_gen = CUT_GEN;
    route_table_put(t, &e);
    e.migration_id = 0, e.cutover_attempt = 0, e.hold_gen = 0;
    e.tenant = "tdone", e.store = S_EAST, e.phase = ROUTE_PHASE_COMPLETED;
    route_table_put(t, &e);
    e.tenant = "tfail", e.store = S_EAST, e.phase = ROUTE_PHASE_FAILED;
    route_table_put(t, &e);
    route_table_freeze(t);
    return t;
}

static void test_route_table(void **state)
{
    route_table_t *t = make_table(), *t2, *held;
    const route_entry_t *e;
    route_entry_t ne = { .tenant = "tnew", .store = S_WEST, .target_store = -1, .version = 7 };

    (void)state;
    assert_int_equal(route_table_len(t), 9);
    assert_int_equal(route_table_n_stores(t), 3);
    assert_string_equal(route_table_store_name(t, S_WEST), "west");
    assert_string_equal(route_table_store_name(t, 9), "?");
    e = route_table_get(t, "ta", 2);
    assert_non_null(e);
    assert_int_equal(e->store, S_EAST);
    assert_null(route_table_get(t, "tx", 2));
    assert_null(route_table_get(t, "t", 1));
    /* UUID forms all find the canonical entry */
    e = route_table_get(t, "11111111222233334444555555555555", 32);
    assert_non_null(e);
    assert_string_equal(e->tenant, UUID_A);
    /* non-UUID tenants are case-sensitive */
    assert_null(route_table_get(t, "ta-upper", 8));
    assert_non_null(route_table_get(t, "TA-UPPER", 8));
    /* phase -> store */
    assert_int_equal(route_entry_store(route_table_get(t, "tm", 2)), S_EAST);
    assert_int_equal(route_entry_store(route_table_get(t, "tcut", 4)), S_EAST);
    assert_int_equal(route_entry_store(route_table_get(t, "tdone", 5)), S_WEST);
    assert_int_equal(route_entry_store(route_table_get(t, "tfail", 5)), S_EAST);

    /* copy-on-write: a clone changes, the published snapshot does not */
    held = route_table_ref(t); /* a session still deciding with the old one */
    t2 = route_table_clone(t);
    route_table_put(t2, &ne);
    ne.tenant = "ta", ne.store = S_WEST, ne.version = 8;
    route_table_put(t2, &ne);
    assert_true(route_table_del(t2, "tc"));
    assert_false(route_table_del(t2, "tc"));
    route_table_freeze(t2);
    route_table_unref(t); /* the loop swaps: drops its reference */
    assert_int_equal(route_table_len(held), 9);
    assert_int_equal(route_table_get(held, "ta", 2)->store, S_EAST);
    assert_null(route_table_get(held, "tnew", 4));
    assert_non_null(route_table_get(held, "tc", 2));
    assert_int_equal(route_table_len(t2), 9);
    assert_int_equal(route_table_get(t2, "ta", 2)->store, S_WEST);
    assert_int_equal(route_table_get(t2, "ta", 2)->version, 8);
    assert_int_equal(route_table_get(t2, "tnew", 4)->version, 7);
    assert_null(route_table_get(t2, "tc", 2));
    /* every entry is reachable through route_table_at */
    for (size_t i = 0; i < route_table_len(t2); i++) {
        const route_entry_t *x = route_table_at(t2, i);
        assert_ptr_equal(route_table_get(t2, x->tenant, strlen(x->tenant)), x);
    }
    route_table_unref(held);
    route_table_unref(t2);
    route_table_unref(NULL);

    /* growth past the initial index */
    t = route_table_new(1, (const char *const[]){ "only" });
    for (int i = 0; i < 1000; i++) {
        char name[32];
        route_entry_t x = { .tenant = name, .store = 0, .target_store = -1, .version = i };
        snprintf(name, sizeof(name), "tenant-%d", i);
        route_table_put(t, &x);
    }
    assert_int_equal(route_table_len(t), 1000);
    for (int i = 0; i < 1000; i += 37) {
        char name[32];
        snprintf(name, sizeof(name), "tenant-%d", i);
        assert_int_equal(route_table_get(t, name, strlen(name))->version, i);
    }
    route_table_unref(t);
    assert_string_equal(route_phase_str(ROUTE_PHASE_CUTOVER), "cutover");
    assert_string_equal(route_state_str(ROUTE_STATE_MIGRATING), "migrating");
}

/* ---- aggregate map ----------------------------------------------------------- */

static void test_aggmap(void **state)
{
    route_aggmap_t *m = route_aggmap_new(4);
    const char *t;
    char k[16];

    (void)state;
    route_aggmap_learn(m, "k1", 2, "ta", 2);
    route_aggmap_learn(m, "K2", 2, NULL, 0);
    route_aggmap_learn(m, UUID_AU, strlen(UUID_AU), "AAAAAAAA-0000-4000-8000-00000000000A", 36);
    assert_int_equal(route_aggmap_len(m), 3);
    assert_true(route_aggmap_get(m, "k1", 2, &t));
    assert_string_equal(t, "ta");
    assert_true(route_aggmap_get(m, "K2", 2, &t));
    assert_null(t); /* negative entry */
    assert_false(route_aggmap_get(m, "k2", 2, &t));
    assert_true(route_aggmap_get(m, UUID_A, 36, &t));
    assert_string_equal(t, "aaaaaaaa-0000-4000-8000-00000000000a");
    /* key views need not be NUL-terminated */
    assert_true(route_aggmap_get(m, "k1xyz", 2, &t));
    /* relearn replaces */
    route_aggmap_learn(m, "K2", 2, "tb", 2);
    assert_true(route_aggmap_get(m, "K2", 2, &t));
    assert_string_equal(t, "tb");
    assert_int_equal(route_aggmap_len(m), 3);
    route_aggmap_forget(m, "K2", 2);
    assert_false(route_aggmap_get(m, "K2", 2, &t));
    assert_int_equal(route_aggmap_len(m), 2);

    /* bounded: k1 is learned again (referenced), so the clock spares it */
    route_aggmap_learn(m, "k3", 2, "ta", 2);
    route_aggmap_learn(m, "k4", 2, "ta", 2);
    assert_int_equal(route_aggmap_len(m), 4);
    route_aggmap_learn(m, "k1", 2, "ta", 2);
    for (int i = 0; i < 3; i++) {
        snprintf(k, sizeof(k), "new%d", i);
        route_aggmap_learn(m, k, strlen(k), "tb", 2);
        assert_int_equal(route_aggmap_len(m), 4);
    }
    assert_true(route_aggmap_get(m, "k1", 2, &t));
    assert_true(route_aggmap_get(m, "new2", 4, &t));
    for (int i = 0; i < 1000; i++) {
        snprintf(k, sizeof(k), "x%d", i);
        route_aggmap_learn(m, k, strlen(k), "tb", 2);
    }
    assert_int_equal(route_aggmap_len(m), 4);
    assert_true(route_aggmap_get(m, "x999", 4, &t));
    route_aggmap_free(m);
    route_aggmap_free(NULL);
}

/* ---- decision cases ------------------------------------------------------------ */

typedef struct dcase {
    const char *name;
    const char *sql;
    const char *sess_tenant; /* NULL = none */
    int in_txn;
    int bound;         /* -1 = none */
    int tentative;     /* bound_tentative */
    const char *binds; /* '|'-separated text params, "~" = NULL; NULL = no Bind */
    route_action_t act;
    int store;
    route_reason_t reason;
    const char *sqlstate; /* REFUSE */
    const char *msg;      /* REFUSE: substring of the message */
    int want_binds;       /* 0, 1 or ANY */
    int want_tentative;   /* 0, 1 or ANY */
    int want_rebind;      /* 0, 1 or ANY */
    const char *tenant;   /* decided tenant, NULL = not checked */
    int bound_gen;        /* generation the bound work began at (tcut's hold is CUT_GEN) */
} dcase_t;

#define PROBE \
    "SELECT COALESCE(MAX(version),0) FROM events WHERE aggregate_id=$1 AND aggregate_type=$2"
#define APPEND                                                                              \
    "INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, tenant_id, "   \
    "actor_id, version, timestamp, payload) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) RETURNING " \
    "global_position"
#define APPEND2 \
    "INSERT INTO events (event_id, aggregate_id, tenant_id) VALUES ($1,$2,$3), ($4,$5,$6)"
#define FEED "SELECT * FROM events WHERE global_position > $1 ORDER BY global_position LIMIT 100"
#define FEED_T                                                                     \
    "SELECT * FROM events WHERE global_position > $1 AND tenant_id = $2 ORDER BY " \
    "global_position LIMIT 100"
#define A_P "e1|agg-a|Order|Created|ta|u|1|2024-01-01|{}"
#define B_P "e1|agg-b|Order|Created|tb|u|1|2024-01-01|{}"

static const dcase_t dcases[] = {
    /* rule 1: the statement's own tenant */
    { "literal tenant", "SELECT * FROM events WHERE tenant_id = 'ta'", NULL, 0, -1, 0, NULL,
      ROUTE_ACT_SEND, S_EAST, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0, "ta", 0 },
    { "bound $n tenant", FEED_T, NULL, 0, -1, 0, "0|tb", ROUTE_ACT_SEND, S_WEST,
      ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0, "tb", 0 },
    { "append, tenant in VALUES", APPEND, NULL, 0, -1, 0, B_P, ROUTE_ACT_SEND, S_WEST,
      ROUTE_R_STMT_TENANT, NULL, NULL, ANY, ANY, 0, "tb", 0 },
    { "tenant without a route: default store", "SELECT * FROM events WHERE tenant_id = 'tz'", NULL,
      0, -1, 0, NULL, ROUTE_ACT_SEND, S_MAIN, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0, "tz", 0 },
    { "uuid tenant in another spelling", "SELECT * FROM events WHERE tenant_id = '" UUID_AU "'",
      NULL, 0, -1, 0, NULL, ROUTE_ACT_SEND, S_WEST, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0,
      UUID_A, 0 },
    { "uuid tenant as a text parameter", FEED_T, NULL, 0, -1, 0,
      "0|11111111222233334444555555555555", ROUTE_ACT_SEND, S_WEST, ROUTE_R_STMT_TENANT, NULL, NULL,
      0, 0, 0, UUID_A, 0 },
    { "$n tenant before Bind: unknown", FEED_T, NULL, 0, -1, 0, NULL, ROUTE_ACT_SEND, S_MAIN,
      ROUTE_R_DEFAULT, NULL, NULL, 0, 0, 0, "", 0 },
    { "NULL $n tenant: no tenant", FEED_T, NULL, 0, -1, 0, "0|~", ROUTE_ACT_SEND, S_MAIN,
      ROUTE_R_DEFAULT, NULL, NULL, 0, 0, 0, "", 0 },
    { "multi-row insert, tenants on one store", APPEND2, NULL, 0, -1, 0, "e1|k1|ta|e2|k2|tm",
      ROUTE_ACT_SEND, S_EAST, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0, "ta", 0 },
    { "multi-row insert, tenants on two stores", APPEND2, NULL, 0, -1, 0, "e1|k1|ta|e2|k2|tb",
      ROUTE_ACT_REFUSE, -1, ROUTE_R_ROWS_MULTI_STORE, "0A000",
      "INSERT has rows for tenants on different stores", 0, 0, 0, NULL, 0 },
    { "multi-row insert of literals on two stores",
      "INSERT INTO events (event_id, tenant_id) VALUES ('e1', 'tc'), ('e2', 'tb')", NULL, 0, -1, 0,
      NULL, ROUTE_ACT_REFUSE, -1, ROUTE_R_ROWS_MULTI_STORE, "0A000", "\"west\"", 0, 0, 0, NULL, 0 },
    { "IN list across stores", "SELECT * FROM events WHERE tenant_id IN ('ta', 'tb')", NULL, 0, -1,
      0, NULL, ROUTE_ACT_REFUSE, -1, ROUTE_R_MULTI_STORE, "0A000", "tenants on different stores", 0,
      0, 0, NULL, 0 },
    { "IN list on one store", "SELECT * FROM events WHERE tenant_id IN ('ta', 'tm')", NULL, 0, -1,
      0, NULL, ROUTE_ACT_SEND, S_EAST, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "OR across stores", "SELECT * FROM events WHERE tenant_id = 'ta' OR tenant_id = 'tb'", NULL,
      0, -1, 0, NULL, ROUTE_ACT_REFUSE, -1, ROUTE_R_MULTI_STORE, "0A000",
      "tenants on different stores", 0, 0, 0, NULL, 0 },
    { "OR on one store", "SELECT * FROM events WHERE tenant_id = 'ta' OR tenant_id = 'tm'", NULL, 0,
      -1, 0, NULL, ROUTE_ACT_SEND, S_EAST, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "tenant too long", FEED_T, NULL, 0, -1, 0,
      "0|xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
      "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
      "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
      ROUTE_ACT_REFUSE, -1, ROUTE_R_VALUE_TOO_LONG, "22023", "longer than", 0, 0, 0, NULL, 0 },
    /* rule 2: the session tenant, and the isolation check */
    { "probe with session tenant", PROBE, "ta", 0, -1, 0, "agg-zzz|Order", ROUTE_ACT_SEND, S_EAST,
      ROUTE_R_SESSION_TENANT, NULL, NULL, 0, 0, 0, "ta", 0 },
    { "feed with session tenant", FEED, "tb", 0, -1, 0, "0", ROUTE_ACT_SEND, S_WEST,
      ROUTE_R_SESSION_TENANT, NULL, NULL, 0, 0, 0, "tb", 0 },
    { "session tenant without a route", "SELECT 1", "tz", 0, -1, 0, NULL, ROUTE_ACT_SEND, S_MAIN,
      ROUTE_R_SESSION_TENANT, NULL, NULL, 0, 0, 0, "tz", 0 },
    { "statement tenant equals session tenant", APPEND, "ta", 0, -1, 0, A_P, ROUTE_ACT_SEND, S_EAST,
      ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0, "ta", 0 },
    { "uuid session tenant in another spelling",
      "SELECT * FROM events WHERE tenant_id = '" UUID_A "'", UUID_AU, 0, -1, 0, NULL,
      ROUTE_ACT_SEND, S_WEST, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "statement tenant contradicts session tenant", APPEND, "ta", 0, -1, 0, B_P, ROUTE_ACT_REFUSE,
      -1, ROUTE_R_TENANT_MISMATCH, "42501",
      "statement tenant \"tb\" does not match the session tenant \"ta\"", 0, 0, 0, NULL, 0 },
    { "contradiction on the same store is still refused",
      "SELECT * FROM events WHERE tenant_id = 'tm'", "ta", 0, -1, 0, NULL, ROUTE_ACT_REFUSE, -1,
      ROUTE_R_TENANT_MISMATCH, "42501", "\"tm\"", 0, 0, 0, NULL, 0 },
    { "one row of a multi-row insert contradicts", APPEND2, "ta", 0, -1, 0, "e1|k1|ta|e2|k2|tm",
      ROUTE_ACT_REFUSE, -1, ROUTE_R_TENANT_MISMATCH, "42501", NULL, 0, 0, 0, NULL, 0 },
    /* rule 3: keys */
    { "probe, aggregate known", PROBE, NULL, 0, -1, 0, "agg-b|Order", ROUTE_ACT_SEND, S_WEST,
      ROUTE_R_KEY_TENANT, NULL, NULL, 0, 0, 0, "tb", 0 },
    { "stream read, aggregate known (uuid spelling)",
      "SELECT * FROM events WHERE aggregate_id = $1 ORDER BY version", NULL, 0, -1, 0,
      "BBBBBBBB00004000800000000000000B", ROUTE_ACT_SEND, S_EAST, ROUTE_R_KEY_TENANT, NULL, NULL, 0,
      0, 0, "ta", 0 },
    { "snapshot read, aggregate known",
      "SELECT version, state FROM snapshots WHERE aggregate_id = 'agg-a'", NULL, 0, -1, 0, NULL,
      ROUTE_ACT_SEND, S_EAST, ROUTE_R_KEY_TENANT, NULL, NULL, 0, 0, 0, "ta", 0 },
    { "probe, aggregate unknown: look it up", PROBE, NULL, 0, -1, 0, "agg-new|Order",
      ROUTE_ACT_NEED_LOOKUP, -1, ROUTE_R_KEY_UNKNOWN, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "probe, aggregate known to have no tenant", PROBE, NULL, 0, -1, 0, "agg-none|Order",
      ROUTE_ACT_SEND, S_MAIN, ROUTE_R_KEY_NO_TENANT, NULL, NULL, 0, 0, 0, "", 0 },
    { "keys of tenants on two stores",
      "SELECT * FROM events WHERE aggregate_id IN ('agg-a', 'agg-b')", NULL, 0, -1, 0, NULL,
      ROUTE_ACT_REFUSE, -1, ROUTE_R_MULTI_STORE, "0A000", "different stores", 0, 0, 0, NULL, 0 },
    { "session tenant wins over a key", PROBE, "tc", 0, -1, 0, "agg-b|Order", ROUTE_ACT_SEND,
      S_MAIN, ROUTE_R_SESSION_TENANT, NULL, NULL, 0, 0, 0, "tc", 0 },
    { "statement tenant wins over a key",
      "SELECT * FROM events WHERE aggregate_id = 'agg-b' AND tenant_id = 'ta'", NULL, 0, -1, 0,
      NULL, ROUTE_ACT_SEND, S_EAST, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0, "ta", 0 },
    { "unknown key inside a firmly bound transaction: bound store, no lookup", PROBE, NULL, 1,
      S_WEST, 0, "agg-new|Order", ROUTE_ACT_SEND, S_WEST, ROUTE_R_BOUND, NULL, NULL, 0, 0, 0, NULL,
      0 },
    { "unknown key inside a tentative transaction: look it up", PROBE, NULL, 1, S_MAIN, 1,
      "agg-new|Order", ROUTE_ACT_NEED_LOOKUP, -1, ROUTE_R_KEY_UNKNOWN, NULL, NULL, 0, 0, 0, NULL,
      0 },
    /* rule 4: nothing */
    { "no tenant: default store", "SELECT 1", NULL, 0, -1, 0, NULL, ROUTE_ACT_SEND, S_MAIN,
      ROUTE_R_DEFAULT, NULL, NULL, 0, 0, 0, "", 0 },
    { "global feed without tenant: default store", FEED, NULL, 0, -1, 0, "0", ROUTE_ACT_SEND,
      S_MAIN, ROUTE_R_DEFAULT, NULL, NULL, 0, 0, 0, "", 0 },
    { "DDL without tenant: default store", "CREATE TABLE x (a int)", NULL, 0, -1, 0, NULL,
      ROUTE_ACT_SEND, S_MAIN, ROUTE_R_DEFAULT, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "COPY IN with the session tenant", "COPY events FROM STDIN", "tb", 0, -1, 0, NULL,
      ROUTE_ACT_SEND, S_WEST, ROUTE_R_SESSION_TENANT, NULL, NULL, 0, 0, 0, NULL, 0 },
    /* transactions: binding */
    { "first routed statement binds", APPEND, NULL, 1, -1, 0, A_P, ROUTE_ACT_SEND, S_EAST,
      ROUTE_R_STMT_TENANT, NULL, NULL, 1, 0, 0, "ta", 0 },
    { "first statement without tenant binds tentatively", "SELECT 1", NULL, 1, -1, 0, NULL,
      ROUTE_ACT_SEND, S_MAIN, ROUTE_R_DEFAULT, NULL, NULL, 1, 1, 0, NULL, 0 },
    { "first write without tenant binds firmly", "INSERT INTO audit (x) VALUES (1)", NULL, 1, -1, 0,
      NULL, ROUTE_ACT_SEND, S_MAIN, ROUTE_R_DEFAULT, NULL, NULL, 1, 0, 0, NULL, 0 },
    { "no tenant inside a bound transaction: bound store", FEED, NULL, 1, S_WEST, 0, "0",
      ROUTE_ACT_SEND, S_WEST, ROUTE_R_BOUND, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "same store inside a bound transaction", APPEND, NULL, 1, S_EAST, 0, A_P, ROUTE_ACT_SEND,
      S_EAST, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "cross-store statement refused", APPEND, NULL, 1, S_EAST, 0, B_P, ROUTE_ACT_REFUSE, -1,
      ROUTE_R_CROSS_STORE, "0A000",
      "statement routes to store \"west\" but the transaction is bound to store \"east\"", 0, 0, 0,
      NULL, 0 },
    { "cross-store through a key refused", PROBE, NULL, 1, S_EAST, 0, "agg-b|Order",
      ROUTE_ACT_REFUSE, -1, ROUTE_R_CROSS_STORE, "0A000", "bound to store \"east\"", 0, 0, 0, NULL,
      0 },
    { "tentative binding moves to the tenant store", APPEND, NULL, 1, S_MAIN, 1, B_P,
      ROUTE_ACT_SEND, S_WEST, ROUTE_R_REBIND, NULL, NULL, 1, 0, 1, "tb", 0 },
    { "tentative binding becomes firm on its own store",
      "SELECT * FROM events WHERE tenant_id = "
      "'tc'",
      NULL, 1, S_MAIN, 1, NULL, ROUTE_ACT_SEND, S_MAIN, ROUTE_R_STMT_TENANT, NULL, NULL, 1, 0, 0,
      NULL, 0 },
    { "tentative stays tentative on another tenantless read", "SELECT 2", NULL, 1, S_MAIN, 1, NULL,
      ROUTE_ACT_SEND, S_MAIN, ROUTE_R_BOUND, NULL, NULL, 0, 0, 0, NULL, 0 },
    /* transaction control */
    { "BEGIN is held", "BEGIN", NULL, 0, -1, 0, NULL, ROUTE_ACT_DEFER, -1, ROUTE_R_TXN_DEFER, NULL,
      NULL, 0, 0, 0, NULL, 0 },
    { "BEGIN inside a bound transaction goes there", "BEGIN", NULL, 1, S_WEST, 0, NULL,
      ROUTE_ACT_SEND, S_WEST, ROUTE_R_TXN_BOUND, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "SAVEPOINT before binding is held", "SAVEPOINT a", NULL, 1, -1, 0, NULL, ROUTE_ACT_DEFER, -1,
      ROUTE_R_TXN_DEFER, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "SAVEPOINT in a bound transaction", "SAVEPOINT a", NULL, 1, S_EAST, 0, NULL, ROUTE_ACT_SEND,
      S_EAST, ROUTE_R_TXN_BOUND, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "COMMIT goes to the bound store", "COMMIT", "tb", 1, S_EAST, 0, NULL, ROUTE_ACT_SEND, S_EAST,
      ROUTE_R_TXN_BOUND, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "ROLLBACK goes to the bound store", "ROLLBACK", NULL, 1, S_WEST, 0, NULL, ROUTE_ACT_SEND,
      S_WEST, ROUTE_R_TXN_BOUND, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "COMMIT of an unbound transaction is answered locally", "COMMIT", NULL, 1, -1, 0, NULL,
      ROUTE_ACT_LOCAL, -1, ROUTE_R_TXN_LOCAL, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "ROLLBACK of an unbound transaction is answered locally", "ROLLBACK", NULL, 1, -1, 0, NULL,
      ROUTE_ACT_LOCAL, -1, ROUTE_R_TXN_LOCAL, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "COMMIT outside a transaction: default store", "COMMIT", NULL, 0, -1, 0, NULL, ROUTE_ACT_SEND,
      S_MAIN, ROUTE_R_TXN_NONE, NULL, NULL, 0, 0, 0, NULL, 0 },
    /* session statements */
    { "SET tenant outside a transaction", "SET pgshift.tenant = 'tb'", NULL, 0, -1, 0, NULL,
      ROUTE_ACT_SEND, S_MAIN, ROUTE_R_SESSION_CMD, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "SET tenant in an unbound transaction is held", "SET LOCAL pgshift.tenant = 'tb'", NULL, 1,
      -1, 0, NULL, ROUTE_ACT_DEFER, -1, ROUTE_R_SESSION_DEFER, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "SET in a bound transaction", "SET search_path = x", NULL, 1, S_WEST, 0, NULL, ROUTE_ACT_SEND,
      S_WEST, ROUTE_R_SESSION_CMD, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "LISTEN outside a transaction", "LISTEN ch", "ta", 0, -1, 0, NULL, ROUTE_ACT_SEND, S_MAIN,
      ROUTE_R_SESSION_CMD, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "SHOW in an unbound transaction asks a store, binding tentatively", "SHOW DateStyle", NULL, 1,
      -1, 0, NULL, ROUTE_ACT_SEND, S_MAIN, ROUTE_R_SESSION_CMD, NULL, NULL, 1, 1, 0, NULL, 0 },
    { "NOTIFY in an unbound transaction is held for its commit", "NOTIFY ch", NULL, 1, -1, 0, NULL,
      ROUTE_ACT_DEFER, -1, ROUTE_R_SESSION_DEFER, NULL, NULL, 0, 0, 0, NULL, 0 },
    /* unparseable */
    { "garbage: default store", "SELEKT 1", NULL, 0, -1, 0, NULL, ROUTE_ACT_SEND, S_MAIN,
      ROUTE_R_UNPARSED, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "garbage in a bound transaction: bound store", "SELEKT 1", NULL, 1, S_WEST, 0, NULL,
      ROUTE_ACT_SEND, S_WEST, ROUTE_R_UNPARSED, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "garbage first in a transaction binds tentatively", "SELEKT 1", NULL, 1, -1, 0, NULL,
      ROUTE_ACT_SEND, S_MAIN, ROUTE_R_UNPARSED, NULL, NULL, 1, 1, 0, NULL, 0 },
    /* migration phases */
    { "dual-write tenant stays on its source", "SELECT * FROM events WHERE tenant_id = 'tm'", NULL,
      0, -1, 0, NULL, ROUTE_ACT_SEND, S_EAST, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0, "tm", 0 },
    { "completed migration routes to the target",
      "SELECT * FROM events WHERE tenant_id = "
      "'tdone'",
      NULL, 0, -1, 0, NULL, ROUTE_ACT_SEND, S_WEST, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0, NULL,
      0 },
    { "failed migration stays on the source", "SELECT * FROM events WHERE tenant_id = 'tfail'",
      NULL, 0, -1, 0, NULL, ROUTE_ACT_SEND, S_EAST, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0, NULL,
      0 },
    { "cutover holds new tenant work", "SELECT * FROM events WHERE tenant_id = 'tcut'", NULL, 0, -1,
      0, NULL, ROUTE_ACT_HOLD, -1, ROUTE_R_CUTOVER_HOLD, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "cutover holds the first statement of a transaction", APPEND, NULL, 1, -1, 0,
      "e|k|Order|C|tcut|u|1|t|{}", ROUTE_ACT_HOLD, -1, ROUTE_R_CUTOVER_HOLD, NULL, NULL, 0, 0, 0,
      NULL, 0 },
    { "cutover lets an open tenant transaction finish", APPEND, NULL, 1, S_EAST, 0,
      "e|k|Order|C|tcut|u|1|t|{}", ROUTE_ACT_SEND, S_EAST, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0,
      "tcut", 0 },
    { "cutover holds through the session tenant", PROBE, "tcut", 0, -1, 0, "agg-x|Order",
      ROUTE_ACT_HOLD, -1, ROUTE_R_CUTOVER_HOLD, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "cutover holds through a key", PROBE, NULL, 0, -1, 0, "agg-cut|Order", ROUTE_ACT_HOLD, -1,
      ROUTE_R_CUTOVER_HOLD, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "other tenants never wait for a cutover", "SELECT * FROM events WHERE tenant_id = 'ta'", NULL,
      0, -1, 0, NULL, ROUTE_ACT_SEND, S_EAST, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0, NULL, 0 },
    /* cutover: the hold generation (tcut is on east, its hold began at CUT_GEN) */
    { "cutover: transaction on the source from before the hold finishes", APPEND, NULL, 1, S_EAST,
      0, "e|k|Order|C|tcut|u|1|t|{}", ROUTE_ACT_SEND, S_EAST, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0,
      0, "tcut", CUT_GEN - 1 },
    { "cutover: transaction on the source that began at the hold waits", APPEND, NULL, 1, S_EAST, 0,
      "e|k|Order|C|tcut|u|1|t|{}", ROUTE_ACT_HOLD, -1, ROUTE_R_CUTOVER_HOLD, NULL, NULL, 0, 0, 0,
      NULL, CUT_GEN },
    { "cutover: transaction on the source that began after the hold waits", APPEND, NULL, 1, S_EAST,
      0, "e|k|Order|C|tcut|u|1|t|{}", ROUTE_ACT_HOLD, -1, ROUTE_R_CUTOVER_HOLD, NULL, NULL, 0, 0, 0,
      NULL, CUT_GEN + 3 },
    { "cutover: old transaction bound to another store waits, no refusal",
      "SELECT * FROM events WHERE tenant_id = 'tcut'", NULL, 1, S_WEST, 0, NULL, ROUTE_ACT_HOLD, -1,
      ROUTE_R_CUTOVER_HOLD, NULL, NULL, 0, 0, 0, NULL, 1 },
    { "cutover: old tentative transaction on the source goes on and binds firmly",
      "SELECT * FROM events WHERE tenant_id = 'tcut'", NULL, 1, S_EAST, 1, NULL, ROUTE_ACT_SEND,
      S_EAST, ROUTE_R_STMT_TENANT, NULL, NULL, 1, 0, 0, "tcut", 2 },
    { "cutover: new tentative transaction on the source waits",
      "SELECT * FROM events WHERE tenant_id = 'tcut'", NULL, 1, S_EAST, 1, NULL, ROUTE_ACT_HOLD, -1,
      ROUTE_R_CUTOVER_HOLD, NULL, NULL, 0, 0, 0, NULL, CUT_GEN + 1 },
    { "cutover: old tentative transaction elsewhere waits (rebinds once released)", APPEND, NULL, 1,
      S_MAIN, 1, "e|k|Order|C|tcut|u|1|t|{}", ROUTE_ACT_HOLD, -1, ROUTE_R_CUTOVER_HOLD, NULL, NULL,
      0, 0, 0, NULL, 0 },
    { "cutover: old transaction with the session tenant finishes", PROBE, "tcut", 1, S_EAST, 0,
      "agg-x|Order", ROUTE_ACT_SEND, S_EAST, ROUTE_R_SESSION_TENANT, NULL, NULL, 0, 0, 0, "tcut",
      CUT_GEN - 1 },
    { "cutover: new transaction with the session tenant waits", PROBE, "tcut", 1, S_EAST, 0,
      "agg-x|Order", ROUTE_ACT_HOLD, -1, ROUTE_R_CUTOVER_HOLD, NULL, NULL, 0, 0, 0, NULL, CUT_GEN },
    { "cutover: old transaction through a key finishes", PROBE, NULL, 1, S_EAST, 0, "agg-cut|Order",
      ROUTE_ACT_SEND, S_EAST, ROUTE_R_KEY_TENANT, NULL, NULL, 0, 0, 0, "tcut", 3 },
    { "cutover: new transaction through a key waits", PROBE, NULL, 1, S_EAST, 0, "agg-cut|Order",
      ROUTE_ACT_HOLD, -1, ROUTE_R_CUTOVER_HOLD, NULL, NULL, 0, 0, 0, NULL, CUT_GEN + 2 },
    { "cutover: second tenant of a statement at cutover holds it",
      "SELECT * FROM events WHERE tenant_id IN ('ta', 'tcut')", NULL, 0, -1, 0, NULL,
      ROUTE_ACT_HOLD, -1, ROUTE_R_CUTOVER_HOLD, NULL, NULL, 0, 0, 0, NULL, 0 },
    { "cutover: second tenant at cutover, new transaction on its store waits",
      "SELECT * FROM events WHERE tenant_id IN ('ta', 'tcut')", NULL, 1, S_EAST, 0, NULL,
      ROUTE_ACT_HOLD, -1, ROUTE_R_CUTOVER_HOLD, NULL, NULL, 0, 0, 0, NULL, CUT_GEN },
    { "cutover: second tenant at cutover, old transaction on its store finishes",
      "SELECT * FROM events WHERE tenant_id IN ('ta', 'tcut')", NULL, 1, S_EAST, 0, NULL,
      ROUTE_ACT_SEND, S_EAST, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0, "ta", CUT_GEN - 1 },
    { "cutover: another tenant of the source in a new transaction never waits",
      "SELECT * FROM events WHERE tenant_id = 'ta'", NULL, 1, S_EAST, 0, NULL, ROUTE_ACT_SEND,
      S_EAST, ROUTE_R_STMT_TENANT, NULL, NULL, 0, 0, 0, "ta", CUT_GEN + 9 },
    { "cutover: tenantless statement of a new transaction on the source goes on", "SELECT 1", NULL,
      1, S_EAST, 0, NULL, ROUTE_ACT_SEND, S_EAST, ROUTE_R_BOUND, NULL, NULL, 0, 0, 0, NULL,
      CUT_GEN + 1 },
    { "cutover: COMMIT of a new transaction on the source goes on", "COMMIT", "tcut", 1, S_EAST, 0,
      NULL, ROUTE_ACT_SEND, S_EAST, ROUTE_R_TXN_BOUND, NULL, NULL, 0, 0, 0, NULL, CUT_GEN + 1 },
    { "cutover: unknown key in a new transaction on the source: look it up (it may be tcut's)",
      "UPDATE snapshots SET version = 2 WHERE aggregate_id = $1", NULL, 1, S_EAST, 0, "agg-new",
      ROUTE_ACT_NEED_LOOKUP, -1, ROUTE_R_KEY_UNKNOWN, NULL, NULL, 0, 0, 0, NULL, CUT_GEN },
    { "cutover: unknown key in an old transaction on the source: bound store, no lookup",
      "UPDATE snapshots SET version = 2 WHERE aggregate_id = $1", NULL, 1, S_EAST, 0, "agg-new",
      ROUTE_ACT_SEND, S_EAST, ROUTE_R_BOUND, NULL, NULL, 0, 0, 0, NULL, CUT_GEN - 1 },
    { "cutover: unknown key in a new transaction on a store without cutover: bound store",
      "UPDATE snapshots SET version = 2 WHERE aggregate_id = $1", NULL, 1, S_WEST, 0, "agg-new",
      ROUTE_ACT_SEND, S_WEST, ROUTE_R_BOUND, NULL, NULL, 0, 0, 0, NULL, CUT_GEN + 4 },
    { "cutover: bound_gen outside a transaction does not matter",
      "SELECT * FROM events WHERE tenant_id = 'tcut'", NULL, 0, S_EAST, 0, NULL, ROUTE_ACT_HOLD, -1,
      ROUTE_R_CUTOVER_HOLD, NULL, NULL, 0, 0, 0, NULL, 0 },
};

typedef struct fixture {
    route_table_t *table;
    route_aggmap_t *aggs;
    route_cache_t *cache;
} fixture_t;

static int setup_fixture(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));

    route_tenancy_init(&g_ten, NULL, NULL, NULL, NULL, NULL);
    f->table = make_table();
    f->aggs = route_aggmap_new(64);
    route_aggmap_learn(f->aggs, "agg-a", 5, "ta", 2);
    route_aggmap_learn(f->aggs, "agg-b", 5, "tb", 2);
    route_aggmap_learn(f->aggs, "agg-none", 8, NULL, 0);
    route_aggmap_learn(f->aggs, "agg-cut", 7, "tcut", 4);
    route_aggmap_learn(f->aggs, "bbbbbbbb-0000-4000-8000-00000000000b", 36, "ta", 2);
    f->cache = route_cache_new(128, &g_ten);
    *state = f;
    return 0;
}

static int teardown_fixture(void **state)
{
    fixture_t *f = *state;

    route_cache_free(f->cache);
    route_aggmap_free(f->aggs);
    route_table_unref(f->table);
    route_tenancy_destroy(&g_ten);
    free(f);
    return 0;
}

/* Split "a|b|~" into text params ("~" = NULL). Returns the count. */
static size_t make_params(const char *spec, char *store, route_param_t *p, size_t max)
{
    size_t n = 0;
    char *s, *save = NULL;

    strcpy(store, spec);
    for (s = strtok_r(store, "|", &save); s != NULL && n < max; s = strtok_r(NULL, "|", &save)) {
        memset(&p[n], 0, sizeof(p[n]));
        if (strcmp(s, "~") == 0) {
            p[n].len = -1;
        } else {
            p[n].data = (const uint8_t *)s;
            p[n].len = (int32_t)strlen(s);
        }
        n++;
    }
    return n;
}

static route_decision_t decide_sql(fixture_t *f, const char *sql, const route_session_t *sess,
                                   const char *params)
{
    char store[2048];
    route_param_t p[32];
    route_params_t bind = { 0 };
    route_class_t *cl = route_cache_get(f->cache, sql, strlen(sql));
    route_decision_t d;

    assert_int_equal(cl->n_stmts, 1);
    if (params != NULL) {
        assert_true(strlen(params) < sizeof(store));
        bind.n = make_params(params, store, p, 32);
        bind.v = p;
    }
    d = route_decide(f->table, sess, &cl->stmts[0], params ? &bind : NULL);
    route_class_unref(cl);
    return d;
}

static void test_decide_table(void **state)
{
    fixture_t *f = *state;

    for (size_t i = 0; i < sizeof(dcases) / sizeof(dcases[0]); i++) {
        const dcase_t *c = &dcases[i];
        route_session_t sess = { .tenant = c->sess_tenant,
                                 .bound_store = c->bound,
                                 .bound_tentative = c->tentative,
                                 .in_txn = c->in_txn,
                                 .bound_gen = (uint64_t)c->bound_gen,
                                 .default_store = S_MAIN,
                                 .aggs = f->aggs };
        route_decision_t d = decide_sql(f, c->sql, &sess, c->binds);

        print_message("case: %s -> %s %d (%s) %s\n", c->name, route_action_str(d.action), d.store,
                      route_reason_str(d.reason), d.message);
        assert_string_equal(route_action_str(d.action), route_action_str(c->act));
        assert_string_equal(route_reason_str(d.reason), route_reason_str(c->reason));
        assert_int_equal(d.store, c->store);
        if (c->act == ROUTE_ACT_REFUSE) {
            assert_string_equal(d.sqlstate, c->sqlstate);
            if (c->msg != NULL)
                assert_non_null(strstr(d.message, c->msg));
        } else {
            assert_string_equal(d.sqlstate, "");
        }
        if (c->want_binds != ANY)
            assert_int_equal(d.binds, c->want_binds);
        if (c->want_tentative != ANY)
            assert_int_equal(d.tentative, c->want_tentative);
        if (c->want_rebind != ANY)
            assert_int_equal(d.rebind, c->want_rebind);
        if (c->tenant != NULL)
            assert_string_equal(d.tenant, c->tenant);
    }
}

static void test_decide_need_lookup_detail(void **state)
{
    fixture_t *f = *state;
    route_session_t sess = { .bound_store = -1, .default_store = S_MAIN, .aggs = f->aggs };
    route_decision_t d = decide_sql(f, PROBE, &sess, "AGG-NEW|Order");

    assert_int_equal(d.action, ROUTE_ACT_NEED_LOOKUP);
    assert_string_equal(d.key, "AGG-NEW");
    assert_int_equal(d.key_column, 0);
    assert_string_equal(g_ten.key_columns[d.key_column], "aggregate_id");
    /* without an aggregate map, keys are not used */
    sess.aggs = NULL;
    d = decide_sql(f, PROBE, &sess, "AGG-NEW|Order");
    assert_int_equal(d.action, ROUTE_ACT_SEND);
    assert_int_equal(d.reason, ROUTE_R_DEFAULT);
    /* a route pointer comes with the tenant */
    d = decide_sql(f, "SELECT * FROM events WHERE tenant_id = 'tm'", &sess, NULL);
    assert_non_null(d.route);
    assert_int_equal(d.route->phase, ROUTE_PHASE_DUAL_WRITE);
    assert_int_equal(d.route->target_store, S_WEST);
}

static void test_decide_binary_params(void **state)
{
    fixture_t *f = *state;
    route_class_t *cl = route_cache_get(f->cache, FEED_T, strlen(FEED_T));
    static const uint8_t uuid[16] = { 0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x33, 0x33,
                                      0x44, 0x44, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55 };
    static const uint8_t pos[8] = { 0, 0, 0, 0, 0, 0, 0, 5 };
    static const uint8_t i4[4] = { 0xff, 0xff, 0xff, 0xfe }; /* -2 */
    route_param_t p[2] = { { .data = pos, .len = 8, .is_binary = true, .type_oid = 20 },
                           { .data = uuid, .len = 16, .is_binary = true, .type_oid = 2950 } };
    route_params_t bind = { .n = 2, .v = p };
    route_session_t sess = { .bound_store = -1, .default_store = S_MAIN, .aggs = f->aggs };
    route_decision_t d = route_decide(f->table, &sess, &cl->stmts[0], &bind);
    route_table_t *t2;
    route_entry_t e = { .tenant = "-2", .store = S_EAST, .target_store = -1 };

    (void)state;
    assert_int_equal(d.action, ROUTE_ACT_SEND);
    assert_int_equal(d.store, S_WEST);
    assert_string_equal(d.tenant, UUID_A);
    /* type unknown: 16 binary bytes are taken as a uuid */
    p[1].type_oid = 0;
    d = route_decide(f->table, &sess, &cl->stmts[0], &bind);
    assert_string_equal(d.tenant, UUID_A);
    /* binary int4 tenant */
    t2 = route_table_clone(f->table);
    route_table_put(t2, &e);
    p[1] = (route_param_t){ .data = i4, .len = 4, .is_binary = true, .type_oid = 23 };
    d = route_decide(t2, &sess, &cl->stmts[0], &bind);
    assert_string_equal(d.tenant, "-2");
    assert_int_equal(d.store, S_EAST);
    /* a bind with fewer values than the statement's $n: unknown, default */
    bind.n = 1;
    d = route_decide(t2, &sess, &cl->stmts[0], &bind);
    assert_int_equal(d.store, S_MAIN);
    assert_int_equal(d.reason, ROUTE_R_DEFAULT);
    route_table_unref(t2);
    route_class_unref(cl);
}

/* The append transaction of DESIGN.md, without a session tenant, as the proxy drives it. */
static void test_append_transaction_flow(void **state)
{
    fixture_t *f = *state;
    route_session_t sess = { .bound_store = -1, .default_store = S_MAIN, .aggs = f->aggs };
    route_decision_t d;
    route_class_t *cl;
    char store[512];
    route_param_t p[16];
    route_params_t bind = { .v = p };
    const char *t;

    /* existing aggregate: BEGIN held, probe binds to the tenant's store */
    d = decide_sql(f, "BEGIN", &sess, NULL);
    assert_int_equal(d.action, ROUTE_ACT_DEFER);
    sess.in_txn = true;
    d = decide_sql(f, PROBE, &sess, "agg-b|Order");
    assert_int_equal(d.action, ROUTE_ACT_SEND);
    assert_int_equal(d.store, S_WEST);
    assert_true(d.binds);
    assert_false(d.tentative);
    sess.bound_store = d.store;
    d = decide_sql(f, APPEND, &sess, B_P);
    assert_int_equal(d.action, ROUTE_ACT_SEND);
    assert_int_equal(d.store, S_WEST);
    d = decide_sql(f, "COMMIT", &sess, NULL);
    assert_int_equal(d.store, S_WEST);

    /* new aggregate: lookup finds nothing, probe binds tentatively, the INSERT moves it */
    sess.in_txn = true;
    sess.bound_store = -1;
    d = decide_sql(f, PROBE, &sess, "agg-fresh|Order");
    assert_int_equal(d.action, ROUTE_ACT_NEED_LOOKUP);
    route_aggmap_learn(f->aggs, d.key, strlen(d.key), NULL, 0); /* found on no store */
    d = decide_sql(f, PROBE, &sess, "agg-fresh|Order");
    assert_int_equal(d.action, ROUTE_ACT_SEND);
    assert_int_equal(d.store, S_MAIN);
    assert_true(d.binds);
    assert_true(d.tentative);
    sess.bound_store = d.store;
    sess.bound_tentative = true;
    d = decide_sql(f, APPEND, &sess, "e9|agg-fresh|Order|Created|tb|u|1|t|{}");
    assert_int_equal(d.action, ROUTE_ACT_SEND);
    assert_int_equal(d.store, S_WEST);
    assert_true(d.rebind);
    assert_true(d.binds);
    assert_false(d.tentative);
    sess.bound_store = d.store;
    sess.bound_tentative = false;
    /* after it commits, the proxy learns the aggregate from the row */
    cl = route_cache_get(f->cache, APPEND, strlen(APPEND));
    bind.n = make_params("e9|agg-fresh|Order|Created|tb|u|1|t|{}", store, p, 16);
    assert_int_equal(route_learn_rows(f->aggs, &cl->stmts[0], &bind), 1);
    route_class_unref(cl);
    assert_true(route_aggmap_get(f->aggs, "agg-fresh", 9, &t));
    assert_string_equal(t, "tb");
    /* the next append's probe goes straight to west */
    sess.in_txn = true;
    sess.bound_store = -1;
    d = decide_sql(f, PROBE, &sess, "agg-fresh|Order");
    assert_int_equal(d.store, S_WEST);
    assert_int_equal(d.reason, ROUTE_R_KEY_TENANT);

    /* learn_rows: literals, a NULL tenant (negative), rows without a key are skipped */
    {
        const char *q = "INSERT INTO events (event_id, aggregate_id, tenant_id) VALUES ('e1', "
                        "'L1', 'ta'), ('e2', 'L2', NULL), ('e3', DEFAULT, 'tb')";
        cl = route_classify(q, strlen(q), &g_ten);
    }
    assert_false(cl->is_error);
    assert_int_equal(route_learn_rows(f->aggs, &cl->stmts[0], NULL), 2);
    assert_true(route_aggmap_get(f->aggs, "L1", 2, &t));
    assert_string_equal(t, "ta");
    assert_true(route_aggmap_get(f->aggs, "L2", 2, &t));
    assert_null(t);
    route_class_unref(cl);
}

/* A copy of f->table with tcut's route replaced by e (tenant "tcut"). */
static route_table_t *table_with_tcut(const route_table_t *base, const route_entry_t *e)
{
    route_table_t *t = route_table_clone(base);

    route_table_put(t, e);
    route_table_freeze(t);
    return t;
}

/*
 * A transaction that began after the hold is held, then released by the
 * next route table: flipped to the target it rebinds there (tentative) or
 * is refused (firm elsewhere); rolled back it runs on the source.
 */
static void test_cutover_release_flow(void **state)
{
    fixture_t *f = *state;
    route_session_t sess = { .bound_store = S_MAIN,
                             .bound_tentative = true,
                             .in_txn = true,
                             .bound_gen = CUT_GEN + 1,
                             .default_store = S_MAIN,
                             .aggs = f->aggs };
    route_entry_t e = { .tenant = "tcut",
                        .store = S_EAST,
                        .state = ROUTE_STATE_MIGRATING,
                        .phase = ROUTE_PHASE_COMPLETED,
                        .target_store = S_WEST,
                        .migration_id = 7 };
    const char *append_tcut = "e|k|Order|C|tcut|u|1|t|{}";
    route_table_t *done, *back;
    route_decision_t d;
    route_table_t *held_table = f->table;

    /* held: a tentative transaction on the default store touches tcut */
    d = decide_sql(f, APPEND, &sess, append_tcut);
    assert_int_equal(d.action, ROUTE_ACT_HOLD);
    assert_int_equal(d.store, -1);
    assert_string_equal(d.tenant, "tcut");
    assert_non_null(d.route);
    assert_int_equal(d.route->hold_gen, CUT_GEN);
    assert_int_equal(d.route->cutover_attempt, 1);
    /* the decision names the tenant at cutover, not the first one of the statement */
    d = decide_sql(f, "SELECT * FROM events WHERE tenant_id IN ('ta', 'tcut')", &sess, NULL);
    assert_int_equal(d.action, ROUTE_ACT_HOLD);
    assert_string_equal(d.tenant, "tcut");
    assert_int_equal(d.route->store, S_EAST);

    /* flipped: the held statement rebinds the tentative transaction to the target */
    done = table_with_tcut(held_table, &e);
    f->table = done;
    d = decide_sql(f, APPEND, &sess, append_tcut);
    assert_int_equal(d.action, ROUTE_ACT_SEND);
    assert_int_equal(d.store, S_WEST);
    assert_int_equal(d.reason, ROUTE_R_REBIND);
    assert_true(d.rebind);
    assert_true(d.binds);
    assert_false(d.tentative);
    /* a transaction firmly bound to the source is refused after the flip */
    sess.bound_store = S_EAST;
    sess.bound_tentative = false;
    d = decide_sql(f, APPEND, &sess, append_tcut);
    assert_int_equal(d.action, ROUTE_ACT_REFUSE);
    assert_string_equal(d.sqlstate, "0A000");
    /* outside a transaction it simply runs on the target */
    sess.in_txn = false;
    sess.bound_store = -1;
    d = decide_sql(f, APPEND, &sess, append_tcut);
    assert_int_equal(d.action, ROUTE_ACT_SEND);
    assert_int_equal(d.store, S_WEST);

    /* rolled back to DUAL_WRITE: the held statement runs on the source */
    e.phase = ROUTE_PHASE_DUAL_WRITE;
    back = table_with_tcut(held_table, &e);
    f->table = back;
    sess.in_txn = true;
    sess.bound_store = S_MAIN;
    sess.bound_tentative = true;
    d = decide_sql(f, APPEND, &sess, append_tcut);
    assert_int_equal(d.action, ROUTE_ACT_SEND);
    assert_int_equal(d.store, S_EAST);
    assert_true(d.rebind);
    sess.in_txn = false;
    sess.bound_store = -1;
    d = decide_sql(f, APPEND, &sess, append_tcut);
    assert_int_equal(d.action, ROUTE_ACT_SEND);
    assert_int_equal(d.store, S_EAST);

    f->table = held_table;
    route_table_unref(done);
    route_table_unref(back);
}

static void test_hold_gens(void **state)
{
    fixture_t *f = *state;
    route_entry_t e = { .tenant = "tcut",
                        .store = S_EAST,
                        .state = ROUTE_STATE_MIGRATING,
                        .phase = ROUTE_PHASE_CUTOVER,
                        .target_store = S_WEST,
                        .migration_id = 7,
                        .cutover_attempt = 1,
                        .hold_gen = 999 /* ignored: set_hold_gens decides */ };
    route_table_t *t;
    const route_entry_t *g;

    /* same migration and attempt: the hold keeps its generation */
    t = route_table_clone(f->table);
    route_table_put(t, &e);
    assert_int_equal(route_table_set_hold_gens(t, f->table, 9), 1);
    g = route_table_get(t, "tcut", 4);
    assert_int_equal(g->hold_gen, CUT_GEN);
    route_table_unref(t);

    /* a new attempt of the same migration: a new hold */
    e.cutover_attempt = 2;
    t = route_table_clone(f->table);
    route_table_put(t, &e);
    route_table_set_hold_gens(t, f->table, 9);
    assert_int_equal(route_table_get(t, "tcut", 4)->hold_gen, 9);
    route_table_unref(t);

    /* another migration of the tenant: a new hold */
    e.cutover_attempt = 1;
    e.migration_id = 8;
    t = route_table_clone(f->table);
    route_table_put(t, &e);
    route_table_set_hold_gens(t, f->table, 10);
    assert_int_equal(route_table_get(t, "tcut", 4)->hold_gen, 10);
    route_table_unref(t);

    /* a tenant that enters CUTOVER, and no previous table */
    e.migration_id = 3;
    e.tenant = "tm";
    t = route_table_clone(f->table);
    route_table_put(t, &e);
    assert_int_equal(route_table_set_hold_gens(t, f->table, 11), 2);
    assert_int_equal(route_table_get(t, "tm", 2)->hold_gen, 11);
    assert_int_equal(route_table_get(t, "tcut", 4)->hold_gen, CUT_GEN);
    /* an unknown key is looked up in a transaction that began at or after a hold of its
     * store, unfrozen (scan) and frozen (per-store minimum) alike */
    for (int frozen = 0; frozen < 2; frozen++) {
        route_session_t sess = { .bound_store = S_EAST,
                                 .in_txn = true,
                                 .bound_gen = CUT_GEN - 1,
                                 .default_store = S_MAIN,
                                 .aggs = f->aggs };
        const char *upd = "UPDATE snapshots SET version = 2 WHERE aggregate_id = $1";
        route_table_t *keep = f->table;

        f->table = t;
        assert_int_equal(decide_sql(f, upd, &sess, "agg-new").action, ROUTE_ACT_SEND);
        sess.bound_gen = CUT_GEN;
        assert_int_equal(decide_sql(f, upd, &sess, "agg-new").action, ROUTE_ACT_NEED_LOOKUP);
        sess.bound_store = S_WEST;
        assert_int_equal(decide_sql(f, upd, &sess, "agg-new").action, ROUTE_ACT_SEND);
        f->table = keep;
        if (!frozen)
            route_table_freeze(t);
    }
    route_table_unref(t);
    t = route_table_clone(f->table);
    route_table_put(t, &e);
    assert_int_equal(route_table_set_hold_gens(t, NULL, 12), 2);
    assert_int_equal(route_table_get(t, "tcut", 4)->hold_gen, 12);
    route_table_unref(t);

    /* leaving CUTOVER clears the hold; no CUTOVER entry left */
    e.tenant = "tcut";
    e.phase = ROUTE_PHASE_DUAL_WRITE;
    e.hold_gen = 4;
    t = route_table_clone(f->table);
    route_table_put(t, &e);
    assert_int_equal(route_table_set_hold_gens(t, f->table, 13), 0);
    assert_int_equal(route_table_get(t, "tcut", 4)->hold_gen, 0);
    route_table_unref(t);
}

/* ---- fast path ------------------------------------------------------------------ */

/*
 * The fast path against the full classifier: whenever route_classify_fast
 * answers, every field of its answer but tables[] / target equals
 * route_classify's, and so does every decision on it. Returns whether the
 * fast path answered.
 */
/* Fail naming the text and the field (cmocka alone would name only the line). */
#define SAME(field, a, b)                                                                 \
    do {                                                                                  \
        if ((long long)(a) != (long long)(b)) {                                           \
            print_error("fast path disagrees on %s (%lld, full %lld) for: %.*s\n", field, \
                        (long long)(a), (long long)(b), (int)len, sql);                   \
            fail();                                                                       \
        }                                                                                 \
    } while (0)

static bool fast_agrees(const char *sql, size_t len, const route_tenancy_t *ten,
                        const route_table_t *table)
{
    route_class_t *fast = route_classify_fast(sql, len, ten);
    route_class_t *full;
    const route_stmt_t *a, *b;

    if (fast == NULL)
        return false;
    full = route_classify(sql, len, ten);
    SAME("is_error", fast->is_error, full->is_error);
    SAME("n_stmts", fast->n_stmts, full->n_stmts);
    SAME("n_stmts", fast->n_stmts, 1);
    SAME("max_param", fast->max_param, full->max_param);
    SAME("error", fast->error != NULL, 0);
    SAME("refcount", fast->refcount, 1);
    a = &fast->stmts[0];
    b = &full->stmts[0];
    SAME("kind", a->kind, b->kind);
    SAME("is_write", a->is_write, b->is_write);
    SAME("has_returning", a->has_returning, b->has_returning);
    SAME("touches_tenant_table", a->touches_tenant_table, b->touches_tenant_table);
    SAME("has_tenant_info", a->has_tenant_info, b->has_tenant_info);
    SAME("loc", a->loc, b->loc);
    SAME("len", a->len, b->len);
    SAME("n_tenants", a->n_tenants, b->n_tenants);
    SAME("n_keys", a->n_keys, b->n_keys);
    SAME("n_rows", a->n_rows, b->n_rows);
    SAME("position_min", a->position_min.kind, b->position_min.kind);
    SAME("set_op", a->set_op, b->set_op);
    SAME("set_value", a->set_value.kind, b->set_value.kind);
    SAME("set_is_local", a->set_is_local, b->set_is_local);
    SAME("is_tenant_show", a->is_tenant_show, b->is_tenant_show);
    SAME("txn_chain", a->txn_chain, b->txn_chain);
    SAME("pins_session", a->pins_session, b->pins_session);
    SAME("pins_session (fast)", a->pins_session, 0);
    SAME("n_tables (not filled)", a->n_tables, 0);
    SAME("target (not filled)", a->target != NULL, 0);
    /* and so the decisions, in every kind of session */
    for (int s = 0; s < 24; s++) {
        static const char *const tenants[] = { NULL, "ta", "tcut" };
        route_session_t sess = { .tenant = tenants[s % 3],
                                 .bound_store = (s / 3) % 4 >= 2 ? S_EAST : -1,
                                 .bound_tentative = (s / 3) % 4 == 3,
                                 .in_txn = (s / 3) % 4 >= 1,
                                 .default_store = s >= 12 ? S_WEST : S_MAIN,
                                 .aggs = NULL };
        route_decision_t da = route_decide(table, &sess, a, NULL);
        route_decision_t db = route_decide(table, &sess, b, NULL);
        SAME("action", da.action, db.action);
        SAME("reason", da.reason, db.reason);
        SAME("store", da.store, db.store);
        SAME("binds", da.binds, db.binds);
        SAME("tentative", da.tentative, db.tentative);
        SAME("rebind", da.rebind, db.rebind);
        SAME("route", da.route == db.route, 1);
        SAME("tenant", strcmp(da.tenant, db.tenant), 0);
        SAME("sqlstate", strcmp(da.sqlstate, db.sqlstate), 0);
    }
    route_class_unref(full);
    route_class_unref(fast);
    return true;
}

#define FAST_NO  0
#define FAST_YES 1

typedef struct fcase {
    const char *sql;
    int fast; /* FAST_NO, FAST_YES or ANY: whether the fast path must answer */
} fcase_t;

static const fcase_t fcases[] = {
    /* pgbench's TPC-B-like script, simple protocol: literals everywhere */
    { "BEGIN;", FAST_NO },
    { "UPDATE pgbench_accounts SET abalance = abalance + -4 WHERE aid = 5;", FAST_YES },
    { "SELECT abalance FROM pgbench_accounts WHERE aid = 123;", FAST_YES },
    { "UPDATE pgbench_tellers SET tbalance = tbalance + 4872 WHERE tid = 7;", FAST_YES },
    { "UPDATE pgbench_branches SET bbalance = bbalance + -1234 WHERE bid = 1;", FAST_YES },
    { "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, "
      "CURRENT_TIMESTAMP);",
      FAST_YES },
    { "END;", FAST_NO },
    { "SELECT abalance FROM pgbench_accounts WHERE aid = 123", FAST_YES },
    { "\n  select abalance from PGBENCH_ACCOUNTS where aid = 9 ;  \n", FAST_YES },
    /* plain statements on non-tenant tables */
    { "SELECT 1", FAST_YES },
    { "SELECT now()", FAST_YES },
    { "SELECT * FROM accounts WHERE id = 3 AND name = 'x'", FAST_YES },
    { "SELECT a.id, b.v FROM accounts a JOIN balances b ON b.id = a.id WHERE a.id IN (1, 2)",
      FAST_YES },
    { "SELECT count(*) FROM accounts GROUP BY kind HAVING count(*) > 1 ORDER BY 1 LIMIT 5",
      FAST_YES },
    { "VALUES (1, 'a'), (2, 'b')", FAST_YES },
    { "TABLE accounts", FAST_YES },
    { "WITH t AS (SELECT 1 AS x) SELECT x FROM t", FAST_YES },
    { "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * "
      "FROM r",
      FAST_YES },
    { "INSERT INTO accounts (id, name) VALUES (1, 'a'), (2, 'b')", FAST_YES },
    { "INSERT INTO accounts VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET name = "
      "EXCLUDED.name",
      FAST_YES },
    { "INSERT INTO accounts SELECT * FROM staging", FAST_YES },
    { "UPDATE accounts SET name = 'b' WHERE id = 1", FAST_YES },
    { "DELETE FROM accounts WHERE id = 1", FAST_YES },
    { "SELECT * FROM accounts WHERE id = 1 FOR SHARE", FAST_YES },
    { "SELECT set_config('search_path', 'x', false)", FAST_NO },
    /* semicolons in strings and comments, several statements */
    { "SELECT ';' FROM accounts", FAST_YES },
    { "SELECT 'a;b', 'it''s;' FROM accounts WHERE name = ';'", FAST_YES },
    { "SELECT 1 /* ; */", FAST_YES },
    { "SELECT 1 /* nested /* ; */ still a comment; */ + 2", FAST_YES },
    { "/* DELETE FROM accounts; */ SELECT 1", FAST_YES },
    { "/* /* */ DELETE FROM accounts */ SELECT 1", FAST_YES },
    { "SELECT 1 -- ;\n", FAST_YES },
    { "SELECT 1 -- ; DELETE FROM accounts", FAST_YES },
    { "-- comment\nSELECT 1", FAST_YES },
    { "SELECT 1; -- trailing comment", FAST_YES },
    { "SELECT 1; /* trailing */ ", FAST_YES },
    { "SELECT 1;", FAST_YES },
    { "SELECT 1;;", FAST_NO },
    { "SELECT 1; SELECT 2", FAST_NO },
    { "SELECT 1; DELETE FROM accounts", FAST_NO },
    { "SELECT 'a'; SELECT 'b;'", FAST_NO },
    { "SELECT 1 /* unterminated", FAST_NO },
    { "SELECT 'unterminated", FAST_NO },
    { "SELECT 'x' -- ; \n; SELECT 2", FAST_NO },
    { "UPDATE accounts SET name = 'a''; DELETE FROM events; --' WHERE id = 1", FAST_YES },
    /* dollar quotes, parameters, escapes, quoted identifiers: left to the parser */
    { "SELECT $$;$$", FAST_NO },
    { "SELECT $tag$ events $tag$ FROM accounts", FAST_NO },
    { "SELECT * FROM accounts WHERE id = $1", FAST_NO },
    { "SELECT E'\\';' FROM accounts", FAST_NO },
    { "SELECT * FROM \"events\"", FAST_NO },
    { "SELECT * FROM \"accounts\"", FAST_NO },
    { "SELECT * FROM U&\"\\0065vents\"", FAST_NO },
    /* tenant tables in every spelling, and names that only look like them */
    { "SELECT * FROM events", FAST_NO },
    { "SELECT * FROM Events", FAST_NO },
    { "SELECT * FROM EVENTS WHERE 1 = 1", FAST_NO },
    { "SELECT * FROM public.events", FAST_NO },
    { "SELECT * FROM public . events", FAST_NO },
    { "SELECT * FROM accounts, snapshots", FAST_NO },
    { "TABLE event_outbox", FAST_NO },
    { "DELETE FROM accounts USING projection_checkpoints p WHERE p.x = 1", FAST_NO },
    { "SELECT * FROM eventsx", FAST_YES },
    { "SELECT * FROM xevents", FAST_YES },
    { "SELECT * FROM events_archive", FAST_YES },
    { "SELECT * FROM pgbench_events", FAST_YES },
    { "SELECT 'events' FROM accounts", FAST_YES },
    { "SELECT 1 /* events */", FAST_YES },
    { "SELECT 1events", FAST_NO },
    /* tenant, key, position and row-key columns anywhere */
    { "SELECT * FROM accounts WHERE tenant_id = 'ta'", FAST_NO },
    { "SELECT * FROM accounts WHERE aggregate_id = 'k'", FAST_NO },
    { "UPDATE accounts SET TENANT_ID = 'ta'", FAST_NO },
    { "INSERT INTO accounts (id, tenant_id) VALUES (1, 'ta')", FAST_NO },
    { "SELECT * FROM accounts WHERE global_position > 5", FAST_NO },
    { "SELECT event_id FROM accounts", FAST_NO },
    { "SELECT 'tenant_id' FROM accounts", FAST_YES },
    /* the tenant setting */
    { "SELECT set_config('pgshift.tenant', 'x', false)", FAST_NO },
    { "SELECT SET_CONFIG('PGSHIFT.TENANT', 'x', false)", FAST_NO },
    { "SELECT pg_catalog.set_config('pgshift.tenant', 'x', true)", FAST_NO },
    { "SELECT set_config(E'pgshift\\x2etenant', 'x', false)", FAST_NO },
    { "SELECT current_setting('pgshift.tenant')", FAST_NO },
    { "SELECT current_setting('PgShift.Tenant')", FAST_NO },
    { "SELECT name FROM accounts WHERE name = 'xPGSHIFT'", FAST_NO },
    { "SELECT 1 -- pgshiFT", FAST_NO },
    { "SELECT 1 -- pgshif", FAST_YES },
    { "WITH s AS (SELECT 1) SELECT set_config('pgshift.tenant', 'x', false) FROM s", FAST_NO },
    /* statements that pin the session (pins_session): left to the parser */
    { "SELECT pg_advisory_lock(1)", FAST_NO },
    { "SELECT PG_ADVISORY_LOCK_SHARED(1, 2)", FAST_NO },
    { "SELECT pg_catalog.pg_try_advisory_lock(1)", FAST_NO },
    { "SELECT * FROM accounts WHERE pg_try_advisory_lock_shared(id)", FAST_NO },
    { "UPDATE accounts SET v = 1 WHERE pg_try_advisory_lock(id)", FAST_NO },
    { "WITH l AS (SELECT pg_advisory_lock(1)) SELECT * FROM l", FAST_NO },
    { "INSERT INTO pg_temp.scratch VALUES (1)", FAST_NO },
    { "SELECT * FROM PG_TEMP_3.scratch", FAST_NO },
    { "SELECT pg_advisory_xact_lock(1)", FAST_YES },
    { "SELECT pg_try_advisory_xact_lock(1)", FAST_YES },
    { "SELECT pg_advisory_unlock(1)", FAST_YES },
    { "SELECT 'pg_advisory_lock(1)'", FAST_YES },
    { "SELECT * FROM temp_accounts", FAST_YES },
    /* reads that write or create, writes that return */
    { "SELECT 1 INTO scratch", FAST_NO },
    { "SELECT * INTO TEMP scratch FROM accounts", FAST_NO },
    { "WITH x AS (SELECT 1) SELECT * INTO scratch FROM x", FAST_NO },
    { "WITH x AS (INSERT INTO accounts VALUES (1) RETURNING *) SELECT * FROM x", FAST_NO },
    { "WITH x AS (DELETE FROM accounts RETURNING *) SELECT * FROM x", FAST_NO },
    { "WITH x AS (SELECT 1) UPDATE accounts SET v = 1", FAST_NO },
    { "SELECT * FROM accounts WHERE id = 1 FOR UPDATE", FAST_NO },
    { "SELECT * FROM (WITH a AS (UPDATE accounts SET v = 1 RETURNING *) SELECT * FROM a) s",
      FAST_NO },
    { "INSERT INTO accounts VALUES (1) RETURNING id", FAST_NO },
    { "SELECT 1 AS returning", FAST_YES },
    /* everything that is not a plain read or write goes through the parser */
    { "(SELECT 1)", FAST_NO },
    { "EXPLAIN SELECT 1", FAST_NO },
    { "SET search_path = app", FAST_NO },
    { "SHOW search_path", FAST_NO },
    { "COPY accounts FROM STDIN", FAST_NO },
    { "CREATE TABLE scratch (id int)", FAST_NO },
    { "MERGE INTO accounts a USING staging s ON a.id = s.id WHEN MATCHED THEN DELETE", FAST_NO },
    { "TRUNCATE accounts", FAST_NO },
    { "CALL p()", FAST_NO },
    { "COMMIT", FAST_NO },
    { "", FAST_NO },
    { " ; -- nothing\n;", FAST_NO },
    { ";SELECT 1", FAST_NO },
    /* text PostgreSQL rejects is UNKNOWN for the full classifier: never fast */
    { "SELECT FROM WHERE ((", FAST_NO },
    { "SELECT 1 2", FAST_NO },
    { "SELECT 'a' 'b'", FAST_NO },
    { "SELECT 'a'\n'b'", FAST_YES },
    { "INSERT INTO accounts (id VALUES", FAST_NO },
    { "UPDATE", FAST_NO },
    { "SELECT 1 +++ ", FAST_NO },
    /* long names are truncated by PostgreSQL: never fast */
    { "SELECT * FROM a234567890123456789012345678901234567890123456789012345678901234", FAST_NO },
    { "SELECT * FROM a23456789012345678901234567890123456789012345678901234567890123", FAST_YES },
    /* bytes PostgreSQL reads as identifier characters */
    { "SELECT 1 AS \xc3\xa9vents", FAST_YES },
    { "SELECT * FROM accounts WHERE name = '\xc3\xa9t\xc3\xa9'", FAST_YES },
};

static void test_fast_path_table(void **state)
{
    route_table_t *table = make_table();

    (void)state;
    for (size_t i = 0; i < sizeof(fcases) / sizeof(fcases[0]); i++) {
        const fcase_t *c = &fcases[i];
        bool answered = fast_agrees(c->sql, strlen(c->sql), &g_ten, table);
        print_message("case: %s -> %s\n", c->sql, answered ? "fast" : "parse");
        if (c->fast != ANY)
            assert_int_equal(answered, c->fast);
    }
    /* every statement of the classifier and decision tables */
    for (size_t i = 0; i < sizeof(ccases) / sizeof(ccases[0]); i++)
        (void)fast_agrees(ccases[i].sql, strlen(ccases[i].sql), &g_ten, table);
    for (size_t i = 0; i < sizeof(dcases) / sizeof(dcases[0]); i++)
        (void)fast_agrees(dcases[i].sql, strlen(dcases[i].sql), &g_ten, table);
    for (size_t i = 0; i < sizeof(pcases) / sizeof(pcases[0]); i++) {
        bool answered = fast_agrees(pcases[i].sql, strlen(pcases[i].sql), &g_ten, table);
        if (pcases[i].pins)
            assert_false(answered); /* fast_agrees checked the flag; this names the cause */
    }
    /* every prefix of every case: cut strings, comments and statements */
    for (size_t i = 0; i < sizeof(fcases) / sizeof(fcases[0]); i++) {
        for (size_t k = 0; k < strlen(fcases[i].sql); k++)
            (void)fast_agrees(fcases[i].sql, k, &g_ten, table);
    }
    route_table_unref(table);
}

static void test_fast_path_edges(void **state)
{
    route_table_t *table = make_table();
    route_tenancy_t t;
    route_class_t *cl;
    const char with_nul[] = "SELECT 1\0; DELETE FROM events";
    char *big;
    size_t k;

    (void)state;
    /* only len bytes count; an embedded NUL ends the text, as for route_classify */
    assert_true(fast_agrees("SELECT 1; SELECT 2", 9, &g_ten, table));
    assert_true(fast_agrees(with_nul, sizeof(with_nul) - 1, &g_ten, table));
    assert_false(fast_agrees("\0SELECT 1", 9, &g_ten, table));
    /* statement spans as the parser reports them */
    cl = route_classify_fast("  SELECT 1 ; ", 13, &g_ten);
    assert_non_null(cl);
    assert_int_equal(cl->stmts[0].loc, 0);
    assert_int_equal(cl->stmts[0].len, 11);
    route_class_unref(cl);
    assert_true(fast_agrees("  SELECT 1 ; ", 13, &g_ten, table));

    /* up to ROUTE_FAST_MAX_LEN bytes, deeply nested too; not one byte more */
    big = malloc(ROUTE_FAST_MAX_LEN + 2);
    k = (size_t)sprintf(big, "SELECT ");
    {
        /* a[a[a[...1]]]: about as deep a parse tree per byte as SQL allows */
        size_t m = (ROUTE_FAST_MAX_LEN - k - 1) / 3;
        for (size_t i = 0; i < m; i++) {
            big[k++] = 'a';
            big[k++] = '[';
        }
        big[k++] = '1';
        for (size_t i = 0; i < m; i++)
            big[k++] = ']';
        assert_true(k <= ROUTE_FAST_MAX_LEN && k + 3 > ROUTE_FAST_MAX_LEN);
        assert_true(fast_agrees(big, k, &g_ten, table));
    }
    memset(big, ' ', ROUTE_FAST_MAX_LEN + 1);
    memcpy(big, "SELECT 1", 8);
    assert_true(fast_agrees(big, ROUTE_FAST_MAX_LEN, &g_ten, table));
    assert_null(route_classify_fast(big, ROUTE_FAST_MAX_LEN + 1, &g_ten));
    free(big);

    /* a custom tenancy: schema-qualified table, other column names */
    route_tenancy_init(&t, " app.orders , invoices", "ORG_ID", "order_id, customer_id", "seq",
                       "line_id");
    assert_false(fast_agrees("SELECT * FROM other.orders", 26, &t, table));
    assert_false(fast_agrees("SELECT * FROM Invoices", 22, &t, table));
    assert_false(fast_agrees("SELECT customer_id FROM x", 25, &t, table));
    assert_false(fast_agrees("SELECT seq FROM x", 17, &t, table));
    assert_false(fast_agrees("SELECT line_id FROM x", 21, &t, table));
    assert_false(fast_agrees("SELECT org_id FROM x", 20, &t, table));
    assert_true(fast_agrees("SELECT * FROM app.accounts", 26, &t, table));
    assert_true(fast_agrees("SELECT * FROM events WHERE tenant_id = 'x'", 42, &t, table));
    /* a tenant setting without "pgshift" in its name */
    free(t.tenant_setting);
    t.tenant_setting = strdup("app.org");
    assert_false(fast_agrees("SELECT current_setting('APP.ORG')", 33, &t, table));
    assert_true(fast_agrees("SELECT current_setting('app.other')", 35, &t, table));
    route_tenancy_destroy(&t);
    route_table_unref(table);
}

/* The cache: fast answers are not inserted and do not evict; parsed texts still are. */
/*
 * The fast path checks the grammar once per shape (literal operands
 * normalized): every text of a shape the grammar accepted once must still
 * get route_classify's answer, including texts whose literals the grammar
 * does look at (float(0)), overflowing integers, trailing junk, string
 * continuations, U&'' strings and second statements.
 */
/* tmpl with its first '@' replaced by a and its second by b; the length. */
static int fill2(char *q, size_t size, const char *tmpl, const char *a, const char *b)
{
    size_t n = 0;
    int k = 0;

    for (const char *p = tmpl; *p != '\0'; p++) {
        const char *v = *p == '@' ? (k++ == 0 ? a : b) : NULL;
        size_t vl = v != NULL ? strlen(v) : 1;

        assert_true(n + vl < size);
        memcpy(q + n, v != NULL ? v : p, vl);
        n += vl;
    }
    q[n] = '\0';
    return (int)n;
}

static void test_fast_path_shapes(void **state)
{
    static const char *const tmpl[] = {
        "SELECT abalance FROM pgbench_accounts WHERE aid = @;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = @",
        "UPDATE pgbench_accounts SET abalance = abalance + -@ WHERE aid = @;",
        "INSERT INTO pgbench_history (tid, delta) VALUES (@, -@);",
        "SELECT 1::float(@) + @",
        "SELECT CAST(@ AS float(@))",
        "SELECT a FROM t WHERE b = @ LIMIT @",
        "SELECT a FROM t WHERE b = /* c */ @ OFFSET -@",
        "SELECT a FROM t WHERE b = '@'\n'@'",
        "SELECT a FROM t WHERE b = '@' '@'",
        "SELECT a FROM t WHERE b = E'@' || '@'",
        "SELECT U&'d!0061t' UESCAPE '@' = '@'",
        "SELECT a FROM t WHERE b = @; SELECT @",
        "SELECT a FROM t WHERE b = @.@",
        "SELECT a FROM t WHERE b >= @e@",
        "SELECT a[@] FROM t WHERE b <> @",
        "DELETE FROM t WHERE b < @ AND c > '@'",
    };
    static const char *const vals[] = {
        "1", "0",     "54", "123456789", "1234567890", "99999999999", "12abc",
        "x", "it''s", "!",  "",          "0x1F",       "1e5",         "+",
    };
    route_cache_t *c = route_cache_new(4, &g_ten);

    (void)state;
    for (size_t t = 0; t < CM_ARRAY_LEN(tmpl); t++) {
        for (size_t i = 0; i < CM_ARRAY_LEN(vals); i++) {
            for (size_t j = 0; j < CM_ARRAY_LEN(vals); j++) {
                char q[256];
                route_class_t *got, *want;
                int n = fill2(q, sizeof(q), tmpl[t], vals[i], vals[j]);

                got = route_cache_get(c, q, (size_t)n);
                want = route_classify(q, (size_t)n, &g_ten);
                if (got->is_error != want->is_error || got->n_stmts != want->n_stmts ||
                    got->stmts[0].kind != want->stmts[0].kind ||
                    got->stmts[0].is_write != want->stmts[0].is_write ||
                    got->stmts[0].len != want->stmts[0].len) {
                    print_error("shape answer differs from route_classify for: %s\n", q);
                    fail();
                }
                route_class_unref(got);
                route_class_unref(want);
            }
        }
    }
    /* the shapes did their work: most texts were answered without a parse */
    assert_true(route_cache_stats(c).fast > 100);
    route_cache_free(c);
}

static void test_cache_fast_path(void **state)
{
    route_cache_t *c = route_cache_new(2, &g_ten);
    const char *qa = "SELECT * FROM events WHERE tenant_id = 'ta'";
    route_class_t *a1, *a2, *f1, *f2;
    route_cache_stats_t s;

    (void)state;
    a1 = route_cache_get(c, qa, strlen(qa));
    for (int i = 0; i < 50; i++) {
        char q[96];
        route_class_t *f;
        snprintf(q, sizeof(q), "SELECT abalance FROM pgbench_accounts WHERE aid = %d;", i);
        f = route_cache_get(c, q, strlen(q));
        assert_int_equal(f->stmts[0].kind, ROUTE_KIND_READ);
        assert_false(f->is_error);
        route_class_unref(f);
    }
    s = route_cache_stats(c);
    assert_int_equal(s.misses, 51);
    assert_int_equal(s.fast, 50);
    assert_int_equal(s.n_entries, 1);
    assert_int_equal(s.evictions, 0);
    a2 = route_cache_get(c, qa, strlen(qa)); /* the parsed entry survived */
    assert_ptr_equal(a1, a2);
    assert_int_equal(route_cache_stats(c).hits, 1);
    /* the same fast shape twice: one shared answer, a reference for each caller */
    f1 = route_cache_get(c, "UPDATE pgbench_accounts SET abalance = abalance + -4 WHERE aid = 5",
                         66);
    f2 = route_cache_get(c, "UPDATE pgbench_accounts SET abalance = abalance + -7 WHERE aid = 8",
                         66);
    assert_ptr_equal(f1, f2);
    assert_int_equal(f1->refcount, 3); /* f1, f2 and the fast path's shape slot */
    assert_int_equal(f1->stmts[0].kind, ROUTE_KIND_WRITE);
    assert_true(f1->stmts[0].is_write);
    assert_int_equal(route_cache_stats(c).fast, 52);
    route_class_unref(f1);
    route_class_unref(f2);
    /* text the fast path declines is parsed and cached as before */
    route_class_unref(route_cache_get(c, "BEGIN;", 6));
    route_class_unref(route_cache_get(c, "BEGIN;", 6));
    s = route_cache_stats(c);
    assert_int_equal(s.hits, 2);
    assert_int_equal(s.n_entries, 2);
    assert_int_equal(s.fast, 52);
    route_class_unref(a1);
    route_class_unref(a2);
    route_cache_free(c);
}

/* ---- cache ------------------------------------------------------------------------ */

static void test_cache(void **state)
{
    route_cache_t *c = route_cache_new(2, &g_ten);
    route_class_t *a1, *a2, *b, *cc, *a3, *keep;
    route_cache_stats_t s;
    const char *qa = "SELECT * FROM events WHERE tenant_id = 'ta'";
    const char *qb = "SELECT * FROM events WHERE tenant_id = 'tb'";
    const char *qc = "SELECT * FROM events WHERE tenant_id = 'tc'";

    (void)state;
    a1 = route_cache_get(c, qa, strlen(qa));
    a2 = route_cache_get(c, qa, strlen(qa));
    assert_ptr_equal(a1, a2); /* same text: parsed once */
    s = route_cache_stats(c);
    assert_int_equal(s.misses, 1);
    assert_int_equal(s.hits, 1);
    assert_int_equal(s.n_entries, 1);
    /* a different text, even a prefix, is another entry */
    b = route_cache_get(c, qb, strlen(qb));
    assert_ptr_not_equal(a1, b);
    assert_string_equal(b->stmts[0].tenants[0].text, "tb");
    a3 = route_cache_get(c, qa, strlen(qa)); /* qa is now the most recent, qb the least */
    assert_ptr_equal(a3, a1);
    route_class_unref(a3);
    route_class_unref(route_cache_get(c, qa, strlen(qa) - 1)); /* the prefix evicts qb */
    s = route_cache_stats(c);
    assert_int_equal(s.misses, 3);
    assert_int_equal(s.hits, 2);
    assert_int_equal(s.evictions, 1);
    assert_int_equal(s.n_entries, 2);
    a3 = route_cache_get(c, qa, strlen(qa)); /* still cached */
    assert_ptr_equal(a3, a1);
    route_class_unref(a3);
    cc = route_cache_get(c, qc, strlen(qc)); /* evicts the prefix entry, keeps qa */
    s = route_cache_stats(c);
    assert_int_equal(s.evictions, 2);
    a3 = route_cache_get(c, qa, strlen(qa));
    assert_ptr_equal(a3, a1);
    s = route_cache_stats(c);
    assert_int_equal(s.hits, 4);
    assert_int_equal(s.misses, 4);
    route_class_unref(route_cache_get(c, qa, strlen(qa) - 1)); /* the prefix was evicted */
    assert_int_equal(route_cache_stats(c).misses, 5);
    /* an evicted classification lives on while referenced */
    assert_string_equal(b->stmts[0].tenants[0].text, "tb");
    assert_int_equal(b->refcount, 1);
    keep = route_cache_get(c, qb, strlen(qb)); /* re-parsed: a new object */
    assert_ptr_not_equal(keep, b);
    assert_string_equal(keep->stmts[0].tenants[0].text, "tb");
    route_class_unref(b);
    route_class_unref(a1);
    route_class_unref(a2);
    route_class_unref(a3);
    route_class_unref(cc);
    /* the cache frees its entries; a reference held past it stays valid */
    route_cache_free(c);
    assert_int_equal(keep->refcount, 1);
    assert_int_equal(keep->stmts[0].kind, ROUTE_KIND_READ);
    route_class_unref(keep);

    /* many texts through a small cache: bounded */
    c = route_cache_new(8, &g_ten);
    for (int i = 0; i < 100; i++) {
        char q[64];
        snprintf(q, sizeof(q), "SELECT %d FROM events", i); /* parsed: a tenant table */
        route_class_unref(route_cache_get(c, q, strlen(q)));
    }
    s = route_cache_stats(c);
    assert_int_equal(s.n_entries, 8);
    assert_int_equal(s.misses, 100);
    assert_int_equal(s.evictions, 92);
    route_class_unref(route_cache_get(c, "SELECT 99 FROM events", 21));
    assert_int_equal(route_cache_stats(c).hits, 1);
    route_class_unref(route_cache_get(c, "SELECT 0 FROM events", 20));
    assert_int_equal(route_cache_stats(c).misses, 101);
    /* empty and unparseable texts are cached too */
    route_class_unref(route_cache_get(c, "", 0));
    route_class_unref(route_cache_get(c, "", 0));
    route_class_unref(route_cache_get(c, "SELEKT", 6));
    route_class_unref(route_cache_get(c, "SELEKT", 6));
    assert_int_equal(route_cache_stats(c).hits, 3);
    route_cache_free(c);
}

int main(void)
{
    const struct CMUnitTest classify[] = {
        cmocka_unit_test_setup_teardown(test_classify_table, setup_ten, teardown_ten),
        cmocka_unit_test_setup_teardown(test_classify_pins, setup_ten, teardown_ten),
        cmocka_unit_test_setup_teardown(test_classify_show_notify, setup_ten, teardown_ten),
        cmocka_unit_test_setup_teardown(test_classify_multi, setup_ten, teardown_ten),
        cmocka_unit_test_setup_teardown(test_classify_edges, setup_ten, teardown_ten),
        cmocka_unit_test_setup_teardown(test_classify_custom_tenancy, setup_ten, teardown_ten),
        cmocka_unit_test(test_uuid_canon),
        cmocka_unit_test(test_route_table),
        cmocka_unit_test(test_aggmap),
        cmocka_unit_test_setup_teardown(test_cache, setup_ten, teardown_ten),
        cmocka_unit_test_setup_teardown(test_fast_path_table, setup_ten, teardown_ten),
        cmocka_unit_test_setup_teardown(test_fast_path_edges, setup_ten, teardown_ten),
        cmocka_unit_test_setup_teardown(test_cache_fast_path, setup_ten, teardown_ten),
        cmocka_unit_test_setup_teardown(test_fast_path_shapes, setup_ten, teardown_ten),
    };
    const struct CMUnitTest decide[] = {
        cmocka_unit_test_setup_teardown(test_decide_table, setup_fixture, teardown_fixture),
        cmocka_unit_test_setup_teardown(test_decide_need_lookup_detail, setup_fixture,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(test_decide_binary_params, setup_fixture, teardown_fixture),
        cmocka_unit_test_setup_teardown(test_cutover_release_flow, setup_fixture, teardown_fixture),
        cmocka_unit_test_setup_teardown(test_hold_gens, setup_fixture, teardown_fixture),
        cmocka_unit_test_setup_teardown(test_append_transaction_flow, setup_fixture,
                                        teardown_fixture),
    };
    int fails = cmocka_run_group_tests_name("route_classify", classify, NULL, NULL);

    fails += cmocka_run_group_tests_name("route_decide", decide, NULL, NULL);
    return fails ? 1 : 0;
}
