/*
 * proxy/proxy.c - the process-wide state on the loop: stores, auth file,
 * TLS context, listeners, the read-buffer pool, PAUSE/RESUME, SIGHUP
 * reload and the SIGTERM drain.
 */
#include "proxy/proxy.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "proxy/authfile.h"
#include "proxy/scram.h"

/* Read buffers kept for reuse; beyond this they go back to malloc. */
#define PX_BUF_POOL_MAX 1024

uint8_t *px_proxy_buf_get(px_proxy_t *p)
{
    if (p->n_buf_pool > 0)
        return p->buf_pool[--p->n_buf_pool];
    return cm_xmalloc(p->buf_len);
}

void px_proxy_buf_put(px_proxy_t *p, uint8_t *buf)
{
    if (p->n_buf_pool < PX_BUF_POOL_MAX) {
        if (p->n_buf_pool == p->buf_pool_cap) {
            p->buf_pool_cap = p->buf_pool_cap ? p->buf_pool_cap * 2 : 64;
            p->buf_pool = cm_xrealloc(p->buf_pool, p->buf_pool_cap * sizeof(*p->buf_pool));
        }
        p->buf_pool[p->n_buf_pool++] = buf;
        return;
    }
    free(buf);
}

struct px_scram_cache {
    char *user;
    char *password;
    px_scram_secret_t secret;
};

static void scram_cache_clear(px_proxy_t *p)
{
    for (size_t i = 0; i < p->n_scram_cache; i++) {
        free(p->scram_cache[i].user);
        free(p->scram_cache[i].password);
    }
    free(p->scram_cache);
    p->scram_cache = NULL;
    p->n_scram_cache = 0;
}

int px_proxy_scram_secret(px_proxy_t *p, const char *user, const char *password,
                          px_scram_secret_t *out)
{
    struct px_scram_cache *e;

    for (size_t i = 0; i < p->n_scram_cache; i++) {
        e = &p->scram_cache[i];
        if (strcmp(e->user, user) == 0 && strcmp(e->password, password) == 0) {
            *out = e->secret;
            return 0;
        }
    }
    if (px_scram_secret_generate(password, out) < 0)
        return -1;
    p->scram_cache = cm_xrealloc(p->scram_cache, (p->n_scram_cache + 1) * sizeof(*e));
    e = &p->scram_cache[p->n_scram_cache++];
    e->user = cm_xstrdup(user);
    e->password = cm_xstrdup(password);
    e->secret = *out;
    return 0;
}

px_store_t *px_proxy_store(px_proxy_t *p, const char *name)
{
    for (size_t i = 0; i < p->n_stores; i++)
        if (!p->stores[i]->is_removed && strcmp(p->stores[i]->name, name) == 0)
            return p->stores[i];
    return NULL;
}

/* Build stores, auth file and TLS context from cfg into p (init or reload). */
static int proxy_apply(px_proxy_t *p, cfg_t *cfg, char **err)
{
    px_authfile_t *af = NULL;
    px_tls_ctx_t *tls = NULL;
    px_store_t **added = NULL;
    size_t n_added = 0;

    if (cfg->auth_file[0] != '\0' && px_authfile_load(cfg->auth_file, &af, err) < 0)
        return -1;
    if (cfg->client_tls_mode != CFG_TLS_DISABLE &&
        px_tls_server_ctx_new(cfg->client_tls_cert_file, cfg->client_tls_key_file,
                              cfg->client_tls_ca_file, &tls, err) < 0)
        goto fail;
    /* Validate every store first, so a bad reload changes nothing. */
    for (size_t i = 0; i < cfg->n_stores; i++) {
        px_store_t *s = px_proxy_store(p, cfg->stores[i].name);
        px_store_t *tmp;

        if (s != NULL && strcmp(s->conninfo, cfg->stores[i].conninfo) == 0)
            continue;
        if (px_store_new(&cfg->stores[i], -1, &tmp, err) < 0)
            goto fail;
        added = cm_xrealloc(added, (n_added + 1) * sizeof(*added));
        added[n_added++] = tmp;
    }
    for (size_t i = 0; i < n_added; i++) {
        px_store_t *s = px_proxy_store(p, added[i]->name);
        const cfg_store_t *cs = cfg_store_find(cfg, added[i]->name);

        if (s != NULL) {
            if (px_store_update(s, cs, err) < 0)
                goto fail; /* cannot happen: validated above */
            px_store_free(added[i]);
            continue;
        }
        added[i]->index = (int)p->n_stores;
        p->stores = cm_xrealloc(p->stores, (p->n_stores + 1) * sizeof(*p->stores));
        p->stores[p->n_stores++] = added[i];
    }
    free(added);
    added = NULL;
    for (size_t i = 0; i < p->n_stores; i++)
        p->stores[i]->is_removed = cfg_store_find(cfg, p->stores[i]->name) == NULL;
    p->default_store = px_proxy_store(p, cfg->default_store);
    BUG_ON(p->default_store == NULL, "default store %s missing after validation",
           cfg->default_store);
    if (p->authfile != NULL)
        px_authfile_free(p->authfile);
    p->authfile = af;
    scram_cache_clear(p);
    px_tls_ctx_free(p->client_tls);
    p->client_tls = tls;
    if (p->cfg != NULL)
        cfg_unref(p->cfg);
    p->cfg = cfg;
    p->limits.max_msg_len = cfg->max_message_len;
    p->limits.max_startup_len = 10000;
    {
        int lvl = cm_log_level_parse(cfg->log_level);

        if (lvl >= 0)
            cm_log_set_level(lvl);
    }
    return 0;
fail:
    for (size_t i = 0; i < n_added; i++)
        px_store_free(added[i]);
    free(added);
    px_tls_ctx_free(tls);
    if (af != NULL)
        px_authfile_free(af);
    return -1;
}

