/*
 * proxy/conn.c - one socket's I/O: reads into a pooled buffer, queued
 * writes with uv_try_write first, backpressure marks, and TLS through
 * memory BIOs below all of it.
 *
 * It knows nothing of the protocol. Its owner (client.c or server.c) gets
 * the plaintext through the ops table, consumes what it can, and asks for
 * more or stops reading.
 */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "proxy/proxy.h"

static const px_conn_ops_t *conn_ops(const px_conn_t *c)
{
    return c->ops;
}

void px_conn_init(px_conn_t *c, px_proxy_t *p, px_conn_kind_t kind, const px_conn_ops_t *ops,
                  void *owner)
{
    memset(c, 0, sizeof(*c));
    c->kind = kind;
    c->ops = ops;
    c->owner = owner;
    c->proxy = p;
    c->want_read = 1;
}

static void rbuf_release(px_conn_t *c)
{
    if (c->rbuf == NULL)
        return;
    if (c->rcap == c->proxy->buf_len)
        px_proxy_buf_put(c->proxy, c->rbuf);
    else
        free(c->rbuf);
    c->rbuf = NULL;
    c->rpos = c->rlen = c->rcap = 0;
}

/* Ensure at least `room` free bytes after rlen, compacting first. */
static void rbuf_room(px_conn_t *c, size_t room)
{
    size_t used;

    if (c->rbuf == NULL) {
        if (room <= c->proxy->buf_len) {
            c->rbuf = px_proxy_buf_get(c->proxy);
            c->rcap = c->proxy->buf_len;
        } else {
            c->rbuf = cm_xmalloc(room);
            c->rcap = room;
        }
        c->rpos = c->rlen = 0;
        return;
    }
    if (c->rcap - c->rlen >= room)
        return;
    used = c->rlen - c->rpos;
    if (c->rpos > 0) {
        memmove(c->rbuf, c->rbuf + c->rpos, used);
        c->rpos = 0;
        c->rlen = used;
        if (c->rcap - c->rlen >= room)
            return;
    }
    {
        size_t cap = c->rcap * 2;
        uint8_t *nb;

        while (cap < used + room)
            cap *= 2;
        nb = cm_xmalloc(cap);
        memcpy(nb, c->rbuf, used);
        if (c->rcap == c->proxy->buf_len)
            px_proxy_buf_put(c->proxy, c->rbuf);
        else
            free(c->rbuf);
        c->rbuf = nb;
        c->rcap = cap;
    }
}

void px_conn_reserve(px_conn_t *c, size_t need)
{
    size_t have = c->rlen - c->rpos;

    if (need > have)
        rbuf_room(c, need - have);
}

void px_conn_consume(px_conn_t *c, size_t n)
{
    BUG_ON(c->rpos + n > c->rlen, "consume past end");
    c->rpos += n;
    if (c->rpos == c->rlen) {
        /* Large heap buffers go back at once; pooled ones stay while reading. */
        c->rpos = c->rlen = 0;
    }
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    px_conn_t *c = h->data;
    px_proxy_t *p = c->proxy;

    (void)suggested;
    if (c->tls != NULL) {
        /* Ciphertext goes through one scratch buffer: read_cb feeds it to
         * OpenSSL before returning, so nothing outlives the callback. */
        buf->base = (char *)px_proxy_buf_get(p);
        buf->len = p->buf_len;
        return;
    }
    rbuf_room(c, 1);
    if (c->rcap - c->rlen < 512 && c->rcap == p->buf_len && c->rlen - c->rpos < c->rcap / 2)
        rbuf_room(c, c->rcap - (c->rlen - c->rpos)); /* compact */
    buf->base = (char *)c->rbuf + c->rlen;
    buf->len = c->rcap - c->rlen;
}

static void conn_fail(px_conn_t *c, int err)
{
    if (c->is_closing)
        return;
    px_conn_stop_read(c);
    conn_ops(c)->on_error(c, err);
}

