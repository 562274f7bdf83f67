/*
 * proxy/client.c - client sessions: the startup packet and TLS, pgshift's
 * own authentication of the client, the welcome (parameters, pgshift's
 * BackendKeyData), then forwarding of the client's messages to its
 * server connection, or to the admin console on the admin port.
 *
 * State (px_cl_state_t) changes only through cl_set_state. Input that
 * cannot be handled yet (server still logging in, proxy paused, server
 * output backed up) stays in the read buffer and reading stops; the
 * blocking party calls px_client_kick when it clears.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "proxy/authfile.h"
#include "proxy/proxy.h"
#include "proxy/scram.h"

/* Startup-family packets: PostgreSQL's own limit. */
#define CL_MAX_STARTUP_LEN 10000

static const char *const cl_state_names[] = {
    [PX_CL_STARTUP] = "startup", [PX_CL_TLS] = "tls",     [PX_CL_AUTH] = "auth",
    [PX_CL_WELCOME] = "welcome", [PX_CL_READY] = "ready", [PX_CL_CLOSING] = "closing",
};

const char *px_cl_state_name(px_cl_state_t s)
{
    return (size_t)s < CM_ARRAY_LEN(cl_state_names) ? cl_state_names[s] : "?";
}

static void cl_set_state(px_client_t *c, px_cl_state_t to)
{
    LOG_NOISE(c->ctx, "%s -> %s", px_cl_state_name(c->state), px_cl_state_name(to));
    c->state = to;
}

/* ---- lifetime ---- */

static void cl_unref(px_client_t *c)
{
    if (--c->n_handles > 0)
        return;
    cm_list_del(&c->node);
    px_params_clear(&c->startup);
    px_scram_server_free(c->scram);
    free(c->user);
    free(c->database);
    free(c);
}

static void cl_conn_closed(px_conn_t *conn)
{
    cl_unref(conn->owner);
}

static void cl_detach(px_client_t *c)
{
    px_proxy_t *p = c->conn.proxy;
    px_server_t *streaming;

    if (c->state == PX_CL_CLOSING)
        return;
    if (c->server != NULL &&
        (c->n_servers == 0 || c->servers[c->server->store->index] != c->server)) {
        px_server_release(c->server); /* the welcome's server, not in servers[] */
    }
    /* CopyData half forwarded to it: its stream is cut mid-message. */
    streaming = c->fwd_left > 0 ? c->server : NULL;
    c->server = NULL;
    px_pool_unwait(c);
    for (size_t i = 0; i < c->n_servers; i++) {
        px_server_t *s = c->servers[i];

        if (s == NULL)
            continue;
        c->servers[i] = NULL;
        if (s->is_pooled && !c->is_pinned) {
            /* A login that sent our startup parameters goes on for the pool. */
            if (s->state == PX_SV_LOGIN) {
                s->client = NULL;
                continue;
            }
            /* Back to the pool when nothing of ours is left there: no batch
             * without its Sync, no half-forwarded CopyData. */
            if (s->state == PX_SV_ACTIVE && c->batch_store != (int)i && s != streaming &&
                px_pool_checkin(s))
                continue;
        }
        if (s->rq_n > 0 || s->txn_status != WIRE_TXN_IDLE) {
            /* The backend may still be busy for us: ask it to stop. */
            if (s->be_pid != 0)
                px_server_send_cancel(p, s->store, s->be_pid, s->be_key);
        }
        px_server_release(s);
    }
    free(c->servers);
    c->servers = NULL;
    c->n_servers = 0;
    px_router_client_gone(c);
    if (c->is_admin)
        p->n_admin_clients--;
    else
        p->n_clients--;
    if (p->pause_waiter == c)
        p->pause_waiter = NULL;
    cl_set_state(c, PX_CL_CLOSING);
}

void px_client_close(px_client_t *c, const char *reason)
{
    px_proxy_t *p = c->conn.proxy;

    if (c->state == PX_CL_CLOSING)
        return;
    LOG_INFO(c->ctx, "closing: %s (age %llus)", reason,
             (unsigned long long)((cm_wall_ms() - c->connect_ms) / 1000));
    cl_detach(c);
    px_conn_close(&c->conn);
    px_proxy_check_idle(p);
}

