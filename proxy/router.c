/*
 * proxy/router.c - routes a session's messages to the stores that hold
 * their tenants.
 *
 * routing/ decides (pure); this file acts on the decisions: it keeps the
 * session's servers (one per store it used), its prepared statements and
 * where each is prepared, the transaction binding and the BEGIN held back
 * until the first routed statement, and it answers locally what no store
 * should see. Two rules keep the client's view exact:
 *
 *  - Answers come back in request order. Requests are outstanding on at
 *    most one store at a time (a message for another store waits until the
 *    current one answered everything), and anything pgshift answers itself
 *    waits the same way.
 *  - Requests pgshift adds on its own (a Parse of a statement the client
 *    prepared on another store, the held BEGIN, session SETs) are recorded
 *    in the server's response queue as swallowed, so their answers never
 *    reach the client.
 */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "migrator/migrator.h"
#include "proxy/proxy.h"
#include "routing/routing.h"

/* A prepared statement of the session. */
typedef struct px_stmt {
    char *name;         /* "" = the unnamed statement */
    route_class_t *cls; /* classification of the text (a cache reference) */
    uint8_t *parse;     /* the client's whole Parse message, to prepare it on another store */
    size_t parse_len;
    uint16_t n_types;   /* parameter types given in the Parse */
    uint32_t types[16]; /* the first 16 of them (routing only needs the tenant/key ones) */
    uint64_t on_store;  /* bit i: prepared on store i */
} px_stmt_t;

typedef enum rt_rc {
    RT_DONE, /* the message was handled: consume it */
    RT_WAIT, /* keep the message; px_client_kick resumes */
    RT_GONE, /* the client is closing */
} rt_rc_t;

static void cl_hold_end(px_client_t *c, px_hold_outcome_t outcome, int to_store);

/* ---- setup ---- */

/*
 * A cutover this process takes part in: one per route in CUTOVER, kept
 * across table installs while (tenant, migration, attempt) stay the same.
 */
typedef struct rt_cutover {
    char *tenant;         /* owned */
    int store;            /* the tenant's store (the source) */
    int64_t migration_id; /* */
    int64_t attempt;      /* cutover_attempt */
    uint64_t hold_gen;    /* work that began before this generation must drain */
    uint64_t start_ms;    /* cm_now_ms() when this process began holding */
    bool is_acked;        /* mig_ctl_cutover_ack was called */
} rt_cutover_t;

struct px_router {
    route_tenancy_t tenancy;
    route_cache_t *cache;
    route_aggmap_t *aggs;
    route_table_t *table; /* frozen snapshot */
    mig_ctl_t *ctl;
    uint64_t next_lookup;
    rt_cutover_t *cutovers; /* owned, n_cutovers of them */
    size_t n_cutovers;
};

static route_table_t *empty_table(px_proxy_t *p)
{
    const char **names = cm_xcalloc(p->n_stores, sizeof(*names));
    route_table_t *t;

    for (size_t i = 0; i < p->n_stores; i++)
        names[i] = p->stores[i]->name;
    t = route_table_new(p->n_stores, names);
    free(names);
    route_table_freeze(t);
    return t;
}

static route_phase_t phase_from(const char *s)
{
    static const struct {
        const char *name;
        route_phase_t phase;
    } map[] = {
        { "PENDING", ROUTE_PHASE_PENDING },       { "BULK_COPY", ROUTE_PHASE_BULK_COPY },
        { "DUAL_WRITE", ROUTE_PHASE_DUAL_WRITE }, { "CUTOVER", ROUTE_PHASE_CUTOVER },
        { "COMPLETED", ROUTE_PHASE_COMPLETED },   { "ABORTED", ROUTE_PHASE_ABORTED },
        { "FAILED", ROUTE_PHASE_FAILED },
    };

    for (size_t i = 0; s != NULL && i < CM_ARRAY_LEN(map); i++)
        if (strcasecmp(s, map[i].name) == 0)
            return map[i].phase;
    return ROUTE_PHASE_NONE;
}

/* ---- cutover: hold, drain, acknowledge ---- */

static void cutovers_free(struct px_router *r)
{
    for (size_t i = 0; i < r->n_cutovers; i++)
        free(r->cutovers[i].tenant);
    free(r->cutovers);
    r->cutovers = NULL;
    r->n_cutovers = 0;
}

/*
 * The cutovers of the new table t: the ones already known keep their start
 * and acknowledgement, new ones start now. Borrows t.
 */
static void cutovers_update(px_proxy_t *p, const route_table_t *t)
{
    struct px_router *r = p->router;
    rt_cutover_t *next = NULL;
    size_t n = 0, cap = 0;
    uint64_t now = cm_now_ms();

    p->n_cutover_unacked = 0;
    for (size_t i = 0; i < route_table_len(t); i++) {
        const route_entry_t *e = route_table_at(t, i);
        rt_cutover_t *c = NULL;

        if (e->phase != ROUTE_PHASE_CUTOVER)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 4;
            next = cm_xrealloc(next, cap * sizeof(*next));
        }
        for (size_t k = 0; k < r->n_cutovers; k++) {
            rt_cutover_t *o = &r->cutovers[k];

            if (o->tenant != NULL && o->migration_id == e->migration_id &&
                o->attempt == e->cutover_attempt && strcmp(o->tenant, e->tenant) == 0) {
                next[n] = *o;
                o->tenant = NULL; /* moved */
                c = &next[n];
                break;
            }
        }
        if (c == NULL) {
            c = &next[n];
            memset(c, 0, sizeof(*c));
            c->tenant = cm_xstrdup(e->tenant);
            c->migration_id = e->migration_id;
            c->attempt = e->cutover_attempt;
            c->start_ms = now;
            LOG_INFO(NULL,
                     "tenant %s at cutover (migration %lld, attempt %lld): holding its new work",
                     e->tenant, (long long)e->migration_id, (long long)e->cutover_attempt);
            if (e->cutover_attempt <= 0 || e->migration_id <= 0) {
                LOG_WARN(NULL, "tenant %s at cutover without a migration attempt: not acknowledged",
                         e->tenant);
                c->is_acked = true;
            }
        }
        c->store = route_entry_store(e);
        c->hold_gen = e->hold_gen;
        if (!c->is_acked)
            p->n_cutover_unacked++;
        n++;
    }
    for (size_t k = 0; k < r->n_cutovers; k++) {
        rt_cutover_t *o = &r->cutovers[k];

        if (o->tenant != NULL && !o->is_acked)
            LOG_INFO(NULL,
                     "tenant %s left cutover (migration %lld, attempt %lld) before this process "
                     "drained",
                     o->tenant, (long long)o->migration_id, (long long)o->attempt);
    }
    cutovers_free(r);
    r->cutovers = next;
    r->n_cutovers = n;
}

/* Whether a store of `store` still carries work that began before generation gen. */
static bool store_has_work_before(px_proxy_t *p, int store, uint64_t gen)
{
    cm_list_t *it;

    for (it = p->servers.next; it != &p->servers; it = it->next) {
        px_server_t *s = cm_container_of(it, px_server_t, node);

        if (s->is_busy && s->state == PX_SV_ACTIVE && s->client != NULL &&
            s->store->index == store && s->work_gen < gen)
            return true;
    }
    return false;
}

void px_router_check_drain(px_proxy_t *p)
{
    struct px_router *r = p->router;
    uint64_t now;

    if (p->n_cutover_unacked <= 0 || r == NULL)
        return;
    now = cm_now_ms();
    for (size_t i = 0; i < r->n_cutovers; i++) {
        rt_cutover_t *c = &r->cutovers[i];

        if (c->is_acked || store_has_work_before(p, c->store, c->hold_gen))
            continue;
        c->is_acked = true;
        p->n_cutover_unacked--;
        LOG_INFO(NULL,
                 "tenant %s drained for cutover (migration %lld, attempt %lld) on store %s in "
                 "%llu ms: acknowledged",
                 c->tenant, (long long)c->migration_id, (long long)c->attempt,
                 p->stores[c->store]->name, (unsigned long long)(now - c->start_ms));
        if (r->ctl != NULL)
            mig_ctl_cutover_ack(r->ctl, c->migration_id, c->attempt);
    }
}

int px_router_n_held(px_proxy_t *p)
{
    cm_list_t *it;
    int n = 0;

    for (it = p->clients.next; it != &p->clients; it = it->next)
        if (cm_container_of(it, px_client_t, node)->hold_start_us != 0)
            n++;
    return n;
}

/* Build a frozen table from the control store's routes. */
static void router_set_routes(px_proxy_t *p, const mig_route_t *routes, size_t n)
{
    struct px_router *r = p->router;
    const char **names = cm_xcalloc(p->n_stores, sizeof(*names));
    route_table_t *t;

    for (size_t i = 0; i < p->n_stores; i++)
        names[i] = p->stores[i]->name;
    t = route_table_new(p->n_stores, names);
    free(names);
    for (size_t i = 0; i < n; i++) {
        px_store_t *s = px_proxy_store(p, routes[i].store);
        px_store_t *target =
            routes[i].target_store ? px_proxy_store(p, routes[i].target_store) : NULL;
        route_entry_t e = { 0 };

        if (s == NULL) {
            LOG_WARN(NULL, "route of tenant %s names unknown store %s: ignored", routes[i].tenant,
                     routes[i].store);
            continue;
        }
        e.tenant = routes[i].tenant;
        e.store = s->index;
        e.phase = phase_from(routes[i].phase);
        e.state =
            strcmp(routes[i].state, "migrating") == 0 ? ROUTE_STATE_MIGRATING : ROUTE_STATE_NORMAL;
        e.target_store = target ? target->index : -1;
        e.version = routes[i].version;
        e.migration_id = routes[i].migration_id;
        e.cutover_attempt = e.phase == ROUTE_PHASE_CUTOVER ? routes[i].cutover_attempt : 0;
        route_table_put(t, &e);
    }
    p->route_gen++;
    route_table_set_hold_gens(t, r->table, p->route_gen);
    route_table_freeze(t);
    route_table_unref(r->table);
    r->table = t;
    cutovers_update(p, t);
    LOG_DEBUG(NULL, "route table: %zu routes, generation %llu", route_table_len(t),
              (unsigned long long)p->route_gen);
}

