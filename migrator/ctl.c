/*
 * migrator/ctl.c - the control store client: mig_ctl_t owns a listener
 * thread (LISTEN pgshift_routes, route reloads, reconnects), worker threads
 * (worker_kind_t: admin commands, the commands that wait for a runner, key
 * lookups for routing, WATCH streams, cutover acknowledgements), a request
 * queue towards each worker, and the outbox towards the loop. The threads
 * use blocking libpq on their own connections and never touch the loop;
 * they reach it only through the outbox. Loop-side state (pending
 * requests) is touched only on the loop thread.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "migrator/migrator_int.h"

#define LOG_CTX            "control"
#define CONNECT_TIMEOUT_MS 10000
#define PING_INTERVAL_MS   1000 /* an idle listener renews its lease (and checks) this often */
#define BACKOFF_FIRST_MS   100
#define BACKOFF_MAX_MS     5000

/* A request the loop still expects an answer to. Loop thread only. */
typedef struct pending {
    struct pending *next;
    uint64_t id;
    void *cookie;
    bool is_cancelled;
    atomic_bool *cancelled; /* WATCH: tells the watch worker; owned here */
} pending_t;

/* The runner thread of one migration (copy.c). Listener thread only, and stop. */
typedef struct runner {
    struct runner *next;
    struct mig_ctl *m;
    int64_t id;
    uv_thread_t thread;
    atomic_bool done;
} runner_t;

#define WAIT_THREADS 4 /* concurrent CUTOVER / VERIFY waits */

typedef enum worker_kind {
    WK_ADMIN,  /* admin commands, one at a time */
    WK_WAIT,   /* CUTOVER and VERIFY, which wait for a runner (WAIT_THREADS of them) */
    WK_ABORT,  /* ABORT, which waits for the target's cleanup: never behind a CUTOVER */
    WK_LOOKUP, /* MIG_CMD_LOOKUP_KEY */
    WK_WATCH,  /* WATCH MIGRATION streams */
    WK_ACK,    /* cutover acknowledgements: never queued behind a (waiting) CUTOVER */
    WK_COUNT,
} worker_kind_t;

/*
 * A worker thread and its request queue (loop -> worker), one per
 * worker_kind_t. The admin worker runs admin commands one at a time; CUTOVER
 * and VERIFY wait for a runner (a cutover budget and more, a check) on the
 * wait worker, whose WAIT_THREADS threads each take one, and ABORT (which
 * waits for the target's cleanup, up to a minute when it is down) on its
 * own, so SHOW MIGRATION, PAUSE and an ABORT never queue behind those waits
 * (one admin session has one command at a time, so its answers stay in
 * order); the lookup worker answers MIG_CMD_LOOKUP_KEY, so routing never
 * waits behind a slow admin command; the watch worker streams WATCH
 * MIGRATION rows.
 */
typedef struct worker {
    struct mig_ctl *m;
    worker_kind_t kind;
    uv_mutex_t lock; /* guards head/tail */
    uv_cond_t cond;
    mig_request_t *head;
    mig_request_t *tail;
    uv_thread_t threads[WAIT_THREADS];
    int n_running; /* threads created (loop thread only) */
} worker_t;

struct mig_ctl {
    mig_outbox_t outbox; /* threads -> loop */
    mig_event_cb cb;
    void *arg;
    mig_env_t env; /* read-only while the threads run */

    worker_t workers[WK_COUNT]; /* by kind */
    atomic_bool want_stop;      /* also signalled through env.latch */
    runner_t *runners;          /* listener thread only (and mig_ctl_stop after joining it) */

    uv_thread_t listener;
    PGconn *listen_conn; /* handed from mig_ctl_start to the listener thread */

    /* loop thread only */
    mig_overlay_t overlay; /* the routes loaded, and those this process's runners published */
    pending_t *pending;
    uint64_t next_request_id;
    bool is_stopped;
};

/* ---- events ------------------------------------------------------------------ */

static mig_event_t *event_new(mig_event_kind_t kind)
{
    mig_event_t *ev = cm_xcalloc(1, sizeof(*ev));

    ev->kind = kind;
    return ev;
}

/*
 * Loop thread: ev (routes loaded, or a route a runner published) goes into
 * m->overlay, and ev carries the routes in force from there. False when
 * there is nothing to deliver yet (no load so far).
 */