/* Pull decrypted bytes out of OpenSSL into rbuf. Returns -1 on TLS error. */
static int tls_pump(px_conn_t *c)
{
    for (;;) {
        int n;

        rbuf_room(c, 4096);
        n = px_tls_read(c->tls, c->rbuf + c->rlen, c->rcap - c->rlen);
        if (n > 0) {
            c->rlen += (size_t)n;
            c->bytes_in += (uint64_t)n;
            continue;
        }
        /* The handshake or a renegotiation may have produced output. */
        px_conn_flush(c);
        return n < 0 ? -1 : 0;
    }
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    px_conn_t *c = st->data;
    int tls_rc = 0;

    if (c->tls != NULL && buf->base != NULL) {
        /* The scratch buffer goes back at once: OpenSSL copied the bytes. */
        if (nread > 0 && !c->is_closing)
            tls_rc = px_tls_feed(c->tls, buf->base, (size_t)nread);
        px_proxy_buf_put(c->proxy, (uint8_t *)buf->base);
    }
    if (c->is_closing)
        return;
    if (nread < 0) {
        c->is_eof = 1;
        conn_fail(c, (int)nread);
        return;
    }
    if (nread == 0) {
        if (c->rbuf != NULL && c->rpos == c->rlen)
            rbuf_release(c);
        return;
    }
    if (c->tls != NULL) {
        if (tls_rc < 0 || tls_pump(c) < 0) {
            /*
             * What was decrypted before the close or the error goes first:
             * a store's FATAL (too many connections, shutting down) often
             * arrives in the same read as its close_notify.
             */
            if (!c->is_closing && c->rlen > c->rpos && px_tls_handshake_done(c->tls)) {
                c->is_tls_ready = 1;
                conn_ops(c)->on_read(c);
            }
            conn_fail(c, UV_EPROTO);
            return;
        }
    } else {
        c->rlen += (size_t)nread;
        c->bytes_in += (uint64_t)nread;
    }
    if (c->rlen > c->rpos ||
        (c->tls != NULL && !c->is_tls_ready && px_tls_handshake_done(c->tls))) {
        if (c->tls != NULL && px_tls_handshake_done(c->tls))
            c->is_tls_ready = 1;
        conn_ops(c)->on_read(c);
    }
    if (!c->is_closing && c->rbuf != NULL && c->rpos == c->rlen)
        rbuf_release(c);
}

int px_conn_start_read(px_conn_t *c)
{
    int rc;

    c->want_read = 1;
    if (c->is_reading || c->is_closing || !c->is_open)
        return 0;
    rc = uv_read_start(&c->h.stream, alloc_cb, read_cb);
    if (rc == 0)
        c->is_reading = 1;
    return rc;
}

void px_conn_stop_read(px_conn_t *c)
{
    c->want_read = 0;
    if (!c->is_reading)
        return;
    uv_read_stop(&c->h.stream);
    c->is_reading = 0;
}

size_t px_conn_pending(const px_conn_t *c)
{
    return c->out.len + c->sendbuf.len;
}

void px_conn_send(px_conn_t *c, const void *data, size_t len)
{
    if (c->is_closing)
        return;
    cm_buf_append(&c->out, data, len);
    c->bytes_out += len;
}

/* Free what the connection owns and tell its owner, which frees itself. */
static void conn_finish(px_conn_t *c)
{
    cm_buf_free(&c->out);
    cm_buf_free(&c->sendbuf);
    rbuf_release(c);
    if (c->tls != NULL) {
        px_tls_free(c->tls);
        c->tls = NULL;
    }
    conn_ops(c)->on_closed(c);
}

static void closed_cb(uv_handle_t *h)
{
    conn_finish(h->data);
}

static void conn_close_now(px_conn_t *c)
{
    if (c->is_closing)
        return;
    c->is_closing = 1;
    if (c->is_reading) {
        uv_read_stop(&c->h.stream);
        c->is_reading = 0;
    }
    if (c->is_open) {
        uv_close(&c->h.handle, closed_cb);
        return;
    }
    conn_finish(c); /* never opened: nothing for libuv to close */
}

