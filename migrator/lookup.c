/*
 * migrator/lookup.c - MIG_CMD_LOOKUP_KEY: which tenant owns a key (e.g. an
 * aggregate_id), for statements that carry no tenant. Runs on the lookup
 * thread of mig_ctl_t, separate from the admin worker, so a lookup never
 * queues behind a slow admin command. It keeps one libpq connection per store
 * (reconnected on failure, with a short back-off so a dead store costs a
 * lookup nothing) and a cache of which tenant table carries which key column
 * on each store (forgotten on errors that show a schema change, and every
 * RESOLVE_TTL_MS).
 *
 * Per store, in order (default store first, then the others as configured):
 * the first tenant table (in [tenancy] order) that has both the key column and
 * the tenant column is asked
 *     SELECT tenant_column::text FROM table WHERE key_column = $1 LIMIT 1
 * with the key as an untyped text parameter, so PostgreSQL casts it to the
 * column's type. A key that is not valid for that type (22P02, ...) cannot be
 * on that store: no row. The first row found answers (its tenant may be SQL
 * NULL); no row anywhere answers NULL; a store that cannot be asked makes the
 * lookup fail only if no other store had the key.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "migrator/migrator_int.h"

#define LOG_CTX            "lookup"
#define CONNECT_TIMEOUT_MS 3000
#define QUERY_TIMEOUT_MS   5000
#define RETRY_AFTER_MS     1000  /* a store that just failed is not retried sooner */
#define RESOLVE_TTL_MS     30000 /* which table has a key column is asked again this often */

#define TABLE_UNKNOWN (-2) /* not resolved yet on this connection */
#define TABLE_NONE    (-1) /* no tenant table has the column */

typedef struct lk_col {
    char *column;
    int table; /* index into env->tables, TABLE_NONE or TABLE_UNKNOWN */
    char *sql; /* the lookup query for that table; NULL until resolved */
    uint64_t resolved_at;
} lk_col_t;

typedef struct lk_store {
    PGconn *conn;
    uint64_t retry_at; /* cm_now_ms() before which a failed store is not retried */
    char *last_error;  /* owned: why it failed last */
    size_t n_cols;
    lk_col_t *cols;
} lk_store_t;

struct mig_lookup {
    const mig_env_t *env;
    lk_store_t *stores; /* env->n_stores */
    size_t *order;      /* store indexes: the default store first */
};

mig_lookup_t *mig_lookup_new(const mig_env_t *env)
{
    mig_lookup_t *lk = cm_xcalloc(1, sizeof(*lk));
    int def = mig_env_store_index(env, env->default_store);
    size_t k = 0;

    lk->env = env;
    lk->stores = cm_xcalloc(env->n_stores ? env->n_stores : 1, sizeof(*lk->stores));
    lk->order = cm_xcalloc(env->n_stores ? env->n_stores : 1, sizeof(*lk->order));
    if (def >= 0)
        lk->order[k++] = (size_t)def;
    for (size_t i = 0; i < env->n_stores; i++)
        if ((int)i != def)
            lk->order[k++] = i;
    return lk;
}

/* Forget the resolved tables (the connection changed or the schema did). */
static void store_forget(lk_store_t *s)
{
    for (size_t i = 0; i < s->n_cols; i++) {
        s->cols[i].table = TABLE_UNKNOWN;
        free(s->cols[i].sql);
        s->cols[i].sql = NULL;
    }
}

static void store_drop(lk_store_t *s, char *why)
{
    if (s->conn != NULL)
        PQfinish(s->conn);
    s->conn = NULL;
    s->retry_at = cm_now_ms() + RETRY_AFTER_MS;
    free(s->last_error);
    s->last_error = why;
    store_forget(s);
}

void mig_lookup_free(mig_lookup_t *lk)
{
    if (lk == NULL)
        return;
    for (size_t i = 0; i < lk->env->n_stores; i++) {
        lk_store_t *s = &lk->stores[i];

        store_forget(s);
        if (s->conn != NULL)
            PQfinish(s->conn);
        for (size_t c = 0; c < s->n_cols; c++)
            free(s->cols[c].column);
        free(s->cols);
        free(s->last_error);
    }
    free(lk->stores);
    free(lk->order);
    free(lk);
}