static bool routes_merge(mig_ctl_t *m, mig_event_t *ev)
{
    if (ev->kind == MIG_EV_ROUTES) {
        mig_overlay_load(&m->overlay, ev->routes, ev->n_routes, ev->at_us);
    } else {
        mig_overlay_publish(&m->overlay, &ev->routes[0], ev->at_us);
        mig_routes_free(ev->routes, ev->n_routes);
        ev->kind = MIG_EV_ROUTES;
    }
    ev->routes = mig_overlay_routes(&m->overlay, &ev->n_routes);
    return ev->routes != NULL;
}

/* Loop thread: filters replies whose cookie was cancelled, then hands ev to the user. */
static void ctl_deliver(void *arg, mig_event_t *ev)
{
    mig_ctl_t *m = arg;

    if ((ev->kind == MIG_EV_ROUTES || ev->kind == MIG_EV_ROUTE_PATCH) && !routes_merge(m, ev)) {
        mig_event_free(ev);
        return;
    }
    if (ev->kind == MIG_EV_REPLY) {
        pending_t **pp = &m->pending, *p;

        while (*pp != NULL && (*pp)->id != ev->request_id)
            pp = &(*pp)->next;
        p = *pp;
        BUG_ON(p == NULL, "reply to unknown request %llu", (unsigned long long)ev->request_id);
        ev->cookie = p->cookie;
        if (!ev->result->more) {
            /* The last (usually only) reply of this request. */
            *pp = p->next;
            if (p->is_cancelled) {
                free(p->cancelled);
                free(p);
                mig_event_free(ev);
                return;
            }
            free(p->cancelled);
            free(p);
        } else if (p->is_cancelled) {
            mig_event_free(ev);
            return;
        }
    }
    m->cb(m->arg, ev);
}

/* ---- listener thread ------------------------------------------------------------ */

/* Load the routes and publish them. Returns 0, or a negative errno when c broke. */
static int publish_routes(mig_ctl_t *m, PGconn *c)
{
    mig_event_t *ev;
    mig_route_t *routes;
    size_t n;
    char *err = NULL;
    uint64_t at_us = cm_now_us();
    int rc = mig_routes_load(c, m->env.latch, &routes, &n, &err);

    if (rc != 0) {
        if (err != NULL)
            LOG_WARN(LOG_CTX, "cannot load routes: %s", err);
        free(err);
        return rc;
    }
    ev = event_new(MIG_EV_ROUTES);
    ev->routes = routes;
    ev->n_routes = n;
    ev->at_us = at_us;
    mig_outbox_push(&m->outbox, ev);
    return 0;
}

void mig_publish_route(const mig_env_t *env, const mig_route_t *route, uint64_t sent_us)
{
    mig_event_t *ev;

    if (env->outbox == NULL)
        return;
    ev = event_new(MIG_EV_ROUTE_PATCH);
    ev->routes = cm_xcalloc(1, sizeof(*ev->routes));
    ev->n_routes = 1;
    mig_route_copy(&ev->routes[0], route);
    ev->at_us = sent_us;
    mig_outbox_push(env->outbox, ev);
}

/*
 * Register this process, or renew its lease: a cutover waits for the
 * acknowledgement of every process whose heartbeat is younger than
 * MIG_PROCESS_LEASE_MS. False when c broke.
 */
static bool renew_lease(mig_ctl_t *m, PGconn *c)
{
    char pid[16], host[256] = "?";
    const char *params[] = { m->env.process_id, host, pid };
    PGresult *res;
    bool ok;

    (void)gethostname(host, sizeof(host) - 1);
    snprintf(pid, sizeof(pid), "%ld", (long)getpid());
    res = mig_pq_exec(c, m->env.latch, CONNECT_TIMEOUT_MS,
                      "INSERT INTO pgshift.processes (id, host, pid) VALUES ($1, $2, $3::int) "
                      "ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
                      3, params);
    ok = res != NULL && mig_pq_ok(res);
    PQclear(res);
    return ok;
}

/* Schema check, LISTEN. Returns 0, or a negative errno (c must then be finished). */
static int setup_listener(mig_ctl_t *m, PGconn *c, char **err)
{
    PGresult *res;
    int version, rc;

    rc = mig_schema_upgrade(c, m->env.latch, &version, err);
    if (rc != 0)
        return rc;
    res = mig_pq_exec(c, m->env.latch, CONNECT_TIMEOUT_MS, "LISTEN " MIG_ROUTES_CHANNEL, 0, NULL);
    if (res == NULL || !mig_pq_ok(res)) {
        *err = mig_pq_errmsg(c, res);
        PQclear(res);
        return -ECONNRESET;
    }
    PQclear(res);
    if (!renew_lease(m, c)) {
        *err = mig_pq_errmsg(c, NULL);
        return -ECONNRESET;
    }
    return 0;
}

