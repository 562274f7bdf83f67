/*
 * migrator/ctl.c - the control store client: mig_ctl_t owns a listener
 * thread (LISTEN pgshift_routes, route reloads, reconnects), an admin worker
 * thread (admin commands, one at a time) and a lookup worker thread (key
 * lookups for routing), a request queue towards each worker, and the outbox
 * towards the loop. The threads use blocking libpq on their own
 * connections and never touch the loop; they reach it only through the
 * outbox. Loop-side state (pending requests) is touched only on the loop
 * thread.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "migrator/migrator_int.h"

#define LOG_CTX            "control"
#define CONNECT_TIMEOUT_MS 10000
#define PING_INTERVAL_MS   5000 /* an idle listener checks its connection this often */
#define BACKOFF_FIRST_MS   100
#define BACKOFF_MAX_MS     5000

/* A request the loop still expects an answer to. Loop thread only. */
typedef struct pending {
    struct pending *next;
    uint64_t id;
    void *cookie;
    bool is_cancelled;
} pending_t;

/*
 * A worker thread and its request queue (loop -> worker). Two of them: the
 * admin worker runs admin commands one at a time; the lookup worker answers
 * MIG_CMD_LOOKUP_KEY, so routing never waits behind a slow admin command.
 */
typedef struct worker {
    struct mig_ctl *m;
    bool is_lookup;
    uv_mutex_t lock; /* guards head/tail */
    uv_cond_t cond;
    mig_request_t *head;
    mig_request_t *tail;
    uv_thread_t thread;
    bool is_running; /* the thread was created (loop thread only) */
} worker_t;

struct mig_ctl {
    mig_outbox_t outbox; /* threads -> loop */
    mig_event_cb cb;
    void *arg;
    mig_env_t env; /* read-only while the threads run */

    worker_t admin;
    worker_t lookup;
    atomic_bool want_stop; /* also signalled through env.latch */

    uv_thread_t listener;
    PGconn *listen_conn; /* handed from mig_ctl_start to the listener thread */

