/*
 * migrator/migrator_int.h - shared inside migrator/ only: the outbox (threads
 * -> loop), libpq helpers that a stop latch can interrupt, the control schema
 * and the result builders. Never included from outside migrator/ (tests
 * excepted).
 */
#ifndef PGSHIFT_MIGRATOR_INT_H
#define PGSHIFT_MIGRATOR_INT_H

#include <libpq-fe.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <uv.h>

#include "common/cm.h"
#include "migrator/migrator.h"

/* ---- outbox: any thread -> loop thread ---------------------------------- */

/* Runs on the loop thread once per delivered event; takes ownership of ev. */
typedef void (*mig_outbox_deliver_cb)(void *arg, mig_event_t *ev);
typedef void (*mig_outbox_closed_cb)(void *arg);

/*
 * A mutex-protected list of events plus the uv_async_t that wakes the loop.
 * Senders signal only on the empty -> non-empty transition; the async
 * callback steals and delivers the whole list, because signals coalesce.
 * Embedded in its owner; it never moves while open.
 */
typedef struct mig_outbox {
    uv_async_t async; /* loop-owned; data = the outbox */
    uv_mutex_t lock;  /* guards head/tail */
    mig_event_t *head;
    mig_event_t *tail;
    mig_outbox_deliver_cb deliver;
    mig_outbox_closed_cb closed;
    void *arg;
    bool is_closing;    /* loop thread only: deliver nothing more */
    uint64_t n_wakeups; /* loop thread only: async callbacks run (tests) */
} mig_outbox_t;

/* Loop thread. Returns 0 or a negative uv error (then nothing to close). */
int mig_outbox_init(mig_outbox_t *box, uv_loop_t *loop, mig_outbox_deliver_cb deliver, void *arg)
    MUST_CHECK;
/* Any thread. Takes ev. Must not be called once mig_outbox_close has run. */
void mig_outbox_push(mig_outbox_t *box, mig_event_t *ev);
/*
 * Loop thread. Delivers nothing more (also when called from inside deliver),
 * closes the async handle; in its close callback frees what is still queued,
 * destroys the mutex and then calls closed(arg), which may free the owner.
 */
void mig_outbox_close(mig_outbox_t *box, mig_outbox_closed_cb closed);

/* ---- libpq with a stop latch --------------------------------------------- */

/*
 * A stop latch is an eventfd that becomes readable, for good, when the owner
 * stops. Every wait of the helpers below polls it next to the libpq socket,
 * so a stop never waits for a slow server.
 */
int mig_latch_new(void) MUST_CHECK; /* returns the fd or a negative errno */
void mig_latch_set(int fd);
bool mig_latch_is_set(int fd);
/* Sleep up to ms; returns true when the latch was set. */
bool mig_latch_wait(int fd, int ms);

/*
 * Connect with libpq's non-blocking API within timeout_ms. Returns 0 and an
 * owned *out (PQfinish), or -ECONNREFUSED with an owned *err (free()), or
 * -ECANCELED when the latch was set (no *err).
 */
int mig_pq_connect(const char *conninfo, const char *app_name, int latch, int timeout_ms,
                   PGconn **out, char **err) MUST_CHECK;

/*
 * Run sql (one statement when n_params > 0; any number otherwise). Returns
 * the first failed result, else the last result (owned, PQclear); NULL when
 * the connection broke, timeout_ms passed or the latch was set: the caller
 * must then PQfinish the connection.
 */
PGresult *mig_pq_exec(PGconn *c, int latch, int timeout_ms, const char *sql, int n_params,
                      const char *const *params);

/* Wait until c's socket is readable (1), timeout_ms passed (0), or the latch is set or
 * the socket failed (-1). */
int mig_pq_wait_readable(PGconn *c, int latch, int timeout_ms);

/* True when res is PGRES_COMMAND_OK or PGRES_TUPLES_OK. */
bool mig_pq_ok(const PGresult *res);

/* The SQLSTATE of a failed result, "" when absent. */
const char *mig_pq_sqlstate(const PGresult *res);

/* An owned one-line copy of res's (or else c's) error message, without the trailing newline. */
char *mig_pq_errmsg(PGconn *c, const PGresult *res);

/* ---- control schema -------------------------------------------------------- */

#define MIG_SCHEMA_VERSION 4 /* the newest version this build creates */
/* The phases a migration ends in, as an SQL list: "phase NOT IN " TERMINAL_SQL. */
#define TERMINAL_SQL       "('COMPLETED', 'ABORTED', 'FAILED')"
#define MIG_ROUTES_CHANNEL "pgshift_routes"
#define MIG_ACKS_CHANNEL   "pgshift_acks" /* payload: "migration:attempt:process" */
/* A process whose heartbeat is older than this is not waited for by a cutover. */
#define MIG_PROCESS_LEASE_MS 3000

