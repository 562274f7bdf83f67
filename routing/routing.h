/*
 * routing/routing.h - tenant routing as pure functions: classify SQL text,
 * cache classifications, keep the route table, and decide where a statement
 * goes.
 *
 * Nothing here does I/O, reads a clock, logs or keeps a global. The proxy
 * feeds it text, Bind values and session state and acts on the decision.
 * Only routing/classify.c knows libpg_query.
 *
 * Threads: route_table_t snapshots may be shared between threads (atomic
 * refcounts; frozen tables are immutable). Everything else (route_class_t
 * refcounts, route_cache_t, route_aggmap_t) belongs to one thread, the loop.
 */
#ifndef PGSHIFT_ROUTING_H
#define PGSHIFT_ROUTING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/cm.h"

/* ------------------------------------------------------------------------
 * Tenancy: which tables hold tenant data and which columns matter.
 * ------------------------------------------------------------------------ */

typedef struct route_tenancy {
    char **tables;         /* tenant tables, lower case; "table" or "schema.table" */
    size_t n_tables;       /* */
    char *tenant_column;   /* "tenant_id" */
    char **key_columns;    /* columns whose value implies a tenant: "aggregate_id" */
    size_t n_key_columns;  /* */
    char *position_column; /* "global_position" */
    char *row_key;         /* "event_id" */
    char *tenant_setting;  /* "pgshift.tenant" */
} route_tenancy_t;

/*
 * Fill *t from the [tenancy] strings as written in the config (comma
 * separated lists, blanks ignored, folded to lower case like unquoted SQL
 * identifiers). NULL or "" selects the event-store default of each field.
 * Borrows its arguments; free with route_tenancy_destroy().
 */
void route_tenancy_init(route_tenancy_t *t, const char *tables_csv, const char *tenant_column,
                        const char *key_columns_csv, const char *position_column,
                        const char *row_key);
void route_tenancy_destroy(route_tenancy_t *t);

/* ------------------------------------------------------------------------
 * Classification of SQL text.
 * ------------------------------------------------------------------------ */

typedef enum route_kind {
    ROUTE_KIND_UNKNOWN,       /* unparseable: send to the bound / default store */
    ROUTE_KIND_READ,          /* SELECT, VALUES, TABLE, EXPLAIN SELECT */
    ROUTE_KIND_WRITE,         /* INSERT, UPDATE, DELETE, MERGE, TRUNCATE, writable CTE */
    ROUTE_KIND_TXN_BEGIN,     /* BEGIN, START TRANSACTION */
    ROUTE_KIND_TXN_COMMIT,    /* COMMIT, END, PREPARE TRANSACTION (ends the block) */
    ROUTE_KIND_TXN_ROLLBACK,  /* ROLLBACK, ABORT */
    ROUTE_KIND_TXN_OTHER,     /* SAVEPOINT, RELEASE, ROLLBACK TO, SET TRANSACTION, SET
                                 CONSTRAINTS, COMMIT/ROLLBACK PREPARED */
    ROUTE_KIND_SESSION_SET,   /* sets or resets the tenant setting; see route_stmt.set_op */
    ROUTE_KIND_SESSION_OTHER, /* SET, RESET, SHOW, DISCARD, LISTEN, UNLISTEN, NOTIFY */
    ROUTE_KIND_DDL,           /* CREATE, ALTER, DROP, GRANT, COMMENT, SELECT INTO, ... */
    ROUTE_KIND_UTILITY,       /* VACUUM, LOCK, DO, CALL, PREPARE, EXECUTE, ... */
    ROUTE_KIND_COPY_IN,       /* COPY ... FROM */
    ROUTE_KIND_COPY_OUT,      /* COPY ... TO */
} route_kind_t;

const char *route_kind_str(route_kind_t k);

