/*
 * migrator/admin.c - the admin commands the migrator answers (SHOW ROUTES,
 * SHOW TENANTS, ROUTE TENANT), their parser, and their execution on the
 * worker thread with blocking libpq against the control store and the stores.
 * Nothing here touches the loop.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "migrator/migrator_int.h"

#define STORE_CONNECT_TIMEOUT_MS   5000
#define CONTROL_CONNECT_TIMEOUT_MS 10000
#define QUERY_TIMEOUT_MS           30000
/* SHOW TENANTS stays cheap: each per-table count is cut off server-side. */
#define TENANT_COUNT_TIMEOUT_MS "2000"
#define MAX_TENANTS_PER_TABLE   10000

/* ---- helpers ----------------------------------------------------------------- */

int mig_env_store_index(const mig_env_t *env, const char *name)
{
    for (size_t i = 0; i < env->n_stores; i++)
        if (strcmp(env->store_names[i], name) == 0)
            return (int)i;
    return -1;
}

/* The table name quoted as an identifier, "schema"."table" when qualified. Owned. */
char *mig_quote_table(PGconn *c, const char *table)
{
    const char *dot = strchr(table, '.');
    char *a, *b, *s;

    if (dot == NULL) {
        a = PQescapeIdentifier(c, table, strlen(table));
        s = cm_xstrdup(a ? a : "\"\"");
        PQfreemem(a);
        return s;
    }
    a = PQescapeIdentifier(c, table, (size_t)(dot - table));
    b = PQescapeIdentifier(c, dot + 1, strlen(dot + 1));
    s = cm_xasprintf("%s.%s", a ? a : "\"\"", b ? b : "\"\"");
    PQfreemem(a);
    PQfreemem(b);
    return s;
}

char *mig_quote_ident(PGconn *c, const char *name)
{
    char *a = PQescapeIdentifier(c, name, strlen(name));
    char *s = cm_xstrdup(a ? a : "\"\"");

    PQfreemem(a);
    return s;
}

/*
 * True for the errors that mean "this tenant cannot have rows here": the
 * table or column does not exist on that store, or the tenant value is not
 * valid for the column's type (a non-uuid tenant against a uuid column).
 */
bool mig_is_no_rows_error(const PGresult *res)
{
    const char *s = mig_pq_sqlstate(res);

    return strcmp(s, "42P01") == 0 || strcmp(s, "42703") == 0 || strcmp(s, "22P02") == 0 ||
           strcmp(s, "3F000") == 0;
}

/* (Re)connect the worker's control connection when needed. Returns NULL or an error result. */
mig_result_t *mig_ensure_control(const mig_env_t *env, PGconn **control)
{
    char *err = NULL;
    int rc;

    if (*control != NULL && PQstatus(*control) == CONNECTION_OK)
        return NULL;
    if (*control != NULL) {
        PQfinish(*control);
        *control = NULL;
    }
    rc = mig_pq_connect(env->control_conninfo, "pgshift-admin", env->latch,
                        CONTROL_CONNECT_TIMEOUT_MS, control, &err);
    if (rc != 0) {
        mig_result_t *r = mig_result_error("08006", "cannot connect to the control store: %s",
                                           err ? err : "stopping");

        free(err);
        return r;
    }
    return NULL;
}

/*
 * Run sql on the control connection. Returns the result (owned), or NULL
 * with *fail set to an error result; a broken connection is finished.
 */
PGresult *mig_control_exec(const mig_env_t *env, PGconn **control, const char *sql, int n_params,
                           const char *const *params, mig_result_t **fail)
{
    PGresult *res;

    *fail = mig_ensure_control(env, control);
    if (*fail != NULL)
        return NULL;
    res = mig_pq_exec(*control, env->latch, QUERY_TIMEOUT_MS, sql, n_params, params);
    if (res == NULL) {
        char *m = mig_pq_errmsg(*control, NULL);

        *fail = mig_result_error("08006", "lost the control store: %s", m);
        free(m);
        PQfinish(*control);
        *control = NULL;
        return NULL;
    }
    if (!mig_pq_ok(res)) {
        char *m = mig_pq_errmsg(*control, res);
        const char *st = mig_pq_sqlstate(res);

        *fail = mig_result_error(strlen(st) == 5 ? st : "XX000", "control store: %s", m);
        free(m);
        PQclear(res);
        return NULL;
    }
    return res;
}

mig_result_t *mig_connect_store(const mig_env_t *env, int idx, PGconn **out)
{
    char *err = NULL;
    mig_result_t *r;

    if (mig_pq_connect(env->store_conninfos[idx], "pgshift-admin", env->latch,
                       STORE_CONNECT_TIMEOUT_MS, out, &err) == 0)
        return NULL;
    r = mig_result_error("08006", "cannot connect to store \"%s\": %s", env->store_names[idx],
                         err ? err : "stopping");
    free(err);
    return r;
}