static void cl_put_error(px_client_t *c, const char *severity, const char *sqlstate,
                         const char *msg)
{
    cm_buf_t b = { 0 };

    wire_put_error(&b, false, severity, sqlstate, msg, NULL);
    px_conn_send(&c->conn, b.data, b.len);
    cm_buf_free(&b);
}

void px_client_fail(px_client_t *c, const char *sqlstate, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    px_proxy_t *p = c->conn.proxy;

    if (c->state == PX_CL_CLOSING)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    LOG_INFO(c->ctx, "closing: %s (%s)", msg, sqlstate);
    /* Only a session past startup understands a typed message. */
    if (c->state != PX_CL_TLS)
        cl_put_error(c, "FATAL", sqlstate, msg);
    cl_detach(c);
    px_conn_close_after_flush(&c->conn);
    px_proxy_check_idle(p);
}

void px_client_error(px_client_t *c, const char *sqlstate, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cl_put_error(c, "ERROR", sqlstate, msg);
}

void px_client_send_ready(px_client_t *c)
{
    cm_buf_t b = { 0 };

    wire_put_ready(&b, c->txn_status ? c->txn_status : WIRE_TXN_IDLE);
    px_conn_send(&c->conn, b.data, b.len);
    cm_buf_free(&b);
    px_conn_flush(&c->conn);
}

bool px_client_is_idle(const px_client_t *c)
{
    if (c->state != PX_CL_READY)
        return c->state == PX_CL_CLOSING;
    if (c->in_txn || c->fwd_left > 0 || c->batch_store >= 0 || c->batch.len > 0)
        return false;
    for (size_t i = 0; i < c->n_servers; i++) {
        const px_server_t *s = c->servers[i];

        if (s != NULL && (px_server_visible_pending(s) > 0 || s->txn_status != WIRE_TXN_IDLE ||
                          s->is_copy_in || s->is_copy_out))
            return false;
    }
    return true;
}

/* ---- timeouts (the proxy's janitor calls this once a second) ---- */

void px_client_check_timeouts(px_client_t *c, uint64_t now_ms)
{
    px_proxy_t *p = c->conn.proxy;

    if (c->state == PX_CL_CLOSING)
        return;
    if (c->state != PX_CL_READY) {
        if (p->cfg->client_login_timeout_ms > 0 &&
            now_ms - c->last_active_ms >= (uint64_t)p->cfg->client_login_timeout_ms)
            px_client_fail(c, "08P01", "login timeout after %d ms",
                           p->cfg->client_login_timeout_ms);
        return;
    }
    if (c->hold_start_us != 0) {
        /* Held at a cutover: never idle; past max_hold_ms the statement is refused. */
        if (!c->is_hold_expired &&
            now_ms - c->hold_start_us / 1000 >= (uint64_t)p->cfg->max_hold_ms) {
            c->is_hold_expired = 1;
            px_client_kick(c); /* the router answers 55000 and the session goes on */
        }
        return;
    }
    if (p->cfg->client_idle_timeout_ms > 0 && !c->is_admin && px_client_is_idle(c) &&
        now_ms - c->last_active_ms >= (uint64_t)p->cfg->client_idle_timeout_ms)
        px_client_fail(c, "57P05", "terminating connection due to idle timeout");
}

/* ---- welcome ---- */

static void cl_send_welcome(px_client_t *c)
{
    cm_buf_t b = { 0 };
    const px_params_t *sp = &c->store->params;

    wire_put_auth_ok(&b);
    if (c->is_admin) {
        static const char *const admin_params[][2] = {
            { "server_version", PGSHIFT_VERSION "/pgshift" },
            { "server_encoding", "UTF8" },
            { "client_encoding", "UTF8" },
            { "DateStyle", "ISO, MDY" },
            { "integer_datetimes", "on" },
            { "standard_conforming_strings", "on" },
        };

        for (size_t i = 0; i < CM_ARRAY_LEN(admin_params); i++)
            wire_put_param_status(&b, admin_params[i][0], admin_params[i][1]);
    } else {
        /* The store's values, with the client's own startup settings on top:
         * the session's server repeats the real ones when it logs in. */
        const char *app = px_params_get(&c->startup, "application_name");

        for (size_t i = 0; i < sp->n; i++) {
            const char *n = sp->v[i].name, *v = sp->v[i].value;
            const char *mine = px_params_get(&c->startup, n);

            /* PostgreSQL reports its canonical client_encoding name. */
            if (mine != NULL && strcmp(n, "client_encoding") != 0)
                v = mine;
            wire_put_param_status(&b, n, v);
        }
        wire_put_param_status(&b, "application_name", app ? app : "");
    }
    wire_put_backend_key(&b, (uint32_t)(c->id & 0x7fffffff), c->cancel_key);
    wire_put_ready(&b, WIRE_TXN_IDLE);
    px_conn_send(&c->conn, b.data, b.len);
    cm_buf_free(&b);
    px_conn_flush(&c->conn);
    c->txn_status = WIRE_TXN_IDLE;
    cl_set_state(c, PX_CL_READY);
    c->last_active_ms = cm_now_ms();
    LOG_DEBUG(c->ctx, "login ok");
}

