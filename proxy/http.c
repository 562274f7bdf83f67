/*
 * proxy/http.c - the metrics and status port: GET /metrics (Prometheus
 * text format), GET /status (JSON) and GET / (a small status page). One
 * request per connection; the request head is capped at 8 kB.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "proxy/proxy.h"

#define HTTP_MAX_HEAD 8192

typedef struct http_srv {
    uv_tcp_t tcp;
    px_proxy_t *proxy;
    bool is_open;
} http_srv_t;

typedef struct http_conn {
    uv_tcp_t tcp;
    px_proxy_t *proxy;
    char head[HTTP_MAX_HEAD];
    size_t len;
    cm_buf_t out;
    uv_write_t wreq;
    bool is_closing;
} http_conn_t;

static void http_closed_cb(uv_handle_t *h)
{
    http_conn_t *hc = h->data;

    cm_buf_free(&hc->out);
    free(hc);
}

static void http_close(http_conn_t *hc)
{
    if (hc->is_closing)
        return;
    hc->is_closing = true;
    uv_close((uv_handle_t *)&hc->tcp, http_closed_cb);
}

static void http_written_cb(uv_write_t *w, int status)
{
    (void)status;
    http_close(w->data);
}

static void appendf(cm_buf_t *b, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void appendf(cm_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    char tmp[1024];
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        cm_buf_append(b, tmp, CM_MIN((size_t)n, sizeof(tmp) - 1));
}

/* Per-store series: gauges are int fields of px_store_t, counters uint64_t ones. */
typedef struct store_metric {
    const char *name;
    const char *help; /* NULL: none */
    size_t off;       /* of the field in px_store_t */
    bool is_gauge;
} store_metric_t;

static const store_metric_t store_metrics[] = {
    { "pgshift_store_queries_total", NULL, offsetof(px_store_t, n_queries), false },
    { "pgshift_store_transactions_total", NULL, offsetof(px_store_t, n_xacts), false },
    { "pgshift_store_errors_total", NULL, offsetof(px_store_t, n_errors), false },
    { "pgshift_store_server_connections", NULL, offsetof(px_store_t, n_servers), true },
    { "pgshift_pool_idle_servers", "Pooled server connections lent to no client.",
      offsetof(px_store_t, n_idle), true },
    { "pgshift_pool_waiting_clients", "Clients waiting for a pooled server.",
      offsetof(px_store_t, n_waiting), true },
    { "pgshift_pool_waits_total", "Times a client had to wait for a pooled server.",
      offsetof(px_store_t, n_pool_waits), false },
    { "pgshift_pool_wait_timeouts_total", "Clients disconnected after pool_wait_timeout_ms.",
      offsetof(px_store_t, n_pool_wait_timeouts), false },
};