static void router_lookup_done(px_proxy_t *p, uint64_t id, mig_result_t *res);

static void router_event_cb(void *arg, mig_event_t *ev)
{
    px_proxy_t *p = arg;

    switch (ev->kind) {
    case MIG_EV_ROUTES:
        router_set_routes(p, ev->routes, ev->n_routes);
        /* A process without work from before the hold acknowledges at once. */
        px_router_check_drain(p);
        /* Held clients may now route elsewhere. */
        {
            cm_list_t *it, *tmp;

            cm_list_foreach_safe(it, tmp, &p->clients) {
                px_client_t *c = cm_container_of(it, px_client_t, node);

                if (c->is_waiting && c->lookup_id == 0)
                    px_client_kick(c);
            }
        }
        break;
    case MIG_EV_REPLY:
        if (ev->cookie == (void *)p->router) {
            router_lookup_done(p, 0, ev->result);
        } else {
            px_admin_reply(p, ev->cookie, ev->result);
            ev->result = NULL;
        }
        break;
    case MIG_EV_CONTROL_DOWN:
        LOG_WARN(NULL, "control store unreachable: routes kept as they were");
        break;
    case MIG_EV_CONTROL_UP:
        LOG_INFO(NULL, "control store reachable again");
        /* Acknowledgements are idempotent: repeat the ones of cutovers still on. */
        for (size_t i = 0; i < p->router->n_cutovers; i++) {
            rt_cutover_t *c = &p->router->cutovers[i];

            if (c->is_acked && c->attempt > 0 && c->migration_id > 0 && p->router->ctl != NULL)
                mig_ctl_cutover_ack(p->router->ctl, c->migration_id, c->attempt);
        }
        break;
    case MIG_EV_ROUTE_PATCH: /* merged into MIG_EV_ROUTES by migrator/ */
    default:
        break;
    }
    mig_event_free(ev);
}

int px_router_init(px_proxy_t *p, char **err)
{
    struct px_router *r = cm_xcalloc(1, sizeof(*r));
    cfg_t *cfg = p->cfg;
    px_store_t *ctl_store = px_proxy_store(p, cfg->control_store);
    const char **names = cm_xcalloc(p->n_stores, sizeof(*names));
    const char **infos = cm_xcalloc(p->n_stores, sizeof(*infos));
    mig_tenancy_t mt = { 0 };
    mig_settings_t defaults;
    int rc;

    p->router = r;
    route_tenancy_init(&r->tenancy, cfg->tenant_tables, cfg->tenant_column, cfg->key_columns,
                       cfg->position_column, cfg->row_key);
    r->cache = route_cache_new((size_t)cfg->statement_cache_size, &r->tenancy);
    r->aggs = route_aggmap_new((size_t)cfg->key_map_size);
    r->table = empty_table(p);
    for (size_t i = 0; i < p->n_stores; i++) {
        names[i] = p->stores[i]->name;
        infos[i] = p->stores[i]->conninfo;
    }
    mt.n_tables = r->tenancy.n_tables;
    mt.tables = (const char *const *)r->tenancy.tables;
    mt.tenant_column = r->tenancy.tenant_column;
    mt.default_store = p->default_store->name;
    mt.position_column = r->tenancy.position_column;
    mt.row_key = r->tenancy.row_key;
    mig_settings_default(&defaults);
    defaults.batch_size = cfg->mig_batch_size;
    defaults.max_bulk_copy_rate = cfg->mig_max_bulk_copy_rate;
    defaults.dual_write_timeout_minutes = cfg->mig_dual_write_timeout_minutes;
    defaults.cutover_max_lag_events = cfg->mig_cutover_max_lag_events;
    defaults.cutover_timeout_ms = cfg->mig_cutover_timeout_ms;
    defaults.position_mapping_enabled = cfg->mig_position_mapping_enabled;
    defaults.verify_consistency = cfg->mig_verify_consistency;
    defaults.migrate_subscriptions = cfg->mig_migrate_subscriptions;
    defaults.auto_cutover = cfg->mig_auto_cutover;
    defaults.dual_write_interval_ms = cfg->mig_dual_write_interval_ms;
    defaults.failure_threshold = cfg->mig_failure_threshold;
    defaults.recovery_timeout_seconds = cfg->mig_recovery_timeout_seconds;
    defaults.half_open_max_calls = cfg->mig_half_open_max_calls;
    mt.defaults = &defaults;
    BUG_ON(ctl_store == NULL, "control store %s missing", cfg->control_store);
    rc = mig_ctl_start(p->loop, ctl_store->conninfo, names, infos, p->n_stores, &mt,
                       router_event_cb, p, &r->ctl);
    free(names);
    free(infos);
    if (rc < 0) {
        *err = cm_xasprintf("cannot use the control store \"%s\": %s", ctl_store->name,
                            rc == -ECONNREFUSED ? "unreachable" : "schema setup failed");
        return -1;
    }
    return 0;
}

void px_router_stop(px_proxy_t *p)
{
    struct px_router *r = p->router;

    if (r == NULL || r->ctl == NULL)
        return;
    mig_ctl_stop(r->ctl);
    r->ctl = NULL;
}

void px_router_destroy(px_proxy_t *p)
{
    struct px_router *r = p->router;

    if (r == NULL)
        return;
    route_cache_free(r->cache);
    route_aggmap_free(r->aggs);
    route_table_unref(r->table);
    route_tenancy_destroy(&r->tenancy);
    cutovers_free(r);
    free(r);
    p->router = NULL;
    p->n_cutover_unacked = 0;
}

/* Admin commands the migrator serves; false when `sql` is not one of them. */
bool px_router_admin(px_client_t *c, const char *sql)
{
    px_proxy_t *p = c->conn.proxy;
    struct px_router *r = p->router;
    mig_cmd_t cmd;
    char *storage = NULL, *err = NULL;
    int rc = mig_cmd_parse(sql, &cmd, &storage, &err);

    if (rc == 1) {
        free(storage);
        return false;
    }
    if (rc < 0) {
        px_client_error(c, "42601", "%s", err ? err : "syntax error");
        free(err);
        free(storage);
        px_client_send_ready(c);
        return true;
    }
    cmd.user = c->user;
    mig_ctl_request(r->ctl, &cmd, c);
    free(storage);
    c->is_waiting = 1; /* the reply (px_admin_reply) answers and resumes */
    return true;
}

void px_router_client_gone(px_client_t *c)
{
    px_proxy_t *p = c->conn.proxy;
    struct px_router *r = p->router;

    if (r != NULL && r->ctl != NULL && c->is_admin)
        mig_ctl_cancel(r->ctl, c);
    cl_hold_end(c, PX_HOLD_GONE, -1);
    for (size_t i = 0; i < c->n_stmts; i++) {
        route_class_unref(c->stmts[i].cls);
        free(c->stmts[i].name);
        free(c->stmts[i].parse);
    }
    free(c->stmts);
    c->stmts = NULL;
    c->n_stmts = c->cap_stmts = 0;
    cm_buf_free(&c->batch);
    cm_buf_free(&c->session_sql);
    free(c->gens);
    c->gens = NULL;
    c->n_gens = 0;
    free(c->deferred);
    c->deferred = NULL;
    free(c->tenant);
    c->tenant = NULL;
    free(c->lookup_key);
    c->lookup_key = NULL;
}

/* ---- aggregate lookups ---- */

/*
 * A key lookup answered: learn key -> tenant (or "no tenant"), then let
 * every session waiting on that key decide again.
 */
static void router_lookup_done(px_proxy_t *p, uint64_t id, mig_result_t *res)
{
    struct px_router *r = p->router;
    cm_list_t *it, *tmp;
    const char *key = NULL, *tenant = NULL;

    (void)id;
    if (res != NULL && res->err_sqlstate == NULL && res->n_rows == 1 && res->n_cols >= 2) {
        key = res->cells[0];
        tenant = res->cells[1];
    } else if (res != NULL && res->err_message != NULL) {
        LOG_WARN(NULL, "key lookup failed: %s", res->err_message);
    }
    if (key != NULL)
        route_aggmap_learn(r->aggs, key, strlen(key), tenant, tenant ? strlen(tenant) : 0);
    cm_list_foreach_safe(it, tmp, &p->clients) {
        px_client_t *c = cm_container_of(it, px_client_t, node);

        if (c->lookup_id == 0 || c->lookup_key == NULL)
            continue;
        if (key != NULL && strcmp(c->lookup_key, key) != 0)
            continue;
        if (key == NULL) {
            /* Failed lookup: route the key to the default store for now. */
            route_aggmap_learn(r->aggs, c->lookup_key, strlen(c->lookup_key), NULL, 0);
        }
        c->lookup_id = 0;
        px_client_kick(c);
    }
}

/* ---- statements ---- */

static px_stmt_t *stmt_find(px_client_t *c, const char *name, size_t len)
{
    for (size_t i = 0; i < c->n_stmts; i++)
        if (strlen(c->stmts[i].name) == len && memcmp(c->stmts[i].name, name, len) == 0)
            return &c->stmts[i];
    return NULL;
}

static void stmt_forget(px_client_t *c, px_stmt_t *st)
{
    size_t i = (size_t)(st - c->stmts);

    route_class_unref(st->cls);
    free(st->name);
    free(st->parse);
    c->stmts[i] = c->stmts[--c->n_stmts];
}

/* ---- servers ---- */