/* Drop every queued notification; true when there was at least one. */
static bool drain_notifies(PGconn *c)
{
    PGnotify *n;
    bool any = false;

    while ((n = PQnotifies(c)) != NULL) {
        any = true;
        PQfreemem(n);
    }
    return any;
}

static bool should_stop(mig_ctl_t *m)
{
    return atomic_load(&m->want_stop);
}

/* ---- runners ------------------------------------------------------------------------ */

static void runner_thread(void *arg)
{
    runner_t *rn = arg;

    mig_runner_main(&rn->m->env, rn->id);
    atomic_store(&rn->done, true);
}

/* Join the runners that ended. */
static void runners_reap(mig_ctl_t *m, bool all)
{
    runner_t **pp = &m->runners;

    while (*pp != NULL) {
        runner_t *rn = *pp;

        if (all || atomic_load(&rn->done)) {
            uv_thread_join(&rn->thread);
            *pp = rn->next;
            free(rn);
        } else {
            pp = &rn->next;
        }
    }
}

/*
 * Start a runner for every migration that needs one and has none here (the
 * runner itself makes sure only one process works on it). Listener thread.
 * Returns 0, or -1 when c broke.
 */
static int runners_sync(mig_ctl_t *m, PGconn *c)
{
    PGresult *res;

    runners_reap(m, false);
    res = mig_pq_exec(c, m->env.latch, CONNECT_TIMEOUT_MS, MIG_RUNNABLE_SQL, 0, NULL);
    if (res == NULL)
        return -1;
    if (!mig_pq_ok(res)) {
        PQclear(res);
        return 0;
    }
    for (int i = 0; i < PQntuples(res) && !should_stop(m); i++) {
        int64_t id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        runner_t *rn;

        for (rn = m->runners; rn != NULL; rn = rn->next)
            if (rn->id == id)
                break;
        if (rn != NULL)
            continue;
        rn = cm_xcalloc(1, sizeof(*rn));
        rn->m = m;
        rn->id = id;
        atomic_init(&rn->done, false);
        if (uv_thread_create(&rn->thread, runner_thread, rn) != 0) {
            LOG_ERROR(LOG_CTX, "cannot start the runner of migration %lld", (long long)id);
            free(rn);
            continue;
        }
        rn->next = m->runners;
        m->runners = rn;
        LOG_DEBUG(LOG_CTX, "runner of migration %lld started", (long long)id);
    }
    PQclear(res);
    return 0;
}

/*
 * Serve one connection until it breaks or we stop. Returns true when
 * stopping. On return the connection is finished.
 */
static bool listen_on(mig_ctl_t *m, PGconn *c)
{
    uint64_t last_activity = cm_now_ms();

    if (runners_sync(m, c) != 0) {
        PQfinish(c);
        return should_stop(m);
    }
    while (!should_stop(m)) {
        int r;

        /* Notifications can arrive during any query, so look before sleeping. */
        if (PQconsumeInput(c) == 0)
            break;
        if (drain_notifies(c)) {
            if (publish_routes(m, c) != 0 || runners_sync(m, c) != 0)
                break;
            continue; /* more may have come in during the reload */
        }
        {
            uint64_t now = cm_now_ms();
            uint64_t due = last_activity + PING_INTERVAL_MS;
            int wait_ms = now >= due ? 0 : (int)(due - now);

            /* Wait for the socket or the latch, at most until the next ping is due. */
            r = mig_pq_wait_readable(c, m->env.latch, wait_ms);
            if (r < 0)
                break; /* latch set, or the socket failed */
            if (r > 0)
                continue;
            if (!renew_lease(m, c))
                break;
            if (runners_sync(m, c) != 0)
                break;
            last_activity = cm_now_ms();
        }
    }
    if (should_stop(m) && PQstatus(c) == CONNECTION_OK) {
        /* A clean stop gives up the lease at once: no cutover waits for us. */
        const char *params[] = { m->env.process_id };
        PGresult *res =
            mig_pq_exec(c, -1, 2000, "DELETE FROM pgshift.processes WHERE id = $1", 1, params);

        PQclear(res);
    }
    PQfinish(c);
    return should_stop(m);
}