/*
 * Create or upgrade schema pgshift on c in one transaction, under
 * pg_advisory_xact_lock, so concurrent pgshift processes serialise. Returns 0
 * and the version now in place, or -EPROTO with an owned *err, or
 * -ECANCELED/-ECONNRESET when the latch was set or the connection broke (c
 * must then be finished).
 */
int mig_schema_upgrade(PGconn *c, int latch, int *version, char **err) MUST_CHECK;

/* Load the route table. Returns 0 with owned routes (mig_routes_free), else as above. */
int mig_routes_load(PGconn *c, int latch, mig_route_t **routes, size_t *n, char **err) MUST_CHECK;
void mig_routes_free(mig_route_t *routes, size_t n);

/* ---- results --------------------------------------------------------------- */

/* New empty result with the given columns (copied) and tag (copied). */
mig_result_t *mig_result_new(const char *tag, size_t n_cols, const char *const *cols);
/* Add a column; only before the first row. */
void mig_result_add_col(mig_result_t *r, const char *name);
/* Append a row of n_cols cells (copied; NULL = SQL NULL). */
void mig_result_add_row(mig_result_t *r, const char *const *cells);
/* An error result. */
mig_result_t *mig_result_error(const char *sqlstate, const char *fmt, ...) PRINTF_LIKE(2, 3);

/* ---- the control client -------------------------------------------------- */

typedef struct mig_request {
    struct mig_request *next;
    uint64_t id;
    mig_cmd_kind_t kind;
    char *tenant;
    char *store;
    char *user;
    int64_t migration_id;
    char *reason;
    char *key_column;       /* LOOKUP_KEY */
    char *key_value;        /* LOOKUP_KEY */
    char *options;          /* MIGRATE: "key=value,..." */
    atomic_bool *cancelled; /* WATCH: set by the loop (mig_ctl_cancel); owned by the loop */
    int64_t attempt;        /* cutover acknowledgements */
} mig_request_t;

/* What the worker needs to run commands; read-only once the threads run. */
typedef struct mig_env {
    char *control_conninfo;
    size_t n_stores;
    char **store_names;
    char **store_conninfos;
    size_t n_tables;
    char **tables;
    char *tenant_column;
    char *default_store;
    char *position_column;   /* "global_position" */
    char *row_key;           /* "event_id" */
    mig_settings_t defaults; /* [migration] */
    int latch;               /* the owner's stop latch */
    char *process_id;        /* this process in pgshift.processes: "host:pid:random" */
    /*
     * The last drained hold this process acknowledged, MIG_LOCAL_ACK(id,
     * attempt): written by the loop thread at once, so a cutover running in
     * this same process sees its own acknowledgement without waiting for
     * the control store (the one exception to "read-only").
     */
    atomic_ullong local_ack;
    struct mig_outbox *outbox; /* towards the loop: mig_publish_route */
} mig_env_t;

/*
 * Any thread: hand this process's router a route just committed to the
 * control store (copied), without waiting for its NOTIFY and reload.
 * sent_us is cm_now_us() taken before the committing statement was sent:
 * the route stays in force until a load that began after that. A load that
 * began before cannot have seen the commit; one that began after may not
 * have either, and then the NOTIFY's reload brings the route - never
 * anything older than the control store says after that reload.
 */
void mig_publish_route(const mig_env_t *env, const mig_route_t *route, uint64_t sent_us);
/*
 * The routes in force in this process: the last ones loaded from the
 * control store, and on top of them the routes its runners published
 * (mig_publish_route). A published route stays in force until a load that
 * began after its committing statement was sent: a load begun before
 * cannot have seen the commit. Loop thread.
 */
typedef struct mig_overlay {
    mig_route_t *routes; /* the last load, sorted by tenant */
    size_t n_routes;
    bool has_routes;   /* a load happened */
    mig_route_t *pins; /* published, one per tenant */
    uint64_t *pins_at_us;
    size_t n_pins;
} mig_overlay_t;

/* A load that began at at_us; takes routes (sorted by tenant). */
void mig_overlay_load(mig_overlay_t *o, mig_route_t *routes, size_t n, uint64_t at_us);
/* A route published at at_us (copied). */
void mig_overlay_publish(mig_overlay_t *o, const mig_route_t *route, uint64_t at_us);
/* The routes in force, sorted by tenant, owned; NULL before the first load. */
mig_route_t *mig_overlay_routes(const mig_overlay_t *o, size_t *n);
void mig_overlay_free(mig_overlay_t *o);

/* A deep copy of src into *dst; mig_route_clear frees what *r owns. */
void mig_route_copy(mig_route_t *dst, const mig_route_t *src);
void mig_route_clear(mig_route_t *r);

#define MIG_LOCAL_ACK(id, attempt) \
    (((unsigned long long)(id) << 20) | ((unsigned long long)(attempt)&0xfffff))

/* Run one request on the worker thread; *control is the worker's lazily (re)connected
 * control connection. Returns an owned result. */
