/*
 * proxy/pool.c - transaction pooling: server connections shared between
 * client sessions (pool_mode = transaction).
 *
 * Each store keeps the pooled servers nobody borrows on its idle list, most
 * recently returned first, and the clients waiting for one on its waiters
 * list, first come first served. A client borrows a server when it sends
 * work to a store it holds none of (px_pool_take) and gives it back when its
 * work there ends: a ReadyForQuery that leaves nothing pending, no
 * transaction and no COPY (px_pool_checkin; the router decides when). At
 * most pool_size pooled servers per store are open; a client that finds
 * none free waits, up to pool_wait_timeout_ms.
 *
 * Only servers that logged in with the same startup parameters are shared
 * (px_pool_sig); what a session leaves on a backend (prepared statements,
 * settings) is the router's business: it records the server's last client
 * and resets the backend before another client uses it.
 *
 * Everything here runs on the loop thread.
 */
#include <string.h>

#include "common/log.h"
#include "proxy/proxy.h"

uint64_t px_pool_sig(const px_params_t *startup)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */

    for (size_t i = 0; i < startup->n; i++) {
        const char *parts[2] = { startup->v[i].name, startup->v[i].value };

        for (size_t k = 0; k < 2; k++) {
            for (const char *q = parts[k]; *q; q++) {
                h ^= (uint8_t)*q;
                h *= 1099511628211ULL;
            }
            h ^= 0xff; /* separator */
            h *= 1099511628211ULL;
        }
    }
    return h ? h : 1;
}

/* ---- waiting ---- */

static void wake_cb(uv_timer_t *t)
{
    px_proxy_t *p = t->data;

    for (size_t i = 0; i < p->n_stores; i++) {
        px_store_t *st = p->stores[i];
        int n = st->n_waiting;

        /*
         * Each waiter is kicked at most once per wake. One that did not ask
         * (it waits for something else first: answers of another store, a
         * cutover) loses its place; whatever it waits for kicks it again and
         * it queues anew. One that asked and still found nothing keeps it.
         */
        while (n-- > 0 && !cm_list_empty(&st->waiters) &&
               (st->n_idle > 0 || st->n_pooled < p->cfg->pool_size)) {
            px_client_t *c = cm_container_of(st->waiters.next, px_client_t, wait_node);
            uint32_t asked = c->n_pool_takes;

            px_client_kick(c);
            if (cm_list_empty(&st->waiters) || st->waiters.next != &c->wait_node)
                continue;
            if (c->n_pool_takes != asked)
                break;
            LOG_DEBUG(c->ctx, "woken for a pooled connection to store %s, did not ask for it",
                      st->name);
            px_pool_unwait(c);
        }
    }
}

/* Something of st's pool came free: let its waiters try (soon, not inside the caller). */
static void pool_wake_soon(px_proxy_t *p, px_store_t *st)
{
    if (st->n_waiting == 0 || p->is_finished || uv_is_closing((uv_handle_t *)&p->pool_wake))
        return;
    uv_timer_start(&p->pool_wake, wake_cb, 0, 0);
}

void px_pool_unwait(px_client_t *c)
{
    px_store_t *st;

    if (c->wait_store < 0)
        return;
    st = c->conn.proxy->stores[c->wait_store];
    cm_list_del(&c->wait_node);
    st->n_waiting--;
    c->wait_store = -1;
}

static void pool_enqueue(px_client_t *c, px_store_t *st)
{
    if (c->wait_store == st->index)
        return;
    px_pool_unwait(c);
    cm_list_append(&st->waiters, &c->wait_node);
    st->n_waiting++;
    st->n_pool_waits++;
    c->wait_store = st->index;
    c->wait_start_ms = cm_now_ms();
    LOG_DEBUG(c->ctx, "waiting for a pooled connection to store %s (%d lent)", st->name,
              st->n_pooled);
}

/* ---- lending ---- */

static void idle_unlink(px_server_t *s)
{
    if (!cm_list_linked(&s->pool_node))
        return;
    cm_list_del(&s->pool_node);
    s->store->n_idle--;
}

/* First come, first served: a newcomer queues behind the waiters. */
static bool behind_waiters(const px_client_t *c, const px_store_t *st)
{
    if (c->wait_store == st->index)
        return st->waiters.next != &c->wait_node; /* queued, not first */
    return st->n_waiting > 0;
}

/*
 * A server of st for c: an idle one (its own backend first, which needs no
 * reset), else a new one while the pool has room (replacing an idle server
 * of other startup parameters when it is full), else c queues in
 * st->waiters and is kicked when one comes free. *out is c's until it is
 * checked in.
 */