typedef enum route_val_kind {
    ROUTE_VAL_NONE = 0, /* no value (zero-filled) */
    ROUTE_VAL_LITERAL,  /* text holds the constant; UUID-shaped text in canonical form */
    ROUTE_VAL_PARAM,    /* param is the 1-based $n, resolved from the Bind */
    ROUTE_VAL_NULL,     /* SQL NULL: no tenant */
    ROUTE_VAL_EXPR,     /* DEFAULT, a function call, a column, ...: not evaluated */
} route_val_kind_t;

typedef struct route_val {
    route_val_kind_t kind;
    int param;  /* ROUTE_VAL_PARAM: $n, 1-based */
    int column; /* route_stmt.keys: index into route_tenancy_t.key_columns; else 0 */
    char *text; /* ROUTE_VAL_LITERAL: owned by the route_class_t, NUL-terminated */
} route_val_t;

/* One VALUES row of an INSERT into a tenant table that names its columns. */
typedef struct route_row {
    route_val_t tenant;   /* tenant column; NONE when the column list lacks it */
    route_val_t key;      /* first key column present (aggregate_id) */
    route_val_t row_key;  /* row key column (event_id) */
    route_val_t position; /* position column (projection_checkpoints.global_position) */
} route_row_t;

typedef enum route_set_op {
    ROUTE_SET_NONE,   /* the statement does not touch the tenant setting */
    ROUTE_SET_TENANT, /* sets it to set_value (an empty literal is turned into RESET) */
    ROUTE_SET_RESET,  /* RESET, SET ... TO DEFAULT, RESET ALL, DISCARD ALL */
} route_set_op_t;

typedef struct route_stmt {
    route_kind_t kind;
    bool is_write;             /* may change data or schema */
    bool has_returning;        /* RETURNING anywhere */
    bool touches_tenant_table; /* one of tables[] is a tenant table */
    bool has_tenant_info;      /* n_tenants > 0 || n_keys > 0 */
    size_t loc;                /* byte offset of the statement in the text */
    size_t len;                /* its length in bytes; 0 = up to the end */

    size_t n_tables;
    char **tables;      /* relations named, deduplicated; "schema.name" when qualified;
                           a WITH query's name read in FROM appears too */
    const char *target; /* INSERT/UPDATE/DELETE/COPY/TRUNCATE target, one of tables[]; or NULL */

    /*
     * Every tenant value the statement names, deduplicated: tenant_col = X
     * conjuncts of any WHERE / JOIN ON (both sides, casts and qualified names
     * allowed), tenant_col IN (X, ...), an INSERT's VALUES rows, UPDATE ... SET
     * tenant_col = X. Only LITERAL and PARAM values appear here.
     */
    size_t n_tenants;
    route_val_t *tenants;
    /* Same for the key columns (aggregate_id = X). LITERAL and PARAM only. */
    size_t n_keys;
    route_val_t *keys;
    /* INSERT ... VALUES (...) into a tenant table with a column list: one per row. */
    size_t n_rows;
    route_row_t *rows;
    route_val_t position_min; /* position_col > X or >= X in a WHERE (the feed read) */

    /* Session statements. */
    route_set_op_t set_op;
    route_val_t set_value; /* ROUTE_SET_TENANT: the new tenant (LITERAL, or PARAM via set_config) */
    bool set_is_local;     /* SET LOCAL / set_config(..., true): until the transaction ends */
    bool is_tenant_show;   /* SHOW pgshift.tenant */
    bool is_show;          /* SHOW: reads a setting, changes nothing */
    bool is_notify;        /* NOTIFY: sends, leaves no session state */
    bool txn_chain;        /* COMMIT/ROLLBACK AND CHAIN */
    bool pins_session;     /* leaves backend state a pooled server cannot carry to another client:
                              LISTEN, SQL PREPARE, DECLARE ... WITH HOLD, CREATE TEMP ..., LOAD,
                              pg_advisory_lock() and friends (session-level) */
} route_stmt_t;