static void listener_main(void *arg)
{
    mig_ctl_t *m = arg;
    PGconn *c = m->listen_conn;
    int backoff = BACKOFF_FIRST_MS;

    m->listen_conn = NULL;
    for (;;) {
        char *err = NULL;
        int rc;

        if (listen_on(m, c))
            return;
        LOG_WARN(LOG_CTX, "lost the control store; keeping the last known routes");
        mig_outbox_push(&m->outbox, event_new(MIG_EV_CONTROL_DOWN));
        for (;;) {
            if (mig_latch_wait(m->env.latch, backoff))
                return;
            backoff = CM_MIN(backoff * 2, BACKOFF_MAX_MS);
            c = NULL;
            rc = mig_pq_connect(m->env.control_conninfo, "pgshift-control", m->env.latch,
                                CONNECT_TIMEOUT_MS, &c, &err);
            if (rc == 0) {
                rc = setup_listener(m, c, &err);
                if (rc == 0) {
                    mig_outbox_push(&m->outbox, event_new(MIG_EV_CONTROL_UP));
                    rc = publish_routes(m, c);
                }
                if (rc != 0)
                    PQfinish(c);
            }
            if (rc == -ECANCELED || should_stop(m)) {
                free(err);
                return;
            }
            if (rc == 0)
                break;
            LOG_DEBUG(LOG_CTX, "control store still unreachable: %s", err ? err : "?");
            free(err);
            err = NULL;
        }
        LOG_INFO(LOG_CTX, "control store reachable again");
        backoff = BACKOFF_FIRST_MS;
    }
}

/* ---- worker thread --------------------------------------------------------------- */

static void request_free(mig_request_t *r)
{
    free(r->tenant);
    free(r->store);
    free(r->user);
    free(r->reason);
    free(r->key_column);
    free(r->key_value);
    free(r->options);
    free(r);
}

/* Next request of w, or NULL when stopping. */
static mig_request_t *worker_next(worker_t *w)
{
    mig_request_t *req;

    uv_mutex_lock(&w->lock);
    while (!should_stop(w->m) && w->head == NULL)
        uv_cond_wait(&w->cond, &w->lock);
    if (should_stop(w->m)) {
        uv_mutex_unlock(&w->lock);
        return NULL;
    }
    req = w->head;
    w->head = req->next;
    if (w->head == NULL)
        w->tail = NULL;
    uv_mutex_unlock(&w->lock);
    return req;
}

/* ---- the watch worker --------------------------------------------------------------- */

#define WATCH_INTERVAL_MS 1000

typedef struct watch {
    struct watch *next;
    uint64_t request_id;
    int64_t migration_id;
    atomic_bool *cancelled; /* owned by the loop's pending entry */
    uint64_t due_ms;
} watch_t;

static void watch_reply(mig_ctl_t *m, uint64_t request_id, mig_result_t *res)
{
    mig_event_t *ev = event_new(MIG_EV_REPLY);

    ev->request_id = request_id;
    ev->result = res;
    mig_outbox_push(&m->outbox, ev);
}

/*
 * WATCH MIGRATION: every active watch gets the status row once a second
 * (more = true) until the migration is terminal (last row, more = false) or
 * the loop cancels the cookie (an empty last event, which the loop drops).
 */
