/*
 * proxy/admin.c - the admin console: a PostgreSQL-protocol port that psql
 * can talk to (database "pgshift", admin_users only), with PgBouncer-style
 * commands. Each command answers with a result set built here from loop
 * state; nothing here blocks.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/log.h"
#include "migrator/migrator.h"
#include "proxy/proxy.h"

/* A result set under construction. */
typedef struct adm_table {
    size_t n_cols;
    const char *const *cols;
    cm_buf_t rows; /* encoded DataRow messages */
    size_t n_rows;
} adm_table_t;

static void adm_row(adm_table_t *t, ...)
{
    const char *vals[32];
    va_list ap;

    BUG_ON(t->n_cols > CM_ARRAY_LEN(vals), "too many admin columns");
    va_start(ap, t);
    for (size_t i = 0; i < t->n_cols; i++)
        vals[i] = va_arg(ap, const char *);
    va_end(ap);
    wire_put_data_row(&t->rows, vals, t->n_cols);
    t->n_rows++;
}

static void adm_send_table(px_client_t *c, adm_table_t *t, const char *tag)
{
    cm_buf_t b = { 0 };
    char ctag[64];

    wire_put_row_description(&b, t->cols, NULL, t->n_cols);
    cm_buf_append(&b, t->rows.data, t->rows.len);
    snprintf(ctag, sizeof(ctag), "%s %zu", tag, t->n_rows);
    wire_put_command_complete(&b, strcmp(tag, "SHOW") == 0 ? "SHOW" : ctag);
    px_conn_send(&c->conn, b.data, b.len);
    cm_buf_free(&b);
    cm_buf_free(&t->rows);
}

static void adm_command_ok(px_client_t *c, const char *tag)
{
    cm_buf_t b = { 0 };

    wire_put_command_complete(&b, tag);
    px_conn_send(&c->conn, b.data, b.len);
    cm_buf_free(&b);
}

static const char *u64s(char *buf, uint64_t v)
{
    snprintf(buf, 24, "%llu", (unsigned long long)v);
    return buf;
}

/* Wall-clock milliseconds as "YYYY-MM-DD HH:MM:SS" (local time). */
static const char *fmt_time(char *buf, size_t len, uint64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;

    localtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
    return buf;
}

/* ---- SHOW ---- */

/* A store's name, NULL (SQL NULL) for -1 or an index out of range. */
static const char *store_name(px_proxy_t *p, int i)
{
    return i >= 0 && (size_t)i < p->n_stores ? p->stores[i]->name : NULL;
}

static void show_version(px_client_t *c)
{
    static const char *const cols[] = { "version" };
    adm_table_t t = { .n_cols = 1, .cols = cols };

    adm_row(&t, "pgshift " PGSHIFT_VERSION);
    adm_send_table(c, &t, "SHOW");
}

static void config_row(void *arg, const char *section, const char *name, const char *value,
                       const char *def, bool reloadable)
{
    adm_table_t *t = arg;
    char key[128];

    snprintf(key, sizeof(key), "%s.%s", section, name);
    adm_row(t, key, value, def, reloadable ? "yes" : "no");
}

static void show_config(px_client_t *c)
{
    static const char *const cols[] = { "key", "value", "default", "changeable" };
    adm_table_t t = { .n_cols = 4, .cols = cols };

    cfg_each(c->conn.proxy->cfg, config_row, &t);
    adm_send_table(c, &t, "SHOW");
}

static void show_stores(px_client_t *c)
{
    static const char *const cols[] = { "name",    "host",    "port",    "database", "user",
                                        "sslmode", "default", "control", "servers" };
    adm_table_t t = { .n_cols = 9, .cols = cols };
    px_proxy_t *p = c->conn.proxy;

    for (size_t i = 0; i < p->n_stores; i++) {
        px_store_t *s = p->stores[i];
        char port[24], n[24];

        if (s->is_removed)
            continue;
        snprintf(port, sizeof(port), "%d", s->port);
        adm_row(&t, s->name, s->host, port, s->dbname, s->user, s->sslmode,
                s == p->default_store ? "yes" : "no",
                strcmp(s->name, p->cfg->control_store) == 0 ? "yes" : "no",
                u64s(n, (uint64_t)s->n_servers));
    }
    adm_send_table(c, &t, "SHOW");
}