static void cl_login_done(px_client_t *c)
{
    px_proxy_t *p = c->conn.proxy;

    c->pool_sig = px_pool_sig(&c->startup);
    if (c->is_admin || c->store->has_params) {
        cl_send_welcome(c);
        return;
    }
    /* First session on this store: learn its parameters from a real login. */
    cl_set_state(c, PX_CL_WELCOME);
    c->n_servers = p->n_stores;
    c->servers = cm_xcalloc(c->n_servers, sizeof(*c->servers));
    if ((px_pool_on(p) ? px_pool_connect(c, c->store, &c->servers[c->store->index])
                       : px_server_connect(p, c->store, c, &c->servers[c->store->index])) < 0) {
        c->servers[c->store->index] = NULL;
        px_client_fail(c, "08006", "could not connect to store \"%s\"", c->store->name);
        return;
    }
    c->server = c->servers[c->store->index];
}

void px_client_server_ready(px_client_t *c, px_server_t *s)
{
    px_router_server_ready(c, s);
    if (c->state == PX_CL_WELCOME) {
        cl_send_welcome(c);
        /* Input may have arrived while we waited. */
    }
    px_client_kick(c);
    /* A pooled server nothing was sent to (the welcome's, one opened ahead
     * of need) waits in the pool rather than with an idle session. */
    if (s->is_pooled && s->client == c && s->rq_n == 0 && c->state == PX_CL_READY)
        px_router_server_idle(c, s);
}

void px_client_server_lost(px_client_t *c, px_server_t *s, const char *why)
{
    px_router_server_gone(c, s);
    if (c->state == PX_CL_CLOSING || s->is_warm)
        return; /* a connection opened ahead of need carried nothing of the client's */
    px_client_fail(c, "08006", "%s", why);
}

/* ---- authentication ---- */

static void cl_auth_fail(px_client_t *c)
{
    c->conn.proxy->stats.n_auth_failures++;
    px_client_fail(c, "28P01", "password authentication failed for user \"%s\"", c->user);
}

static void cl_start_auth(px_client_t *c)
{
    px_proxy_t *p = c->conn.proxy;
    cm_buf_t b = { 0 };
    const char *secret;

    if (p->cfg->auth_type == CFG_AUTH_TRUST) {
        cl_login_done(c);
        return;
    }
    secret = p->authfile ? px_authfile_find(p->authfile, c->user) : NULL;
    cl_set_state(c, PX_CL_AUTH);
    if (p->cfg->auth_type == CFG_AUTH_MD5 &&
        (secret == NULL || strncmp(secret, "SCRAM-SHA-256$", 14) != 0)) {
        if (px_random_bytes(c->md5_salt, sizeof(c->md5_salt)) < 0) {
            px_client_fail(c, "XX000", "cannot generate a salt");
            return;
        }
        c->auth_step = PX_AUTH_PASSWORD;
        wire_put_auth_md5(&b, c->md5_salt);
    } else {
        c->auth_step = PX_AUTH_SASL_INIT;
        wire_put_auth_sasl(&b, "SCRAM-SHA-256");
    }
    px_conn_send(&c->conn, b.data, b.len);
    cm_buf_free(&b);
    px_conn_flush(&c->conn);
}