    /* loop thread only */
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

/* Loop thread: filters replies whose cookie was cancelled, then hands ev to the user. */
static void ctl_deliver(void *arg, mig_event_t *ev)
{
    mig_ctl_t *m = arg;

    if (ev->kind == MIG_EV_REPLY) {
        pending_t **pp = &m->pending, *p;

        while (*pp != NULL && (*pp)->id != ev->request_id)
            pp = &(*pp)->next;
        p = *pp;
        BUG_ON(p == NULL, "reply to unknown request %llu", (unsigned long long)ev->request_id);
        *pp = p->next;
        ev->cookie = p->cookie;
        if (p->is_cancelled) {
            free(p);
            mig_event_free(ev);
            return;
        }
        free(p);
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
    mig_outbox_push(&m->outbox, ev);
    return 0;
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

/*
 * Serve one connection until it breaks or we stop. Returns true when
 * stopping. On return the connection is finished.
 */
static bool listen_on(mig_ctl_t *m, PGconn *c)
{
    uint64_t last_activity = cm_now_ms();

    while (!should_stop(m)) {
        int r;

        /* Notifications can arrive during any query, so look before sleeping. */
        if (PQconsumeInput(c) == 0)
            break;
        if (drain_notifies(c)) {
            if (publish_routes(m, c) != 0)
                break;
            last_activity = cm_now_ms();
            continue; /* more may have come in during the reload */
        }
        {
            uint64_t now = cm_now_ms();
            uint64_t due = last_activity + PING_INTERVAL_MS;
            int wait_ms = now >= due ? 0 : (int)(due - now);
            PGresult *res;

            /* Wait for the socket or the latch, at most until the next ping is due. */
            r = mig_pq_wait_readable(c, m->env.latch, wait_ms);
            if (r < 0)
                break; /* latch set, or the socket failed */
            if (r > 0)
                continue;
            res = mig_pq_exec(c, m->env.latch, CONNECT_TIMEOUT_MS, "SELECT 1", 0, NULL);
            if (res == NULL || !mig_pq_ok(res)) {
                PQclear(res);
                break;
            }
            PQclear(res);
            last_activity = cm_now_ms();
        }
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

static void worker_main(void *arg)
{
    worker_t *w = arg;
    mig_ctl_t *m = w->m;
    PGconn *control = NULL;
    mig_lookup_t *lk = w->is_lookup ? mig_lookup_new(&m->env) : NULL;
    mig_request_t *req;

    while ((req = worker_next(w)) != NULL) {
        mig_event_t *ev = event_new(MIG_EV_REPLY);

        ev->request_id = req->id;
        if (w->is_lookup)
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

static int worker_init(worker_t *w, mig_ctl_t *m, bool is_lookup)
{
    int rc;

    w->m = m;
    w->is_lookup = is_lookup;
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

/* Wake a worker so it sees want_stop, then join it. */
static void worker_stop(worker_t *w)
{
    if (!w->is_running)
        return;
    uv_mutex_lock(&w->lock);
    uv_cond_broadcast(&w->cond);
    uv_mutex_unlock(&w->lock);
    uv_thread_join(&w->thread);
    w->is_running = false;
}

/* ---- public API -------------------------------------------------------------------- */

static void env_destroy(mig_env_t *e)
{
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
    if (e->latch >= 0)
        close(e->latch);
}

static void ctl_free(mig_ctl_t *m)
{
    worker_destroy(&m->admin);
    worker_destroy(&m->lookup);
    while (m->pending != NULL) {
        pending_t *p = m->pending;

        m->pending = p->next;
        free(p);
    }
    env_destroy(&m->env);
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
    int rc;
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
    m->cb = cb;
    m->arg = arg;
    m->next_request_id = 1;
    atomic_init(&m->want_stop, false);

    rc = worker_init(&m->admin, m, false);
    if (rc != 0)
        goto fail_mutex;
    rc = worker_init(&m->lookup, m, true);
    if (rc != 0)
        goto fail_cond;
    rc = mig_latch_new();
    if (rc < 0)
        goto fail_latch;
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
    rc = uv_thread_create(&m->admin.thread, worker_main, &m->admin);
    if (rc == 0) {
        m->admin.is_running = true;
        rc = uv_thread_create(&m->lookup.thread, worker_main, &m->lookup);
        if (rc == 0)
            m->lookup.is_running = true;
    }
    if (rc != 0) {
        atomic_store(&m->want_stop, true);
        mig_latch_set(e->latch);
        uv_thread_join(&m->listener); /* it finishes c */
        worker_stop(&m->admin);
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
fail_latch:
    worker_destroy(&m->lookup);
fail_cond:
    worker_destroy(&m->admin);
fail_mutex:
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
    r->key_column = cmd->key_column ? cm_xstrdup(cmd->key_column) : NULL;
    r->key_value = cmd->key_value ? cm_xstrdup(cmd->key_value) : NULL;
    r->migration_id = cmd->migration_id;
    if (cmd->kind == MIG_CMD_ROUTE_TENANT)
        BUG_ON(r->tenant == NULL || r->store == NULL, "ROUTE TENANT without tenant or store");
    if (cmd->kind == MIG_CMD_LOOKUP_KEY)
        BUG_ON(r->key_column == NULL || r->key_value == NULL, "LOOKUP_KEY without key");

    /* Appended at the tail: replies mostly come back in order, so lookups stay short. */
    p->id = r->id;
    p->cookie = cookie;
    for (pp = &m->pending; *pp != NULL; pp = &(*pp)->next)
        ;
    *pp = p;

    worker_push(cmd->kind == MIG_CMD_LOOKUP_KEY ? &m->lookup : &m->admin, r);
}

void mig_ctl_cancel(mig_ctl_t *m, void *cookie)
{
    for (pending_t *p = m->pending; p != NULL; p = p->next)
        if (p->cookie == cookie)
            p->is_cancelled = true;
}

void mig_ctl_stop(mig_ctl_t *m)
{
    BUG_ON(m->is_stopped, "mig_ctl_stop called twice");
    m->is_stopped = true;
    atomic_store(&m->want_stop, true);
    mig_latch_set(m->env.latch);
    uv_thread_join(&m->listener);
    worker_stop(&m->admin);
    worker_stop(&m->lookup);
    /* No thread is left to push: the close callback frees what is queued, then m. */
    mig_outbox_close(&m->outbox, ctl_closed_cb);
}