/* ---- SHOW ROUTES ----------------------------------------------------------------- */

static mig_result_t *show_routes(const mig_env_t *env, PGconn **control)
{
    static const char *const cols[] = { "tenant", "store", "state", "migration_id", "version" };
    mig_result_t *fail, *r;
    PGresult *res;

    res = mig_control_exec(env, control,
                           "SELECT tenant, store, state, migration_id, version FROM pgshift.routes "
                           "ORDER BY tenant",
                           0, NULL, &fail);
    if (res == NULL)
        return fail;
    r = mig_result_new("SHOW", CM_ARRAY_LEN(cols), cols);
    for (int i = 0; i < PQntuples(res); i++) {
        const char *cells[5];

        for (int j = 0; j < 5; j++)
            cells[j] = PQgetisnull(res, i, j) ? NULL : PQgetvalue(res, i, j);
        mig_result_add_row(r, cells);
    }
    PQclear(res);
    return r;
}

/* ---- SHOW TENANTS ---------------------------------------------------------------- */

/* One fact about a tenant: a route (store_idx < 0) or a row count on a store. */
typedef struct tenant_fact {
    char *tenant;
    int store_idx;      /* -1: route fact */
    long long rows;     /* count fact */
    const char *store;  /* route fact: borrowed from the PGresult */
    const char *state;  /* route fact */
    const char *mig_id; /* route fact, NULL if none */
} tenant_fact_t;

typedef struct fact_list {
    tenant_fact_t *v;
    size_t n, cap;
} fact_list_t;

static tenant_fact_t *fact_add(fact_list_t *l, const char *tenant)
{
    tenant_fact_t *f;

    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->v = cm_xrealloc(l->v, l->cap * sizeof(*l->v));
    }
    f = &l->v[l->n++];
    memset(f, 0, sizeof(*f));
    f->tenant = cm_xstrdup(tenant);
    f->store_idx = -1;
    return f;
}

static int fact_cmp(const void *a, const void *b)
{
    const tenant_fact_t *x = a, *y = b;
    int c = strcmp(x->tenant, y->tenant);

    if (c != 0)
        return c;
    return (x->store_idx > y->store_idx) - (x->store_idx < y->store_idx);
}

/*
 * Add one count fact per tenant found in the tenant tables of store idx.
 * Returns false when the store could not be counted (then its counts are
 * unknown, not zero).
 */
static bool count_store(const mig_env_t *env, int idx, fact_list_t *facts)
{
    PGconn *c = NULL;
    PGresult *res;
    mig_result_t *fail = mig_connect_store(env, idx, &c);
    bool ok = true;

    if (fail != NULL) {
        mig_result_free(fail);
        return false;
    }
    res = mig_pq_exec(c, env->latch, QUERY_TIMEOUT_MS,
                      "SET statement_timeout = " TENANT_COUNT_TIMEOUT_MS, 0, NULL);
    if (res == NULL || !mig_pq_ok(res))
        ok = false;
    PQclear(res);
    for (size_t t = 0; ok && t < env->n_tables; t++) {
        char *tab = mig_quote_table(c, env->tables[t]);
        char *col = mig_quote_ident(c, env->tenant_column);
        char *sql = cm_xasprintf("SELECT %s::text, count(*) FROM %s WHERE %s IS NOT NULL "
                                 "GROUP BY 1 ORDER BY 1 LIMIT %d",
                                 col, tab, col, MAX_TENANTS_PER_TABLE);

        res = mig_pq_exec(c, env->latch, QUERY_TIMEOUT_MS, sql, 0, NULL);
        free(sql);
        free(col);
        free(tab);
        if (res == NULL) {
            ok = false;
        } else if (mig_pq_ok(res)) {
            for (int i = 0; i < PQntuples(res); i++) {
                tenant_fact_t *f = fact_add(facts, PQgetvalue(res, i, 0));

                f->store_idx = idx;
                f->rows = strtoll(PQgetvalue(res, i, 1), NULL, 10);
            }
        } else if (!mig_is_no_rows_error(res)) {
            ok = false; /* statement timeout, permissions, ...: unknown */
        }
        PQclear(res);
    }
    PQfinish(c);
    return ok;
}