static void render_metrics(px_proxy_t *p, cm_buf_t *b)
{
    px_stats_t *st = &p->stats;

    appendf(b,
            "# HELP pgshift_up 1 while pgshift serves.\n# TYPE pgshift_up gauge\npgshift_up 1\n");
    appendf(b, "# TYPE pgshift_uptime_seconds gauge\npgshift_uptime_seconds %llu\n",
            (unsigned long long)((cm_now_ms() - p->start_ms) / 1000));
    appendf(b, "# TYPE pgshift_client_connections gauge\npgshift_client_connections %d\n",
            p->n_clients);
    appendf(b, "# TYPE pgshift_admin_connections gauge\npgshift_admin_connections %d\n",
            p->n_admin_clients);
    appendf(b,
            "# TYPE pgshift_clients_accepted_total counter\npgshift_clients_accepted_total %llu\n",
            (unsigned long long)st->n_accepted);
    appendf(b, "# TYPE pgshift_clients_refused_total counter\npgshift_clients_refused_total %llu\n",
            (unsigned long long)st->n_refused);
    appendf(b, "# TYPE pgshift_auth_failures_total counter\npgshift_auth_failures_total %llu\n",
            (unsigned long long)st->n_auth_failures);
    appendf(b, "# TYPE pgshift_protocol_errors_total counter\npgshift_protocol_errors_total %llu\n",
            (unsigned long long)st->n_protocol_errors);
    appendf(b, "# TYPE pgshift_paused gauge\npgshift_paused %d\n", p->is_paused ? 1 : 0);
    appendf(b,
            "# HELP pgshift_cutover_holds_total Statements held while their tenant was at "
            "cutover, counted when the hold ended.\n# TYPE pgshift_cutover_holds_total "
            "counter\npgshift_cutover_holds_total %llu\n",
            (unsigned long long)st->n_cutover_holds);
    appendf(b,
            "# HELP pgshift_cutover_hold_ms_max Longest cutover hold since start.\n# TYPE "
            "pgshift_cutover_hold_ms_max gauge\npgshift_cutover_hold_ms_max %llu\n",
            (unsigned long long)st->cutover_hold_ms_max);
    appendf(b,
            "# HELP pgshift_cutover_hold_ms_sum Total time statements were held at cutovers.\n"
            "# TYPE pgshift_cutover_hold_ms_sum counter\npgshift_cutover_hold_ms_sum %llu\n",
            (unsigned long long)(st->cutover_hold_us_sum / 1000));
    appendf(b,
            "# HELP pgshift_cutover_hold_timeouts_total Held statements refused after "
            "max_hold_ms.\n# TYPE pgshift_cutover_hold_timeouts_total "
            "counter\npgshift_cutover_hold_timeouts_total %llu\n",
            (unsigned long long)st->n_cutover_hold_timeouts);
    {
        uint64_t cum = 0;

        appendf(b, "# HELP pgshift_cutover_hold_seconds How long each held statement waited "
                   "at a cutover.\n# TYPE pgshift_cutover_hold_seconds histogram\n");
        for (size_t i = 0; i < PX_HOLD_BUCKETS; i++) {
            cum += st->cutover_hold_hist[i];
            if (i + 1 < PX_HOLD_BUCKETS)
                appendf(b, "pgshift_cutover_hold_seconds_bucket{le=\"%g\"} %llu\n",
                        px_hold_bound_ms[i] / 1000.0, (unsigned long long)cum);
            else
                appendf(b, "pgshift_cutover_hold_seconds_bucket{le=\"+Inf\"} %llu\n",
                        (unsigned long long)cum);
        }
        appendf(b,
                "pgshift_cutover_hold_seconds_sum %.6f\npgshift_cutover_hold_seconds_count %llu\n",
                (double)st->cutover_hold_us_sum / 1e6, (unsigned long long)st->n_cutover_holds);
    }
    appendf(b, "# TYPE pgshift_cutover_held_clients gauge\npgshift_cutover_held_clients %d\n",
            px_router_n_held(p));
    appendf(b, "# TYPE pgshift_cutover_pending_acks gauge\npgshift_cutover_pending_acks %d\n",
            p->n_cutover_unacked);
    for (size_t m = 0; m < CM_ARRAY_LEN(store_metrics); m++) {
        const store_metric_t *sm = &store_metrics[m];

        if (sm->help != NULL)
            appendf(b, "# HELP %s %s\n", sm->name, sm->help);
        appendf(b, "# TYPE %s %s\n", sm->name, sm->is_gauge ? "gauge" : "counter");
        for (size_t i = 0; i < p->n_stores; i++) {
            const char *f = (const char *)p->stores[i] + sm->off;
            unsigned long long v;

            if (sm->is_gauge) {
                int n;

                memcpy(&n, f, sizeof(n));
                v = n > 0 ? (unsigned long long)n : 0;
            } else {
                uint64_t n;

                memcpy(&n, f, sizeof(n));
                v = n;
            }
            appendf(b, "%s{store=\"%s\"} %llu\n", sm->name, p->stores[i]->name, v);
        }
    }
}

static void render_status(px_proxy_t *p, cm_buf_t *b)
{
    appendf(b, "{\"version\":\"%s\",\"uptime_s\":%llu,\"paused\":%s,\"shutting_down\":%s,",
            PGSHIFT_VERSION, (unsigned long long)((cm_now_ms() - p->start_ms) / 1000),
            p->is_paused ? "true" : "false", p->is_shutting_down ? "true" : "false");
    appendf(b, "\"clients\":%d,\"admin_clients\":%d,\"default_store\":", p->n_clients,
            p->n_admin_clients);
    cm_buf_append_json_str(b, p->default_store->name);
    appendf(b, ",\"stores\":[");
    for (size_t i = 0; i < p->n_stores; i++) {
        px_store_t *s = p->stores[i];

        appendf(b, "%s{\"name\":", i ? "," : "");
        cm_buf_append_json_str(b, s->name);
        appendf(b, ",\"host\":");
        cm_buf_append_json_str(b, s->host);
        appendf(b, ",\"port\":%d,\"servers\":%d,\"queries\":%llu,\"transactions\":%llu}", s->port,
                s->n_servers, (unsigned long long)s->n_queries, (unsigned long long)s->n_xacts);
    }
    appendf(b, "]}\n");
}

static void http_respond(http_conn_t *hc, int code, const char *ctype, cm_buf_t *body)
{
    const char *reason = code == 200 ? "OK" : code == 404 ? "Not Found" : "Bad Request";
    uv_buf_t b;

    appendf(&hc->out,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
            "Connection: close\r\n\r\n",
            code, reason, ctype, body->len);
    cm_buf_append(&hc->out, body->data, body->len);
    cm_buf_free(body);
    b = uv_buf_init((char *)hc->out.data, (unsigned)hc->out.len);
    hc->wreq.data = hc;
    if (uv_write(&hc->wreq, (uv_stream_t *)&hc->tcp, &b, 1, http_written_cb) < 0)
        http_close(hc);
}