static px_server_t *cl_server(px_client_t *c, int store)
{
    return (size_t)store < c->n_servers ? c->servers[store] : NULL;
}

void px_router_server_gone(px_client_t *c, px_server_t *s)
{
    for (size_t i = 0; i < c->n_servers; i++)
        if (c->servers[i] == s)
            c->servers[i] = NULL;
    if (c->server == s)
        c->server = NULL;
}

/* Requests the client still waits answers for, on any of its servers. */
static bool cl_busy_elsewhere(px_client_t *c, int store)
{
    for (size_t i = 0; i < c->n_servers; i++) {
        px_server_t *s = c->servers[i];

        if (s != NULL && (int)i != store && px_server_visible_pending(s) > 0)
            return true;
    }
    return false;
}

static bool cl_busy(px_client_t *c)
{
    return cl_busy_elsewhere(c, -1);
}

/* The session's state generation on `store` (see px_client_t.gens). */
static uint64_t *cl_gen(px_client_t *c, int store)
{
    if ((size_t)store >= c->n_gens) {
        size_t n = (size_t)store + 1;

        c->gens = cm_xrealloc(c->gens, n * sizeof(*c->gens));
        memset(c->gens + c->n_gens, 0, (n - c->n_gens) * sizeof(*c->gens));
        c->n_gens = n;
    }
    return &c->gens[store];
}

/* s holds the session's state on its store as it is now. */
static void cl_gen_sync(px_client_t *c, px_server_t *s)
{
    s->client_gen = *cl_gen(c, s->store->index);
}

/*
 * The session's state on s's store changed (a named statement prepared or
 * closed) and s got the change: the store's pooled servers that hold an
 * older state of this session are reset before it uses them again.
 */
static void cl_state_changed(px_client_t *c, px_server_t *s)
{
    (*cl_gen(c, s->store->index))++;
    cl_gen_sync(c, s);
}

/* st was prepared on s (sent now, or held in the batch s gets). */
static void stmt_prepared_on(px_client_t *c, px_stmt_t *st, px_server_t *s)
{
    st->on_store |= (uint64_t)1 << s->store->index;
    if (st->name[0] != '\0') /* the unnamed one is never trusted across borrows */
        cl_state_changed(c, s);
}

/* A statement that changes session settings (not SHOW, not NOTIFY). */
static bool stmt_sets(const route_stmt_t *st)
{
    return (st->kind == ROUTE_KIND_SESSION_SET || st->kind == ROUTE_KIND_SESSION_OTHER) &&
           !st->is_show && !st->is_notify;
}

static void inject_query(px_server_t *s, const char *sql)
{
    cm_buf_t b = { 0 };

    wire_put_query(&b, sql);
    px_conn_send(&s->conn, b.data, b.len);
    cm_buf_free(&b);
    px_server_expect(s, WIRE_MSG_QUERY, true);
}

/* Make room for the session's server on `store` in c->servers (NULL while none). */
static void cl_servers_fit(px_client_t *c, int store)
{
    px_proxy_t *p = c->conn.proxy;

    if ((size_t)store >= c->n_servers) {
        size_t n = p->n_stores > (size_t)store ? p->n_stores : (size_t)store + 1;

        c->servers = cm_xrealloc(c->servers, n * sizeof(*c->servers));
        for (size_t i = c->n_servers; i < n; i++)
            c->servers[i] = NULL;
        c->n_servers = n;
    }
}

/*
 * A pooled server becomes the session's on its store. A backend another
 * session used last holds none of this session's statements (they are
 * prepared again when used) and may hold that session's state, whether
 * pgshift saw it change or not (set_config() in a query, a SET held with a
 * BEGIN): reset it, then replay this session's settings. A new server
 * replays them when it logs in (px_router_server_ready).
 */
static void cl_adopt(px_client_t *c, px_server_t *s)
{
    uint64_t bit = (uint64_t)1 << s->store->index;

    c->servers[s->store->index] = s;
    if (c->is_pinned)
        px_pool_pin(s);
    if (s->last_client == c->id && s->client_gen == *cl_gen(c, s->store->index)) {
        /* Its own backend, as it left it; only the unnamed statement may differ. */
        px_stmt_t *un = stmt_find(c, "", 0);

        if (un != NULL)
            un->on_store &= ~bit;
        return;
    }
    for (size_t i = 0; i < c->n_stmts; i++)
        c->stmts[i].on_store &= ~bit;
    if (s->state == PX_SV_ACTIVE) {
        if (s->last_client != 0)
            inject_query(s, "DISCARD ALL");
        px_router_server_ready(c, s);
    }
    s->last_client = c->id;
    cl_gen_sync(c, s);
}

/*
 * Session state a statement leaves on its backend. Plain SETs sent as
 * simple queries are replayed on the next server the session borrows;
 * state that cannot follow it (LISTEN, temp tables, SQL PREPARE, held
 * cursors, advisory locks, and settings changed through the extended
 * protocol) pins the session to its servers for good.
 */
static void cl_note_session(px_client_t *c, const route_stmt_t *st, bool is_extended, bool in_txn)
{
    bool pins = st->pins_session;
    /* The tenant setting is pgshift's own (apply_session_set), wherever it comes from. */
    bool sets = stmt_sets(st) && st->kind == ROUTE_KIND_SESSION_OTHER && !st->set_is_local;

    /* Replayed are simple-query settings outside transactions (session_sql). */
    if (sets && (in_txn || is_extended))
        pins = true;
    if (!pins || c->is_pinned || !px_pool_on(c->conn.proxy))
        return;
    c->is_pinned = 1;
    LOG_DEBUG(c->ctx, "session state that cannot move (%s): keeping its servers",
              route_kind_str(st->kind));
    for (size_t i = 0; i < c->n_servers; i++)
        if (c->servers[i] != NULL)
            px_pool_pin(c->servers[i]);
}

void px_router_server_idle(px_client_t *c, px_server_t *s)
{
    int i = s->store->index;

    if (c->is_pinned || cl_server(c, i) != s)
        return;
    if (c->fwd_left > 0 && c->server == s) {
        /* The store ended a COPY (an error) while a CopyData message was half
         * forwarded: its input is cut mid-message, so it is closed, and the
         * rest of the client's COPY is dropped (the client has the error). */
        c->servers[i] = NULL;
        c->server = NULL;
        px_server_release(s);
        return;
    }
    /* Not while a batch runs there or a transaction is bound there. */
    if (c->batch_store == i || c->bound_store == i)
        return;
    if (!px_pool_checkin(s))
        return;
    c->servers[i] = NULL;
    if (c->server == s)
        c->server = NULL;
}

/*
 * The logged-in server of `store` for this session, or NULL when it must be
 * connected first (the client waits; px_client_server_ready kicks it).
 */
static px_server_t *cl_use_store(px_client_t *c, int store, rt_rc_t *rc)
{
    px_proxy_t *p = c->conn.proxy;
    px_server_t *s;

    cl_servers_fit(c, store);
    s = c->servers[store];
    if (s != NULL)
        s->is_warm = 0; /* used from here on */
    if (s == NULL && px_pool_on(p)) {
        switch (px_pool_take(c, p->stores[store], &s)) {
        case PX_POOL_LENT:
        case PX_POOL_NEW:
            cl_adopt(c, s);
            break;
        case PX_POOL_WAIT:
            c->is_waiting = 1;
            *rc = RT_WAIT;
            return NULL;
        case PX_POOL_FAIL:
        default:
            s = NULL;
            break;
        }
    } else if (s == NULL && px_server_connect(p, p->stores[store], c, &s) == 0) {
        c->servers[store] = s;
    }
    if (s == NULL) {
        px_client_fail(c, "08006", "could not connect to store \"%s\"", p->stores[store]->name);
        *rc = RT_GONE;
        return NULL;
    }
    if (s->state != PX_SV_ACTIVE) {
        c->is_waiting = 1;
        *rc = RT_WAIT;
        return NULL;
    }
    c->server = s;
    c->store = s->store;
    return s;
}

/*
 * Open the session's connection to `store` ahead of need, if it has none:
 * a client held at a cutover logs in to the target meanwhile (and gets its
 * session settings there), so the release does not wait for a login. If
 * the connection fails, nothing fails with it.
 */
static void cl_warm_store(px_client_t *c, int store)
{
    px_proxy_t *p = c->conn.proxy;
    px_server_t *s;

    if (store < 0 || (size_t)store >= p->n_stores)
        return;
    cl_servers_fit(c, store);
    if (c->servers[store] != NULL)
        return;
    if (px_pool_on(p)) {
        /* A free pooled server is as warm as it gets; else open one if there is room. */
        px_store_t *st = p->stores[store];

        if (st->n_idle > 0 || st->n_waiting > 0 || st->n_pooled >= p->cfg->pool_size ||
            px_pool_take(c, st, &s) != PX_POOL_NEW)
            return;
        cl_adopt(c, s);
    } else if (px_server_connect(p, p->stores[store], c, &s) < 0) {
        return;
    }
    s->is_warm = 1;
    c->servers[store] = s;
    LOG_DEBUG(c->ctx, "held: warming a connection to store %s", p->stores[store]->name);
}

/*
 * The session's logged-in server on `store`, once no other store owes the
 * client answers (answers must come back in request order). NULL with *rc
 * RT_WAIT (the client waits and is kicked) or RT_GONE.
 */
static px_server_t *cl_ready_server(px_client_t *c, int store, rt_rc_t *rc)
{
    if (cl_busy_elsewhere(c, store)) {
        c->is_waiting = 1;
        *rc = RT_WAIT;
        return NULL;
    }
    return cl_use_store(c, store, rc);
}

/* ---- local answers ---- */

static void batch_answer_local(px_client_t *c);