/* Once a second: timeouts of sessions (cheaper than a timer per session). */
static void janitor_cb(uv_timer_t *t)
{
    px_proxy_t *p = t->data;
    uint64_t now = cm_now_ms();
    cm_list_t *it, *tmp;

    cm_list_foreach_safe(it, tmp, &p->clients) {
        px_client_check_timeouts(cm_container_of(it, px_client_t, node), now);
    }
    px_pool_check_timeouts(p, now);
    /* A safety net: drains are noticed when stores go idle, this catches the rest. */
    px_router_check_drain(p);
}

int px_proxy_init(px_proxy_t *p, uv_loop_t *loop, cfg_t *cfg, char **err)
{
    memset(p, 0, sizeof(*p));
    p->loop = loop;
    cm_list_init(&p->clients);
    cm_list_init(&p->servers);
    p->buf_len = cfg->pkt_buf_len;
    p->start_ms = cm_now_ms();
    if (px_random_bytes(p->mock_key, sizeof(p->mock_key)) < 0) {
        *err = cm_xstrdup("cannot get random bytes");
        return -1;
    }
    if (proxy_apply(p, cfg, err) < 0)
        return -1;
    p->is_txn_pool = cfg->pool_mode == CFG_POOL_TRANSACTION;
    if (px_router_init(p, err) < 0)
        return -1;
    uv_timer_init(loop, &p->pause_timer);
    p->pause_timer.data = p;
    uv_timer_init(loop, &p->shutdown_timer);
    p->shutdown_timer.data = p;
    uv_timer_init(loop, &p->pool_wake);
    p->pool_wake.data = p;
    uv_timer_init(loop, &p->janitor);
    p->janitor.data = p;
    uv_timer_start(&p->janitor, janitor_cb, 1000, 1000);
    return 0;
}

int px_proxy_listen(px_proxy_t *p, char **err)
{
    cfg_t *c = p->cfg;
    char *addrs = cm_xstrdup(c->listen_addr);
    char *save = NULL;
    int rc = 0;

    for (char *a = strtok_r(addrs, ", ", &save); a != NULL; a = strtok_r(NULL, ", ", &save)) {
        if (c->listen_port > 0 && px_listen_tcp(p, a, c->listen_port, false, err) < 0) {
            rc = -1;
            break;
        }
        if (c->admin_port > 0 && px_listen_tcp(p, a, c->admin_port, true, err) < 0) {
            rc = -1;
            break;
        }
    }
    free(addrs);
    if (rc == 0 && c->unix_socket_dir[0] != '\0') {
        if (c->listen_port > 0 &&
            px_listen_unix(p, c->unix_socket_dir, c->listen_port, false, err) < 0)
            rc = -1;
        else if (c->admin_port > 0 &&
                 px_listen_unix(p, c->unix_socket_dir, c->admin_port, true, err) < 0)
            rc = -1;
    }
    return rc;
}

int px_proxy_reload(px_proxy_t *p, char **err)
{
    cfg_t *cfg = NULL;
    const char *restart;

    if (p->cfg_path == NULL) {
        *err = cm_xstrdup("started without a config file: nothing to reload");
        return -1;
    }
    if (cfg_load_file(p->cfg_path, &cfg, err) < 0)
        return -1;
    for (size_t i = 0; i < p->n_overrides; i++) {
        char *kv = cm_xstrdup(p->overrides[i]);
        char *eq = strchr(kv, '=');

        *eq = '\0';
        if (cfg_set(cfg, kv, eq + 1, err) < 0) {
            free(kv);
            cfg_unref(cfg);
            return -1;
        }
        free(kv);
    }
    if (cfg_validate(cfg, err) < 0) {
        cfg_unref(cfg);
        return -1;
    }
    restart = cfg_restart_needed(p->cfg, cfg);
    if (restart != NULL)
        LOG_WARN(NULL, "reload: %s changed; the new value takes effect at the next restart",
                 restart);
    if (proxy_apply(p, cfg, err) < 0) {
        cfg_unref(cfg);
        return -1;
    }
    LOG_INFO(NULL, "configuration reloaded from %s", p->cfg_path);
    px_pool_wake_all(p); /* pool_size may have grown */
    return 0;
}