/* Connected store idx, or NULL (s->last_error says why). */
static PGconn *store_conn(mig_lookup_t *lk, size_t idx)
{
    const mig_env_t *env = lk->env;
    lk_store_t *s = &lk->stores[idx];
    char *err = NULL;
    int rc;

    if (s->conn != NULL && PQstatus(s->conn) == CONNECTION_OK)
        return s->conn;
    if (s->conn != NULL)
        store_drop(s, cm_xstrdup("connection lost"));
    if (cm_now_ms() < s->retry_at)
        return NULL;
    rc = mig_pq_connect(env->store_conninfos[idx], "pgshift-lookup", env->latch, CONNECT_TIMEOUT_MS,
                        &s->conn, &err);
    if (rc != 0) {
        s->conn = NULL;
        store_drop(s, err != NULL ? err : cm_xstrdup("stopping"));
        return NULL;
    }
    return s->conn;
}

static lk_col_t *store_col(lk_store_t *s, const char *column)
{
    for (size_t i = 0; i < s->n_cols; i++)
        if (strcmp(s->cols[i].column, column) == 0)
            return &s->cols[i];
    s->cols = cm_xrealloc(s->cols, (s->n_cols + 1) * sizeof(*s->cols));
    s->cols[s->n_cols] = (lk_col_t){ .column = cm_xstrdup(column), .table = TABLE_UNKNOWN };
    return &s->cols[s->n_cols++];
}

/*
 * Find the first tenant table of store idx that has both the key column and
 * the tenant column. Returns 0 (col->table set, maybe TABLE_NONE) or -1 when
 * the store failed (dropped).
 */
static int resolve_col(mig_lookup_t *lk, size_t idx, PGconn *c, lk_col_t *col)
{
    const mig_env_t *env = lk->env;

    col->resolved_at = cm_now_ms();
    for (size_t t = 0; t < env->n_tables; t++) {
        char *qt = mig_quote_table(c, env->tables[t]);
        const char *params[] = { qt, col->column, env->tenant_column };
        PGresult *res =
            mig_pq_exec(c, env->latch, QUERY_TIMEOUT_MS,
                        "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass($1) "
                        "AND attname IN ($2, $3) AND attnum > 0 AND NOT attisdropped",
                        3, params);
        bool has;

        free(qt);
        if (res == NULL || !mig_pq_ok(res)) {
            store_drop(&lk->stores[idx], mig_pq_errmsg(c, res));
            PQclear(res);
            return -1;
        }
        /* Both columns, or the key column is the tenant column itself. */
        has = atoi(PQgetvalue(res, 0, 0)) == (strcmp(col->column, env->tenant_column) == 0 ? 1 : 2);
        PQclear(res);
        if (has) {
            char *tab = mig_quote_table(c, env->tables[t]);
            char *key = mig_quote_ident(c, col->column);
            char *ten = mig_quote_ident(c, env->tenant_column);

            col->table = (int)t;
            col->sql = cm_xasprintf("SELECT %s::text FROM %s WHERE %s = $1 LIMIT 1", ten, tab, key);
            free(tab);
            free(key);
            free(ten);
            return 0;
        }
    }
    col->table = TABLE_NONE;
    return 0;
}

/* True for errors that mean "this key cannot be in that column": a bad value for its type. */
static bool is_bad_value(const char *st)
{
    return strncmp(st, "22", 2) == 0; /* data exception: 22P02, 22003, 22007, 22008, ... */
}

typedef enum lk_rc {
    LK_FOUND,   /* *tenant set (NULL = SQL NULL tenant) */
    LK_ABSENT,  /* the store has no row with that key */
    LK_FAILED,  /* the store could not be asked */
    LK_STOPPED, /* the latch is set */
} lk_rc_t;

