/*
 * migrator/migrator.h - the migrator's public face: the control store
 * (schema pgshift: routes, migrations, audit log), its LISTEN/NOTIFY feed of
 * route changes, the admin commands that need blocking libpq, key lookups for
 * routing, and migrations (issue #4: PENDING -> BULK_COPY and the resumable
 * bulk copy, whose hand-over contract with dual-write is described at the top
 * of migrator/copy.c).
 *
 * Migrations and routes: MIGRATE records the migration and sets the tenant's
 * route to state "migrating" (store = the source, phase/target_store from the
 * migration); while PENDING and BULK_COPY the tenant keeps routing to its
 * source. Every phase change is written to the control store (and audited)
 * before it takes effect, and reaches every pgshift process as MIG_EV_ROUTES.
 *
 * Threads: every blocking call runs on threads owned by mig_ctl_t. Those
 * threads never touch the loop; they hand heap-allocated mig_event_t values
 * to the loop thread through an outbox and a uv_async_t that mig_ctl_t owns.
 * Every function of this header is called on the loop thread, and every
 * callback runs on the loop thread.
 */
#ifndef PGSHIFT_MIGRATOR_H
#define PGSHIFT_MIGRATOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/cm.h"

/*
 * A result set for the admin console. The loop turns it into RowDescription
 * (only when n_cols > 0), DataRow * n_rows and CommandComplete(tag); or, when
 * err_sqlstate is set, into one ErrorResponse (then n_cols == n_rows == 0).
 * All cells are text.
 *
 * Streaming (WATCH MIGRATION): one request may be answered by several
 * MIG_EV_REPLY events with the same cookie. Every one but the last has
 * more == true; together they are ONE result set: each carries the same
 * columns (send the RowDescription once, for the first), its rows are
 * DataRows in order, and the last one (more == false) ends it with
 * CommandComplete(tag) - it may have no rows. An error event (err_sqlstate
 * set) is always the last one (more == false), possibly after rows were
 * streamed. Every other command answers with exactly one event, more == false.
 */
typedef struct mig_result {
    size_t n_cols;
    char **cols; /* owned: n_cols column names */
    size_t n_rows;
    char **cells;       /* owned: n_rows * n_cols, row-major; NULL = SQL NULL */
    char *tag;          /* owned: CommandComplete tag, e.g. "SHOW" or "ROUTE"; NULL on error */
    char *err_sqlstate; /* owned: five characters, set on failure */
    char *err_message;  /* owned: primary message, set on failure */
    bool more;          /* another event of this result set follows (WATCH) */
} mig_result_t;

/* Frees r and everything it owns; NULL is fine. */
void mig_result_free(mig_result_t *r);

/* One route as the control store holds it. Every string is owned by the route. */
typedef struct mig_route {
    char *tenant;
    char *store;          /* the store that serves the tenant now */
    char *state;          /* "normal" | "migrating" */
    char *phase;          /* NULL, or the migration's phase: PENDING, BULK_COPY, ... */
    char *target_store;   /* NULL, or the migration's target */
    int64_t migration_id; /* 0 = none */
    int64_t version;      /* bumped on every change of the route */
    /*
     * While phase is CUTOVER: the attempt number (1, 2, ... per migration).
     * Every pgshift process holds new work of the tenant and, once none of
     * its clients is left inside a transaction on the tenant's store that
     * began before the hold, acknowledges with mig_ctl_cutover_ack(m,
     * migration_id, cutover_attempt). 0 in every other phase.
     */
    int64_t cutover_attempt;
} mig_route_t;

typedef enum mig_event_kind {
    MIG_EV_ROUTES,       /* n_routes/routes: the whole current route table */
    MIG_EV_REPLY,        /* cookie/result: the answer to one mig_ctl_request */
    MIG_EV_CONTROL_DOWN, /* lost the control store; the last routes stay valid */
    MIG_EV_CONTROL_UP,   /* reconnected; a fresh MIG_EV_ROUTES follows */
    /*
     * Internal to migrator/, never delivered: one route as a runner of this
     * process just committed it (a cutover's hold, flip or roll-back), ahead
     * of the NOTIFY round trip. It is merged into the routes, and a
     * MIG_EV_ROUTES goes out in its place.
     */
    MIG_EV_ROUTE_PATCH,
} mig_event_kind_t;

typedef struct mig_event {
    struct mig_event *next; /* outbox link; NULL once delivered */
    mig_event_kind_t kind;
    /* MIG_EV_ROUTES: sorted by tenant, owned; MIG_EV_ROUTE_PATCH: one route */
    size_t n_routes;
    mig_route_t *routes;
    uint64_t at_us; /* internal: cm_now_us() when the load began, or the patch was made */
    /* MIG_EV_REPLY */
    void *cookie;         /* as passed to mig_ctl_request */
    mig_result_t *result; /* owned, never NULL for a reply */
    uint64_t request_id;  /* internal: matches the reply to its request */
} mig_event_t;

/* Frees ev and everything it owns (routes, result); NULL is fine. */
void mig_event_free(mig_event_t *ev);