/* The classification of one query text: one route_stmt_t per statement. */
typedef struct route_class {
    int refcount;   /* route_class_ref / route_class_unref; loop thread only */
    bool is_error;  /* unparseable: n_stmts == 1, stmts[0].kind == ROUTE_KIND_UNKNOWN */
    char *error;    /* owned: libpg_query's message when is_error, else NULL */
    int max_param;  /* highest $n referenced, 0 if none */
    size_t n_stmts; /* 0 for empty text (only blanks, comments, semicolons) */
    route_stmt_t *stmts;
} route_class_t;

/*
 * Classify `len` bytes of SQL (need not be NUL-terminated; parsing stops at
 * a NUL byte). Never fails: unparseable text yields one UNKNOWN statement.
 * Borrows sql and ten. Returns owned, refcount 1; free with route_class_unref.
 */
route_class_t *route_classify(const char *sql, size_t len, const route_tenancy_t *ten);
/*
 * The fast path: the classification of sql[0..len) without the parse tree,
 * or NULL when it cannot prove it (then use route_classify). It answers
 * only for one SELECT, VALUES, TABLE, WITH (read-only), INSERT, UPDATE or
 * DELETE statement of at most ROUTE_FAST_MAX_LEN bytes that names no tenant
 * table, tenant / key / position / row-key column, tenant setting,
 * set_config, session-level advisory lock function, pg_temp schema or $n,
 * with no '"', '$' or '\' anywhere, and that PostgreSQL's grammar accepts
 * (checked with the raw parser, without the JSON output). A non-NULL result
 * equals route_classify's on everything but the table list: n_stmts 1, kind
 * READ or WRITE, is_write, loc, len, max_param 0, no tenants, keys, rows,
 * position, RETURNING, setting or pins_session; tables[] and target are
 * left empty. Borrows sql and ten. Returns owned, refcount 1.
 */
#define ROUTE_FAST_MAX_LEN 1024
route_class_t *route_classify_fast(const char *sql, size_t len, const route_tenancy_t *ten);
route_class_t *route_class_ref(route_class_t *c);
void route_class_unref(route_class_t *c); /* NULL is a no-op */

/* ------------------------------------------------------------------------
 * Classification cache, keyed by the query text.
 * ------------------------------------------------------------------------ */

typedef struct route_cache route_cache_t;

typedef struct route_cache_stats {
    uint64_t hits;
    uint64_t misses; /* texts not in the cache, whether parsed or answered by the fast path */
    uint64_t fast;   /* misses answered by route_classify_fast (never inserted) */
    uint64_t evictions;
    size_t n_entries;
    size_t capacity;
} route_cache_stats_t;

/*
 * A cache of at most `capacity` (>= 1) classifications, least recently used
 * evicted first. Keeps `ten`: it must outlive the cache (make a new cache
 * when the tenancy changes). Returns owned; free with route_cache_free.
 */
route_cache_t *route_cache_new(size_t capacity, const route_tenancy_t *ten);
/* Drops the cache's references; classifications still referenced elsewhere live on. */
void route_cache_free(route_cache_t *c);
/*
 * The classification of sql[0..len), parsed only on a miss (the text is
 * compared in full on a hash hit). A miss first tries route_classify_fast;
 * its answers are not inserted (texts with literals rarely repeat, and they
 * would evict entries that do), so only parsed texts take cache slots.
 * Returns a new reference: the caller route_class_unref()s it, e.g. when its
 * prepared statement is closed.
 */
route_class_t *route_cache_get(route_cache_t *c, const char *sql, size_t len);
route_cache_stats_t route_cache_stats(const route_cache_t *c);

/* ------------------------------------------------------------------------
 * Route table: tenant -> store and migration state. Copy-on-write snapshots.
 * ------------------------------------------------------------------------ */

typedef enum route_state {
    ROUTE_STATE_NORMAL,    /* the tenant lives on `store` */
    ROUTE_STATE_MIGRATING, /* moving from `store` to `target_store`; see phase */
} route_state_t;