static void write_cb(uv_write_t *req, int status)
{
    px_conn_t *c = req->data;

    free(req);
    c->wreq = NULL;
    {
        size_t mark = c->proxy->cfg->max_buffer_len;
        bool was_full = px_conn_pending(c) > mark;

        c->is_writing = 0;
        cm_buf_reset(&c->sendbuf);
        if (c->is_closing)
            return;
        if (status < 0) {
            conn_fail(c, status);
            return;
        }
        px_conn_flush(c);
        if (c->is_closing)
            return;
        if (px_conn_pending(c) == 0) {
            cm_buf_free(&c->sendbuf);
            cm_buf_free(&c->out);
        }
        if (was_full || px_conn_pending(c) <= mark)
            conn_ops(c)->on_drain(c);
    }
}

void px_conn_flush(px_conn_t *c)
{
    uv_buf_t b;
    int n;

    if (c->is_closing || !c->is_open || c->is_writing)
        return;
    if (c->tls != NULL) {
        if (c->out.len > 0 && px_tls_handshake_done(c->tls)) {
            if (px_tls_write(c->tls, c->out.data, c->out.len) < 0) {
                conn_fail(c, UV_EPROTO);
                return;
            }
            cm_buf_reset(&c->out);
        }
        px_tls_drain(c->tls, &c->sendbuf);
    } else if (c->out.len > 0) {
        cm_buf_t t = c->sendbuf;

        BUG_ON(t.len != 0, "sendbuf busy while not writing");
        c->sendbuf = c->out;
        c->out = t;
    }
    if (c->sendbuf.len == 0) {
        if (c->close_after_flush)
            conn_close_now(c);
        return;
    }
    b = uv_buf_init((char *)c->sendbuf.data, (unsigned)c->sendbuf.len);
    n = uv_try_write(&c->h.stream, &b, 1);
    if (n == (int)c->sendbuf.len) {
        /* Everything left: an idle connection keeps no output buffer. */
        cm_buf_free(&c->sendbuf);
        if (c->out.len == 0)
            cm_buf_free(&c->out);
        if (c->close_after_flush && c->out.len == 0)
            conn_close_now(c);
        return;
    }
    if (n < 0 && n != UV_EAGAIN && n != UV_ENOSYS) {
        cm_buf_reset(&c->sendbuf);
        conn_fail(c, n);
        return;
    }
    if (n > 0)
        cm_buf_consume(&c->sendbuf, (size_t)n);
    b = uv_buf_init((char *)c->sendbuf.data, (unsigned)c->sendbuf.len);
    c->wreq = cm_xmalloc(sizeof(*c->wreq));
    c->wreq->data = c;
    n = uv_write(c->wreq, &c->h.stream, &b, 1, write_cb);
    if (n < 0) {
        free(c->wreq);
        c->wreq = NULL;
        cm_buf_reset(&c->sendbuf);
        conn_fail(c, n);
        return;
    }
    c->is_writing = 1;
}

void px_conn_close(px_conn_t *c)
{
    conn_close_now(c);
}

void px_conn_close_after_flush(px_conn_t *c)
{
    if (c->is_closing)
        return;
    px_conn_stop_read(c);
    c->close_after_flush = 1;
    if (!c->is_writing)
        px_conn_flush(c);
    /* write_cb flushes the rest and closes. */
}

int px_conn_start_tls(px_conn_t *c, px_tls_t *tls)
{
    BUG_ON(c->out.len != 0, "plaintext queued when TLS starts");
    c->tls = tls;
    /* The client side speaks first: push its hello out. */
    px_tls_read(tls, NULL, 0);
    px_conn_flush(c);
    return 0;
}

const char *px_conn_peer(px_conn_t *c, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    int n = sizeof(ss);

    if (c->h.handle.type != UV_TCP || uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &n)) {
        snprintf(buf, len, "unix");
        return buf;
    }
    if (ss.ss_family == AF_INET6) {
        char a[64];

        uv_ip6_name((struct sockaddr_in6 *)&ss, a, sizeof(a));
        snprintf(buf, len, "[%s]:%d", a, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
    } else {
        char a[32];

        uv_ip4_name((struct sockaddr_in *)&ss, a, sizeof(a));
        snprintf(buf, len, "%s:%d", a, ntohs(((struct sockaddr_in *)&ss)->sin_port));
    }
    return buf;
}