static void show_clients(px_client_t *c)
{
    static const char *const cols[] = { "id",   "user",    "database",     "state",
                                        "addr", "tls",     "store",        "server",
                                        "txn",  "queries", "connect_time", "application_name" };
    adm_table_t t = { .n_cols = 12, .cols = cols };
    px_proxy_t *p = c->conn.proxy;
    cm_list_t *it, *tmp;

    cm_list_foreach_safe(it, tmp, &p->clients) {
        px_client_t *x = cm_container_of(it, px_client_t, node);
        char id[24], sid[24], q[24], ct[32], addr[64], txn[2] = { 0 };

        if (x->is_admin)
            continue;
        txn[0] = (char)(x->txn_status ? x->txn_status : 'I');
        adm_row(&t, u64s(id, x->id), x->user ? x->user : "", x->database ? x->database : "",
                x->is_held ? "held" : px_cl_state_name(x->state),
                x->is_unix ? "unix" : px_conn_peer(&x->conn, addr, sizeof(addr)),
                x->conn.tls ? "yes" : "no", x->store ? x->store->name : "",
                x->server ? u64s(sid, x->server->id) : NULL, txn, u64s(q, x->n_queries),
                fmt_time(ct, sizeof(ct), x->connect_ms),
                px_params_get(&x->startup, "application_name")
                    ? px_params_get(&x->startup, "application_name")
                    : "");
    }
    adm_send_table(c, &t, "SHOW");
}

static void show_servers(px_client_t *c)
{
    static const char *const cols[] = { "id",  "store",  "state", "client",
                                        "txn", "be_pid", "tls",   "pending" };
    adm_table_t t = { .n_cols = 8, .cols = cols };
    px_proxy_t *p = c->conn.proxy;
    cm_list_t *it, *tmp;

    cm_list_foreach_safe(it, tmp, &p->servers) {
        px_server_t *s = cm_container_of(it, px_server_t, node);
        char id[24], cid[24], pid[24], pend[24], txn[2] = { 0 };

        txn[0] = (char)(s->txn_status ? s->txn_status : 'I');
        adm_row(&t, u64s(id, s->id), s->store->name, px_sv_state_name(s->state),
                s->client ? u64s(cid, s->client->id) : NULL, txn, u64s(pid, s->be_pid),
                s->conn.tls ? "yes" : "no", u64s(pend, (uint64_t)s->n_pending));
    }
    adm_send_table(c, &t, "SHOW");
}

static void show_pools(px_client_t *c)
{
    static const char *const cols[] = { "store",      "cl_active", "cl_idle",  "cl_held",
                                        "cl_waiting", "sv_active", "sv_idle",  "sv_login",
                                        "sv_pooled",  "pool_size", "pool_mode" };
    adm_table_t t = { .n_cols = 11, .cols = cols };
    px_proxy_t *p = c->conn.proxy;
    bool pooled = px_pool_on(p);

    for (size_t i = 0; i < p->n_stores; i++) {
        px_store_t *s = p->stores[i];
        uint64_t active = 0, idle = 0, held = 0;
        char a[24], b[24], h[24], w[24], sa[24], si[24], sl[24], sp[24], ps[24];
        cm_list_t *it, *tmp;

        if (s->is_removed)
            continue;
        cm_list_foreach_safe(it, tmp, &p->clients) {
            px_client_t *x = cm_container_of(it, px_client_t, node);

            if (x->is_admin || x->store != s)
                continue;
            if (x->is_held)
                held++;
            else if (px_client_is_idle(x))
                idle++;
            else
                active++;
        }
        adm_row(&t, s->name, u64s(a, active), u64s(b, idle), u64s(h, held),
                u64s(w, (uint64_t)s->n_waiting), u64s(sa, (uint64_t)(s->n_active - s->n_idle)),
                u64s(si, (uint64_t)s->n_idle), u64s(sl, (uint64_t)(s->n_servers - s->n_active)),
                u64s(sp, (uint64_t)s->n_pooled),
                pooled ? u64s(ps, (uint64_t)p->cfg->pool_size) : NULL,
                pooled ? "transaction" : "session");
    }
    adm_send_table(c, &t, "SHOW");
}