typedef enum route_phase {                         /* DESIGN.md "Migration phases" */
                           ROUTE_PHASE_NONE,       /* not migrating */
                           ROUTE_PHASE_PENDING,    /* routes to store */
                           ROUTE_PHASE_BULK_COPY,  /* routes to store */
                           ROUTE_PHASE_DUAL_WRITE, /* routes to store; the migrator mirrors rows */
                           ROUTE_PHASE_CUTOVER, /* new tenant work is held; open tenant transactions
                                                   finish */
                           ROUTE_PHASE_COMPLETED, /* routes to target_store */
                           ROUTE_PHASE_ABORTED,   /* routes to store */
                           ROUTE_PHASE_FAILED,    /* routes to store */
} route_phase_t;

const char *route_state_str(route_state_t s);
const char *route_phase_str(route_phase_t p);

typedef struct route_entry {
    const char *tenant; /* owned by the table, canonical (UUIDs lower case with hyphens) */
    int store;          /* index into the table's stores */
    route_state_t state;
    route_phase_t phase;
    int target_store;        /* MIGRATING: destination; else -1 */
    int64_t version;         /* the control store's version of this route */
    int64_t migration_id;    /* the migration moving the tenant, 0 = none */
    int64_t cutover_attempt; /* CUTOVER: the attempt (1, 2, ...); else 0 */
    /*
     * CUTOVER: the proxy's table generation at which this hold began (see
     * route_table_set_hold_gens). A transaction bound to the tenant's store
     * at an earlier generation began before the hold and is let through;
     * 0 outside CUTOVER.
     */
    uint64_t hold_gen;
} route_entry_t;

typedef struct route_table route_table_t;

/*
 * An empty, mutable table for `n_stores` stores named store_names[i]
 * (copied). Returns owned with refcount 1; route_table_unref frees it.
 */
route_table_t *route_table_new(size_t n_stores, const char *const *store_names);
/* A mutable copy of t (frozen or not) with refcount 1. Borrows t. */
route_table_t *route_table_clone(const route_table_t *t);
/*
 * Insert or replace the route of e->tenant (copied, canonicalised). Only on
 * a table that is not frozen; store indexes must be valid (BUG_ON).
 */
void route_table_put(route_table_t *t, const route_entry_t *e);
/* Remove a tenant's route; returns whether it had one. Not frozen only. */
bool route_table_del(route_table_t *t, const char *tenant);
/* Make t immutable before sharing it (route_table_put/del then BUG_ON). */
void route_table_freeze(route_table_t *t);
/* The route of a tenant (len bytes, canonicalised for the lookup), or NULL. Borrowed from t. */
const route_entry_t *route_table_get(const route_table_t *t, const char *tenant, size_t len);
size_t route_table_len(const route_table_t *t);
const route_entry_t *route_table_at(const route_table_t *t, size_t i); /* i < len, any order */
size_t route_table_n_stores(const route_table_t *t);
const char *route_table_store_name(const route_table_t *t, int store); /* "?" when out of range */
/* The store a route sends to now (COMPLETED -> target_store, else store). */
int route_entry_store(const route_entry_t *e);
/*
 * Give every CUTOVER entry of the mutable table t its hold generation: the
 * one of prev (borrowed, may be NULL) when prev already had the tenant in
 * CUTOVER for the same (migration_id, cutover_attempt), else gen (the
 * generation of the table being installed). Entries in other phases get 0.
 * Returns how many CUTOVER entries t has.
 */
size_t route_table_set_hold_gens(route_table_t *t, const route_table_t *prev, uint64_t gen);
/* Reference counting, atomic: snapshots may cross threads. */
route_table_t *route_table_ref(route_table_t *t);
void route_table_unref(route_table_t *t); /* NULL is a no-op */

/* ------------------------------------------------------------------------
 * Aggregate -> tenant map, learned from rows written through pgshift.
 * ------------------------------------------------------------------------ */

typedef struct route_aggmap route_aggmap_t;

