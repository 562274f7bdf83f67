/*
 * migrator/cutover.c - CUTOVER id and VERIFY id on the admin worker. The runner of the
 * migration (dualwrite.c, in this pgshift process or another) owns the
 * dual-write state and performs the cutover; the admin side checks that the
 * migration is in DUAL_WRITE and ready, files a request in the record
 * (cutover_request + 1) and waits for the runner's outcome
 * (cutover_result with that request number), which it answers as one row.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "migrator/migrator_int.h"

#define LOG_CTX        "cutover"
#define POLL_MS        5
#define EXTRA_WAIT_MS  30000 /* beyond the budget: the runner's pick-up and clean-up */
#define GRACE_MS       2000  /* an outcome without its pause yet: wait this long for it */
#define VERIFY_WAIT_MS 60000 /* then the check goes on, and SHOW MIGRATION tells its outcome */

/*
 * Poll the record until sql (params: the migration id, the request number)
 * returns a row: the runner's answer. A row whose column `complete` is not
 * "t" is an answer still being finished (the cutover's pause is written
 * after the commit that released the clients): it is waited for up to
 * GRACE_MS more, then returned as it is. NULL with *fail set on an error,
 * with *fail NULL when the deadline passed or the latch was set.
 */
static PGresult *wait_answer(const mig_env_t *env, PGconn **control, const char *sql,
                             const char *const *params, int complete, uint64_t deadline,
                             mig_result_t **fail)
{
    uint64_t grace_end = 0;
    PGresult *last = NULL; /* an incomplete answer seen */

    *fail = NULL;
    while (cm_now_ms() < deadline) {
        PGresult *res = mig_control_exec(env, control, sql, 2, params, fail);

        if (res == NULL) {
            PQclear(last);
            return NULL;
        }
        if (PQntuples(res) == 1) {
            if (complete < 0 || strcmp(PQgetvalue(res, 0, complete), "t") == 0) {
                PQclear(last);
                return res;
            }
            if (grace_end == 0)
                grace_end = cm_now_ms() + GRACE_MS;
            else if (cm_now_ms() >= grace_end) {
                PQclear(last);
                return res;
            }
            PQclear(last);
            last = res;
        } else {
            PQclear(res);
        }
        if (mig_latch_wait(env->latch, POLL_MS))
            break;
    }
    return last;
}

static mig_result_t *no_answer(const char *ids)
{
    return mig_result_error("57014",
                            "migration %s: no answer from its runner; SHOW MIGRATION %s tells "
                            "the outcome",
                            ids, ids);
}

/*
 * The record of migration ids for command cmd, which needs DUAL_WRITE and a
 * runner that keeps the target in sync: "phase, stale" and then the columns
 * of extra (a select list starting with ", "). NULL with *fail otherwise.
 */
static PGresult *dual_write_record(const mig_env_t *env, PGconn **control, const char *ids,
                                   const char *cmd, const char *why, const char *extra,
                                   mig_result_t **fail)
{
    const char *params[] = { ids };
    char *sql = cm_xasprintf("SELECT phase, coalesce((dw_status->>'at_ms')::double precision, 0) "
                             "< extract(epoch FROM clock_timestamp()) * 1000 - 3000%s "
                             "FROM pgshift.migrations WHERE id = $1::bigint",
                             extra);
    PGresult *res = mig_control_exec(env, control, sql, 1, params, fail);

    free(sql);
    if (res == NULL)
        return NULL;
    if (PQntuples(res) == 0)
        *fail = mig_result_error("42704", "migration %s does not exist", ids);
    else if (strcmp(PQgetvalue(res, 0, 0), "DUAL_WRITE") != 0)
        *fail = mig_result_error("55000", "migration %s is in phase %s: %s needs DUAL_WRITE (%s)",
                                 ids, PQgetvalue(res, 0, 0), cmd, why);
    else if (strcmp(PQgetvalue(res, 0, 1), "t") == 0)
        *fail = mig_result_error("55000",
                                 "migration %s: no runner keeps the target in sync (is pgshift "
                                 "starting?)",
                                 ids);
    else
        return res;
    PQclear(res);
    return NULL;
}

/*
 * File request kind ("cutover", "verify") by user with the runner: bump
 * <kind>_request while the migration is in DUAL_WRITE. The request number
 * goes to reqs. NULL, or the refusal.
 */
static mig_result_t *file_request(const mig_env_t *env, PGconn **control, const char *ids,
                                  const char *kind, const char *user, char reqs[24])
{
    const char *params[] = { ids, user };
    char *sql = cm_xasprintf("UPDATE pgshift.migrations SET %s_request = %s_request + 1, "
                             "  %s_request_by = $2 WHERE id = $1::bigint AND phase = "
                             "'DUAL_WRITE' RETURNING %s_request",
                             kind, kind, kind, kind);
    mig_result_t *fail = NULL;
    PGresult *res = mig_control_exec(env, control, sql, 2, params, &fail);

    free(sql);
    if (res == NULL)
        return fail;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return mig_result_error("55000", "migration %s left DUAL_WRITE", ids);
    }
    snprintf(reqs, 24, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    LOG_INFO(LOG_CTX, "migration %s: %s requested by %s", ids, kind, user ? user : "?");
    return NULL;
}