static void show_stats(px_client_t *c)
{
    static const char *const cols[] = {
        "store",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_errors",
        "total_server_conns",
        "cutover_holds_total", /* statements held while a tenant of the store was at cutover */
        "cutover_hold_ms_max",
        "cutover_hold_ms_sum",
    };
    adm_table_t t = { .n_cols = CM_ARRAY_LEN(cols), .cols = cols };
    px_proxy_t *p = c->conn.proxy;

    for (size_t i = 0; i < p->n_stores; i++) {
        px_store_t *s = p->stores[i];
        char x[24], q[24], r[24], w[24], e[24], n[24], hn[24], hx[24], hs[24];

        if (s->is_removed)
            continue;
        adm_row(&t, s->name, u64s(x, s->n_xacts), u64s(q, s->n_queries), u64s(r, s->bytes_in),
                u64s(w, s->bytes_out), u64s(e, s->n_errors), u64s(n, s->n_server_conns),
                u64s(hn, s->n_cutover_holds), u64s(hx, s->cutover_hold_ms_max),
                u64s(hs, s->cutover_hold_ms_sum));
    }
    adm_send_table(c, &t, "SHOW");
}

/*
 * SHOW HOLDS: the latest ended cutover holds, oldest first, one row per held
 * statement. held_ms is the time pgshift kept the statement from the
 * moment it was read until it was sent on or refused: the pause the client
 * saw, less its own round trip.
 */
static void show_holds(px_client_t *c)
{
    static const char *const cols[] = {
        "seq", "ended_at", "client_id", "tenant", "held_store", "to_store", "held_ms", "outcome",
    };
    adm_table_t t = { .n_cols = CM_ARRAY_LEN(cols), .cols = cols };
    px_proxy_t *p = c->conn.proxy;
    size_t n = p->hold_log != NULL ? (size_t)CM_MIN(p->hold_seq, (uint64_t)p->hold_log_cap) : 0;

    for (uint64_t seq = p->hold_seq - n + 1; n > 0 && seq <= p->hold_seq; seq++) {
        const px_hold_rec_t *h = &p->hold_log[(seq - 1) % p->hold_log_cap];
        char sq[24], at[40], cid[24], ms[32], day[24];

        if (h->seq != seq)
            continue; /* the log was remade after a reload */
        fmt_time(day, sizeof(day), h->end_unix_ms);
        snprintf(at, sizeof(at), "%s.%03u", day, (unsigned)(h->end_unix_ms % 1000));
        snprintf(ms, sizeof(ms), "%.3f", (double)h->held_us / 1000.0);
        adm_row(&t, u64s(sq, h->seq), at, u64s(cid, h->client_id), h->tenant,
                store_name(p, h->from_store), store_name(p, h->to_store), ms,
                px_hold_outcome_name(h->outcome));
    }
    adm_send_table(c, &t, "SHOW");
}

/* ---- PAUSE ---- */

static void pause_timeout_cb(uv_timer_t *t)
{
    px_proxy_t *p = t->data;

    px_admin_pause_done(p, false);
}

void px_admin_pause_done(px_proxy_t *p, bool ok)
{
    px_client_t *c = p->pause_waiter;

    p->pause_waiter = NULL;
    uv_timer_stop(&p->pause_timer);
    if (!ok) {
        /* Never leave the proxy paused behind an error: resume first. */
        px_proxy_resume(p);
    }
    if (c == NULL || c->state != PX_CL_READY)
        return;
    if (ok)
        adm_command_ok(c, "PAUSE");
    else
        px_client_error(c, "57014",
                        "PAUSE timed out: sessions still in transactions; pgshift resumed");
    c->is_held = 0;
    px_client_send_ready(c);
    px_client_kick(c);
}

static void cmd_pause(px_client_t *c, const char *arg)
{
    px_proxy_t *p = c->conn.proxy;
    long ms = p->cfg->pause_timeout_ms;

    if (arg != NULL && *arg) {
        char *end;

        ms = strtol(arg, &end, 10);
        if (*end != '\0' || ms < 0 || ms > 3600000) {
            px_client_error(c, "22023", "PAUSE expects a timeout in milliseconds");
            px_client_send_ready(c);
            return;
        }
    }
    if (p->pause_waiter != NULL) {
        px_client_error(c, "55000", "another PAUSE is in progress");
        px_client_send_ready(c);
        return;
    }
    if (ms == 0)
        ms = 1; /* "do not wait": answer on the next loop turn */
    p->is_paused = true;
    p->pause_waiter = c;
    c->is_held = 1; /* this console waits for the answer */
    uv_timer_start(&p->pause_timer, pause_timeout_cb, (uint64_t)ms, 0);
    px_proxy_check_idle(p);
}

/* ---- dispatch ---- */

/* Upper-case words of the command, trailing ';' and whitespace removed. */
static char *normalize(const char *sql)
{
    char *s = cm_xstrdup(sql);
    size_t n = strlen(s);

    while (n > 0 && (isspace((unsigned char)s[n - 1]) || s[n - 1] == ';'))
        s[--n] = '\0';
    return s;
}