static uint8_t cl_txn_status(px_client_t *c)
{
    px_server_t *b = c->bound_store >= 0 ? cl_server(c, c->bound_store) : NULL;

    if (b != NULL)
        return b->txn_status;
    return c->in_txn ? WIRE_TXN_INTXN : WIRE_TXN_IDLE;
}

static void cl_local_ready(px_client_t *c)
{
    c->txn_status = cl_txn_status(c);
    px_client_send_ready(c);
}

/* Error text inside a DO block: single quotes doubled. */
static char *raise_sql(const char *sqlstate, const char *msg)
{
    cm_buf_t b = { 0 };
    char *out;

    cm_buf_append_cstr(&b, "DO $pgshift$BEGIN RAISE EXCEPTION USING ERRCODE = '");
    b.len--;
    cm_buf_append(&b, sqlstate, strlen(sqlstate));
    cm_buf_append(&b, "', MESSAGE = '", 14);
    for (const char *m = msg; *m; m++) {
        if (*m == '\'')
            cm_buf_append_u8(&b, '\'');
        if (*m == '$')
            continue; /* keep the dollar quote intact */
        cm_buf_append_u8(&b, (uint8_t)*m);
    }
    cm_buf_append(&b, "'; END$pgshift$", 15);
    cm_buf_append_u8(&b, 0);
    out = (char *)b.data;
    return out;
}

/*
 * Refuse a statement. When a store carries the session's current work (a
 * bound transaction or the current extended batch), the error is raised
 * there, so the store's transaction fails exactly as PostgreSQL would fail
 * it; otherwise it is answered here, once every earlier answer is out.
 */
static rt_rc_t cl_refuse(px_client_t *c, bool is_simple, const char *sqlstate, const char *msg)
{
    int carrier = c->bound_store >= 0 ? c->bound_store : c->batch_store;
    px_server_t *s = carrier >= 0 ? cl_server(c, carrier) : NULL;

    LOG_DEBUG(c->ctx, "refused: %s (%s)", msg, sqlstate);
    if (s != NULL && s->state == PX_SV_ACTIVE && !cl_busy_elsewhere(c, carrier)) {
        char *sql = raise_sql(sqlstate, msg);
        cm_buf_t b = { 0 };

        if (is_simple) {
            wire_put_query(&b, sql);
            px_conn_send(&s->conn, b.data, b.len);
            px_server_expect(s, WIRE_MSG_QUERY, false);
        } else {
            px_stmt_t *un = stmt_find(c, "", 0);

            wire_put_parse(&b, "", sql, 0, NULL);
            px_server_expect(s, WIRE_MSG_PARSE, true);
            {
                /* Bind "" "" with no parameters, then Execute. */
                size_t at = wire_msg_begin(&b, WIRE_MSG_BIND);

                cm_buf_append_u8(&b, 0);
                cm_buf_append_u8(&b, 0);
                cm_buf_append_u16(&b, 0);
                cm_buf_append_u16(&b, 0);
                cm_buf_append_u16(&b, 0);
                wire_msg_end(&b, at);
                px_server_expect(s, WIRE_MSG_BIND, true);
                at = wire_msg_begin(&b, WIRE_MSG_EXECUTE);
                cm_buf_append_u8(&b, 0);
                cm_buf_append_u32(&b, 0);
                wire_msg_end(&b, at);
                px_server_expect(s, WIRE_MSG_EXECUTE, false);
            }
            px_conn_send(&s->conn, b.data, b.len);
            if (un != NULL)
                un->on_store &= ~((uint64_t)1 << carrier); /* we replaced it there */
            c->batch_store = carrier;
            c->batch_refused = true;
        }
        cm_buf_free(&b);
        free(sql);
        c->server = s;
        return RT_DONE;
    }
    if (cl_busy(c)) {
        c->is_waiting = 1;
        return RT_WAIT;
    }
    if (!is_simple && c->batch.len > 0)
        batch_answer_local(c); /* held Parses were fine: their answers come first */
    px_client_error(c, sqlstate, "%s", msg);
    if (is_simple)
        cl_local_ready(c);
    else
        c->batch_refused = true;
    return RT_DONE;
}

/* ---- transactions ---- */

static void defer_sql(px_client_t *c, const char *sql, size_t len)
{
    size_t old = c->deferred ? strlen(c->deferred) : 0;

    c->has_deferred_work = old > 0; /* more than the BEGIN itself */
    c->deferred = cm_xrealloc(c->deferred, old + len + 3);
    if (old > 0) {
        memcpy(c->deferred + old, "; ", 2);
        old += 2;
    }
    memcpy(c->deferred + old, sql, len);
    c->deferred[old + len] = '\0';
}

/*
 * Transaction pooling: a transaction bound only tentatively that moves to
 * another store is rolled back on the old one before the new store's server
 * is asked for, so the session never holds one pooled server while it waits
 * for another (two sessions doing that to each other would wait forever).
 */
static void cl_unbind_early(px_client_t *c, const route_decision_t *d)
{
    px_server_t *old;

    if (d == NULL || !d->rebind || c->bound_store < 0 || c->bound_store == d->store ||
        !px_pool_on(c->conn.proxy) || cl_busy_elsewhere(c, d->store))
        return;
    old = cl_server(c, c->bound_store);
    if (old != NULL && old->state == PX_SV_ACTIVE)
        inject_query(old, "ROLLBACK");
    c->bound_store = -1;
}

/* Apply a SEND decision's binding before the statement goes to `s`. */
static void cl_bind_txn(px_client_t *c, const route_decision_t *d, px_server_t *s)
{
    if (d->rebind && c->bound_store >= 0 && c->bound_store != d->store) {
        px_server_t *old = cl_server(c, c->bound_store);

        if (old != NULL && old->state == PX_SV_ACTIVE)
            inject_query(old, "ROLLBACK");
        c->bound_store = -1;
    }
    if (!d->binds)
        return;
    if (c->bound_store < 0 && c->deferred != NULL)
        inject_query(s, c->deferred); /* the BEGIN held back */
    c->bound_store = d->store;
    c->bound_tentative = d->tentative;
    if (!d->tentative) {
        free(c->deferred);
        c->deferred = NULL;
    }
}

/* A new server of the session logged in: replay the session's settings first. */
void px_router_server_ready(px_client_t *c, px_server_t *s)
{
    cl_gen_sync(c, s);
    if (c->session_sql.len > 0 && !c->is_admin) {
        char *sql = cm_xstrndup((const char *)c->session_sql.data, c->session_sql.len);

        inject_query(s, sql);
        free(sql);
    }
}

/* A ReadyForQuery from `s` the client saw: track the transaction. */
void px_router_ready(px_client_t *c, px_server_t *s, uint8_t status)
{
    if (status == WIRE_TXN_IDLE) {
        /* An unbound transaction (BEGIN held here) outlives a store's 'I'. */
        if (c->bound_store == s->store->index || (c->bound_store < 0 && c->deferred == NULL)) {
            c->in_txn = false;
            c->bound_store = -1;
            c->bound_tentative = false;
            free(c->deferred);
            c->deferred = NULL;
        }
    } else {
        c->in_txn = true;
        if (c->bound_store < 0) {
            c->bound_store = s->store->index;
            c->bound_tentative = false;
        }
    }
}

/* ---- decisions ---- */

/*
 * The route generation at which the session's work on `store` began: the
 * store's, while it is busy with earlier work; else now (the work starts
 * with this statement).
 */
static uint64_t cl_work_gen(px_client_t *c, int store)
{
    px_server_t *s = store >= 0 ? cl_server(c, store) : NULL;

    if (s != NULL && s->is_busy)
        return s->work_gen;
    return c->conn.proxy->route_gen;
}

static void cl_session(px_client_t *c, route_session_t *ss)
{
    px_proxy_t *p = c->conn.proxy;
    /* A batch binds like a transaction once it did more than Parse/Describe. */
    int batch = c->batch_effects ? c->batch_store : -1;
    int bound = c->bound_store >= 0 ? c->bound_store : batch;

    ss->tenant = c->tenant;
    ss->bound_store = bound;
    ss->bound_tentative = c->bound_store >= 0 ? c->bound_tentative : false;
    ss->in_txn = c->in_txn || batch >= 0;
    ss->bound_gen = cl_work_gen(c, bound);
    ss->default_store = p->default_store->index;
    ss->aggs = p->router->aggs;
}

/* Start a lookup of an unknown aggregate; the client waits for it. */
static rt_rc_t cl_lookup(px_client_t *c, const route_decision_t *d)
{
    px_proxy_t *p = c->conn.proxy;
    struct px_router *r = p->router;
    mig_cmd_t cmd = { 0 };

    cmd.kind = MIG_CMD_LOOKUP_KEY;
    cmd.key_value = d->key;
    cmd.key_column = r->tenancy.key_columns[d->key_column >= 0 ? d->key_column : 0];
    free(c->lookup_key);
    c->lookup_key = cm_xstrdup(d->key);
    c->lookup_id = ++r->next_lookup;
    mig_ctl_request(r->ctl, &cmd, r); /* the router itself is the cookie of lookups */
    c->is_waiting = 1;
    LOG_DEBUG(c->ctx, "looking up the tenant of %s = %s", cmd.key_column, d->key);
    return RT_WAIT;
}

static void apply_session_set(px_client_t *c, const route_stmt_t *st, const route_params_t *bp)
{
    if (st->set_op == ROUTE_SET_TENANT) {
        const route_val_t *v = &st->set_value;

        free(c->tenant);
        c->tenant = NULL;
        if (v->kind == ROUTE_VAL_LITERAL && v->text && v->text[0])
            c->tenant = cm_xstrdup(v->text);
        else if (v->kind == ROUTE_VAL_PARAM && bp && v->param >= 1 && (size_t)v->param <= bp->n &&
                 bp->v[v->param - 1].len > 0 && !bp->v[v->param - 1].is_binary)
            c->tenant = cm_xstrndup((const char *)bp->v[v->param - 1].data,
                                    (size_t)bp->v[v->param - 1].len);
    } else if (st->set_op == ROUTE_SET_RESET) {
        free(c->tenant);
        c->tenant = NULL;
    }
}