static void cl_auth_input(px_client_t *c, const uint8_t *body, size_t len)
{
    px_proxy_t *p = c->conn.proxy;
    const char *secret = p->authfile ? px_authfile_find(p->authfile, c->user) : NULL;
    cm_buf_t b = { 0 };

    switch (c->auth_step) {
    case PX_AUTH_PASSWORD: {
        wire_str_t pw;

        if (wire_parse_password(body, len, &pw) != WIRE_OK) {
            px_client_fail(c, "08P01", "invalid password packet");
            return;
        }
        if (secret == NULL || !px_md5_check(secret, c->user, c->md5_salt, pw.p)) {
            cl_auth_fail(c);
            return;
        }
        cl_login_done(c);
        return;
    }
    case PX_AUTH_SASL_INIT: {
        wire_str_t mech, data;
        px_scram_secret_t sec;
        char *reply = NULL;
        const char *err = NULL;

        if (wire_parse_sasl_initial(body, len, &mech, &data) != WIRE_OK || data.p == NULL) {
            px_client_fail(c, "08P01", "invalid SASL initial response");
            return;
        }
        if (strcmp(mech.p, "SCRAM-SHA-256") != 0) {
            px_client_fail(c, "28000", "SASL mechanism \"%s\" is not supported", mech.p);
            return;
        }
        switch (secret ? px_secret_kind(secret) : PX_SECRET_BAD) {
        case PX_SECRET_SCRAM:
            if (px_scram_secret_parse(secret, &sec) < 0) {
                cl_auth_fail(c);
                return;
            }
            c->scram = px_scram_server_new(&sec);
            break;
        case PX_SECRET_PLAIN:
            if (px_proxy_scram_secret(p, c->user, secret, &sec) < 0) {
                cl_auth_fail(c);
                return;
            }
            c->scram = px_scram_server_new(&sec);
            break;
        case PX_SECRET_MD5:
        case PX_SECRET_BAD:
        default:
            /* No usable secret: run the exchange to its failing end, so a
             * client cannot tell unknown users from wrong passwords. */
            c->scram = px_scram_server_new_mock(c->user, p->mock_key);
            break;
        }
        if (px_scram_server_first(c->scram, data.p, data.len, &reply, &err) < 0) {
            if (px_scram_server_is_protocol_error(c->scram))
                px_client_fail(c, "08P01", "invalid SCRAM exchange: %s", err ? err : "?");
            else
                cl_auth_fail(c);
            return;
        }
        wire_put_auth_sasl_continue(&b, reply, strlen(reply));
        free(reply);
        c->auth_step = PX_AUTH_SASL_CONT;
        break;
    }
    case PX_AUTH_SASL_CONT: {
        wire_str_t data;
        char *reply = NULL;
        const char *err = NULL;

        if (wire_parse_sasl_response(body, len, &data) != WIRE_OK) {
            px_client_fail(c, "08P01", "invalid SASL response");
            return;
        }
        if (px_scram_server_final(c->scram, data.p, data.len, &reply, &err) < 0 || secret == NULL ||
            strncmp(secret, "md5", 3) == 0) {
            free(reply);
            cl_auth_fail(c);
            return;
        }
        px_scram_server_free(c->scram);
        c->scram = NULL;
        wire_put_auth_sasl_final(&b, reply, strlen(reply));
        free(reply);
        px_conn_send(&c->conn, b.data, b.len);
        cm_buf_free(&b);
        cl_login_done(c);
        return;
    }
    case PX_AUTH_NONE:
    default:
        px_client_fail(c, "08P01", "unexpected password message");
        return;
    }
    px_conn_send(&c->conn, b.data, b.len);
    cm_buf_free(&b);
    px_conn_flush(&c->conn);
}

/* ---- startup ---- */

/*
 * The session tenant from the startup packet: a "pgshift.tenant" parameter,
 * "-c pgshift.tenant=X" (or --pgshift.tenant=X) in "options", or a user
 * name "user.tenant" when tenant_from_user is on (the user part logs in).
 */