static bool word_is(const char **p, const char *w)
{
    size_t n = strlen(w);
    const char *s = *p;

    while (isspace((unsigned char)*s))
        s++;
    if (strncasecmp(s, w, n) != 0 || (s[n] != '\0' && !isspace((unsigned char)s[n])))
        return false;
    s += n;
    while (isspace((unsigned char)*s))
        s++;
    *p = s;
    return true;
}

void px_admin_query(px_client_t *c, const char *sql)
{
    px_proxy_t *p = c->conn.proxy;
    char *q = normalize(sql);
    const char *s = q;
    char *err = NULL;

    LOG_INFO(c->ctx, "admin: %s", q);
    if (*s == '\0') {
        cm_buf_t b = { 0 };

        wire_put_empty_query(&b);
        px_conn_send(&c->conn, b.data, b.len);
        cm_buf_free(&b);
    } else if (word_is(&s, "SHOW")) {
        if (word_is(&s, "VERSION") && !*s)
            show_version(c);
        else if (word_is(&s, "CONFIG") && !*s)
            show_config(c);
        else if (word_is(&s, "STORES") && !*s)
            show_stores(c);
        else if (word_is(&s, "CLIENTS") && !*s)
            show_clients(c);
        else if (word_is(&s, "SERVERS") && !*s)
            show_servers(c);
        else if (word_is(&s, "POOLS") && !*s)
            show_pools(c);
        else if (word_is(&s, "STATS") && !*s)
            show_stats(c);
        else if (word_is(&s, "HOLDS") && !*s)
            show_holds(c);
        else if (px_router_admin(c, q)) {
            free(q);
            return; /* the migrator answers (px_admin_reply) */
        } else
            px_client_error(c, "42601", "unknown SHOW command: %s", q);
    } else if (px_router_admin(c, q)) {
        /* Migration commands (PAUSE MIGRATION id, ...) before the proxy's own PAUSE. */
        free(q);
        return; /* the migrator answers (px_admin_reply) */
    } else if (word_is(&s, "RELOAD") && !*s) {
        if (px_proxy_reload(p, &err) < 0) {
            px_client_error(c, "F0000", "reload failed: %s", err);
            free(err);
        } else {
            adm_command_ok(c, "RELOAD");
        }
    } else if (word_is(&s, "PAUSE")) {
        cmd_pause(c, s);
        free(q);
        return; /* answers when done */
    } else if (word_is(&s, "RESUME") && !*s) {
        if (p->pause_waiter != NULL)
            px_admin_pause_done(p, false);
        px_proxy_resume(p);
        adm_command_ok(c, "RESUME");
    } else if (word_is(&s, "SHUTDOWN") && !*s) {
        adm_command_ok(c, "SHUTDOWN");
        px_client_send_ready(c);
        free(q);
        px_proxy_shutdown(p, false);
        return;
    } else {
        px_client_error(c, "42601", "unknown command: %s", q);
    }
    free(q);
    px_client_send_ready(c);
}

void px_admin_reply(px_proxy_t *p, void *cookie, mig_result_t *res)
{
    px_client_t *c = cookie;
    cm_buf_t b = { 0 };

    (void)p;
    if (c->state != PX_CL_READY) {
        mig_result_free(res);
        return;
    }
    if (res->err_sqlstate != NULL) {
        wire_put_error(&b, false, "ERROR", res->err_sqlstate,
                       res->err_message ? res->err_message : "command failed", NULL);
    } else {
        /* A streamed result (WATCH) sends its RowDescription once. */
        if (res->n_cols > 0 && !c->is_streaming)
            wire_put_row_description(&b, (const char *const *)res->cols, NULL, res->n_cols);
        for (size_t i = 0; i < res->n_rows; i++)
            wire_put_data_row(&b, (const char *const *)res->cells + i * res->n_cols, res->n_cols);
        if (!res->more)
            wire_put_command_complete(&b, res->tag ? res->tag : "OK");
    }
    px_conn_send(&c->conn, b.data, b.len);
    cm_buf_free(&b);
    if (res->more && res->err_sqlstate == NULL) {
        c->is_streaming = 1;
        px_conn_flush(&c->conn);
        mig_result_free(res);
        return;
    }
    mig_result_free(res);
    c->is_streaming = 0;
    c->is_waiting = 0;
    px_client_send_ready(c);
    px_client_kick(c);
}