/* ---- cutover holds ---- */

#define CUTOVER_RETRY_MSG "tenant is being moved to another store; retry"

const uint32_t px_hold_bound_ms[PX_HOLD_BUCKETS - 1] = { 1,   2,   5,    10,   20,   50,   100,
                                                         200, 500, 1000, 2000, 5000, 10000 };

const char *px_hold_outcome_name(px_hold_outcome_t o)
{
    switch (o) {
    case PX_HOLD_RELEASED:
        return "released";
    case PX_HOLD_REFUSED:
        return "refused";
    case PX_HOLD_EXPIRED:
        return "expired";
    case PX_HOLD_GONE:
        return "client_gone";
    }
    return "?";
}

/* Keep rec in the hold log, a ring of hold_log_size (remade when that changes). */
static void hold_log_add(px_proxy_t *p, const px_hold_rec_t *rec)
{
    size_t want = (size_t)p->cfg->hold_log_size;

    if (p->hold_log_cap != want) {
        free(p->hold_log);
        p->hold_log = want > 0 ? cm_xcalloc(want, sizeof(*p->hold_log)) : NULL;
        p->hold_log_cap = want;
    }
    if (p->hold_log != NULL)
        p->hold_log[(rec->seq - 1) % p->hold_log_cap] = *rec;
}

/*
 * The hold of the client's statement ended: count it per store and in the
 * histogram, and log it for SHOW HOLDS. to_store is where the statement
 * went (-1: nowhere, or not known yet).
 */
static void cl_hold_end(px_client_t *c, px_hold_outcome_t outcome, int to_store)
{
    px_proxy_t *p = c->conn.proxy;
    px_hold_rec_t rec = { .client_id = c->id, .from_store = c->hold_store, .outcome = outcome };
    uint64_t ms;
    size_t b = 0;

    if (c->hold_start_us == 0)
        return;
    rec.to_store = outcome == PX_HOLD_RELEASED ? to_store : -1;
    /* A connection warmed for a store the statement did not go to goes again (a roll-back). */
    for (size_t i = 0; i < c->n_servers; i++) {
        px_server_t *s = c->servers[i];

        if (s != NULL && s->is_warm && (int)i != rec.to_store) {
            c->servers[i] = NULL;
            px_server_release(s);
        }
    }
    rec.held_us = cm_now_us() - c->hold_start_us;
    rec.end_unix_ms = cm_wall_ms();
    rec.seq = ++p->hold_seq;
    snprintf(rec.tenant, sizeof(rec.tenant), "%s", c->hold_tenant ? c->hold_tenant : "");
    ms = rec.held_us / 1000;
    c->hold_start_us = 0;
    c->is_hold_expired = 0;
    free(c->hold_tenant);
    c->hold_tenant = NULL;

    p->stats.n_cutover_holds++;
    p->stats.cutover_hold_us_sum += rec.held_us;
    p->stats.cutover_hold_ms_max = CM_MAX(p->stats.cutover_hold_ms_max, ms);
    while (b < PX_HOLD_BUCKETS - 1 && rec.held_us > (uint64_t)px_hold_bound_ms[b] * 1000)
        b++;
    p->stats.cutover_hold_hist[b]++;
    if (outcome == PX_HOLD_EXPIRED)
        p->stats.n_cutover_hold_timeouts++;
    if (c->hold_store >= 0 && (size_t)c->hold_store < p->n_stores) {
        px_store_t *st = p->stores[c->hold_store];

        st->n_cutover_holds++;
        st->cutover_hold_ms_sum += ms;
        st->cutover_hold_ms_max = CM_MAX(st->cutover_hold_ms_max, ms);
    }
    hold_log_add(p, &rec);
    LOG_DEBUG(c->ctx, "cutover hold of tenant %s ended (%s) after %.3f ms", rec.tenant,
              px_hold_outcome_name(outcome), (double)rec.held_us / 1000.0);
}

/*
 * HOLD decision d: the client waits until the route table changes (the
 * router's event callback kicks it), or, once the janitor marked the hold
 * expired (max_hold_ms), the statement is refused with 55000 like any other
 * refusal.
 */
static rt_rc_t cl_hold(px_client_t *c, bool is_simple, const route_decision_t *d)
{
    if (c->hold_start_us == 0) {
        c->hold_start_us = cm_now_us();
        if (c->hold_start_us == 0)
            c->hold_start_us = 1;
        c->hold_store = d->route != NULL ? d->route->store : -1;
        free(c->hold_tenant);
        c->hold_tenant = cm_xstrdup(d->tenant);
        c->is_hold_expired = 0;
        LOG_DEBUG(c->ctx, "held: tenant %s is at cutover", d->tenant);
        if (d->route != NULL)
            cl_warm_store(c, d->route->target_store);
    }
    if (c->is_hold_expired) {
        rt_rc_t rc = cl_refuse(c, is_simple, "55000", CUTOVER_RETRY_MSG);

        if (rc == RT_DONE) {
            LOG_INFO(c->ctx, "statement of tenant %s held longer than max_hold_ms (%d): refused",
                     d->tenant, c->conn.proxy->cfg->max_hold_ms);
            cl_hold_end(c, PX_HOLD_EXPIRED, -1);
        }
        return rc;
    }
    c->is_waiting = 1; /* released when the route table changes */
    return RT_WAIT;
}

/* ---- simple Query ---- */

static rt_rc_t rt_query(px_client_t *c, const uint8_t *msg, size_t msg_len, const char *sql,
                        size_t sql_len)
{
    px_proxy_t *p = c->conn.proxy;
    struct px_router *r = p->router;
    route_class_t *cls = route_cache_get(r->cache, sql, sql_len);
    route_session_t ss;
    route_decision_t d = { .action = ROUTE_ACT_SEND, .store = -1 }, first = d;
    bool all_local = cls->n_stmts > 0, has_set = false;
    px_server_t *s;
    rt_rc_t rc = RT_DONE;

    cl_session(c, &ss);
    if (cls->n_stmts == 0) {
        first.store = c->bound_store >= 0 ? c->bound_store : p->default_store->index;
    }
    for (size_t i = 0; i < cls->n_stmts; i++) {
        route_stmt_t *st = &cls->stmts[i];

        d = route_decide(r->table, &ss, st, NULL);
        switch (d.action) {
        case ROUTE_ACT_REFUSE:
            route_class_unref(cls);
            cl_hold_end(c, PX_HOLD_REFUSED, -1);
            return cl_refuse(c, true, d.sqlstate, d.message);
        case ROUTE_ACT_NEED_LOOKUP:
            route_class_unref(cls);
            return cl_lookup(c, &d); /* a hold goes on through the lookup */
        case ROUTE_ACT_HOLD:
            route_class_unref(cls);
            return cl_hold(c, true, &d);
        case ROUTE_ACT_DEFER:
        case ROUTE_ACT_LOCAL:
            break;
        case ROUTE_ACT_SEND:
            all_local = false;
            if (first.store < 0) {
                first = d;
            } else if (d.store != first.store) {
                char m[256];

                snprintf(m, sizeof(m),
                         "query string routes to stores \"%s\" and \"%s\": send its "
                         "statements separately",
                         p->stores[first.store]->name, p->stores[d.store]->name);
                route_class_unref(cls);
                cl_hold_end(c, PX_HOLD_REFUSED, -1);
                return cl_refuse(c, true, "0A000", m);
            }
            if (d.binds)
                first.binds = true;
            break;
        default:
            break;
        }
        /* Settings follow the session to other stores. */
        if (stmt_sets(st))
            has_set = true;
        /* A BEGIN in the text binds what follows in the same text. */
        if (st->kind == ROUTE_KIND_TXN_BEGIN)
            ss.in_txn = true;
        else if (st->kind == ROUTE_KIND_TXN_COMMIT || st->kind == ROUTE_KIND_TXN_ROLLBACK)
            ss.in_txn = false;
        if (d.action == ROUTE_ACT_SEND && ss.in_txn && ss.bound_store < 0) {
            ss.bound_store = d.store;
            ss.bound_gen = cl_work_gen(c, d.store);
        }
    }
    cl_hold_end(c, PX_HOLD_RELEASED, first.store);
    if (all_local && cls->n_stmts == 1 && c->has_deferred_work && c->deferred != NULL &&
        (cls->stmts[0].kind == ROUTE_KIND_TXN_COMMIT ||
         cls->stmts[0].kind == ROUTE_KIND_TXN_ROLLBACK)) {
        /* Statements were held with the BEGIN (NOTIFY, SET ...): they run at commit. */
        all_local = false;
        first.action = ROUTE_ACT_SEND;
        first.store = p->default_store->index;
        first.binds = true;
    }
    if (all_local && cls->n_stmts == 1) {
        /* BEGIN / SAVEPOINT / SET held back, or COMMIT of an unbound transaction. */
        route_stmt_t *st = &cls->stmts[0];
        cm_buf_t b = { 0 };
        const char *tag;

        if (cl_busy(c)) {
            route_class_unref(cls);
            c->is_waiting = 1;
            return RT_WAIT;
        }
        if (st->kind == ROUTE_KIND_TXN_BEGIN) {
            tag = "BEGIN";
            c->in_txn = true;
            c->bound_store = -1;
            free(c->deferred);
            c->deferred = NULL;
            defer_sql(c, sql, sql_len);
        } else if (st->kind == ROUTE_KIND_TXN_COMMIT || st->kind == ROUTE_KIND_TXN_ROLLBACK) {
            /* Nothing reached a store: there is nothing to commit. */
            tag = st->kind == ROUTE_KIND_TXN_COMMIT ? "COMMIT" : "ROLLBACK";
            c->in_txn = false;
            free(c->deferred);
            c->deferred = NULL;
        } else {
            /* SAVEPOINT, SET ... inside an unbound transaction: replay later. */
            tag = st->kind == ROUTE_KIND_TXN_OTHER ? "SAVEPOINT" : "SET";
            defer_sql(c, sql, sql_len);
            cl_note_session(c, st, false, true);
            if (st->kind == ROUTE_KIND_SESSION_SET)
                apply_session_set(c, st, NULL);
        }
        wire_put_command_complete(&b, tag);
        px_conn_send(&c->conn, b.data, b.len);
        cm_buf_free(&b);
        cl_local_ready(c);
        route_class_unref(cls);
        return RT_DONE;
    }
    if (first.store < 0)
        first.store = c->bound_store >= 0 ? c->bound_store : p->default_store->index;
    cl_unbind_early(c, &first);
    s = cl_ready_server(c, first.store, &rc);
    if (s == NULL) {
        route_class_unref(cls);
        return rc;
    }
    cl_bind_txn(c, &first, s);
    for (size_t i = 0; i < cls->n_stmts; i++) {
        route_stmt_t *st = &cls->stmts[i];

        cl_note_session(c, st, false, c->in_txn || ss.in_txn);
        if (st->kind == ROUTE_KIND_SESSION_SET)
            apply_session_set(c, st, NULL);
        if (st->n_rows > 0)
            route_learn_rows(r->aggs, st, NULL);
    }
    px_conn_send(&s->conn, msg, msg_len);
    px_server_expect(s, WIRE_MSG_QUERY, false);
    if (has_set && !c->in_txn && !ss.in_txn) {
        /* Session settings follow the session to every store it uses: the
         * setting statements of the text, not what came with them. */
        cm_buf_t set = { 0 };

        for (size_t i = 0; i < cls->n_stmts; i++) {
            const route_stmt_t *st = &cls->stmts[i];

            if (stmt_sets(st) && st->loc < sql_len) {
                size_t n = st->len > 0 ? CM_MIN(st->len, sql_len - st->loc) : sql_len - st->loc;

                cm_buf_append(&set, sql + st->loc, n);
                cm_buf_append(&set, ";", 1);
            }
        }
        cm_buf_append(&c->session_sql, set.data, set.len);
        for (size_t i = 0; i < p->n_stores; i++) /* a setting: every store's state */
            (*cl_gen(c, (int)i))++;
        cl_gen_sync(c, s);
        cm_buf_append(&set, "", 1); /* NUL */
        for (size_t i = 0; i < c->n_servers; i++) {
            px_server_t *o = c->servers[i];

            if (o != NULL && o != s && o->state == PX_SV_ACTIVE) {
                inject_query(o, (const char *)set.data);
                cl_gen_sync(c, o);
            }
        }
        cm_buf_free(&set);
    }
    route_class_unref(cls);
    return RT_DONE;
}