/* Runs on the loop thread; takes ownership of ev (free with mig_event_free). */
typedef void (*mig_event_cb)(void *arg, mig_event_t *ev);

/*
 * Per-migration settings: the [migration] section gives the defaults, and
 * MIGRATE ... WITH (key = value, ...) overrides them for one migration.
 */
typedef struct mig_settings {
    int batch_size;                 /* 1000, 1..1000000 rows per copy batch */
    int max_bulk_copy_rate;         /* 10000 rows/s over all tenant tables, 0 = unlimited */
    int dual_write_timeout_minutes; /* 30, 1..10080 (issue #5) */
    int cutover_max_lag_events;     /* 100 (issue #5) */
    int cutover_timeout_ms;         /* 500, 1..600000 (issue #5) */
    bool position_mapping_enabled;  /* true: map positions when they could collide */
    bool verify_consistency;        /* true (issue #5) */
    bool migrate_subscriptions;     /* true (issue #5) */
    bool auto_cutover;              /* false (issue #5) */
    int dual_write_interval_ms;     /* 20, 1..10000: how often the target is brought up to date */
    int failure_threshold;          /* 5: failed dual-write rounds that open the breaker */
    int recovery_timeout_seconds;   /* 30: an open breaker waits this long before a trial */
    int half_open_max_calls;        /* 1: trial rounds while half open */
} mig_settings_t;

/* The built-in defaults above. */
void mig_settings_default(mig_settings_t *s);

/*
 * Which tables hold tenant data, and where tenants without a route live.
 * From cfg_t: tables = split(tenant_tables, ','), tenant_column,
 * default_store = the resolved default store name, position_column and
 * row_key from [tenancy], defaults from [migration] (cfg->mig_*).
 * Everything is borrowed by mig_ctl_start, which copies it. NULL for
 * position_column / row_key / defaults means "global_position" / "event_id"
 * / mig_settings_default().
 */
typedef struct mig_tenancy {
    size_t n_tables;
    const char *const *tables;      /* "events", or "schema.table" */
    const char *tenant_column;      /* "tenant_id" */
    const char *default_store;      /* must be one of the store names */
    const char *position_column;    /* "global_position" */
    const char *row_key;            /* "event_id" */
    const mig_settings_t *defaults; /* [migration] */
} mig_tenancy_t;

/* Admin commands the migrator executes. */
typedef enum mig_cmd_kind {
    MIG_CMD_SHOW_ROUTES,  /* SHOW ROUTES */
    MIG_CMD_SHOW_TENANTS, /* SHOW TENANTS */
    MIG_CMD_ROUTE_TENANT, /* ROUTE TENANT 'tenant' TO 'store' */
    /*
     * Which tenant owns key_column = key_value (proxy routing). Answered by a
     * lookup thread of its own (never queued behind admin commands) that keeps
     * one connection per store: the stores are asked in order, the default
     * store first, each in its first tenant table that has key_column. The
     * reply has columns (key, tenant) and exactly one row: key_value and the
     * tenant as text, or SQL NULL when no store has the key (or its row has no
     * tenant). err_sqlstate 08006 when a store could not be asked and no
     * other store had the key. Tag "LOOKUP".
     */
    MIG_CMD_LOOKUP_KEY,
    /*
     * MIGRATE TENANT 'tenant' TO 'store' [WITH (key = value, ...)]: checks the
     * preconditions (each refusal changes nothing), records the migration in
     * PENDING and answers (migration_id, tenant, source_store, target_store,
     * phase), tag "MIGRATE". The copy then runs on its own thread. options is
     * the WITH list as "key=value,key=value" (validated by mig_cmd_parse).
     */
    MIG_CMD_MIGRATE,
    MIG_CMD_SHOW_MIGRATIONS,  /* SHOW MIGRATIONS: one row per migration, newest first */
    MIG_CMD_SHOW_MIGRATION,   /* SHOW MIGRATION id: one wide status row (see migrate.c) */
    MIG_CMD_PAUSE_MIGRATION,  /* PAUSE MIGRATION id ['reason'] */
    MIG_CMD_RESUME_MIGRATION, /* RESUME MIGRATION id */
    MIG_CMD_ABORT_MIGRATION,  /* ABORT MIGRATION id ['reason']: answers once the target is clean */
    MIG_CMD_SHOW_AUDIT,       /* SHOW AUDIT id: the audit log of one migration, oldest first */
    /*
     * WATCH MIGRATION id: the SHOW MIGRATION row once a second, streamed
     * (mig_result_t.more) until the migration is terminal (then a last row and
     * more == false, tag "WATCH") or mig_ctl_cancel drops the cookie.
     */
    MIG_CMD_WATCH_MIGRATION,
    /*
     * CUTOVER id: switch a migration in DUAL_WRITE to its target (DESIGN.md,
     * "Migration phases"). Answers one row (migration_id, success, pause_ms,
     * events_synced, error) once the cutover completed or rolled back to
     * DUAL_WRITE; tag "CUTOVER". Refused (55000) when the migration is not
     * ready, with the reason.
     */
    MIG_CMD_CUTOVER,
    /*
     * VERIFY id: run the consistency check of a migration in DUAL_WRITE now
     * (the runner compares the tenant's rows of every position table that
     * are final on both stores, by count and digest). Answers one row
     * (migration_id, passed, rows, detail); tag "VERIFY". With
     * verify_consistency (the default) the cutover waits for a passed check.
     */
    MIG_CMD_VERIFY,
} mig_cmd_kind_t;