static lk_rc_t ask_store(mig_lookup_t *lk, size_t idx, const char *column, const char *value,
                         char **tenant)
{
    lk_store_t *s = &lk->stores[idx];

    for (int attempt = 0; attempt < 2; attempt++) {
        PGconn *c = store_conn(lk, idx);
        lk_col_t *col;
        PGresult *res;
        const char *params[] = { value };
        const char *st;

        if (c == NULL)
            return mig_latch_is_set(lk->env->latch) ? LK_STOPPED : LK_FAILED;
        col = store_col(s, column);
        if (col->table != TABLE_UNKNOWN && cm_now_ms() - col->resolved_at > RESOLVE_TTL_MS) {
            col->table = TABLE_UNKNOWN; /* a column may have appeared in an earlier table */
            free(col->sql);
            col->sql = NULL;
        }
        if (col->table == TABLE_UNKNOWN && resolve_col(lk, idx, c, col) != 0)
            continue; /* dropped: one reconnect */
        if (col->table == TABLE_NONE)
            return LK_ABSENT;
        res = mig_pq_exec(c, lk->env->latch, QUERY_TIMEOUT_MS, col->sql, 1, params);
        if (res == NULL) {
            store_drop(s, mig_pq_errmsg(c, NULL));
            if (mig_latch_is_set(lk->env->latch))
                return LK_STOPPED;
            continue;
        }
        if (mig_pq_ok(res)) {
            lk_rc_t rc = LK_ABSENT;

            if (PQntuples(res) > 0) {
                *tenant = PQgetisnull(res, 0, 0) ? NULL : cm_xstrdup(PQgetvalue(res, 0, 0));
                rc = LK_FOUND;
            }
            PQclear(res);
            return rc;
        }
        st = mig_pq_sqlstate(res);
        if (is_bad_value(st)) {
            PQclear(res);
            return LK_ABSENT;
        }
        if (strcmp(st, "42P01") == 0 || strcmp(st, "42703") == 0 || strcmp(st, "3F000") == 0) {
            /* The schema changed under us: resolve again. */
            PQclear(res);
            store_forget(s);
            continue;
        }
        free(s->last_error);
        s->last_error = mig_pq_errmsg(c, res);
        PQclear(res);
        if (PQstatus(c) != CONNECTION_OK)
            store_drop(s, cm_xstrdup(s->last_error));
        return LK_FAILED;
    }
    return LK_FAILED;
}

mig_result_t *mig_lookup_execute(mig_lookup_t *lk, const mig_request_t *req)
{
    static const char *const cols[] = { "key", "tenant" };
    const mig_env_t *env = lk->env;
    char *tenant = NULL, *failed = NULL;
    bool found = false;
    mig_result_t *r;

    BUG_ON(req->key_column == NULL || req->key_value == NULL, "LOOKUP_KEY without key");
    for (size_t k = 0; k < env->n_stores && !found; k++) {
        size_t idx = lk->order[k];

        switch (ask_store(lk, idx, req->key_column, req->key_value, &tenant)) {
        case LK_FOUND:
            found = true;
            break;
        case LK_ABSENT:
            break;
        case LK_STOPPED:
            free(failed);
            return mig_result_error("57P01", "pgshift is stopping");
        case LK_FAILED:
            if (failed == NULL) {
                const char *why = lk->stores[idx].last_error;

                failed = cm_xasprintf("store \"%s\": %s", env->store_names[idx],
                                      why != NULL ? why : "unreachable");
            }
            break;
        }
    }
    if (!found && failed != NULL) {
        r = mig_result_error("08006", "cannot look up %s = %s: %s", req->key_column, req->key_value,
                             failed);
        free(failed);
        return r;
    }
    free(failed);
    r = mig_result_new("LOOKUP", CM_ARRAY_LEN(cols), cols);
    {
        const char *cells[] = { req->key_value, found ? tenant : NULL };

        mig_result_add_row(r, cells);
    }
    LOG_DEBUG(LOG_CTX, "%s = %s -> %s", req->key_column, req->key_value,
              found && tenant != NULL ? tenant : "no tenant");
    free(tenant);
    return r;
}