/* At most `capacity` (>= 1) keys; the clock algorithm evicts. Returns owned. */
route_aggmap_t *route_aggmap_new(size_t capacity);
void route_aggmap_free(route_aggmap_t *m);
/*
 * Record key -> tenant (both copied and canonicalised). tenant == NULL records
 * "looked up: no tenant anywhere" (a negative entry), which routes to the
 * default store until a row for the key is learned.
 */
void route_aggmap_learn(route_aggmap_t *m, const char *key, size_t key_len, const char *tenant,
                        size_t tenant_len);
/*
 * Whether the key is known. On true *tenant is the tenant (borrowed until the
 * next learn/forget/free) or NULL for a negative entry. Does not change the map.
 */
bool route_aggmap_get(const route_aggmap_t *m, const char *key, size_t key_len,
                      const char **tenant);
void route_aggmap_forget(route_aggmap_t *m, const char *key, size_t key_len);
size_t route_aggmap_len(const route_aggmap_t *m);

/* ------------------------------------------------------------------------
 * Decision.
 * ------------------------------------------------------------------------ */

/* One Bind parameter, a view into the Bind message. */
typedef struct route_param {
    const uint8_t *data; /* borrowed */
    int32_t len;         /* bytes; -1 = NULL */
    bool is_binary;      /* format code 1 */
    uint32_t type_oid;   /* from Parse / ParameterDescription; 0 = unknown */
} route_param_t;

typedef struct route_params {
    size_t n;
    const route_param_t *v; /* v[i] is $(i+1) */
} route_params_t;

typedef struct route_session {
    const char *tenant;         /* session tenant (NUL-terminated), NULL or "" = none */
    int bound_store;            /* store the open transaction is bound to, -1 = none */
    bool bound_tentative;       /* bound only by a default-store read: it may still move */
    bool in_txn;                /* inside BEGIN ... COMMIT (BEGIN possibly still held back) */
    uint64_t bound_gen;         /* route-table generation when the work on bound_store began
                                   (tentative binding included); compared with hold_gen */
    int default_store;          /* where statements without a tenant go */
    const route_aggmap_t *aggs; /* key -> tenant; NULL = keys are not used */
} route_session_t;

typedef enum route_action {
    ROUTE_ACT_SEND,        /* send to `store` */
    ROUTE_ACT_REFUSE,      /* send nothing; reply ErrorResponse sqlstate / message */
    ROUTE_ACT_HOLD,        /* tenant at cutover: queue until its route changes; see
                              route_decide */
    ROUTE_ACT_NEED_LOOKUP, /* key `key` has no known tenant: look it up, learn, decide again */
    ROUTE_ACT_DEFER,       /* unbound transaction: hold this statement (BEGIN, SAVEPOINT, SET)
                              and replay it on the store the transaction binds to */
    ROUTE_ACT_LOCAL,       /* nothing reached a store: answer it locally (COMMIT/ROLLBACK of a
                              transaction that is still unbound: drop what was deferred) */
} route_action_t;