/*
 * A parsed admin command. Strings are borrowed: mig_ctl_request copies what
 * it keeps. Fields a kind does not use are NULL / 0.
 */
typedef struct mig_cmd {
    mig_cmd_kind_t kind;
    const char *tenant;     /* ROUTE TENANT, MIGRATE */
    const char *store;      /* ROUTE TENANT, MIGRATE (the target) */
    int64_t migration_id;   /* the ... MIGRATION id and SHOW AUDIT id commands */
    const char *reason;     /* PAUSE / ABORT MIGRATION id 'reason'; may be NULL */
    const char *user;       /* the admin user, for the audit log; may be NULL */
    const char *key_column; /* LOOKUP_KEY: e.g. "aggregate_id" */
    const char *key_value;  /* LOOKUP_KEY: the value, as text */
    const char *options;    /* MIGRATE: "batch_size=500,max_bulk_copy_rate=0", or NULL */
} mig_cmd_t;

/*
 * Parse one admin console statement (keywords case-insensitive, tenant and
 * store as 'quoted' literals or bare identifiers, an optional trailing ';').
 * Returns 0 and fills *out, whose strings point into *storage (owned by the
 * caller, free() it, even on error); 1 when the statement is not a migrator
 * command (nothing allocated; e.g. the proxy's own PAUSE [timeout] and
 * RESUME); -EINVAL for a migrator command with bad syntax or a bad WITH
 * option (the message names the key), with *err an owned message (free()).
 */
int mig_cmd_parse(const char *sql, mig_cmd_t *out, char **storage, char **err) MUST_CHECK;

typedef struct mig_ctl mig_ctl_t;

/*
 * Start the control store client. On the calling thread, and before it
 * returns: connect to control_conninfo (10 s at most), create or upgrade
 * schema pgshift under an advisory lock (safe when several pgshift processes
 * start at once), load the routes and LISTEN on channel pgshift_routes. Then
 * start the threads: a listener that delivers MIG_EV_ROUTES after every
 * change and reconnects with backoff (MIG_EV_CONTROL_DOWN / _UP), a
 * worker that runs mig_ctl_request admin commands one at a time, a lookup
 * worker that answers MIG_CMD_LOOKUP_KEY (its own queue), a watch worker
 * for WATCH MIGRATION, and one runner thread per migration that needs work
 * (started by the listener from the control store, so a restarted pgshift
 * resumes every unfinished migration, and a migration started by another
 * pgshift process is taken over when that process dies; a session advisory
 * lock makes sure only one process copies a migration at a time).
 *
 * The first MIG_EV_ROUTES is delivered on a later loop turn, never during
 * this call. Stores: store_names[i] is reached through store_conninfos[i];
 * everything is borrowed and copied. Returns 0 and *out (stop it with
 * mig_ctl_stop), or a negative errno: -EINVAL for bad arguments,
 * -ECONNREFUSED when the control store is unreachable, -EPROTO when the
 * schema could not be created or read (the reason is logged). On error cb
 * never runs and *out is untouched.
 */
int mig_ctl_start(uv_loop_t *loop, const char *control_conninfo, const char *const *store_names,
                  const char *const *store_conninfos, size_t n_stores, const mig_tenancy_t *tenancy,
                  mig_event_cb cb, void *arg, mig_ctl_t **out) MUST_CHECK;

/*
 * Queue cmd (borrowed, copied) for the worker; never blocks on I/O. Exactly
 * one MIG_EV_REPLY with this cookie follows on a later loop turn, unless the
 * cookie is cancelled with mig_ctl_cancel or the client is stopped first.
 */
void mig_ctl_request(mig_ctl_t *m, const mig_cmd_t *cmd, void *cookie);

/*
 * The proxy drops a cookie (the admin client left): every reply still due for
 * it is freed instead of delivered. Exact even if the cookie's address is
 * reused for a later request, since replies are matched by request, not by
 * address. The proxy never sees a stale cookie after calling this.
 */
void mig_ctl_cancel(mig_ctl_t *m, void *cookie);

/*
 * The proxy has drained tenant work for attempt `attempt` of migration
 * migration_id (see mig_route_t.cutover_attempt): recorded in the control
 * store by a thread of its own (never queued behind admin commands), where
 * the cutover waits for the acknowledgement of every live pgshift process.
 * Idempotent; never blocks; no reply.
 */
void mig_ctl_cutover_ack(mig_ctl_t *m, int64_t migration_id, int64_t attempt);

/*
 * Stop: set the stop flag, wake and join the threads (a blocking call in
 * flight is abandoned, not waited for), then uv_close the async handle; m is
 * freed in its close callback on a later loop turn. Events not yet delivered
 * are freed, and cb is never called again, even if mig_ctl_stop runs inside
 * cb. Call once.
 */
void mig_ctl_stop(mig_ctl_t *m);

#endif