/* ---- extended protocol ---- */

/*
 * Walk the held batch: each call yields one whole message (the batch holds
 * only complete, validated messages). Returns false at the end.
 */
static bool batch_next(const uint8_t *p, size_t left, uint8_t *type, uint32_t *len)
{
    if (left < WIRE_HDR_LEN)
        return false;
    *type = p[0];
    *len = ((uint32_t)p[1] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 8) | p[4];
    BUG_ON(1 + (size_t)*len > left, "held batch is not whole messages");
    return true;
}

/* Answers of a statement without rows: [ParameterDescription(0),] NoData. */
static void put_no_rows(cm_buf_t *b, bool with_params)
{
    if (with_params) {
        size_t at = wire_msg_begin(b, WIRE_MSG_PARAMETER_DESCRIPTION);

        cm_buf_append_u16(b, 0);
        wire_msg_end(b, at);
    }
    wire_put_no_data(b);
}

/* Send the held batch (messages since Sync not sent yet) to s. */
static void batch_flush(px_client_t *c, px_server_t *s)
{
    const uint8_t *p = c->batch.data;
    size_t left = c->batch.len;

    uint8_t type;
    uint32_t len;

    for (; batch_next(p, left, &type, &len); p += 1 + len, left -= 1 + len) {
        if (type == WIRE_MSG_PARSE || type == WIRE_MSG_DESCRIBE || type == WIRE_MSG_CLOSE)
            px_server_expect(s, type, false);
    }
    px_conn_send(&s->conn, c->batch.data, c->batch.len);
    cm_buf_reset(&c->batch);
}

/* Answer the held batch here (its statements never reach a store). */
static void batch_answer_local(px_client_t *c)
{
    const uint8_t *p = c->batch.data;
    size_t left = c->batch.len;
    cm_buf_t b = { 0 };

    uint8_t type;
    uint32_t len;

    for (; batch_next(p, left, &type, &len); p += 1 + len, left -= 1 + len) {
        if (type == WIRE_MSG_PARSE)
            wire_put_parse_complete(&b);
        else if (type == WIRE_MSG_CLOSE)
            wire_put_close_complete(&b);
        else if (type == WIRE_MSG_DESCRIBE) {
            /* Only statements without results are answered here. */
            put_no_rows(&b, len >= 5 && p[5] == 'S');
        }
    }
    px_conn_send(&c->conn, b.data, b.len);
    cm_buf_free(&b);
    cm_buf_reset(&c->batch);
}

/* Make sure statement st is prepared on s (injecting a swallowed Parse). */
static void ensure_prepared(px_client_t *c, px_stmt_t *st, px_server_t *s)
{
    uint64_t bit = (uint64_t)1 << s->store->index;

    if (st->on_store & bit)
        return;
    px_conn_send(&s->conn, st->parse, st->parse_len);
    px_server_expect(s, WIRE_MSG_PARSE, true);
    stmt_prepared_on(c, st, s);
}

static rt_rc_t rt_parse(px_client_t *c, const uint8_t *msg, size_t msg_len, const uint8_t *body,
                        size_t len)
{
    px_proxy_t *p = c->conn.proxy;
    wire_parse_t ps;
    px_stmt_t *st;

    if (wire_parse_parse(body, len, &ps) != WIRE_OK) {
        px_client_fail(c, "08P01", "malformed Parse message");
        return RT_GONE;
    }
    if (c->batch_refused)
        return RT_DONE;
    st = stmt_find(c, ps.name.p, ps.name.len);
    if (st != NULL && ps.name.len > 0) {
        /* PostgreSQL refuses a duplicate name; let the store say so. */
    } else if (st != NULL) {
        /* Replaced; a store replaces its own unnamed statement at this Parse. */
        stmt_forget(c, st);
        st = NULL;
    }
    if (st == NULL) {
        if (c->n_stmts == c->cap_stmts) {
            c->cap_stmts = c->cap_stmts ? c->cap_stmts * 2 : 8;
            c->stmts = cm_xrealloc(c->stmts, c->cap_stmts * sizeof(*c->stmts));
        }
        st = &c->stmts[c->n_stmts++];
        memset(st, 0, sizeof(*st));
        st->name = cm_xstrndup(ps.name.p, ps.name.len);
        st->cls = route_cache_get(p->router->cache, ps.query.p, ps.query.len);
        st->parse = cm_xmalloc(msg_len);
        memcpy(st->parse, msg, msg_len);
        st->parse_len = msg_len;
        st->n_types = ps.n_param_types;
        for (uint16_t i = 0; i < ps.n_param_types && i < CM_ARRAY_LEN(st->types); i++)
            st->types[i] = ((uint32_t)ps.param_types[4 * i] << 24) |
                           ((uint32_t)ps.param_types[4 * i + 1] << 16) |
                           ((uint32_t)ps.param_types[4 * i + 2] << 8) | ps.param_types[4 * i + 3];
    }
    if (c->batch_store >= 0) {
        px_server_t *s = cl_server(c, c->batch_store);

        px_conn_send(&s->conn, msg, msg_len);
        px_server_expect(s, WIRE_MSG_PARSE, false);
        stmt_prepared_on(c, st, s);
        return RT_DONE;
    }
    /* Held until the batch's store is known (its Bind or Describe). */
    cm_buf_append(&c->batch, msg, msg_len);
    return RT_DONE;
}

/* The held Parse of st, if any, will be sent with the batch. */
static bool batch_has_parse_of(px_client_t *c, const px_stmt_t *st)
{
    const uint8_t *p = c->batch.data;
    size_t left = c->batch.len;

    uint8_t type;
    uint32_t len;

    for (; batch_next(p, left, &type, &len); p += 1 + len, left -= 1 + len) {
        if (type == WIRE_MSG_PARSE && strcmp((const char *)p + 5, st->name) == 0)
            return true;
    }
    return false;
}

/* Decide the batch's store at its first Bind or Describe, and send what was held. */
static rt_rc_t batch_start(px_client_t *c, int store, const route_decision_t *d, px_stmt_t *st)
{
    px_server_t *s;
    rt_rc_t rc = RT_DONE;

    cl_unbind_early(c, d);
    s = cl_ready_server(c, store, &rc);
    if (s == NULL)
        return rc;
    if (d != NULL)
        cl_bind_txn(c, d, s);
    if (st != NULL && !batch_has_parse_of(c, st))
        ensure_prepared(c, st, s);
    /* Held Parses become prepared there. */
    for (size_t i = 0; i < c->n_stmts; i++)
        if (batch_has_parse_of(c, &c->stmts[i]))
            stmt_prepared_on(c, &c->stmts[i], s);
    batch_flush(c, s);
    c->batch_store = store;
    return RT_DONE;
}

