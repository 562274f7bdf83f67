/*
 * migrator/runner.h - the state of one migration's runner thread, shared by
 * the phases it runs: copy.c (PENDING, BULK_COPY, clean-up) and dualwrite.c
 * (DUAL_WRITE, CUTOVER). Internal to migrator/; everything here runs on the
 * runner thread only.
 */
#ifndef PGSHIFT_MIGRATOR_RUNNER_H
#define PGSHIFT_MIGRATOR_RUNNER_H

#include "migrator/migrator_int.h"

#define RUN_LOCK_CLASS "1885827944" /* 'pgsh': advisory lock class of runners */

typedef enum run_rc {
    RUN_OK,        /* done, or the step finished */
    RUN_RECHECK,   /* the record changed (abort, failure): look at it again */
    RUN_STOP,      /* the latch is set */
    RUN_TRANSIENT, /* an error worth retrying (connection, shutdown, timeout) */
    RUN_PERMANENT, /* an error that retrying will not fix: the migration fails */
} run_rc_t;

typedef struct tab {
    char *name;       /* as configured */
    char *q;          /* quoted */
    bool has_pos;     /* the cursor is the position column (filled from a sequence) */
    bool pos_ref;     /* has the position column as a plain value (a checkpoint) */
    char *mode;       /* preserve | map | assign | translate (pos_ref tables in map mode) */
    char *all_cols;   /* every column, quoted, comma-separated */
    char *copy_cols;  /* the columns written on the target */
    size_t n_key;     /* cursor columns; 0 = one batch */
    char **key_q;     /* quoted */
    char **key_type;  /* format_type */
    char *hi;         /* position tables: the copy's upper bound, NULL = no rows */
    char *last_key;   /* text[] literal of the last copied key, NULL = none yet */
    long long total;  /* rows at the barrier */
    long long copied; /* rows copied (committed on the target) */
    bool done;
    char *stage;       /* map mode: the temporary table on the target */
    char *select_cols; /* translate mode: the columns of a stage row "s", translated */
    bool rk_unique;    /* the target has a unique index on the row key column alone */
    bool keys_written; /* n_key > 0 and every key column is written on the target */
} tab_t;

typedef struct run {
    const mig_env_t *env;
    int64_t id;
    char ids[24];
    PGconn *ctl, *src, *dst;
    bool locked;

    /* the record */
    char *tenant;
    int src_idx, dst_idx;
    char *phase;
    bool paused, cleanup_pending, copy_complete;
    int batch_size;
    int rate; /* rows/s, 0 = unlimited */
    char *position_mode;
    bool migrate_subscriptions; /* false: tables that refer to positions stay behind */

    /* the copy plan, read from the target (or made there) */
    size_t n_tabs;
    tab_t *tabs;
    char *tenant_lit; /* the tenant as a SQL literal (target quoting) */
    char *tcol;       /* the tenant column, quoted */

    /* progress */
    long long total, copied;
    int last_percent_audited;
    uint64_t next_batch_us; /* rate limit: earliest start of the next batch */
    uint64_t win_ms[64];
    long long win_rows[64];
    size_t win_n;
    double rate_now;
    char *mirror_from; /* map mode: source positions above this are not yet in the control store */
    char *barrier_xid; /* X0, as the target's plan recorded it */

    /* the last error */
    char sqlstate[6];
    char *err;
} run_t;

typedef enum verdict {
    GO,    /* keep copying */
    PAUSE, /* paused: wait */
    LEAVE, /* aborted, failed, or otherwise not ours to copy any more */
} verdict_t;

/* ---- helpers (copy.c) ---- */
bool mig_run_stopping(const run_t *r);
void mig_run_set_err(run_t *r, const char *sqlstate, char *msg_owned);
/* Classify a failed result (res may be NULL: the connection broke); sets r's error. */
run_rc_t mig_run_classify(run_t *r, PGconn *c, const PGresult *res, const char *what);
/* Run sql on c; on failure classify it and return NULL with *rc set. */
PGresult *mig_run_q(run_t *r, PGconn *c, const char *what, const char *sql, int n,
                    const char *const *params, run_rc_t *rc);
/* Like mig_run_q, for statements whose result does not matter. */
run_rc_t mig_run_x(run_t *r, PGconn *c, const char *what, const char *sql, int n,
                   const char *const *params);
/* s as an owned SQL literal. */
char *mig_run_lit(PGconn *c, const char *s);
void mig_run_drop_conn(PGconn **c);
void mig_run_drop_stores(run_t *r);
/* Sleep up to ms; true when stopping. */
bool mig_run_nap(run_t *r, int ms);
run_rc_t mig_run_look(run_t *r, verdict_t *v);
run_rc_t mig_run_set_status(run_t *r, const char *detail);
void mig_run_audit(run_t *r, const char *type, const char *details_json);
void mig_run_note_error(run_t *r, bool retrying);
run_rc_t mig_run_fail_migration(run_t *r);
/* Connect store idx into *out unless connected; what names it in the error ("source store"). */
run_rc_t mig_run_connect(run_t *r, int idx, const char *app, const char *what, PGconn **out);
run_rc_t mig_run_connect_stores(run_t *r);
run_rc_t mig_run_bump_sequence(run_t *r, const tab_t *t);
/*
 * Stream one COPY from the source into the target; *rows from the target's
 * tag. in_sql may put other statements before its COPY (BEGIN, a stage's
 * CREATE), so that they cost no round trip of their own.
 */
run_rc_t mig_run_stream(run_t *r, const char *out_sql, const char *in_sql, long long *rows);
/*
 * The same for n COPYs in a row: out_sql holds n COPY ... TO STDOUT, in_sql
 * n COPY ... FROM STDIN (other statements may come before, between and,
 * on the target, after them), the k-th out streamed into the k-th in; rows[k]
 * from the target's tags. Returns once the n-th COPY into the target is
 * done: the target's later results are the caller's to read.
 */
run_rc_t mig_run_stream_n(run_t *r, const char *out_sql, const char *in_sql, size_t n,
                          long long *rows);
char *mig_run_key_tuple(const tab_t *t);
char *mig_run_key_order(const tab_t *t, bool desc);
/* The select list that writes stage rows "s" of t into t (translate mode: I6). Owned. */
char *mig_run_select_list(run_t *r, const tab_t *t);
/*
 * The statement that creates table i's stage (a temporary table) on the
 * target, to run before the stage's first use, or NULL when it exists.
 * t->stage names the stage from here on; mig_run_drop_stores forgets it.
 */
char *mig_run_stage_sql(tab_t *t, size_t i);
run_rc_t mig_run_mirror_map(run_t *r);
/* Read the copy plan (the tables and their modes) from the target; *found = whether there is one.
 */
run_rc_t mig_run_read_plan(run_t *r, bool *found);

/* ---- DUAL_WRITE and CUTOVER (dualwrite.c) ---- */
/*
 * Run a migration whose bulk copy is complete (phase BULK_COPY with the copy
 * complete, DUAL_WRITE or CUTOVER) until it is COMPLETED, left DUAL_WRITE
 * (abort, failure: RUN_RECHECK) or the latch is set. Needs r's control
 * connection and lock.
 */
run_rc_t mig_dw_run(run_t *r);

#endif
