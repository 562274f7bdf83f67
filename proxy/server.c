/*
 * proxy/server.c - pgshift's connections to the stores: connect (TCP or
 * unix socket), optional TLS, the login with the store's own credentials
 * (SCRAM-SHA-256, md5 or password, as the store asks), then forwarding of
 * the store's output to the linked client.
 *
 * A server connection belongs to one client session (session pooling): it
 * is opened at the session's first statement and closed with the session.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "proxy/proxy.h"
#include "proxy/scram.h"

/* Largest backend message pgshift inspects whole (ParameterStatus, errors, ...). */
#define SV_MAX_INSPECT_LEN (1u << 20)

/* Response-queue flag: the answer goes to pgshift, not the client. */
#define SV_RQ_SWALLOW 0x80

static const char *const sv_state_names[] = {
    [PX_SV_CONNECTING] = "connecting", [PX_SV_SSL_REQ] = "ssl_request", [PX_SV_TLS] = "tls",
    [PX_SV_LOGIN] = "login",           [PX_SV_ACTIVE] = "active",       [PX_SV_CLOSING] = "closing",
};

const char *px_sv_state_name(px_sv_state_t s)
{
    return (size_t)s < CM_ARRAY_LEN(sv_state_names) ? sv_state_names[s] : "?";
}

static void sv_set_state(px_server_t *s, px_sv_state_t to)
{
    LOG_NOISE(s->ctx, "%s -> %s", px_sv_state_name(s->state), px_sv_state_name(to));
    if (to == PX_SV_ACTIVE && s->state != PX_SV_ACTIVE)
        s->store->n_active++;
    else if (s->state == PX_SV_ACTIVE && to != PX_SV_ACTIVE)
        s->store->n_active--;
    if (to == PX_SV_CLOSING)
        px_pool_forget(s);
    s->state = to;
}

/* One of the server's handles closed; the last one frees it. */
static void sv_unref(px_server_t *s)
{
    if (--s->n_handles > 0)
        return;
    cm_list_del(&s->node);
    s->store->n_servers--;
    px_scram_client_free(s->scram);
    free(s->rq);
    free(s);
}

static void sv_handle_closed(uv_handle_t *h)
{
    sv_unref(h->data);
}

static void sv_conn_closed(px_conn_t *c)
{
    sv_unref(c->owner);
}

/*
 * The store carries no more work for the session (its answers are in, or it
 * goes away): a cutover waiting for that work may now be acknowledged.
 */
static void sv_work_done(px_server_t *s)
{
    px_proxy_t *p = s->conn.proxy;

    if (!s->is_busy)
        return;
    s->is_busy = 0;
    if (p->n_cutover_unacked > 0)
        px_router_check_drain(p);
}

/* Close without notifying the client (it is gone or told already). */
static void sv_close(px_server_t *s)
{
    if (s->state == PX_SV_CLOSING)
        return;
    sv_set_state(s, PX_SV_CLOSING);
    sv_work_done(s);
    s->client = NULL;
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->timer, sv_handle_closed);
    px_conn_close(&s->conn);
}