static rt_rc_t rt_bind(px_client_t *c, const uint8_t *msg, size_t msg_len, const uint8_t *body,
                       size_t len)
{
    px_proxy_t *p = c->conn.proxy;
    struct px_router *r = p->router;
    wire_bind_t wb;
    px_stmt_t *st;
    route_param_t pv[64];
    route_params_t bp = { 0 };
    route_session_t ss;
    route_decision_t d;
    const route_stmt_t *rs;
    px_server_t *s;

    if (wire_parse_bind(body, len, &wb) != WIRE_OK) {
        px_client_fail(c, "08P01", "malformed Bind message");
        return RT_GONE;
    }
    if (c->batch_refused)
        return RT_DONE;
    st = stmt_find(c, wb.stmt.p, wb.stmt.len);
    if (st == NULL) {
        char m[200];

        snprintf(m, sizeof(m), "prepared statement \"%.*s\" does not exist",
                 (int)CM_MIN(wb.stmt.len, 100), wb.stmt.p);
        return cl_refuse(c, false, "26000", m);
    }
    for (uint16_t i = 0; i < wb.n_params && i < CM_ARRAY_LEN(pv); i++) {
        bool is_null;
        wire_str_t v;
        int fmt;

        if (!wire_bind_param(&wb, i, &is_null, &v, &fmt))
            break;
        pv[i].data = (const uint8_t *)v.p;
        pv[i].len = is_null ? -1 : (int32_t)v.len;
        pv[i].is_binary = fmt == 1;
        pv[i].type_oid = i < st->n_types && i < CM_ARRAY_LEN(st->types) ? st->types[i] : 0;
        bp.n = (size_t)i + 1;
    }
    bp.v = pv;
    cl_session(c, &ss);
    rs = st->cls->n_stmts > 0 ? &st->cls->stmts[0] : NULL;
    if (rs == NULL) {
        d.action = ROUTE_ACT_SEND;
        d.store = ss.bound_store >= 0 ? ss.bound_store : ss.default_store;
        d.binds = false;
        d.rebind = false;
        d.tentative = false;
    } else {
        d = route_decide(r->table, &ss, rs, &bp);
    }
    if (d.action == ROUTE_ACT_LOCAL && c->has_deferred_work && c->deferred != NULL) {
        /* Statements were held with the BEGIN (NOTIFY, SET ...): they run at commit. */
        d.action = ROUTE_ACT_SEND;
        d.store = ss.default_store;
        d.binds = true;
        d.tentative = false;
    }
    if (d.action != ROUTE_ACT_HOLD && d.action != ROUTE_ACT_NEED_LOOKUP)
        cl_hold_end(c, d.action == ROUTE_ACT_REFUSE ? PX_HOLD_REFUSED : PX_HOLD_RELEASED,
                    d.action == ROUTE_ACT_SEND ? d.store : -1);
    switch (d.action) {
    case ROUTE_ACT_REFUSE:
        return cl_refuse(c, false, d.sqlstate, d.message);
    case ROUTE_ACT_NEED_LOOKUP:
        return cl_lookup(c, &d);
    case ROUTE_ACT_HOLD:
        return cl_hold(c, false, &d);
    case ROUTE_ACT_DEFER:
    case ROUTE_ACT_LOCAL: {
        /* BEGIN and friends: answered here; the Execute gets its tag. */
        if (c->batch_store >= 0) {
            /* The batch already runs on a store: let that store run it. */
            break;
        }
        if (cl_busy(c)) {
            c->is_waiting = 1;
            return RT_WAIT;
        }
        batch_answer_local(c);
        {
            cm_buf_t b = { 0 };

            wire_put_bind_complete(&b);
            px_conn_send(&c->conn, b.data, b.len);
            cm_buf_free(&b);
        }
        if (rs->kind == ROUTE_KIND_TXN_BEGIN) {
            c->in_txn = true;
            c->bound_store = -1;
            free(c->deferred);
            c->deferred = NULL;
            defer_sql(c, "BEGIN", 5);
            c->local_tag = "BEGIN";
        } else if (rs->kind == ROUTE_KIND_TXN_COMMIT || rs->kind == ROUTE_KIND_TXN_ROLLBACK) {
            c->in_txn = false;
            free(c->deferred);
            c->deferred = NULL;
            c->local_tag = rs->kind == ROUTE_KIND_TXN_COMMIT ? "COMMIT" : "ROLLBACK";
        } else {
            /* Replay the statement's text with the transaction. */
            const uint8_t *q = st->parse + 5 + strlen(st->name) + 1;

            defer_sql(c, (const char *)q, strlen((const char *)q));
            if (rs->kind == ROUTE_KIND_SESSION_SET)
                apply_session_set(c, rs, &bp);
            c->local_tag = rs->kind == ROUTE_KIND_TXN_OTHER ? "SAVEPOINT" : "SET";
        }
        c->is_local_portal = 1;
        return RT_DONE;
    }
    case ROUTE_ACT_SEND:
    default:
        break;
    }
    if (d.action != ROUTE_ACT_SEND)
        d.store = c->batch_store; /* DEFER/LOCAL inside a running batch */
    if (c->batch_store >= 0 && d.store != c->batch_store && !c->batch_effects &&
        (c->bound_store < 0 ||
         (d.rebind && c->bound_tentative && c->bound_store == c->batch_store))) {
        /*
         * Only Parse/Describe went to the batch's store so far (asyncpg sends
         * Parse, Describe, Flush, reads the answers, then Bind): they change
         * nothing, so the batch moves to the Bind's store once they are
         * answered. The old store gets a quiet Sync to end its batch. In a
         * transaction bound there only tentatively, batch_start then rolls
         * the old store back and replays the BEGIN on the new one (rebind).
         */
        px_server_t *old = cl_server(c, c->batch_store);

        if (old != NULL && px_server_visible_pending(old) == 0) {
            cm_buf_t b = { 0 };

            wire_put_sync(&b);
            px_conn_send(&old->conn, b.data, b.len);
            cm_buf_free(&b);
            px_server_expect(old, WIRE_MSG_SYNC, true);
            px_conn_flush(&old->conn);
            c->batch_store = -1;
        }
    }
    if (c->batch_store >= 0 && d.store != c->batch_store) {
        char m[256];

        snprintf(m, sizeof(m),
                 "statement routes to store \"%s\" but this batch runs on store \"%s\": "
                 "send a Sync between them",
                 p->stores[d.store]->name, p->stores[c->batch_store]->name);
        return cl_refuse(c, false, "0A000", m);
    }
    c->is_local_portal = 0;
    if (c->batch_store < 0) {
        rt_rc_t rc = batch_start(c, d.store, &d, st);

        if (rc != RT_DONE)
            return rc;
    } else {
        s = cl_server(c, c->batch_store);
        if (d.action == ROUTE_ACT_SEND)
            cl_bind_txn(c, &d, s);
        ensure_prepared(c, st, s);
    }
    s = cl_server(c, c->batch_store);
    if (rs != NULL)
        cl_note_session(c, rs, true, c->in_txn);
    if (rs != NULL && rs->kind == ROUTE_KIND_SESSION_SET)
        apply_session_set(c, rs, &bp);
    if (rs != NULL && rs->n_rows > 0)
        route_learn_rows(r->aggs, rs, &bp);
    px_conn_send(&s->conn, msg, msg_len);
    px_server_expect(s, WIRE_MSG_BIND, false);
    c->batch_effects = true;
    return RT_DONE;
}

/* Describe, Execute, Close: they follow the batch. */
static rt_rc_t rt_follow(px_client_t *c, uint8_t type, const uint8_t *msg, size_t msg_len,
                         const uint8_t *body, size_t len)
{
    px_proxy_t *p = c->conn.proxy;
    px_server_t *s;

    if (c->batch_refused)
        return RT_DONE;
    if (type == WIRE_MSG_EXECUTE && c->is_local_portal) {
        cm_buf_t b = { 0 };

        wire_put_command_complete(&b, c->local_tag ? c->local_tag : "SET");
        px_conn_send(&c->conn, b.data, b.len);
        cm_buf_free(&b);
        return RT_DONE;
    }
    if (type == WIRE_MSG_DESCRIBE && c->is_local_portal && len >= 1 && body[0] == 'P') {
        cm_buf_t b = { 0 };

        wire_put_no_data(&b);
        px_conn_send(&c->conn, b.data, b.len);
        cm_buf_free(&b);
        return RT_DONE;
    }
    if (c->batch_store < 0) {
        /* Describe of a statement before any Bind (asyncpg), or a Close. */
        px_stmt_t *st = NULL;
        int store;

        if ((type == WIRE_MSG_DESCRIBE || type == WIRE_MSG_CLOSE) && len >= 2 && body[0] == 'S')
            st = stmt_find(c, (const char *)body + 1, strnlen((const char *)body + 1, len - 1));
        store = c->bound_store >= 0 ? c->bound_store : p->default_store->index;
        if (st != NULL && st->cls->n_stmts > 0 && c->bound_store < 0) {
            route_session_t ss;
            route_decision_t d;

            cl_session(c, &ss);
            d = route_decide(p->router->table, &ss, &st->cls->stmts[0], NULL);
            if (d.action == ROUTE_ACT_SEND)
                store = d.store;
            else if (d.action == ROUTE_ACT_DEFER || d.action == ROUTE_ACT_LOCAL) {
                /* A BEGIN described before its Bind: no parameters, no rows. */
                if (type == WIRE_MSG_DESCRIBE) {
                    cm_buf_t b = { 0 };

                    if (cl_busy(c)) {
                        c->is_waiting = 1;
                        return RT_WAIT;
                    }
                    batch_answer_local(c);
                    put_no_rows(&b, true);
                    px_conn_send(&c->conn, b.data, b.len);
                    cm_buf_free(&b);
                    return RT_DONE;
                }
            }
        }
        {
            /* In a transaction held here, the store that answers binds it (tentatively). */
            route_decision_t d = { .action = ROUTE_ACT_SEND, .store = store };
            rt_rc_t rc;

            if (c->in_txn && c->bound_store < 0) {
                d.binds = true;
                d.tentative = true;
            }
            rc = batch_start(c, store, &d, st);
            if (rc != RT_DONE)
                return rc;
        }
    }
    s = cl_server(c, c->batch_store);
    if (type == WIRE_MSG_DESCRIBE && len >= 2 && body[0] == 'S') {
        /* A statement of the session this backend may not have (a pooled one). */
        px_stmt_t *st =
            stmt_find(c, (const char *)body + 1, strnlen((const char *)body + 1, len - 1));

        if (st != NULL)
            ensure_prepared(c, st, s);
    }
    if (type == WIRE_MSG_CLOSE && len >= 2 && body[0] == 'S') {
        px_stmt_t *st =
            stmt_find(c, (const char *)body + 1, strnlen((const char *)body + 1, len - 1));

        if (st != NULL) {
            /* Pooled servers of every store it was prepared on that do not get this Close
             * still hold it: they are reset before this session uses them. */
            for (size_t i = 0; i < 64 && st->name[0] != '\0'; i++)
                if (st->on_store & ((uint64_t)1 << i))
                    (*cl_gen(c, (int)i))++;
            cl_gen_sync(c, s);
            /* Close it on the other stores too, quietly. */
            for (size_t i = 0; i < c->n_servers; i++) {
                px_server_t *o = c->servers[i];

                if (o != NULL && o != s && (st->on_store & ((uint64_t)1 << i)) &&
                    o->state == PX_SV_ACTIVE && px_server_visible_pending(o) == 0) {
                    cm_buf_t b = { 0 };

                    wire_put_close(&b, 'S', st->name);
                    wire_put_sync(&b);
                    px_conn_send(&o->conn, b.data, b.len);
                    px_conn_flush(&o->conn);
                    cm_buf_free(&b);
                    px_server_expect(o, WIRE_MSG_CLOSE, true);
                    px_server_expect(o, WIRE_MSG_SYNC, true);
                    cl_gen_sync(c, o);
                }
            }
            stmt_forget(c, st);
        }
    }
    px_conn_send(&s->conn, msg, msg_len);
    if (type != WIRE_MSG_FLUSH)
        px_server_expect(s, type, false);
    if (type != WIRE_MSG_DESCRIBE)
        c->batch_effects = true;
    return RT_DONE;
}