static void watch_main(void *arg)
{
    worker_t *w = arg;
    mig_ctl_t *m = w->m;
    PGconn *control = NULL;
    watch_t *watches = NULL;

    for (;;) {
        mig_request_t *req;
        uint64_t now, next_due = UINT64_MAX;

        uv_mutex_lock(&w->lock);
        while (!should_stop(m) && w->head == NULL && watches == NULL)
            uv_cond_wait(&w->cond, &w->lock);
        req = w->head;
        w->head = w->tail = NULL;
        uv_mutex_unlock(&w->lock);
        if (should_stop(m)) {
            while (req != NULL) {
                mig_request_t *n = req->next;

                request_free(req);
                req = n;
            }
            break;
        }
        while (req != NULL) {
            mig_request_t *n = req->next;
            watch_t *wt = cm_xcalloc(1, sizeof(*wt));

            wt->request_id = req->id;
            wt->migration_id = req->migration_id;
            wt->cancelled = req->cancelled;
            wt->due_ms = cm_now_ms();
            wt->next = watches;
            watches = wt;
            request_free(req);
            req = n;
        }
        now = cm_now_ms();
        for (watch_t **pp = &watches; *pp != NULL;) {
            watch_t *wt = *pp;
            bool end = false;

            if (atomic_load(wt->cancelled)) {
                mig_result_t *res = mig_result_new("WATCH", 0, NULL);

                watch_reply(m, wt->request_id, res);
                end = true;
            } else if (now >= wt->due_ms) {
                bool terminal = false;
                mig_result_t *res =
                    mig_migration_status(&m->env, &control, wt->migration_id, &terminal);

                if (res->err_sqlstate == NULL) {
                    free(res->tag);
                    res->tag = cm_xstrdup("WATCH");
                    res->more = !terminal;
                }
                end = res->err_sqlstate != NULL || terminal;
                watch_reply(m, wt->request_id, res);
                wt->due_ms += WATCH_INTERVAL_MS;
                if (wt->due_ms <= now)
                    wt->due_ms = now + WATCH_INTERVAL_MS;
            }
            if (end) {
                *pp = wt->next;
                free(wt);
            } else {
                next_due = CM_MIN(next_due, wt->due_ms);
                pp = &wt->next;
            }
        }
        if (watches != NULL) {
            now = cm_now_ms();
            uv_mutex_lock(&w->lock);
            if (!should_stop(m) && w->head == NULL && next_due > now)
                (void)uv_cond_timedwait(&w->cond, &w->lock,
                                        (uint64_t)CM_MIN(next_due - now, 200) * 1000000u);
            uv_mutex_unlock(&w->lock);
        }
    }
    while (watches != NULL) {
        watch_t *n = watches->next;

        free(watches);
        watches = n;
    }
    if (control != NULL)
        PQfinish(control);
}

/* Record one drained-hold acknowledgement and wake the cutover that waits for it. */
static void ack_cutover(mig_ctl_t *m, PGconn **control, const mig_request_t *req)
{
    char id[24], attempt[24];
    const char *params[] = { id, attempt, m->env.process_id };
    mig_result_t *fail = NULL;
    PGresult *res;

    snprintf(id, sizeof(id), "%lld", (long long)req->migration_id);
    snprintf(attempt, sizeof(attempt), "%lld", (long long)req->attempt);
    res = mig_control_exec(&m->env, control,
                           "WITH a AS (INSERT INTO pgshift.cutover_acks (migration_id, attempt, "
                           "  process_id) SELECT $1::bigint, $2::int, $3 WHERE EXISTS (SELECT 1 "
                           "  FROM pgshift.migrations WHERE id = $1::bigint) "
                           "  ON CONFLICT DO NOTHING RETURNING 1) "
                           "SELECT pg_notify('" MIG_ACKS_CHANNEL "', $1 || ':' || $2 || ':' || $3)",
                           3, params, &fail);
    if (res == NULL) {
        LOG_WARN(LOG_CTX, "cannot acknowledge cutover %s/%s: %s", id, attempt,
                 fail && fail->err_message ? fail->err_message : "?");
        mig_result_free(fail);
        return;
    }
    PQclear(res);
    LOG_INFO(LOG_CTX, "recorded the drained hold of cutover %s attempt %s", id, attempt);
}

static void worker_main(void *arg)
{
    worker_t *w = arg;
    mig_ctl_t *m = w->m;
    PGconn *control = NULL;
    mig_lookup_t *lk = w->kind == WK_LOOKUP ? mig_lookup_new(&m->env) : NULL;
    mig_request_t *req;

    if (w->kind == WK_WATCH) {
        watch_main(arg);
        return;
    }
    if (w->kind == WK_ACK) {
        /* Connected ahead: an acknowledgement is on a cutover's critical path. */
        mig_result_free(mig_ensure_control(&m->env, &control));
    }
    while ((req = worker_next(w)) != NULL) {
        mig_event_t *ev;

        if (w->kind == WK_ACK) {
            ack_cutover(m, &control, req);
            request_free(req);
            continue;
        }
        ev = event_new(MIG_EV_REPLY);
        ev->request_id = req->id;
        if (w->kind == WK_LOOKUP)
            ev->result = mig_lookup_execute(lk, req);
        else
            ev->result = mig_admin_execute(&m->env, &control, req);
        request_free(req);
        mig_outbox_push(&m->outbox, ev);
    }
    if (control != NULL)
        PQfinish(control);
    mig_lookup_free(lk);
}