static void cl_startup_tenant(px_client_t *c)
{
    px_proxy_t *p = c->conn.proxy;
    const char *v = px_params_get(&c->startup, "pgshift.tenant");
    const char *opts = px_params_get(&c->startup, "options");

    if (v != NULL && v[0] != '\0') {
        free(c->tenant);
        c->tenant = cm_xstrdup(v);
    }
    if (opts != NULL) {
        const char *k = strstr(opts, "pgshift.tenant=");

        if (k != NULL) {
            const char *e = k + 15;
            size_t n = strcspn(e, " \t");

            if (n > 0) {
                free(c->tenant);
                c->tenant = cm_xstrndup(e, n);
            }
        }
    }
    if (p->cfg->tenant_from_user && !c->is_admin) {
        char *dot = strrchr(c->user, '.');

        if (dot != NULL && dot[1] != '\0' && dot != c->user) {
            free(c->tenant);
            c->tenant = cm_xstrdup(dot + 1);
            *dot = '\0';
        }
    }
}

static void cl_startup_message(px_client_t *c, const wire_startup_t *st)
{
    px_proxy_t *p = c->conn.proxy;
    wire_str_t user = wire_startup_param(st, "user");
    wire_str_t db = wire_startup_param(st, "database");
    const char *want_db;
    char peer[64];

    if (p->cfg->client_tls_mode == CFG_TLS_REQUIRE && c->conn.tls == NULL && !c->is_unix) {
        px_client_fail(c, "28000", "pgshift requires TLS (client_tls_mode = require)");
        return;
    }
    if (user.p == NULL || user.len == 0) {
        px_client_fail(c, "28000", "no PostgreSQL user name specified in startup packet");
        return;
    }
    c->user = cm_xstrndup(user.p, user.len);
    c->database = db.p && db.len ? cm_xstrndup(db.p, db.len) : cm_xstrdup(c->user);
    snprintf(c->ctx, sizeof(c->ctx), "C#%llu %s/%s@%s", (unsigned long long)c->id, c->database,
             c->user, c->is_unix ? "unix" : px_conn_peer(&c->conn, peer, sizeof(peer)));
    for (size_t i = 0; i < st->n_params; i++) {
        const wire_str_t *n = &st->names[i];

        if ((n->len == 4 && memcmp(n->p, "user", 4) == 0) ||
            (n->len == 8 && memcmp(n->p, "database", 8) == 0))
            continue;
        if (n->len == 11 && memcmp(n->p, "replication", 11) == 0) {
            px_client_fail(c, "08P01", "replication connections are not supported by pgshift");
            return;
        }
        if (n->len >= 5 && memcmp(n->p, "_pq_.", 5) == 0)
            continue; /* protocol extensions: none supported */
        px_params_set(&c->startup, n->p, n->len, st->values[i].p, st->values[i].len);
    }
    cl_startup_tenant(c);
    want_db = c->is_admin ? "pgshift" : p->cfg->database;
    if (strcmp(c->database, want_db) != 0) {
        px_client_fail(c, "3D000", "database \"%s\" does not exist", c->database);
        return;
    }
    if (c->is_admin && !cfg_is_admin(p->cfg, c->user)) {
        px_client_fail(c, "42501", "user \"%s\" is not an admin user", c->user);
        return;
    }
    if (!c->is_admin && p->n_clients > p->cfg->max_client_conn) {
        p->stats.n_refused++;
        px_client_fail(c, "53300", "sorry, too many clients already (max_client_conn = %d)",
                       p->cfg->max_client_conn);
        return;
    }
    if (p->is_shutting_down) {
        px_client_fail(c, "57P03", "pgshift is shutting down");
        return;
    }
    c->store = p->default_store;
    if (st->version != WIRE_PROTO_V3 || st->n_params > 0) {
        /* Newer minor versions and _pq_ options get NegotiateProtocolVersion. */
        const char *unknown[WIRE_MAX_STARTUP_PARAMS];
        char *owned[WIRE_MAX_STARTUP_PARAMS];
        size_t n_unknown = 0;

        for (size_t i = 0; i < st->n_params; i++)
            if (st->names[i].len >= 5 && memcmp(st->names[i].p, "_pq_.", 5) == 0) {
                owned[n_unknown] = cm_xstrndup(st->names[i].p, st->names[i].len);
                unknown[n_unknown] = owned[n_unknown];
                n_unknown++;
            }
        if (st->version != WIRE_PROTO_V3 || n_unknown > 0) {
            cm_buf_t b = { 0 };

            wire_put_negotiate_version(&b, 0, unknown, n_unknown);
            px_conn_send(&c->conn, b.data, b.len);
            cm_buf_free(&b);
        }
        for (size_t i = 0; i < n_unknown; i++)
            free(owned[i]);
    }
    cl_start_auth(c);
}