/* The store failed us: tell the client, then close. */
static void sv_fail(px_server_t *s, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void sv_fail(px_server_t *s, const char *fmt, ...)
{
    char why[512];
    va_list ap;
    px_client_t *c = s->client;

    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (s->state == PX_SV_CLOSING)
        return;
    LOG_WARN(s->ctx, "%s", why);
    s->store->n_errors++;
    s->client = NULL;
    if (c != NULL)
        px_client_server_lost(c, s, why);
    sv_close(s);
}

void px_server_release(px_server_t *s)
{
    if (s->state == PX_SV_CLOSING)
        return;
    s->client = NULL;
    if (s->state == PX_SV_ACTIVE || s->state == PX_SV_LOGIN) {
        cm_buf_t b = { 0 };

        wire_put_terminate(&b);
        px_conn_send(&s->conn, b.data, b.len);
        cm_buf_free(&b);
        sv_set_state(s, PX_SV_CLOSING);
        sv_work_done(s); /* Terminate ends whatever transaction was open */
        uv_timer_stop(&s->timer);
        uv_close((uv_handle_t *)&s->timer, sv_handle_closed);
        px_conn_close_after_flush(&s->conn);
        return;
    }
    sv_close(s);
}

static void sv_send(px_server_t *s, cm_buf_t *b)
{
    px_conn_send(&s->conn, b->data, b->len);
    px_conn_flush(&s->conn);
    cm_buf_free(b);
}

static void sv_send_startup(px_server_t *s)
{
    const char *names[PX_MAX_PARAMS + 3];
    const char *values[PX_MAX_PARAMS + 3];
    size_t n = 0;
    cm_buf_t b = { 0 };
    px_client_t *c = s->client;

    names[n] = "user";
    values[n++] = s->store->user;
    names[n] = "database";
    values[n++] = s->store->dbname;
    if (c != NULL) {
        for (size_t i = 0; i < c->startup.n && n < CM_ARRAY_LEN(names); i++) {
            names[n] = c->startup.v[i].name;
            values[n++] = c->startup.v[i].value;
        }
    }
    wire_put_startup(&b, names, values, n);
    sv_set_state(s, PX_SV_LOGIN);
    sv_send(s, &b);
}

static void connect_timeout_cb(uv_timer_t *t)
{
    px_server_t *s = t->data;

    sv_fail(s, "could not connect to store \"%s\": timeout after %d ms", s->store->name,
            s->conn.proxy->cfg->server_connect_timeout_ms);
}

static void connect_cb(uv_connect_t *req, int status)
{
    px_server_t *s = req->data;

    free(req);
    if (s->state == PX_SV_CLOSING)
        return;
    if (status < 0) {
        sv_fail(s, "could not connect to store \"%s\": %s", s->store->name, uv_strerror(status));
        return;
    }
    if (px_conn_start_read(&s->conn) < 0) {
        sv_fail(s, "could not read from store \"%s\"", s->store->name);
        return;
    }
    if (s->store->tls_ctx != NULL) {
        cm_buf_t b = { 0 };

        wire_put_ssl_request(&b);
        sv_set_state(s, PX_SV_SSL_REQ);
        sv_send(s, &b);
        return;
    }
    sv_send_startup(s);
}

/* ---- login ---- */

static void sv_login_auth(px_server_t *s, const uint8_t *body, size_t len)
{
    wire_auth_t a;
    cm_buf_t b = { 0 };
    const char *pw = s->store->password;

    if (wire_parse_auth(body, len, &a) != WIRE_OK) {
        sv_fail(s, "store \"%s\" sent a malformed authentication request", s->store->name);
        return;
    }
    switch (a.code) {
    case WIRE_AUTH_OK:
        return;
    case WIRE_AUTH_CLEARTEXT:
        if (pw == NULL)
            goto nopw;
        wire_put_password(&b, pw);
        sv_send(s, &b);
        return;
    case WIRE_AUTH_MD5: {
        char resp[36];

        if (pw == NULL)
            goto nopw;
        px_md5_response(pw, s->store->user, a.md5_salt, resp);
        wire_put_password(&b, resp);
        sv_send(s, &b);
        return;
    }
    case WIRE_AUTH_SASL: {
        bool has_scram = false;
        char *first;

        for (const char *m = a.mechanisms.p; m < a.mechanisms.p + a.mechanisms.len && *m;
             m += strlen(m) + 1)
            if (strcmp(m, "SCRAM-SHA-256") == 0)
                has_scram = true;
        if (!has_scram) {
            sv_fail(s, "store \"%s\" offers no SASL mechanism pgshift supports", s->store->name);
            return;
        }
        if (pw == NULL)
            goto nopw;
        px_scram_client_free(s->scram);
        s->scram = px_scram_client_new(pw);
        if (s->store->scram_keys == NULL)
            s->store->scram_keys = cm_xcalloc(1, sizeof(*s->store->scram_keys));
        px_scram_client_set_cache(s->scram, s->store->scram_keys);
        first = px_scram_client_first(s->scram);
        wire_put_sasl_initial(&b, "SCRAM-SHA-256", first, strlen(first));
        free(first);
        sv_send(s, &b);
        return;
    }
    case WIRE_AUTH_SASL_CONTINUE: {
        char *final = NULL;
        const char *err = NULL;

        if (s->scram == NULL ||
            px_scram_client_final(s->scram, a.sasl_data.p, a.sasl_data.len, &final, &err) < 0) {
            sv_fail(s, "SCRAM login to store \"%s\" failed: %s", s->store->name,
                    err ? err : "unexpected message");
            return;
        }
        wire_put_sasl_response(&b, final, strlen(final));
        free(final);
        sv_send(s, &b);
        return;
    }
    case WIRE_AUTH_SASL_FINAL: {
        const char *err = NULL;

        if (s->scram == NULL ||
            px_scram_client_verify(s->scram, a.sasl_data.p, a.sasl_data.len, &err) < 0) {
            sv_fail(s, "SCRAM login to store \"%s\" failed: %s", s->store->name,
                    err ? err : "unexpected message");
            return;
        }
        px_scram_client_free(s->scram);
        s->scram = NULL;
        return;
    }
    default:
        sv_fail(s, "store \"%s\" asks for an unsupported authentication method (%u)",
                s->store->name, a.code);
        return;
    }
nopw:
    sv_fail(s, "store \"%s\" asks for a password and its connection string has none",
            s->store->name);
}

/* Process login messages; returns false when the connection went away. */
static bool sv_login_input(px_server_t *s)
{
    px_conn_t *c = &s->conn;
    px_proxy_t *p = c->proxy;
    wire_limits_t lim = { .max_msg_len = SV_MAX_INSPECT_LEN, .max_startup_len = 0 };

    while (c->rpos < c->rlen && s->state == PX_SV_LOGIN) {
        const uint8_t *buf = c->rbuf + c->rpos;
        size_t avail = c->rlen - c->rpos;
        wire_hdr_t h;
        wire_rc_t rc = wire_hdr_decode(buf, avail, &lim, &h);
        const uint8_t *body;

        if (rc == WIRE_PARTIAL)
            return true;
        if (rc != WIRE_OK) {
            sv_fail(s, "store \"%s\" sent an invalid message during login", s->store->name);
            return false;
        }
        if (avail < WIRE_HDR_LEN + h.body_len) {
            px_conn_reserve(c, WIRE_HDR_LEN + h.body_len);
            return true;
        }
        body = buf + WIRE_HDR_LEN;
        switch (h.type) {
        case WIRE_MSG_AUTH:
            sv_login_auth(s, body, h.body_len);
            break;
        case WIRE_MSG_PARAMETER_STATUS: {
            wire_param_status_t ps;

            if (wire_parse_param_status(body, h.body_len, &ps) != WIRE_OK) {
                sv_fail(s, "store \"%s\" sent a malformed ParameterStatus", s->store->name);
                return false;
            }
            /* The first login teaches the store's defaults for welcomes. */
            if (!s->store->has_params &&
                !(ps.name.len == 16 && memcmp(ps.name.p, "application_name", 16) == 0))
                px_params_set(&s->store->params, ps.name.p, ps.name.len, ps.value.p, ps.value.len);
            /* A session past its welcome learns this store's actual values. */
            if (s->client != NULL && s->client->state == PX_CL_READY && !s->client->is_admin)
                px_conn_send(&s->client->conn, buf, WIRE_HDR_LEN + h.body_len);
            break;
        }
        case WIRE_MSG_BACKEND_KEY_DATA:
            if (wire_parse_backend_key(body, h.body_len, &s->be_pid, &s->be_key) != WIRE_OK) {
                sv_fail(s, "store \"%s\" sent a malformed BackendKeyData", s->store->name);
                return false;
            }
            break;
        case WIRE_MSG_ERROR_RESPONSE: {
            wire_error_t e;
            wire_str_t m = { 0 };

            if (wire_parse_error(body, h.body_len, &e) == WIRE_OK)
                m = wire_error_field(&e, WIRE_FIELD_MESSAGE);
            if (s->store->scram_keys != NULL)
                s->store->scram_keys->is_valid = false; /* derive them again next time */
            sv_fail(s, "store \"%s\" refused the login: %.*s", s->store->name, (int)m.len,
                    m.p ? m.p : "");
            return false;
        }
        case WIRE_MSG_NOTICE_RESPONSE:
        case WIRE_MSG_NEGOTIATE_VERSION:
            break;
        case WIRE_MSG_READY_FOR_QUERY:
            if (wire_parse_ready(body, h.body_len, &s->txn_status) != WIRE_OK) {
                sv_fail(s, "store \"%s\" sent a malformed ReadyForQuery", s->store->name);
                return false;
            }
            px_conn_consume(c, WIRE_HDR_LEN + h.body_len);
            uv_timer_stop(&s->timer);
            s->store->has_params = true;
            sv_set_state(s, PX_SV_ACTIVE);
            LOG_DEBUG(s->ctx, "logged in to store %s in %llu ms", s->store->name,
                      (unsigned long long)(cm_now_ms() - s->connect_start_ms));
            if (s->client != NULL)
                px_client_server_ready(s->client, s);
            else if (!px_pool_checkin(s)) /* its client left during the login */
                px_server_release(s);
            return s->state == PX_SV_ACTIVE;
        default:
            sv_fail(s, "store \"%s\" sent unexpected message '%c' during login", s->store->name,
                    h.type);
            return false;
        }
        if (s->state == PX_SV_CLOSING)
            return false;
        px_conn_consume(c, WIRE_HDR_LEN + h.body_len);
    }
    (void)p;
    return s->state != PX_SV_CLOSING;
}

/* ---- forwarding to the client ---- */

static bool needs_body(uint8_t type)
{
    switch (type) {
    case WIRE_MSG_READY_FOR_QUERY:
    case WIRE_MSG_PARAMETER_STATUS:
    case WIRE_MSG_COPY_IN_RESPONSE:
    case WIRE_MSG_COPY_OUT_RESPONSE:
    case WIRE_MSG_COPY_BOTH_RESPONSE:
    case WIRE_MSG_BACKEND_KEY_DATA:
    case WIRE_MSG_AUTH:
        return true;
    default:
        return false;
    }
}

/* ---- the response queue: what the store still owes, in request order ---- */

void px_server_expect(px_server_t *s, uint8_t type, bool swallow)
{
    if (!s->is_busy) {
        /* New work on an idle store: it began at the current route generation. */
        s->is_busy = 1;
        s->work_gen = s->conn.proxy->route_gen;
    }
    if (s->rq_n == s->rq_cap) {
        uint32_t cap = s->rq_cap ? s->rq_cap * 2 : 16;
        uint8_t *nq = cm_xmalloc(cap);

        for (uint32_t i = 0; i < s->rq_n; i++)
            nq[i] = s->rq[(s->rq_head + i) % s->rq_cap];
        free(s->rq);
        s->rq = nq;
        s->rq_head = 0;
        s->rq_cap = cap;
    }
    s->rq[(s->rq_head + s->rq_n) % s->rq_cap] = (uint8_t)(type | (swallow ? SV_RQ_SWALLOW : 0));
    s->rq_n++;
    if (!swallow)
        s->rq_visible++;
    if (type == WIRE_MSG_SYNC || type == WIRE_MSG_QUERY || type == WIRE_MSG_FUNCTION_CALL)
        s->n_pending++;
}

uint32_t px_server_visible_pending(const px_server_t *s)
{
    return s->rq_visible;
}

static int rq_head(const px_server_t *s)
{
    return s->rq_n ? s->rq[s->rq_head] : -1;
}

static void rq_pop(px_server_t *s)
{
    uint8_t t = s->rq[s->rq_head] & (uint8_t)~SV_RQ_SWALLOW;

    if (!(s->rq[s->rq_head] & SV_RQ_SWALLOW))
        s->rq_visible--;

    s->rq_head = (s->rq_head + 1) % s->rq_cap;
    s->rq_n--;
    if (t == WIRE_MSG_SYNC || t == WIRE_MSG_QUERY || t == WIRE_MSG_FUNCTION_CALL)
        s->n_pending--;
}

/* Does backend message `type` complete a request of kind `req`? */
static bool rq_completes(uint8_t req, uint8_t type)
{
    switch (req) {
    case WIRE_MSG_QUERY:
    case WIRE_MSG_SYNC:
    case WIRE_MSG_FUNCTION_CALL:
        return type == WIRE_MSG_READY_FOR_QUERY;
    case WIRE_MSG_PARSE:
        return type == WIRE_MSG_PARSE_COMPLETE || type == WIRE_MSG_ERROR_RESPONSE;
    case WIRE_MSG_BIND:
        return type == WIRE_MSG_BIND_COMPLETE || type == WIRE_MSG_ERROR_RESPONSE;
    case WIRE_MSG_CLOSE:
        return type == WIRE_MSG_CLOSE_COMPLETE || type == WIRE_MSG_ERROR_RESPONSE;
    case WIRE_MSG_DESCRIBE:
        return type == WIRE_MSG_ROW_DESCRIPTION || type == WIRE_MSG_NO_DATA ||
               type == WIRE_MSG_ERROR_RESPONSE;
    case WIRE_MSG_EXECUTE:
        return type == WIRE_MSG_COMMAND_COMPLETE || type == WIRE_MSG_EMPTY_QUERY ||
               type == WIRE_MSG_PORTAL_SUSPENDED || type == WIRE_MSG_ERROR_RESPONSE;
    default:
        return false;
    }
}

/*
 * Account one backend message against the response queue. Returns whether
 * the client must not see it (a response to a request pgshift injected).
 */
static bool rq_account(px_server_t *s, uint8_t type)
{
    int head;
    uint8_t req;
    bool swallow;

    switch (type) {
    case WIRE_MSG_NOTICE_RESPONSE:
    case WIRE_MSG_NOTIFICATION:
    case WIRE_MSG_PARAMETER_STATUS:
        return false; /* asynchronous: belong to no request */
    default:
        break;
    }
    head = rq_head(s);
    if (head < 0)
        return false; /* nothing expected: let the client judge */
    req = (uint8_t)head & (uint8_t)~SV_RQ_SWALLOW;
    swallow = (head & SV_RQ_SWALLOW) != 0;
    /* An injected extended message's error is the client's error: its batch fails. */
    if (swallow && type == WIRE_MSG_ERROR_RESPONSE && req != WIRE_MSG_QUERY) {
        swallow = false;
        s->store->n_errors++;
    }
    if (!rq_completes(req, type))
        return swallow;
    rq_pop(s);
    if (type == WIRE_MSG_ERROR_RESPONSE && req != WIRE_MSG_QUERY && req != WIRE_MSG_FUNCTION_CALL &&
        req != WIRE_MSG_SYNC) {
        /* The store now skips everything up to the next Sync. */
        while (s->rq_n > 0 && (rq_head(s) & ~SV_RQ_SWALLOW) != WIRE_MSG_SYNC)
            rq_pop(s);
    }
    return swallow;
}

static void sv_to_client(px_server_t *s, const uint8_t *p, size_t n)
{
    s->store->bytes_out += n;
    px_conn_send(&s->client->conn, p, n);
}

/*
 * Move the store's output to the client. Bytes are forwarded in runs: a run
 * grows over every message that goes through unchanged and is sent when
 * the loop ends. Only a few message types are decoded on the way; every
 * message is accounted against the response queue, and answers to requests
 * pgshift injected are dropped.
 */
static void sv_forward(px_server_t *s)
{
    px_conn_t *c = &s->conn;
    px_client_t *cl = s->client;
    px_proxy_t *p = c->proxy;
    size_t run = c->rpos; /* start of the bytes to forward */
    wire_limits_t lim = { .max_msg_len = (size_t)1 << 30, .max_startup_len = 0 };
    size_t need = 0; /* size of a partial message that must be read whole */
    bool saw_ready = false, went_idle = false;

    while (c->rpos < c->rlen) {
        const uint8_t *buf = c->rbuf + c->rpos;
        size_t avail = c->rlen - c->rpos;
        wire_hdr_t h;
        wire_rc_t rc;
        bool drop;

        if (px_conn_pending(&cl->conn) > p->cfg->max_buffer_len) {
            /* The client is slow: stop reading the store until it drains. */
            px_conn_stop_read(c);
            break;
        }
        if (s->fwd_left > 0) {
            size_t n = CM_MIN(s->fwd_left, avail);

            s->fwd_left -= n;
            c->rpos += n;
            if (s->is_fwd_drop)
                run = c->rpos;
            continue;
        }
        rc = wire_hdr_decode(buf, avail, &lim, &h);
        if (rc == WIRE_PARTIAL)
            break;
        if (rc != WIRE_OK) {
            sv_fail(s, "store \"%s\" sent an invalid message header", s->store->name);
            return;
        }
        if (needs_body(h.type)) {
            if (h.body_len > SV_MAX_INSPECT_LEN) {
                sv_fail(s, "store \"%s\" sent an oversized '%c' message", s->store->name, h.type);
                return;
            }
            if (avail < WIRE_HDR_LEN + h.body_len) {
                need = WIRE_HDR_LEN + h.body_len;
                break;
            }
        }
        if (h.type == WIRE_MSG_ERROR_RESPONSE)
            s->store->n_errors++;
        drop = rq_account(s, h.type);
        if (drop && run < c->rpos) {
            sv_to_client(s, c->rbuf + run, c->rpos - run);
            run = c->rpos;
        }
        if (!needs_body(h.type)) {
            s->fwd_left = h.body_len;
            s->is_fwd_drop = drop;
            c->rpos += WIRE_HDR_LEN;
            if (drop)
                run = c->rpos;
            continue;
        }
        {
            const uint8_t *body = buf + WIRE_HDR_LEN;

            switch (h.type) {
            case WIRE_MSG_READY_FOR_QUERY: {
                uint8_t st = 0;

                if (wire_parse_ready(body, h.body_len, &st) != WIRE_OK) {
                    sv_fail(s, "store \"%s\" sent a malformed ReadyForQuery", s->store->name);
                    return;
                }
                if (s->txn_status != WIRE_TXN_IDLE && st == WIRE_TXN_IDLE) {
                    s->store->n_xacts++;
                    p->stats.n_xacts++;
                }
                s->txn_status = st;
                s->is_copy_in = s->is_copy_out = 0;
                if (st == WIRE_TXN_IDLE && s->rq_n == 0 && s->is_busy)
                    went_idle = true; /* its work ended; told after the forward loop */
                if (!drop) {
                    cl->txn_status = st;
                    px_router_ready(cl, s, st);
                }
                saw_ready = true;
                break;
            }
            case WIRE_MSG_COPY_IN_RESPONSE:
            case WIRE_MSG_COPY_BOTH_RESPONSE:
                s->is_copy_in = 1;
                break;
            case WIRE_MSG_COPY_OUT_RESPONSE:
                s->is_copy_out = 1;
                break;
            case WIRE_MSG_BACKEND_KEY_DATA:
            case WIRE_MSG_AUTH:
                sv_fail(s, "store \"%s\" sent '%c' outside of login", s->store->name, h.type);
                return;
            default:
                break;
            }
        }
        c->rpos += WIRE_HDR_LEN + h.body_len;
        if (drop)
            run = c->rpos;
    }
    if (run < c->rpos)
        sv_to_client(s, c->rbuf + run, c->rpos - run);
    if (c->rpos == c->rlen)
        c->rpos = c->rlen = 0;
    else if (c->rpos > 0 && !c->is_closing) {
        /* Keep the partial message at the front for the next read. */
        size_t left = c->rlen - c->rpos;

        memmove(c->rbuf, c->rbuf + c->rpos, left);
        c->rpos = 0;
        c->rlen = left;
    }
    if (need > 0)
        px_conn_reserve(c, need);
    px_conn_flush(&cl->conn);
    if (went_idle && s->rq_n == 0 && s->txn_status == WIRE_TXN_IDLE)
        sv_work_done(s);
    if (saw_ready && s->rq_n == 0)
        px_client_server_idle(cl, s); /* a waiting client may go on */
}

static void sv_on_read(px_conn_t *c)
{
    px_server_t *s = c->owner;

    switch (s->state) {
    case PX_SV_SSL_REQ: {
        uint8_t r = c->rbuf[c->rpos];

        px_conn_consume(c, 1);
        if (r == 'S') {
            if (c->rpos < c->rlen) {
                sv_fail(s, "store \"%s\" sent unencrypted data after accepting TLS",
                        s->store->name);
                return;
            }
            sv_set_state(s, PX_SV_TLS);
            if (px_conn_start_tls(c, px_tls_new_client(s->store->tls_ctx, s->store->host)) < 0)
                sv_fail(s, "cannot start TLS to store \"%s\"", s->store->name);
            return;
        }
        if (r == 'N' && strcmp(s->store->sslmode, "prefer") == 0) {
            sv_send_startup(s);
            return;
        }
        sv_fail(s, "store \"%s\" does not support TLS (sslmode=%s)", s->store->name,
                s->store->sslmode);
        return;
    }
    case PX_SV_TLS:
        if (px_tls_handshake_done(c->tls))
            sv_send_startup(s);
        return;
    case PX_SV_LOGIN:
        if (!sv_login_input(s))
            return;
        if (s->state == PX_SV_ACTIVE && c->rpos < c->rlen && s->client != NULL)
            sv_forward(s);
        return;
    case PX_SV_ACTIVE:
        if (s->client == NULL) {
            px_conn_consume(c, c->rlen - c->rpos);
            return;
        }
        sv_forward(s);
        return;
    case PX_SV_CONNECTING:
    case PX_SV_CLOSING:
        px_conn_consume(c, c->rlen - c->rpos);
        return;
    default:
        BUG_ON(1, "bad server state %d", s->state);
    }
}

static void sv_on_error(px_conn_t *c, int err)
{
    px_server_t *s = c->owner;

    if (s->state == PX_SV_TLS || (c->tls != NULL && err == UV_EPROTO)) {
        sv_fail(s, "TLS with store \"%s\" failed: %s", s->store->name,
                c->tls ? px_tls_error(c->tls) : "handshake");
        return;
    }
    sv_fail(s, "connection to store \"%s\" lost: %s", s->store->name,
            err == UV_EOF ? "server closed the connection unexpectedly" : uv_strerror(err));
}

static void sv_on_drain(px_conn_t *c)
{
    px_server_t *s = c->owner;

    /* The store took our output: a client waiting to send may go on. */
    if (s->client != NULL)
        px_client_kick(s->client);
}

static const px_conn_ops_t server_conn_ops = {
    .on_read = sv_on_read,
    .on_error = sv_on_error,
    .on_drain = sv_on_drain,
    .on_closed = sv_conn_closed,
};

void px_server_kick(px_server_t *s)
{
    if (s->state != PX_SV_ACTIVE || s->client == NULL)
        return;
    if (s->conn.rpos < s->conn.rlen)
        sv_forward(s);
    if (s->state == PX_SV_ACTIVE && s->client != NULL && !s->conn.is_reading &&
        px_conn_pending(&s->client->conn) <= s->conn.proxy->cfg->max_buffer_len)
        if (px_conn_start_read(&s->conn) < 0)
            sv_fail(s, "cannot read from store \"%s\"", s->store->name);
}

int px_server_connect(px_proxy_t *p, px_store_t *store, px_client_t *client, px_server_t **out)
{
    px_server_t *s = cm_xcalloc(1, sizeof(*s));
    uv_connect_t *req;
    int rc;

    s->id = ++p->next_id;
    s->store = store;
    s->client = client;
    s->txn_status = WIRE_TXN_IDLE;
    s->connect_start_ms = cm_now_ms();
    snprintf(s->ctx, sizeof(s->ctx), "S#%llu %s", (unsigned long long)s->id, store->name);
    px_conn_init(&s->conn, p, PX_CONN_SERVER, &server_conn_ops, s);
    cm_list_init(&s->node);
    cm_list_init(&s->pool_node);
    if (store->unix_path != NULL)
        rc = uv_pipe_init(p->loop, &s->conn.h.pipe, 0);
    else
        rc = uv_tcp_init(p->loop, &s->conn.h.tcp);
    if (rc < 0) {
        free(s);
        return rc;
    }
    s->conn.h.handle.data = &s->conn;
    s->conn.is_open = 1;
    uv_timer_init(p->loop, &s->timer);
    s->timer.data = s;
    s->n_handles = 2;
    cm_list_append(&p->servers, &s->node);
    store->n_servers++;
    store->n_server_conns++;
    s->state = PX_SV_CONNECTING;

    req = cm_xcalloc(1, sizeof(*req));
    req->data = s;
    if (store->unix_path != NULL) {
        uv_pipe_connect(req, &s->conn.h.pipe, store->unix_path, connect_cb);
        rc = 0;
    } else {
        uv_tcp_nodelay(&s->conn.h.tcp, 1);
        rc = uv_tcp_connect(req, &s->conn.h.tcp, (const struct sockaddr *)&store->addr, connect_cb);
    }
    if (rc < 0) {
        free(req);
        s->client = NULL;
        sv_close(s);
        return rc;
    }
    if (p->cfg->server_connect_timeout_ms > 0)
        uv_timer_start(&s->timer, connect_timeout_cb, (uint64_t)p->cfg->server_connect_timeout_ms,
                       0);
    *out = s;
    return 0;
}

/* ---- cancel ---- */

typedef struct sv_cancel {
    px_stream_t h;
    uv_connect_t req;
    uv_write_t wreq;
    uint8_t pkt[16];
} sv_cancel_t;

static void cancel_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

static void cancel_written_cb(uv_write_t *w, int status)
{
    sv_cancel_t *k = w->data;

    (void)status;
    uv_close(&k->h.handle, cancel_closed_cb);
}

static void cancel_connect_cb(uv_connect_t *req, int status)
{
    sv_cancel_t *k = req->data;
    uv_buf_t b = uv_buf_init((char *)k->pkt, sizeof(k->pkt));

    if (status < 0 || uv_write(&k->wreq, &k->h.stream, &b, 1, cancel_written_cb) < 0)
        uv_close(&k->h.handle, cancel_closed_cb);
}

/*
 * Forward a cancel to the store on a fresh connection, as PostgreSQL wants.
 * TLS is not needed: the CancelRequest goes in the clear before any
 * negotiation, as libpq sends it.
 */
void px_server_send_cancel(px_proxy_t *p, px_store_t *store, uint32_t pid, uint32_t key)
{
    sv_cancel_t *k = cm_xcalloc(1, sizeof(*k));
    cm_buf_t b = { 0 };
    int rc;

    wire_put_cancel(&b, pid, key);
    BUG_ON(b.len != sizeof(k->pkt), "cancel packet is %zu bytes", b.len);
    memcpy(k->pkt, b.data, b.len);
    cm_buf_free(&b);
    k->h.handle.data = k;
    k->req.data = k;
    k->wreq.data = k;
    if (store->unix_path != NULL) {
        uv_pipe_init(p->loop, &k->h.pipe, 0);
        uv_pipe_connect(&k->req, &k->h.pipe, store->unix_path, cancel_connect_cb);
        return;
    }
    uv_tcp_init(p->loop, &k->h.tcp);
    rc = uv_tcp_connect(&k->req, &k->h.tcp, (const struct sockaddr *)&store->addr,
                        cancel_connect_cb);
    if (rc < 0)
        uv_close(&k->h.handle, cancel_closed_cb);
}