static int worker_init(worker_t *w, mig_ctl_t *m, worker_kind_t kind)
{
    int rc;

    w->m = m;
    w->kind = kind;
    rc = uv_mutex_init(&w->lock);
    if (rc != 0)
        return rc;
    rc = uv_cond_init(&w->cond);
    if (rc != 0)
        uv_mutex_destroy(&w->lock);
    return rc;
}

/* Frees queued requests and the sync objects; the thread is joined (or never ran). */
static void worker_destroy(worker_t *w)
{
    while (w->head != NULL) {
        mig_request_t *r = w->head;

        w->head = r->next;
        request_free(r);
    }
    w->tail = NULL;
    uv_cond_destroy(&w->cond);
    uv_mutex_destroy(&w->lock);
}

static void worker_push(worker_t *w, mig_request_t *r)
{
    uv_mutex_lock(&w->lock);
    if (w->tail != NULL)
        w->tail->next = r;
    else
        w->head = r;
    w->tail = r;
    uv_cond_signal(&w->cond);
    uv_mutex_unlock(&w->lock);
}

/* Start w's threads (one, WAIT_THREADS for the wait worker). 0 or a uv error. */
static int worker_start(worker_t *w)
{
    int n = w->kind == WK_WAIT ? WAIT_THREADS : 1, rc = 0;

    while (w->n_running < n && rc == 0) {
        rc = uv_thread_create(&w->threads[w->n_running], worker_main, w);
        if (rc == 0)
            w->n_running++;
    }
    return rc;
}

/* Wake a worker's threads so they see want_stop, then join them. */
static void worker_stop(worker_t *w)
{
    if (w->n_running == 0)
        return;
    uv_mutex_lock(&w->lock);
    uv_cond_broadcast(&w->cond);
    uv_mutex_unlock(&w->lock);
    while (w->n_running > 0)
        uv_thread_join(&w->threads[--w->n_running]);
}

/* The worker that runs commands of kind k. */
static worker_kind_t worker_for(mig_cmd_kind_t k)
{
    if (k == MIG_CMD_LOOKUP_KEY)
        return WK_LOOKUP;
    if (k == MIG_CMD_WATCH_MIGRATION)
        return WK_WATCH;
    if (k == MIG_CMD_CUTOVER || k == MIG_CMD_VERIFY)
        return WK_WAIT;
    if (k == MIG_CMD_ABORT_MIGRATION)
        return WK_ABORT;
    return WK_ADMIN;
}

/* ---- public API -------------------------------------------------------------------- */

static void env_destroy(mig_env_t *e)
{
    free(e->process_id);
    free(e->control_conninfo);
    for (size_t i = 0; i < e->n_stores; i++) {
        free(e->store_names[i]);
        free(e->store_conninfos[i]);
    }
    free(e->store_names);
    free(e->store_conninfos);
    for (size_t i = 0; i < e->n_tables; i++)
        free(e->tables[i]);
    free(e->tables);
    free(e->tenant_column);
    free(e->default_store);
    free(e->position_column);
    free(e->row_key);
    if (e->latch >= 0)
        close(e->latch);
}

static void ctl_free(mig_ctl_t *m)
{
    for (int k = 0; k < WK_COUNT; k++)
        worker_destroy(&m->workers[k]);
    while (m->pending != NULL) {
        pending_t *p = m->pending;

        m->pending = p->next;
        free(p->cancelled);
        free(p);
    }
    env_destroy(&m->env);
    mig_overlay_free(&m->overlay);
    free(m);
}

static void ctl_closed_cb(void *arg)
{
    ctl_free(arg);
}