/* ---- pause ---- */

static bool all_clients_idle(px_proxy_t *p)
{
    cm_list_t *it, *tmp;

    cm_list_foreach_safe(it, tmp, &p->clients) {
        px_client_t *c = cm_container_of(it, px_client_t, node);

        if (!c->is_admin && !px_client_is_idle(c))
            return false;
    }
    return true;
}

void px_proxy_resume(px_proxy_t *p)
{
    cm_list_t *it, *tmp;

    p->is_paused = false;
    uv_timer_stop(&p->pause_timer);
    cm_list_foreach_safe(it, tmp, &p->clients) {
        px_client_t *c = cm_container_of(it, px_client_t, node);

        if (c->is_held)
            px_client_kick(c);
    }
}

static void shutdown_finish(px_proxy_t *p);

void px_proxy_check_idle(px_proxy_t *p)
{
    if (p->is_paused && p->pause_waiter != NULL && all_clients_idle(p)) {
        uv_timer_stop(&p->pause_timer);
        px_admin_pause_done(p, true);
    }
    if (p->is_shutting_down && p->n_clients == 0 && p->n_admin_clients == 0)
        shutdown_finish(p);
}

/* ---- shutdown ---- */

static void handle_close_noop(uv_handle_t *h)
{
    (void)h;
}

static void close_if_open(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, handle_close_noop);
}

static void shutdown_finish(px_proxy_t *p)
{
    if (p->is_finished)
        return;
    p->is_finished = true;
    LOG_INFO(NULL, "shutdown complete");
    close_if_open((uv_handle_t *)&p->pause_timer);
    close_if_open((uv_handle_t *)&p->shutdown_timer);
    close_if_open((uv_handle_t *)&p->janitor);
    close_if_open((uv_handle_t *)&p->pool_wake);
    px_pool_close_idle(p);
    close_if_open((uv_handle_t *)&p->sig_term);
    close_if_open((uv_handle_t *)&p->sig_int);
    close_if_open((uv_handle_t *)&p->sig_hup);
    px_http_stop(p);
    px_router_stop(p);
    uv_stop(p->loop);
}

static void shutdown_timeout_cb(uv_timer_t *t)
{
    px_proxy_t *p = t->data;

    LOG_WARN(NULL, "shutdown_timeout_ms reached: closing the remaining sessions");
    px_proxy_shutdown(p, true);
}

void px_proxy_shutdown(px_proxy_t *p, bool immediate)
{
    cm_list_t *it, *tmp;

    if (!p->is_shutting_down) {
        LOG_INFO(NULL, "shutting down: %d clients to drain", p->n_clients);
        p->is_shutting_down = true;
        px_listen_close_all(p);
        if (!immediate && p->cfg->shutdown_timeout_ms > 0)
            uv_timer_start(&p->shutdown_timer, shutdown_timeout_cb,
                           (uint64_t)p->cfg->shutdown_timeout_ms, 0);
    }
    if (p->is_paused)
        px_proxy_resume(p);
    cm_list_foreach_safe(it, tmp, &p->clients) {
        px_client_t *c = cm_container_of(it, px_client_t, node);

        if (c->state == PX_CL_CLOSING)
            continue;
        if (immediate || px_client_is_idle(c) || c->state != PX_CL_READY)
            px_client_fail(c, "57P01", "terminating connection: pgshift is shutting down");
        else
            c->close_when_idle = 1;
    }
    px_proxy_check_idle(p);
}

void px_proxy_destroy(px_proxy_t *p)
{
    px_router_destroy(p);
    for (size_t i = 0; i < p->n_stores; i++)
        px_store_free(p->stores[i]);
    free(p->stores);
    if (p->authfile != NULL)
        px_authfile_free(p->authfile);
    px_tls_ctx_free(p->client_tls);
    scram_cache_clear(p);
    free(p->hold_log);
    for (size_t i = 0; i < p->n_buf_pool; i++)
        free(p->buf_pool[i]);
    free(p->buf_pool);
    for (size_t i = 0; i < p->n_overrides; i++)
        free(p->overrides[i]);
    free(p->overrides);
    free(p->cfg_path);
    if (p->cfg != NULL)
        cfg_unref(p->cfg);
}