static mig_result_t *show_tenants(const mig_env_t *env, PGconn **control)
{
    mig_result_t *fail, *r;
    PGresult *routes;
    fact_list_t facts = { 0 };
    bool *store_ok = cm_xcalloc(env->n_stores, sizeof(bool));
    size_t n_cols = 5 + env->n_stores;
    const char **cells = cm_xcalloc(n_cols, sizeof(char *));
    char **owned = cm_xcalloc(n_cols, sizeof(char *));

    routes = mig_control_exec(env, control,
                              "SELECT tenant, store, state, migration_id::text FROM pgshift.routes",
                              0, NULL, &fail);
    if (routes == NULL) {
        r = fail;
        goto out;
    }
    for (int i = 0; i < PQntuples(routes); i++) {
        tenant_fact_t *f = fact_add(&facts, PQgetvalue(routes, i, 0));

        f->store = PQgetvalue(routes, i, 1);
        f->state = PQgetvalue(routes, i, 2);
        f->mig_id = PQgetisnull(routes, i, 3) ? NULL : PQgetvalue(routes, i, 3);
    }
    for (size_t s = 0; s < env->n_stores; s++)
        store_ok[s] = count_store(env, (int)s, &facts);
    qsort(facts.v, facts.n, sizeof(*facts.v), fact_cmp);

    r = mig_result_new("SHOW", 0, NULL);
    mig_result_add_col(r, "tenant");
    mig_result_add_col(r, "store");
    mig_result_add_col(r, "state");
    mig_result_add_col(r, "migration_id");
    mig_result_add_col(r, "rows");
    for (size_t s = 0; s < env->n_stores; s++) {
        char *name = cm_xasprintf("rows_%s", env->store_names[s]);

        mig_result_add_col(r, name);
        free(name);
    }
    /* Facts are sorted by tenant, the route fact (store_idx -1) first. */
    for (size_t i = 0; i < facts.n;) {
        size_t j = i;
        const tenant_fact_t *route = facts.v[i].store_idx < 0 ? &facts.v[i] : NULL;
        const char *store = route ? route->store : env->default_store;
        int own = mig_env_store_index(env, store);
        long long *counts = cm_xcalloc(env->n_stores, sizeof(long long));

        while (j < facts.n && strcmp(facts.v[j].tenant, facts.v[i].tenant) == 0) {
            if (facts.v[j].store_idx >= 0)
                counts[facts.v[j].store_idx] += facts.v[j].rows;
            j++;
        }
        cells[0] = facts.v[i].tenant;
        cells[1] = store;
        cells[2] = route ? route->state : "normal";
        cells[3] = route ? route->mig_id : NULL;
        for (size_t s = 0; s < env->n_stores; s++) {
            free(owned[5 + s]);
            owned[5 + s] = store_ok[s] ? cm_xasprintf("%lld", counts[s]) : NULL;
            cells[5 + s] = owned[5 + s];
        }
        cells[4] = own >= 0 ? cells[5 + own] : NULL;
        mig_result_add_row(r, cells);
        free(counts);
        i = j;
    }

out:
    for (size_t i = 0; i < facts.n; i++)
        free(facts.v[i].tenant);
    free(facts.v);
    for (size_t i = 0; i < n_cols; i++)
        free(owned[i]);
    free(owned);
    free(cells);
    free(store_ok);
    PQclear(routes);
    return r;
}

/* ---- ROUTE TENANT ---------------------------------------------------------------- */

/*
 * Look for rows of tenant in every tenant table of store idx. Returns NULL
 * when there are none, else an error result saying where they are (or why
 * the store could not be checked).
 */
static mig_result_t *refuse_if_rows(const mig_env_t *env, int idx, const char *tenant)
{
    PGconn *c = NULL;
    mig_result_t *r = mig_connect_store(env, idx, &c);

    if (r != NULL)
        return r;
    for (size_t t = 0; r == NULL && t < env->n_tables; t++) {
        char *tab = mig_quote_table(c, env->tables[t]);
        char *col = mig_quote_ident(c, env->tenant_column);
        char *sql = cm_xasprintf("SELECT EXISTS (SELECT 1 FROM %s WHERE %s = $1)", tab, col);
        const char *params[] = { tenant };
        PGresult *res = mig_pq_exec(c, env->latch, QUERY_TIMEOUT_MS, sql, 1, params);

        if (res == NULL) {
            char *m = mig_pq_errmsg(c, NULL);

            r = mig_result_error("08006", "lost store \"%s\": %s", env->store_names[idx], m);
            free(m);
        } else if (mig_pq_ok(res)) {
            if (strcmp(PQgetvalue(res, 0, 0), "t") == 0)
                r = mig_result_error("55000",
                                     "tenant \"%s\" has rows in table \"%s\" on store \"%s\": "
                                     "use MIGRATE TENANT to move a tenant that has data",
                                     tenant, env->tables[t], env->store_names[idx]);
        } else if (!mig_is_no_rows_error(res)) {
            char *m = mig_pq_errmsg(c, res);

            r = mig_result_error("55000", "cannot check table \"%s\" on store \"%s\": %s",
                                 env->tables[t], env->store_names[idx], m);
            free(m);
        }
        PQclear(res);
        free(sql);
        free(col);
        free(tab);
    }
    PQfinish(c);
    return r;
}