int mig_ctl_start(uv_loop_t *loop, const char *control_conninfo, const char *const *store_names,
                  const char *const *store_conninfos, size_t n_stores, const mig_tenancy_t *tenancy,
                  mig_event_cb cb, void *arg, mig_ctl_t **out)
{
    mig_ctl_t *m;
    mig_env_t *e;
    PGconn *c = NULL;
    char *err = NULL;
    int rc, n_init;
    bool default_known = false;

    if (loop == NULL || control_conninfo == NULL || cb == NULL || out == NULL || tenancy == NULL ||
        tenancy->tenant_column == NULL || tenancy->default_store == NULL ||
        (n_stores > 0 && (store_names == NULL || store_conninfos == NULL)) ||
        (tenancy->n_tables > 0 && tenancy->tables == NULL))
        return -EINVAL;
    for (size_t i = 0; i < n_stores; i++)
        if (strcmp(store_names[i], tenancy->default_store) == 0)
            default_known = true;
    if (!default_known)
        return -EINVAL;

    m = cm_xcalloc(1, sizeof(*m));
    e = &m->env;
    e->latch = -1;
    e->control_conninfo = cm_xstrdup(control_conninfo);
    e->n_stores = n_stores;
    e->store_names = cm_xcalloc(n_stores ? n_stores : 1, sizeof(char *));
    e->store_conninfos = cm_xcalloc(n_stores ? n_stores : 1, sizeof(char *));
    for (size_t i = 0; i < n_stores; i++) {
        e->store_names[i] = cm_xstrdup(store_names[i]);
        e->store_conninfos[i] = cm_xstrdup(store_conninfos[i]);
    }
    e->n_tables = tenancy->n_tables;
    e->tables = cm_xcalloc(e->n_tables ? e->n_tables : 1, sizeof(char *));
    for (size_t i = 0; i < e->n_tables; i++)
        e->tables[i] = cm_xstrdup(tenancy->tables[i]);
    e->tenant_column = cm_xstrdup(tenancy->tenant_column);
    e->default_store = cm_xstrdup(tenancy->default_store);
    e->position_column =
        cm_xstrdup(tenancy->position_column ? tenancy->position_column : "global_position");
    e->row_key = cm_xstrdup(tenancy->row_key ? tenancy->row_key : "event_id");
    if (tenancy->defaults != NULL)
        e->defaults = *tenancy->defaults;
    else
        mig_settings_default(&e->defaults);
    {
        char host[128] = "?";
        unsigned char rnd[6] = { 0 };
        FILE *f = fopen("/dev/urandom", "rb");

        if (f != NULL) {
            if (fread(rnd, 1, sizeof(rnd), f) != sizeof(rnd))
                memset(rnd, 0, sizeof(rnd));
            fclose(f);
        }
        (void)gethostname(host, sizeof(host) - 1);
        e->process_id = cm_xasprintf("%s:%ld:%02x%02x%02x%02x%02x%02x", host, (long)getpid(),
                                     rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
    }
    m->cb = cb;
    m->arg = arg;
    m->next_request_id = 1;
    atomic_init(&m->want_stop, false);
    atomic_init(&e->local_ack, 0);

    for (n_init = 0; n_init < WK_COUNT; n_init++) {
        rc = worker_init(&m->workers[n_init], m, (worker_kind_t)n_init);
        if (rc != 0)
            goto fail_workers;
    }
    rc = mig_latch_new();
    if (rc < 0)
        goto fail_workers;
    e->latch = rc;

    /* Connect, upgrade the schema and LISTEN here, so a bad control store fails the start. */
    rc = mig_pq_connect(e->control_conninfo, "pgshift-control", e->latch, CONNECT_TIMEOUT_MS, &c,
                        &err);
    if (rc != 0) {
        LOG_ERROR(LOG_CTX, "cannot connect to the control store: %s", err ? err : "?");
        rc = -ECONNREFUSED;
        goto fail_connect;
    }
    rc = setup_listener(m, c, &err);
    if (rc != 0) {
        LOG_ERROR(LOG_CTX, "cannot set up the control schema: %s", err ? err : "?");
        rc = -EPROTO;
        goto fail_setup;
    }
    rc = mig_outbox_init(&m->outbox, loop, ctl_deliver, m);
    if (rc != 0)
        goto fail_setup;
    e->outbox = &m->outbox; /* runners start later, and end before the outbox closes */
    /* The first routes go out through the outbox, so cb runs on a later loop turn. */
    if (publish_routes(m, c) != 0) {
        LOG_ERROR(LOG_CTX, "cannot load the routes from the control store");
        rc = -EPROTO;
        goto fail_threads;
    }
    m->listen_conn = c;
    rc = uv_thread_create(&m->listener, listener_main, m);
    if (rc != 0)
        goto fail_threads;
    for (int k = 0; k < WK_COUNT && rc == 0; k++)
        rc = worker_start(&m->workers[k]);
    if (rc != 0) {
        atomic_store(&m->want_stop, true);
        mig_latch_set(e->latch);
        uv_thread_join(&m->listener); /* it finishes c */
        runners_reap(m, true);
        for (int k = 0; k < WK_COUNT; k++)
            worker_stop(&m->workers[k]);
        c = NULL;
        goto fail_threads;
    }
    *out = m;
    return 0;

fail_threads:
    /* The outbox holds at most the first routes; closing frees them, then frees m. */
    if (c != NULL)
        PQfinish(c);
    free(err);
    m->is_stopped = true;
    mig_outbox_close(&m->outbox, ctl_closed_cb);
    return rc;
fail_setup:
    PQfinish(c);
fail_connect:
    free(err);
fail_workers:
    while (n_init-- > 0)
        worker_destroy(&m->workers[n_init]);
    env_destroy(e);
    free(m);
    return rc;
}

void mig_ctl_request(mig_ctl_t *m, const mig_cmd_t *cmd, void *cookie)
{
    mig_request_t *r = cm_xcalloc(1, sizeof(*r));
    pending_t *p = cm_xcalloc(1, sizeof(*p)), **pp;

    BUG_ON(m->is_stopped, "request after mig_ctl_stop");
    r->id = m->next_request_id++;
    r->kind = cmd->kind;
    r->tenant = cmd->tenant ? cm_xstrdup(cmd->tenant) : NULL;
    r->store = cmd->store ? cm_xstrdup(cmd->store) : NULL;
    r->user = cmd->user ? cm_xstrdup(cmd->user) : NULL;
    r->reason = cmd->reason ? cm_xstrdup(cmd->reason) : NULL;
    r->options = cmd->options ? cm_xstrdup(cmd->options) : NULL;
    r->key_column = cmd->key_column ? cm_xstrdup(cmd->key_column) : NULL;
    r->key_value = cmd->key_value ? cm_xstrdup(cmd->key_value) : NULL;
    r->migration_id = cmd->migration_id;
    if (cmd->kind == MIG_CMD_ROUTE_TENANT)
        BUG_ON(r->tenant == NULL || r->store == NULL, "ROUTE TENANT without tenant or store");
    if (cmd->kind == MIG_CMD_LOOKUP_KEY)
        BUG_ON(r->key_column == NULL || r->key_value == NULL, "LOOKUP_KEY without key");
    if (cmd->kind == MIG_CMD_MIGRATE)
        BUG_ON(r->tenant == NULL || r->store == NULL, "MIGRATE without tenant or store");
    if (cmd->kind == MIG_CMD_WATCH_MIGRATION) {
        p->cancelled = cm_xmalloc(sizeof(*p->cancelled));
        atomic_init(p->cancelled, false);
        r->cancelled = p->cancelled;
    }

    /* Appended at the tail: replies mostly come back in order, so lookups stay short. */
    p->id = r->id;
    p->cookie = cookie;
    for (pp = &m->pending; *pp != NULL; pp = &(*pp)->next)
        ;
    *pp = p;

    worker_push(&m->workers[worker_for(cmd->kind)], r);
}

void mig_ctl_cancel(mig_ctl_t *m, void *cookie)
{
    for (pending_t *p = m->pending; p != NULL; p = p->next)
        if (p->cookie == cookie) {
            p->is_cancelled = true;
            if (p->cancelled != NULL)
                atomic_store(p->cancelled, true);
        }
}

void mig_ctl_stop(mig_ctl_t *m)
{
    BUG_ON(m->is_stopped, "mig_ctl_stop called twice");
    m->is_stopped = true;
    atomic_store(&m->want_stop, true);
    mig_latch_set(m->env.latch);
    uv_thread_join(&m->listener);
    runners_reap(m, true); /* the latch is set: each runner ends promptly */
    for (int k = 0; k < WK_COUNT; k++)
        worker_stop(&m->workers[k]);
    /* No thread is left to push: the close callback frees what is queued, then m. */
    mig_outbox_close(&m->outbox, ctl_closed_cb);
}

void mig_ctl_cutover_ack(mig_ctl_t *m, int64_t migration_id, int64_t attempt)
{
    mig_request_t *r = cm_xcalloc(1, sizeof(*r));

    BUG_ON(m->is_stopped, "cutover ack after mig_ctl_stop");
    atomic_store(&m->env.local_ack, MIG_LOCAL_ACK(migration_id, attempt));
    r->kind = MIG_CMD_CUTOVER;
    r->migration_id = migration_id;
    r->attempt = attempt;
    worker_push(&m->workers[WK_ACK], r); /* no reply: nothing pending on the loop side */
}