typedef enum route_reason {
    ROUTE_R_STMT_TENANT,      /* rule 1: the statement's own tenant */
    ROUTE_R_SESSION_TENANT,   /* rule 2: the session tenant */
    ROUTE_R_KEY_TENANT,       /* rule 3: a key whose tenant is known */
    ROUTE_R_KEY_NO_TENANT,    /* rule 3: a key known to have no tenant -> default store */
    ROUTE_R_DEFAULT,          /* rule 4: no tenant at all -> default store */
    ROUTE_R_BOUND,            /* no tenant, inside a bound transaction -> bound store */
    ROUTE_R_REBIND,           /* tentative binding moves to the tenant's store */
    ROUTE_R_UNPARSED,         /* unparseable text -> bound or default store */
    ROUTE_R_TXN_BOUND,        /* transaction control -> bound store */
    ROUTE_R_TXN_DEFER,        /* BEGIN / SAVEPOINT held until the transaction binds */
    ROUTE_R_TXN_LOCAL,        /* COMMIT / ROLLBACK of an unbound transaction */
    ROUTE_R_TXN_NONE,         /* transaction control outside a transaction -> default store */
    ROUTE_R_SESSION_CMD,      /* SET / RESET / LISTEN ... -> bound or default store */
    ROUTE_R_SESSION_DEFER,    /* SET / RESET ... in an unbound transaction: held */
    ROUTE_R_CUTOVER_HOLD,     /* the tenant is at cutover */
    ROUTE_R_KEY_UNKNOWN,      /* NEED_LOOKUP */
    ROUTE_R_TENANT_MISMATCH,  /* REFUSE 42501 */
    ROUTE_R_CROSS_STORE,      /* REFUSE 0A000: transaction bound elsewhere */
    ROUTE_R_ROWS_MULTI_STORE, /* REFUSE 0A000: INSERT rows on different stores */
    ROUTE_R_MULTI_STORE,      /* REFUSE 0A000: statement names tenants on different stores */
    ROUTE_R_VALUE_TOO_LONG,   /* REFUSE 22023: tenant value over ROUTE_VALUE_MAX bytes */
} route_reason_t;

const char *route_action_str(route_action_t a);
const char *route_reason_str(route_reason_t r);

#define ROUTE_VALUE_MAX 255 /* longest tenant / key value the decision carries */

typedef struct route_decision {
    route_action_t action;
    route_reason_t reason;
    int store;      /* SEND: target store index; -1 otherwise */
    bool binds;     /* in a transaction: bind it to `store` (or make a tentative binding firm) */
    bool tentative; /* with binds: a default-store read; a later tenant statement may move it */
    bool rebind;    /* roll the transaction back on sess->bound_store, replay deferred work on
                       `store`, then send: set only when sess->bound_tentative */
    const route_entry_t *route;       /* the tenant's route (borrowed from the table) or NULL;
                                         HOLD: the route at cutover that holds the statement */
    char tenant[ROUTE_VALUE_MAX + 1]; /* the tenant decided, canonical; "" = none; HOLD: the
                                         tenant at cutover */
    char key[ROUTE_VALUE_MAX + 1];    /* NEED_LOOKUP: the key value to look up */
    int key_column;                   /* NEED_LOOKUP: index into route_tenancy_t.key_columns */
    char sqlstate[6];                 /* REFUSE: "42501", "0A000", "22023" */
    char message[320];                /* REFUSE: the primary message */
} route_decision_t;

/*
 * Choose the target of one statement. Same input, same output; borrows all
 * arguments. `bind` holds the statement's resolved $n values, or NULL before
 * a Bind (parameters then count as unknown). DESIGN.md "Routing": statement
 * tenant, else session tenant, else the tenant implied by a key, else the
 * default store; refusals for a tenant contradicting the session tenant
 * (42501), a statement crossing the bound store (0A000) and rows of one
 * statement on several stores (0A000).
 *
 * Cutover: a statement naming (by value, session or key) a tenant whose
 * route is in CUTOVER is HOLD unless the session's transaction is bound,
 * tentatively or not, to that tenant's current store and bound_gen is below
 * the route's hold_gen (the transaction began before the hold: it must
 * finish, or the pause deadlocks on it). Tenants not at cutover never wait.
 */
route_decision_t route_decide(const route_table_t *t, const route_session_t *sess,
                              const route_stmt_t *stmt, const route_params_t *bind);

/*
 * After an INSERT into a tenant table succeeded, learn key -> tenant from its
 * rows (parameters resolved from bind, may be NULL). Returns rows learned.
 */
size_t route_learn_rows(route_aggmap_t *m, const route_stmt_t *stmt, const route_params_t *bind);

/*
 * Canonical UUID text (lower case, 8-4-4-4-12) of any form PostgreSQL's uuid
 * input accepts (upper case, no hyphens, braces). Returns false, out
 * untouched, when s is not a UUID.
 */
bool route_uuid_canon(const char *s, size_t len, char out[37]);

#endif