static void cl_startup_input(px_client_t *c)
{
    px_conn_t *conn = &c->conn;
    px_proxy_t *p = conn->proxy;
    wire_limits_t lim = { .max_msg_len = p->limits.max_msg_len,
                          .max_startup_len = CL_MAX_STARTUP_LEN };
    wire_startup_t st;
    size_t used = 0;
    wire_rc_t rc;

    rc = wire_startup_decode(conn->rbuf + conn->rpos, conn->rlen - conn->rpos, &lim, &st, &used);
    if (rc == WIRE_PARTIAL) {
        px_conn_reserve(conn, 8);
        return;
    }
    if (rc != WIRE_OK) {
        p->stats.n_protocol_errors++;
        px_client_fail(c, "08P01", "invalid startup packet: %s", wire_rc_str(rc));
        return;
    }
    switch (st.kind) {
    case WIRE_STARTUP_SSL_REQUEST:
        px_conn_consume(conn, used);
        if (conn->tls != NULL) {
            px_client_fail(c, "08P01", "SSLRequest received twice");
            return;
        }
        if (conn->rpos < conn->rlen) {
            /* Bytes after SSLRequest before the handshake could be injected
             * by a man in the middle: refuse them. */
            px_client_fail(c, "08P01", "received unencrypted data after SSL request");
            return;
        }
        if (p->client_tls != NULL && !c->is_unix) {
            px_conn_send(conn, "S", 1);
            px_conn_flush(conn);
            cl_set_state(c, PX_CL_TLS);
            if (px_conn_start_tls(conn, px_tls_new_server(p->client_tls)) < 0)
                px_client_close(c, "cannot start TLS");
            return;
        }
        px_conn_send(conn, "N", 1);
        px_conn_flush(conn);
        return;
    case WIRE_STARTUP_GSSENC_REQUEST:
        px_conn_consume(conn, used);
        px_conn_send(conn, "N", 1);
        px_conn_flush(conn);
        return;
    case WIRE_STARTUP_CANCEL:
        px_conn_consume(conn, used);
        px_client_cancel(p, st.cancel_pid, st.cancel_key);
        px_client_close(c, "cancel request");
        return;
    case WIRE_STARTUP_MESSAGE:
        cl_startup_message(c, &st); /* reads views into rbuf: consume after */
        if (c->state != PX_CL_CLOSING)
            px_conn_consume(conn, used);
        return;
    default:
        BUG_ON(1, "bad startup kind %d", st.kind);
    }
}

/* ---- cancel ---- */

void px_client_cancel(px_proxy_t *p, uint32_t pid, uint32_t key)
{
    cm_list_t *it, *tmp;

    cm_list_foreach_safe(it, tmp, &p->clients) {
        px_client_t *c = cm_container_of(it, px_client_t, node);

        if ((uint32_t)(c->id & 0x7fffffff) != pid)
            continue;
        if (c->cancel_key != key || c->state != PX_CL_READY) {
            LOG_INFO(c->ctx, "cancel request with a wrong key ignored");
            return;
        }
        if (c->server != NULL && c->server->state == PX_SV_ACTIVE && c->server->be_pid != 0) {
            LOG_DEBUG(c->ctx, "forwarding cancel to store %s", c->server->store->name);
            px_server_send_cancel(p, c->server->store, c->server->be_pid, c->server->be_key);
        }
        return;
    }
}

/* ---- forwarding ---- */