static void http_handle(http_conn_t *hc)
{
    px_proxy_t *p = hc->proxy;
    cm_buf_t body = { 0 };
    char path[256] = "";

    if (sscanf(hc->head, "GET %255s HTTP/1.", path) != 1) {
        appendf(&body, "only GET is supported\n");
        http_respond(hc, 400, "text/plain", &body);
        return;
    }
    if (strcmp(path, "/metrics") == 0) {
        render_metrics(p, &body);
        http_respond(hc, 200, "text/plain; version=0.0.4", &body);
    } else if (strcmp(path, "/status") == 0) {
        render_status(p, &body);
        http_respond(hc, 200, "application/json", &body);
    } else if (strcmp(path, "/") == 0) {
        cm_buf_t js = { 0 };

        render_status(p, &js);
        appendf(&body,
                "<!doctype html><html><head><title>pgshift</title>"
                "<meta http-equiv=\"refresh\" content=\"2\"></head><body>"
                "<h1>pgshift %s</h1><pre>",
                PGSHIFT_VERSION);
        for (size_t i = 0; i < js.len; i++) {
            uint8_t ch = js.data[i];

            if (ch == '<')
                appendf(&body, "&lt;");
            else if (ch == '&')
                appendf(&body, "&amp;");
            else
                cm_buf_append_u8(&body, ch);
        }
        cm_buf_free(&js);
        appendf(&body, "</pre><p><a href=\"/metrics\">metrics</a> "
                       "<a href=\"/status\">status</a></p></body></html>\n");
        http_respond(hc, 200, "text/html; charset=utf-8", &body);
    } else {
        appendf(&body, "not found\n");
        http_respond(hc, 404, "text/plain", &body);
    }
}

static void http_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    http_conn_t *hc = h->data;

    (void)suggested;
    buf->base = hc->head + hc->len;
    buf->len = sizeof(hc->head) - 1 - hc->len;
}

static void http_read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    http_conn_t *hc = st->data;

    (void)buf;
    if (n < 0) {
        http_close(hc);
        return;
    }
    hc->len += (size_t)n;
    hc->head[hc->len] = '\0';
    if (strstr(hc->head, "\r\n\r\n") != NULL || strstr(hc->head, "\n\n") != NULL) {
        uv_read_stop(st);
        http_handle(hc);
        return;
    }
    if (hc->len >= sizeof(hc->head) - 1) {
        cm_buf_t body = { 0 };

        uv_read_stop(st);
        appendf(&body, "request head too large\n");
        http_respond(hc, 400, "text/plain", &body);
    }
}

static void http_on_connection(uv_stream_t *server, int status)
{
    http_srv_t *hs = server->data;
    http_conn_t *hc;

    if (status < 0)
        return;
    hc = cm_xcalloc(1, sizeof(*hc));
    hc->proxy = hs->proxy;
    uv_tcp_init(hs->proxy->loop, &hc->tcp);
    hc->tcp.data = hc;
    if (uv_accept(server, (uv_stream_t *)&hc->tcp) < 0 ||
        uv_read_start((uv_stream_t *)&hc->tcp, http_alloc_cb, http_read_cb) < 0)
        http_close(hc);
}

int px_http_start(px_proxy_t *p, char **err)
{
    http_srv_t *hs;
    struct sockaddr_storage ss;
    char *addrs, *save = NULL, *first;
    int rc;

    if (p->cfg->http_port == 0)
        return 0;
    addrs = cm_xstrdup(p->cfg->listen_addr);
    first = strtok_r(addrs, ", ", &save);
    if (first == NULL || (uv_ip4_addr(first, p->cfg->http_port, (struct sockaddr_in *)&ss) != 0 &&
                          uv_ip6_addr(first, p->cfg->http_port, (struct sockaddr_in6 *)&ss) != 0))
        uv_ip4_addr("127.0.0.1", p->cfg->http_port, (struct sockaddr_in *)&ss);
    free(addrs);
    hs = cm_xcalloc(1, sizeof(*hs));
    hs->proxy = p;
    uv_tcp_init(p->loop, &hs->tcp);
    hs->tcp.data = hs;
    hs->is_open = true;
    p->http = hs;
    rc = uv_tcp_bind(&hs->tcp, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&hs->tcp, 128, http_on_connection);
    if (rc < 0) {
        *err =
            cm_xasprintf("cannot listen on http_port %d: %s", p->cfg->http_port, uv_strerror(rc));
        return -1;
    }
    LOG_INFO(NULL, "metrics and status on http port %d", p->cfg->http_port);
    return 0;
}

static void http_srv_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

void px_http_stop(px_proxy_t *p)
{
    http_srv_t *hs = p->http;

    if (hs == NULL || !hs->is_open)
        return;
    hs->is_open = false;
    p->http = NULL;
    uv_close((uv_handle_t *)&hs->tcp, http_srv_closed_cb);
}