px_pool_rc_t px_pool_take(px_client_t *c, px_store_t *st, px_server_t **out)
{
    px_proxy_t *p = c->conn.proxy;
    px_server_t *mine = NULL, *any = NULL, *other = NULL;
    cm_list_t *it, *tmp;

    if (c->wait_store == st->index)
        c->n_pool_takes++; /* it asked (wake_cb) */
    if (behind_waiters(c, st)) {
        pool_enqueue(c, st);
        return PX_POOL_WAIT;
    }
    cm_list_foreach_safe(it, tmp, &st->idle) {
        px_server_t *s = cm_container_of(it, px_server_t, pool_node);

        if (s->pool_sig != c->pool_sig) {
            if (other == NULL)
                other = s;
        } else if (s->last_client == c->id) {
            mine = s; /* holds this session's statements: no reset needed */
            break;
        } else if (any == NULL) {
            any = s;
        }
    }
    if (mine == NULL)
        mine = any;
    if (mine != NULL) {
        idle_unlink(mine);
        px_pool_unwait(c);
        mine->client = c;
        LOG_DEBUG(c->ctx, "borrows %s", mine->ctx);
        *out = mine;
        return PX_POOL_LENT;
    }
    if (st->n_pooled >= p->cfg->pool_size && other == NULL) {
        pool_enqueue(c, st);
        return PX_POOL_WAIT;
    }
    if (other != NULL && st->n_pooled >= p->cfg->pool_size) {
        /* Full, but an idle server logged in with other parameters: replace it. */
        LOG_DEBUG(other->ctx, "closed for a client with other startup parameters");
        px_server_release(other);
    }
    if (px_pool_connect(c, st, out) < 0)
        return PX_POOL_FAIL;
    px_pool_unwait(c);
    return PX_POOL_NEW;
}

int px_pool_connect(px_client_t *c, px_store_t *st, px_server_t **out)
{
    int rc = px_server_connect(c->conn.proxy, st, c, out);

    if (rc < 0)
        return rc;
    (*out)->is_pooled = 1;
    (*out)->pool_sig = c->pool_sig;
    st->n_pooled++;
    return 0;
}

bool px_pool_checkin(px_server_t *s)
{
    px_store_t *st = s->store;

    /* is_busy: work began that no ReadyForQuery 'I' ended (a batch cut before its Sync). */
    if (!s->is_pooled || s->state != PX_SV_ACTIVE || s->rq_n > 0 || s->is_busy ||
        s->txn_status != WIRE_TXN_IDLE || s->is_copy_in || s->is_copy_out || s->fwd_left > 0 ||
        s->conn.rpos < s->conn.rlen || s->conn.is_closing)
        return false;
    if (st->n_pooled > s->conn.proxy->cfg->pool_size) {
        /* More open than pool_size (first logins, a smaller pool_size after RELOAD). */
        LOG_DEBUG(s->ctx, "closed: %d pooled servers for pool_size %d", st->n_pooled,
                  s->conn.proxy->cfg->pool_size);
        px_server_release(s);
        return true;
    }
    LOG_DEBUG(s->ctx, "back in the pool from C#%llu",
              (unsigned long long)(s->client ? s->client->id : 0));
    s->client = NULL;
    s->is_warm = 0;
    s->idle_since_ms = cm_now_ms();
    if (!s->conn.is_reading && px_conn_start_read(&s->conn) < 0) {
        px_server_release(s); /* stopped under its client's backpressure; deaf */
        return true;
    }
    /* Most recently used first: its backend is the warmest. */
    cm_list_prepend(&st->idle, &s->pool_node);
    st->n_idle++;
    pool_wake_soon(s->conn.proxy, st);
    return true;
}

void px_pool_forget(px_server_t *s)
{
    idle_unlink(s);
    if (s->is_pooled) {
        s->is_pooled = 0;
        s->store->n_pooled--;
        pool_wake_soon(s->conn.proxy, s->store);
    }
}

void px_pool_pin(px_server_t *s)
{
    if (!s->is_pooled)
        return;
    LOG_DEBUG(s->ctx, "pinned to its session: it leaves the pool");
    s->is_pooled = 0;
    s->store->n_pooled--;
    pool_wake_soon(s->conn.proxy, s->store);
}

/* ---- housekeeping ---- */

void px_pool_check_timeouts(px_proxy_t *p, uint64_t now_ms)
{
    for (size_t i = 0; i < p->n_stores; i++) {
        px_store_t *st = p->stores[i];
        cm_list_t *it, *tmp;

        if (p->cfg->server_idle_timeout_ms > 0) {
            cm_list_foreach_safe(it, tmp, &st->idle) {
                px_server_t *s = cm_container_of(it, px_server_t, pool_node);

                if (now_ms - s->idle_since_ms >= (uint64_t)p->cfg->server_idle_timeout_ms) {
                    LOG_DEBUG(s->ctx, "idle for %d ms: closing", p->cfg->server_idle_timeout_ms);
                    px_server_release(s);
                }
            }
        }
        if (p->cfg->pool_wait_timeout_ms > 0) {
            cm_list_foreach_safe(it, tmp, &st->waiters) {
                px_client_t *c = cm_container_of(it, px_client_t, wait_node);

                if (now_ms - c->wait_start_ms < (uint64_t)p->cfg->pool_wait_timeout_ms)
                    continue;
                st->n_pool_wait_timeouts++;
                px_client_fail(c, "53300",
                               "no connection to store \"%s\" came free within "
                               "pool_wait_timeout_ms (%d ms; pool_size %d)",
                               st->name, p->cfg->pool_wait_timeout_ms, p->cfg->pool_size);
            }
        }
    }
}

void px_pool_wake_all(px_proxy_t *p)
{
    for (size_t i = 0; i < p->n_stores; i++)
        pool_wake_soon(p, p->stores[i]);
}

void px_pool_close_idle(px_proxy_t *p)
{
    for (size_t i = 0; i < p->n_stores; i++) {
        cm_list_t *it, *tmp;

        cm_list_foreach_safe(it, tmp, &p->stores[i]->idle) {
            px_server_release(cm_container_of(it, px_server_t, pool_node));
        }
    }
}