static void cl_admin_input(px_client_t *c)
{
    px_conn_t *conn = &c->conn;
    px_proxy_t *p = conn->proxy;

    while (conn->rpos < conn->rlen && c->state == PX_CL_READY && !c->is_held && !c->is_waiting) {
        wire_hdr_t h;
        wire_rc_t rc =
            wire_hdr_decode(conn->rbuf + conn->rpos, conn->rlen - conn->rpos, &p->limits, &h);
        wire_str_t sql;

        if (rc == WIRE_PARTIAL)
            return;
        if (rc != WIRE_OK) {
            p->stats.n_protocol_errors++;
            px_client_fail(c, "08P01", "invalid message: %s", wire_rc_str(rc));
            return;
        }
        if (conn->rlen - conn->rpos < WIRE_HDR_LEN + h.body_len) {
            px_conn_reserve(conn, WIRE_HDR_LEN + h.body_len);
            return;
        }
        switch (h.type) {
        case WIRE_MSG_QUERY:
            if (wire_parse_query(conn->rbuf + conn->rpos + WIRE_HDR_LEN, h.body_len, &sql) !=
                WIRE_OK) {
                px_client_fail(c, "08P01", "invalid Query message");
                return;
            }
            {
                char *q = cm_xstrndup(sql.p, sql.len);

                px_conn_consume(conn, WIRE_HDR_LEN + h.body_len);
                px_admin_query(c, q);
                free(q);
            }
            break;
        case WIRE_MSG_TERMINATE:
            px_client_close(c, "client terminated");
            return;
        case WIRE_MSG_SYNC:
            px_conn_consume(conn, WIRE_HDR_LEN + h.body_len);
            px_client_send_ready(c);
            break;
        case WIRE_MSG_FLUSH:
            px_conn_consume(conn, WIRE_HDR_LEN + h.body_len);
            break;
        default:
            if (!wire_fe_type_known(h.type)) {
                px_client_fail(c, "08P01", "invalid frontend message type %d", h.type);
                return;
            }
            px_conn_consume(conn, WIRE_HDR_LEN + h.body_len);
            if (h.type == WIRE_MSG_PARSE || h.type == WIRE_MSG_FUNCTION_CALL)
                px_client_error(c, "0A000",
                                "the admin console supports only the simple query protocol");
            break;
        }
    }
}

static void cl_process(px_client_t *c)
{
    px_conn_t *conn = &c->conn;

    switch (c->state) {
    case PX_CL_STARTUP:
        while (c->state == PX_CL_STARTUP && conn->rpos < conn->rlen) {
            size_t before = conn->rpos;

            cl_startup_input(c);
            if (conn->rpos == before)
                break;
        }
        if (c->state == PX_CL_READY && conn->rpos < conn->rlen)
            cl_process(c);
        return;
    case PX_CL_TLS:
        if (conn->tls != NULL && px_tls_handshake_done(conn->tls)) {
            cl_set_state(c, PX_CL_STARTUP);
            if (conn->rpos < conn->rlen)
                cl_process(c);
        }
        return;
    case PX_CL_AUTH:
        while (c->state == PX_CL_AUTH && conn->rpos < conn->rlen) {
            wire_hdr_t h;
            wire_rc_t rc = wire_hdr_decode(conn->rbuf + conn->rpos, conn->rlen - conn->rpos,
                                           &conn->proxy->limits, &h);

            if (rc == WIRE_PARTIAL)
                return;
            if (rc != WIRE_OK || h.type != WIRE_MSG_PASSWORD || h.body_len > 65536) {
                px_client_fail(c, "08P01", "expected a password message during authentication");
                return;
            }
            if (conn->rlen - conn->rpos < WIRE_HDR_LEN + h.body_len) {
                px_conn_reserve(conn, WIRE_HDR_LEN + h.body_len);
                return;
            }
            cl_auth_input(c, conn->rbuf + conn->rpos + WIRE_HDR_LEN, h.body_len);
            if (c->state != PX_CL_CLOSING)
                px_conn_consume(conn, WIRE_HDR_LEN + h.body_len);
        }
        if (c->state == PX_CL_READY && conn->rpos < conn->rlen)
            cl_process(c);
        return;
    case PX_CL_WELCOME:
        return; /* input waits for the welcome */
    case PX_CL_READY:
        c->last_active_ms = cm_now_ms();
        if (c->is_admin)
            cl_admin_input(c);
        else
            px_router_input(c);
        return;
    case PX_CL_CLOSING:
        px_conn_consume(conn, conn->rlen - conn->rpos);
        return;
    default:
        BUG_ON(1, "bad client state %d", c->state);
    }
}

void px_client_server_idle(px_client_t *c, px_server_t *s)
{
    if (s->is_pooled)
        px_router_server_idle(c, s); /* may give it back to the pool */
    if (c->is_waiting || c->close_when_idle || c->conn.proxy->is_paused)
        px_client_kick(c);
}