mig_result_t *mig_admin_execute(const mig_env_t *env, PGconn **control, const mig_request_t *req);

/* Index of a store name, or -1. */
int mig_env_store_index(const mig_env_t *env, const char *name);

/* A table name quoted as an identifier ("schema"."table" when qualified). Owned. */
char *mig_quote_table(PGconn *c, const char *table);
/* An identifier quoted for SQL. Owned. */
char *mig_quote_ident(PGconn *c, const char *name);

/*
 * SQL: whether column a (pg_attribute, with its default d from a LEFT JOIN of
 * pg_attrdef) is filled from a sequence. A tenant table whose position column
 * is, is a position table (positions drawn at insert, the events); one whose
 * position column is a plain value refers to positions (a consumer's
 * checkpoint) and is mirrored as a mutable table, translated in map mode.
 */
#define MIG_SQL_SEQUENCE_FILLED \
    "(a.attidentity <> '' OR coalesce(pg_get_expr(d.adbin, d.adrelid), '') LIKE 'nextval(%')"
#define MIG_SQL_ATTRDEF_JOIN \
    "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "

/* ---- settings (cmd.c) ------------------------------------------------------- */

/* Set one setting by name. Returns 0, or -EINVAL with *err naming the key (owned). */
int mig_settings_set(mig_settings_t *s, const char *key, const char *value, char **err) MUST_CHECK;
/* Apply "key=value,key=value" (NULL or "" = nothing). Same contract. */
int mig_settings_apply_list(mig_settings_t *s, const char *list, char **err) MUST_CHECK;
/* The settings as a JSON object, owned. */
char *mig_settings_json(const mig_settings_t *s);

/* ---- migrations: admin side (migrate.c), on the admin and watch workers ---- */

/* MIGRATE, SHOW MIGRATIONS/MIGRATION/AUDIT, PAUSE/RESUME/ABORT MIGRATION. Owned result. */
mig_result_t *mig_migration_execute(const mig_env_t *env, PGconn **control,
                                    const mig_request_t *req);
/*
 * The SHOW MIGRATION row of migration id (an owned result, maybe an error);
 * *terminal tells whether the migration is COMPLETED/ABORTED/FAILED with
 * nothing left to clean.
 */
mig_result_t *mig_migration_status(const mig_env_t *env, PGconn **control, int64_t id,
                                   bool *terminal);

/* CUTOVER id: asks the migration's runner for a cutover and waits for its outcome. */
mig_result_t *mig_cutover_request(const mig_env_t *env, PGconn **control, const mig_request_t *req);
mig_result_t *mig_verify_request(const mig_env_t *env, PGconn **control, const mig_request_t *req);
/* Control connection helpers shared by admin.c and migrate.c. */
mig_result_t *mig_ensure_control(const mig_env_t *env, PGconn **control);
PGresult *mig_control_exec(const mig_env_t *env, PGconn **control, const char *sql, int n_params,
                           const char *const *params, mig_result_t **fail);
/* Connect store idx (admin use). Returns NULL or an error result. */
mig_result_t *mig_connect_store(const mig_env_t *env, int idx, PGconn **out);
/* True for errors that mean "this tenant cannot have rows here". */
bool mig_is_no_rows_error(const PGresult *res);

/* ---- migrations: the runner (copy.c), one thread per active migration ----- */

/*
 * Which migrations need a runner: not terminal and not yet copied, or
 * terminal with a target still to clean. sql for the listener's sync.
 */
#define MIG_RUNNABLE_SQL                                                         \
    "SELECT id FROM pgshift.migrations WHERE phase IN ('PENDING', 'BULK_COPY', " \
    "'DUAL_WRITE', 'CUTOVER') OR cleanup_pending ORDER BY id"

/*
 * Run migration id until it needs nothing more from this process (copy
 * complete, or cleaned after ABORT/FAILED), or the latch is set. Only one
 * runner in all pgshift processes works on a migration at a time (a session
 * advisory lock on the control store); the others wait for it.
 */
void mig_runner_main(const mig_env_t *env, int64_t id);

/* Wait until c's socket is ready for events (POLLIN/POLLOUT): 1 ready, 0 timeout, -1 latch/error.
 */
int mig_pq_wait(PGconn *c, short events, int latch, int timeout_ms);

/* ---- key lookups (lookup.c), on the lookup thread only ------------------- */

/* Per-thread state: one connection per store and the key-column cache. */
typedef struct mig_lookup mig_lookup_t;

/* env is borrowed and must outlive the state. Connects lazily. */
mig_lookup_t *mig_lookup_new(const mig_env_t *env);
void mig_lookup_free(mig_lookup_t *lk);
/* Answer one MIG_CMD_LOOKUP_KEY request: an owned result (never NULL). */
mig_result_t *mig_lookup_execute(mig_lookup_t *lk, const mig_request_t *req);

#endif