mig_result_t *mig_cutover_request(const mig_env_t *env, PGconn **control, const mig_request_t *req)
{
    static const char *const cols[] = { "migration_id", "success", "pause_ms", "events_synced",
                                        "error" };
    char ids[24], reqs[24];
    const char *wait_params[] = { ids, reqs };
    mig_result_t *fail, *r;
    PGresult *res;
    uint64_t deadline;
    int timeout_ms;

    snprintf(ids, sizeof(ids), "%lld", (long long)req->migration_id);
    res = dual_write_record(env, control, ids, "CUTOVER",
                            "the bulk copy complete and the target kept in sync",
                            ", paused, coalesce((dw_status->>'ready')::bool, false), "
                            "  dw_status->>'not_ready', "
                            "  coalesce((config->>'cutover_timeout_ms')::int, 500)",
                            &fail);
    if (res == NULL)
        return fail;
    if (strcmp(PQgetvalue(res, 0, 2), "t") == 0) {
        PQclear(res);
        return mig_result_error("55000", "migration %s is paused: RESUME MIGRATION %s first", ids,
                                ids);
    }
    if (strcmp(PQgetvalue(res, 0, 3), "t") != 0) {
        r = mig_result_error("55000", "migration %s is not ready for cutover: %s", ids,
                             PQgetisnull(res, 0, 4) ? "not caught up" : PQgetvalue(res, 0, 4));
        PQclear(res);
        return r;
    }
    timeout_ms = atoi(PQgetvalue(res, 0, 5));
    PQclear(res);
    fail = file_request(env, control, ids, "cutover", req->user, reqs);
    if (fail != NULL)
        return fail;

    deadline = cm_now_ms() + (uint64_t)timeout_ms + EXTRA_WAIT_MS;
    res = wait_answer(env, control,
                      "SELECT cutover_result->>'success', cutover_result->>'pause_ms', "
                      "  cutover_result->>'events_synced', cutover_result->>'error', "
                      "  coalesce((cutover_result->>'attempt')::int, 0), "
                      "  cutover_result ? 'pause_ms' "
                      "FROM pgshift.migrations WHERE id = $1::bigint "
                      "  AND (cutover_result->>'request')::bigint >= $2::bigint",
                      wait_params, 5, deadline, &fail);
    if (res == NULL)
        return fail != NULL ? fail : no_answer(ids);
    {
        const char *cells[] = { ids, strcmp(PQgetvalue(res, 0, 0), "true") == 0 ? "t" : "f",
                                /* NULL: the runner could not record it (SHOW MIGRATION) */
                                PQgetisnull(res, 0, 1) ? NULL : PQgetvalue(res, 0, 1),
                                PQgetvalue(res, 0, 2),
                                PQgetisnull(res, 0, 3) ? NULL : PQgetvalue(res, 0, 3) };

        if (strcmp(PQgetvalue(res, 0, 4), "0") == 0 && cells[4] != NULL) {
            /* The runner refused before holding anything. */
            r = mig_result_error("55000", "migration %s: %s", ids, cells[4]);
            PQclear(res);
            return r;
        }
        r = mig_result_new("CUTOVER", CM_ARRAY_LEN(cols), cols);
        mig_result_add_row(r, cells);
    }
    PQclear(res);
    return r;
}

/*
 * VERIFY id: file a check request with the runner of a migration in
 * DUAL_WRITE (verify_request + 1) and answer its verify_result as one row.
 */
mig_result_t *mig_verify_request(const mig_env_t *env, PGconn **control, const mig_request_t *req)
{
    static const char *const cols[] = { "migration_id", "passed", "rows", "detail" };
    char ids[24], reqs[24];
    const char *wait_params[] = { ids, reqs };
    mig_result_t *fail, *r;
    PGresult *res;

    snprintf(ids, sizeof(ids), "%lld", (long long)req->migration_id);
    res = dual_write_record(env, control, ids, "VERIFY", "both stores hold the tenant's rows",
                            ", paused, coalesce(dw_status->>'breaker', 'closed')", &fail);
    if (res == NULL)
        return fail;
    /* The runner checks between rounds: none run while paused or while the target fails. */
    fail = NULL;
    if (strcmp(PQgetvalue(res, 0, 2), "t") == 0)
        fail = mig_result_error("55000", "migration %s is paused: RESUME MIGRATION %s first", ids,
                                ids);
    else if (strcmp(PQgetvalue(res, 0, 3), "closed") != 0)
        fail = mig_result_error("55000",
                                "migration %s: the target's circuit breaker is %s; VERIFY once "
                                "the target is back",
                                ids, PQgetvalue(res, 0, 3));
    PQclear(res);
    if (fail != NULL)
        return fail;
    fail = file_request(env, control, ids, "verify", req->user, reqs);
    if (fail != NULL)
        return fail;
    res = wait_answer(env, control,
                      "SELECT (verify_result->>'passed')::bool::text, verify_result->>'rows', "
                      "  verify_result->>'detail' FROM pgshift.migrations WHERE id = $1::bigint "
                      "  AND (verify_result->>'request')::bigint >= $2::bigint",
                      wait_params, -1, cm_now_ms() + VERIFY_WAIT_MS, &fail);
    if (res == NULL && fail == NULL)
        return mig_result_error("57014",
                                "migration %s: the consistency check is still running; SHOW "
                                "MIGRATION %s shows consistency_check when it ends",
                                ids, ids);
    if (res == NULL)
        return fail;
    {
        const char *cells[] = { ids, strcmp(PQgetvalue(res, 0, 0), "true") == 0 ? "t" : "f",
                                PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2) };

        r = mig_result_new("VERIFY", CM_ARRAY_LEN(cols), cols);
        mig_result_add_row(r, cells);
    }
    PQclear(res);
    return r;
}