static mig_result_t *route_tenant(const mig_env_t *env, PGconn **control, const char *tenant,
                                  const char *store)
{
    static const char *const cols[] = { "tenant", "store", "version" };
    const char *params[] = { tenant, store };
    mig_result_t *fail, *r;
    PGresult *res;
    char *current;
    int target = mig_env_store_index(env, store), cur;

    if (target < 0)
        return mig_result_error("42704", "store \"%s\" does not exist", store);
    res = mig_control_exec(env, control,
                           "SELECT r.store, r.state, "
                           "       (SELECT min(id) FROM pgshift.migrations m WHERE m.tenant = $1 "
                           "        AND (m.phase NOT IN " TERMINAL_SQL " "
                           "        OR (m.cleanup_pending AND m.target_store = $2))) "
                           "FROM (SELECT 1) one LEFT JOIN pgshift.routes r ON r.tenant = $1",
                           2, params, &fail);
    if (res == NULL)
        return fail;
    if (!PQgetisnull(res, 0, 2) ||
        (!PQgetisnull(res, 0, 1) && strcmp(PQgetvalue(res, 0, 1), "normal") != 0)) {
        /* (or an ended migration's runner still removes its rows from that store) */
        r = mig_result_error("55000", "tenant \"%s\" is being migrated", tenant);
        PQclear(res);
        return r;
    }
    current = cm_xstrdup(PQgetisnull(res, 0, 0) ? env->default_store : PQgetvalue(res, 0, 0));
    PQclear(res);
    cur = mig_env_store_index(env, current);
    if (cur < 0) {
        r = mig_result_error("55000", "tenant \"%s\" is on store \"%s\", which is not configured",
                             tenant, current);
        free(current);
        return r;
    }
    free(current);
    r = refuse_if_rows(env, cur, tenant);
    if (r == NULL && target != cur)
        r = refuse_if_rows(env, target, tenant);
    if (r != NULL)
        return r;
    /* The state guard repeats the check above against a MIGRATE that raced us. */
    res = mig_control_exec(env, control,
                           "INSERT INTO pgshift.routes AS r (tenant, store) "
                           "SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM pgshift.migrations m "
                           "    WHERE m.tenant = $1 AND (m.phase NOT IN " TERMINAL_SQL " "
                           "    OR (m.cleanup_pending AND m.target_store = $2))) "
                           "ON CONFLICT (tenant) DO UPDATE SET store = EXCLUDED.store, "
                           "    version = r.version + 1, updated_at = now() "
                           "    WHERE r.state = 'normal' "
                           "RETURNING tenant, store, version::text",
                           2, params, &fail);
    if (res == NULL)
        return fail;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return mig_result_error("55000", "tenant \"%s\" is being migrated", tenant);
    }
    r = mig_result_new("ROUTE", CM_ARRAY_LEN(cols), cols);
    {
        const char *cells[] = { PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
                                PQgetvalue(res, 0, 2) };

        mig_result_add_row(r, cells);
    }
    PQclear(res);
    return r;
}

mig_result_t *mig_admin_execute(const mig_env_t *env, PGconn **control, const mig_request_t *req)
{
    switch (req->kind) {
    case MIG_CMD_SHOW_ROUTES:
        return show_routes(env, control);
    case MIG_CMD_SHOW_TENANTS:
        return show_tenants(env, control);
    case MIG_CMD_ROUTE_TENANT:
        return route_tenant(env, control, req->tenant, req->store);
    case MIG_CMD_MIGRATE:
    case MIG_CMD_SHOW_MIGRATIONS:
    case MIG_CMD_SHOW_MIGRATION:
    case MIG_CMD_PAUSE_MIGRATION:
    case MIG_CMD_RESUME_MIGRATION:
    case MIG_CMD_ABORT_MIGRATION:
    case MIG_CMD_SHOW_AUDIT:
    case MIG_CMD_CUTOVER:
    case MIG_CMD_VERIFY:
        return mig_migration_execute(env, control, req);
    case MIG_CMD_LOOKUP_KEY:      /* the lookup worker's, never queued here */
    case MIG_CMD_WATCH_MIGRATION: /* the watch worker's */
    default:
        BUG_ON(1, "bad command kind %d", (int)req->kind);
    }
    return NULL;
}