void px_client_kick(px_client_t *c)
{
    px_proxy_t *p = c->conn.proxy;

    if (c->state == PX_CL_CLOSING)
        return;
    if (c->is_held && !p->is_paused && p->pause_waiter != c)
        c->is_held = 0;
    if (c->close_when_idle && px_client_is_idle(c) && c->conn.rpos == c->conn.rlen) {
        px_client_fail(c, "57P01", "terminating connection: pgshift is shutting down");
        return;
    }
    if (c->conn.rpos < c->conn.rlen && !c->is_held && c->lookup_id == 0)
        cl_process(c);
    if (c->state == PX_CL_CLOSING)
        return;
    if (!c->is_held && !c->conn.is_reading &&
        (c->server == NULL || px_conn_pending(&c->server->conn) <= p->cfg->max_buffer_len))
        if (px_conn_start_read(&c->conn) < 0) {
            px_client_close(c, "cannot read from client");
            return;
        }
    if (px_client_is_idle(c))
        px_proxy_check_idle(p);
}

/* ---- conn callbacks ---- */

static void cl_on_read(px_conn_t *conn)
{
    px_client_t *c = conn->owner;

    if (c->is_held) {
        px_conn_stop_read(conn);
        return;
    }
    cl_process(c);
}

static void cl_on_error(px_conn_t *conn, int err)
{
    px_client_t *c = conn->owner;

    if (conn->tls != NULL && err == UV_EPROTO) {
        px_client_close(c, px_tls_error(conn->tls));
        return;
    }
    px_client_close(c, err == UV_EOF ? "client disconnected" : uv_strerror(err));
}

static void cl_on_drain(px_conn_t *conn)
{
    px_client_t *c = conn->owner;

    /* The client took the store's output: let the stores' bytes flow again. */
    for (size_t i = 0; i < c->n_servers; i++)
        if (c->servers[i] != NULL)
            px_server_kick(c->servers[i]);
    if (c->server != NULL && c->n_servers == 0)
        px_server_kick(c->server);
}

static const px_conn_ops_t client_conn_ops = {
    .on_read = cl_on_read,
    .on_error = cl_on_error,
    .on_drain = cl_on_drain,
    .on_closed = cl_conn_closed,
};

void px_client_accept(px_proxy_t *p, uv_stream_t *listener, bool is_admin, bool is_unix)
{
    px_client_t *c = cm_xcalloc(1, sizeof(*c));
    int rc;

    c->id = ++p->next_id;
    c->batch_store = -1;
    c->bound_store = -1;
    c->hold_store = -1;
    c->wait_store = -1;
    cm_list_init(&c->wait_node);
    c->is_admin = is_admin;
    c->is_unix = is_unix;
    c->connect_ms = cm_wall_ms();
    px_conn_init(&c->conn, p, PX_CONN_CLIENT, &client_conn_ops, c);
    cm_list_init(&c->node);
    if (is_unix)
        rc = uv_pipe_init(p->loop, &c->conn.h.pipe, 0);
    else
        rc = uv_tcp_init(p->loop, &c->conn.h.tcp);
    if (rc < 0) {
        free(c);
        return;
    }
    c->conn.h.handle.data = &c->conn;
    c->conn.is_open = 1;
    c->n_handles = 1;
    c->last_active_ms = cm_now_ms(); /* login timeout counts from here */
    cm_list_append(&p->clients, &c->node);
    if (is_admin)
        p->n_admin_clients++;
    else
        p->n_clients++;
    snprintf(c->ctx, sizeof(c->ctx), "C#%llu", (unsigned long long)c->id);
    if (uv_accept(listener, &c->conn.h.stream) < 0) {
        px_client_close(c, "accept failed");
        return;
    }
    p->stats.n_accepted++;
    if (!is_unix)
        uv_tcp_nodelay(&c->conn.h.tcp, 1);
    if (px_random_bytes(&c->cancel_key, sizeof(c->cancel_key)) < 0)
        c->cancel_key = (uint32_t)cm_now_us();
    if (px_conn_start_read(&c->conn) < 0) {
        px_client_close(c, "cannot read");
        return;
    }
}