static rt_rc_t rt_sync(px_client_t *c, const uint8_t *msg, size_t msg_len)
{
    px_server_t *s = c->batch_store >= 0 ? cl_server(c, c->batch_store) : NULL;

    c->is_local_portal = 0;
    c->local_tag = NULL;
    if (s == NULL) {
        /* Nothing of this batch reached a store: answer it here. */
        if (cl_busy(c)) {
            c->is_waiting = 1;
            return RT_WAIT;
        }
        if (c->batch.len > 0)
            batch_answer_local(c);
        c->batch_refused = false;
        cl_local_ready(c);
        return RT_DONE;
    }
    if (c->batch.len > 0)
        batch_flush(c, s);
    px_conn_send(&s->conn, msg, msg_len);
    px_server_expect(s, WIRE_MSG_SYNC, false);
    c->batch_store = -1;
    c->batch_refused = false;
    c->batch_effects = false;
    return RT_DONE;
}

static rt_rc_t rt_flush(px_client_t *c, const uint8_t *msg, size_t msg_len)
{
    px_server_t *s = c->batch_store >= 0 ? cl_server(c, c->batch_store) : NULL;

    if (s != NULL)
        px_conn_send(&s->conn, msg, msg_len);
    return RT_DONE;
}

/* FunctionCall: to the bound or default store. */
static rt_rc_t rt_function(px_client_t *c, const uint8_t *msg, size_t msg_len)
{
    px_proxy_t *p = c->conn.proxy;
    int store = c->bound_store >= 0 ? c->bound_store : p->default_store->index;
    px_server_t *s;
    rt_rc_t rc = RT_DONE;

    s = cl_ready_server(c, store, &rc);
    if (s == NULL)
        return rc;
    px_conn_send(&s->conn, msg, msg_len);
    px_server_expect(s, WIRE_MSG_FUNCTION_CALL, false);
    return RT_DONE;
}

/* ---- the input loop ---- */

static void flush_servers(px_client_t *c)
{
    for (size_t i = 0; i < c->n_servers; i++)
        if (c->servers[i] != NULL)
            px_conn_flush(&c->servers[i]->conn);
    px_conn_flush(&c->conn);
}

/*
 * Route every complete message in the client's buffer. CopyData streams
 * through to the server running the COPY once its header is known, so a
 * large COPY never needs a large buffer.
 */
void px_router_input(px_client_t *c)
{
    px_conn_t *conn = &c->conn;
    px_proxy_t *p = conn->proxy;

    c->is_waiting = 0;
    while (conn->rpos < conn->rlen && c->state == PX_CL_READY) {
        const uint8_t *buf = conn->rbuf + conn->rpos;
        size_t avail = conn->rlen - conn->rpos;
        wire_hdr_t h;
        wire_rc_t wrc;
        rt_rc_t rc = RT_DONE;
        const uint8_t *body;

        if (c->fwd_left > 0) {
            size_t n = CM_MIN(c->fwd_left, avail);

            if (c->server != NULL)
                px_conn_send(&c->server->conn, buf, n);
            c->fwd_left -= n;
            conn->rpos += n;
            continue;
        }
        if (c->server != NULL && px_conn_pending(&c->server->conn) > p->cfg->max_buffer_len) {
            px_conn_stop_read(conn); /* the store is slow: backpressure */
            break;
        }
        if ((p->is_paused || c->close_when_idle) && px_client_is_idle(c)) {
            if (c->close_when_idle) {
                px_client_fail(c, "57P01", "terminating connection: pgshift is shutting down");
                return;
            }
            c->is_held = 1;
            px_conn_stop_read(conn);
            break;
        }
        wrc = wire_hdr_decode(buf, avail, &p->limits, &h);
        if (wrc == WIRE_PARTIAL)
            break;
        if (wrc != WIRE_OK || !wire_fe_type_known(h.type)) {
            p->stats.n_protocol_errors++;
            flush_servers(c);
            if (wrc == WIRE_ETOOBIG)
                px_client_fail(c, "08P01", "message of %u bytes exceeds max_message_len (%zu)",
                               h.body_len, p->limits.max_msg_len);
            else if (wrc != WIRE_OK)
                px_client_fail(c, "08P01", "invalid message length");
            else
                px_client_fail(c, "08P01", "invalid frontend message type %d", h.type);
            return;
        }
        if (h.type == WIRE_MSG_COPY_DATA) {
            if (c->server != NULL)
                px_conn_send(&c->server->conn, buf, WIRE_HDR_LEN);
            c->fwd_left = h.body_len;
            conn->rpos += WIRE_HDR_LEN;
            continue;
        }
        if (avail < WIRE_HDR_LEN + h.body_len) {
            px_conn_reserve(conn, WIRE_HDR_LEN + h.body_len);
            break;
        }
        body = buf + WIRE_HDR_LEN;
        switch (h.type) {
        case WIRE_MSG_TERMINATE:
            flush_servers(c);
            px_client_close(c, "client terminated");
            return;
        case WIRE_MSG_QUERY: {
            wire_str_t sql;

            if (wire_parse_query(body, h.body_len, &sql) != WIRE_OK) {
                p->stats.n_protocol_errors++;
                px_client_fail(c, "08P01", "malformed Query message");
                return;
            }
            rc = rt_query(c, buf, WIRE_HDR_LEN + h.body_len, sql.p, sql.len);
            if (rc == RT_DONE) {
                c->n_queries++;
                p->stats.n_queries++;
                if (c->server != NULL)
                    c->server->store->n_queries++;
            }
            break;
        }
        case WIRE_MSG_PARSE:
            rc = rt_parse(c, buf, WIRE_HDR_LEN + h.body_len, body, h.body_len);
            break;
        case WIRE_MSG_BIND:
            rc = rt_bind(c, buf, WIRE_HDR_LEN + h.body_len, body, h.body_len);
            break;
        case WIRE_MSG_DESCRIBE:
        case WIRE_MSG_EXECUTE:
        case WIRE_MSG_CLOSE:
            if (wire_validate(h.type, true, body, h.body_len) != WIRE_OK) {
                p->stats.n_protocol_errors++;
                px_client_fail(c, "08P01", "malformed '%c' message", h.type);
                return;
            }
            rc = rt_follow(c, h.type, buf, WIRE_HDR_LEN + h.body_len, body, h.body_len);
            break;
        case WIRE_MSG_SYNC:
            rc = rt_sync(c, buf, WIRE_HDR_LEN + h.body_len);
            if (rc == RT_DONE) {
                c->n_queries++;
                p->stats.n_queries++;
            }
            break;
        case WIRE_MSG_FLUSH:
            rc = rt_flush(c, buf, WIRE_HDR_LEN + h.body_len);
            break;
        case WIRE_MSG_FUNCTION_CALL:
            rc = rt_function(c, buf, WIRE_HDR_LEN + h.body_len);
            break;
        case WIRE_MSG_COPY_DONE:
        case WIRE_MSG_COPY_FAIL:
            if (c->server != NULL)
                px_conn_send(&c->server->conn, buf, WIRE_HDR_LEN + h.body_len);
            break;
        default:
            BUG_ON(1, "unhandled frontend type %c", h.type);
        }
        if (rc == RT_GONE)
            return;
        if (rc == RT_WAIT) {
            px_conn_stop_read(conn);
            break;
        }
        if (c->server != NULL)
            c->server->store->bytes_in += WIRE_HDR_LEN + h.body_len;
        px_conn_consume(conn, WIRE_HDR_LEN + h.body_len);
    }
    if (c->state == PX_CL_READY)
        flush_servers(c);
}
