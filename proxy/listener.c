/*
 * proxy/listener.c - the listening sockets: the application port on each
 * listen_addr, the admin port, and the optional unix socket. Only loopback
 * or explicitly configured addresses are bound.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "proxy/proxy.h"

static void on_connection(uv_stream_t *server, int status)
{
    px_listener_t *l = server->data;

    if (status < 0) {
        LOG_WARN(NULL, "accept failed: %s", uv_strerror(status));
        return;
    }
    px_client_accept(l->proxy, server, l->is_admin, l->is_unix);
}

static px_listener_t *listener_slot(px_proxy_t *p, char **err)
{
    if (p->n_listeners == PX_MAX_LISTENERS) {
        *err = cm_xasprintf("too many listen addresses (at most %d)", PX_MAX_LISTENERS);
        return NULL;
    }
    return &p->listeners[p->n_listeners];
}

int px_listen_tcp(px_proxy_t *p, const char *addr, int port, bool is_admin, char **err)
{
    struct sockaddr_storage ss;
    px_listener_t *l = listener_slot(p, err);
    int rc;

    if (l == NULL)
        return -1;
    memset(l, 0, sizeof(*l));
    if (uv_ip4_addr(addr, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(addr, port, (struct sockaddr_in6 *)&ss) != 0) {
        if (strcmp(addr, "localhost") == 0) {
            uv_ip4_addr("127.0.0.1", port, (struct sockaddr_in *)&ss);
        } else {
            *err = cm_xasprintf("listen_addr: \"%s\" is not a numeric IP address", addr);
            return -1;
        }
    }
    uv_tcp_init(p->loop, &l->h.tcp);
    l->h.handle.data = l;
    l->proxy = p;
    l->is_admin = is_admin;
    l->is_open = true;
    p->n_listeners++;
    rc = uv_tcp_bind(&l->h.tcp, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen(&l->h.stream, 1024, on_connection);
    if (rc < 0) {
        *err = cm_xasprintf("cannot listen on %s:%d: %s", addr, port, uv_strerror(rc));
        return -1;
    }
    LOG_INFO(NULL, "listening on %s:%d%s", addr, port, is_admin ? " (admin)" : "");
    return 0;
}

int px_listen_unix(px_proxy_t *p, const char *dir, int port, bool is_admin, char **err)
{
    px_listener_t *l = listener_slot(p, err);
    int rc;

    if (l == NULL)
        return -1;
    memset(l, 0, sizeof(*l));
    l->path = cm_xasprintf("%s/.s.PGSQL.%d", dir, port);
    unlink(l->path); /* a stale socket of a previous run */
    uv_pipe_init(p->loop, &l->h.pipe, 0);
    l->h.handle.data = l;
    l->proxy = p;
    l->is_admin = is_admin;
    l->is_unix = true;
    l->is_open = true;
    p->n_listeners++;
    rc = uv_pipe_bind(&l->h.pipe, l->path);
    if (rc == 0) {
        chmod(l->path, 0777);
        rc = uv_listen(&l->h.stream, 1024, on_connection);
    }
    if (rc < 0) {
        *err = cm_xasprintf("cannot listen on unix socket %s: %s", l->path, uv_strerror(rc));
        return -1;
    }
    LOG_INFO(NULL, "listening on unix socket %s%s", l->path, is_admin ? " (admin)" : "");
    return 0;
}

static void listener_closed_cb(uv_handle_t *h)
{
    px_listener_t *l = h->data;

    if (l->path != NULL) {
        unlink(l->path);
        free(l->path);
        l->path = NULL;
    }
}

void px_listen_close_all(px_proxy_t *p)
{
    for (size_t i = 0; i < p->n_listeners; i++) {
        px_listener_t *l = &p->listeners[i];

        if (l->is_open && !uv_is_closing(&l->h.handle)) {
            l->is_open = false;
            uv_close(&l->h.handle, listener_closed_cb);
        }
    }
}
