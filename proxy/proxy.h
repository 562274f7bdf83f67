/*
 * proxy/proxy.h - the objects that live on the loop: the process-wide proxy
 * state, connections (transport + buffers + TLS), client sessions, server
 * connections and stores.
 *
 * Everything here is owned by the loop thread. migrator/ threads never see
 * these structs; they talk to the loop through their outbox.
 */
#ifndef PGSHIFT_PROXY_H
#define PGSHIFT_PROXY_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "common/cm.h"
#include "config/cfg.h"
#include "wire/wire.h"

typedef struct px_proxy px_proxy_t;
typedef struct px_conn px_conn_t;
typedef struct px_client px_client_t;
typedef struct px_server px_server_t;
typedef struct px_store px_store_t;
typedef struct px_tls px_tls_t;

/* ---- intrusive doubly linked list ---- */

typedef struct cm_list {
    struct cm_list *prev, *next;
} cm_list_t;

static inline void cm_list_init(cm_list_t *l)
{
    l->prev = l->next = l;
}

static inline bool cm_list_empty(const cm_list_t *l)
{
    return l->next == l;
}

static inline void cm_list_append(cm_list_t *head, cm_list_t *n)
{
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}

/* Insert n first. */
static inline void cm_list_prepend(cm_list_t *head, cm_list_t *n)
{
    n->next = head->next;
    n->prev = head;
    head->next->prev = n;
    head->next = n;
}

/* Is n on a list (cm_list_init'ed nodes and deleted ones are not)? */
static inline bool cm_list_linked(const cm_list_t *n)
{
    return n->next != n;
}

static inline void cm_list_del(cm_list_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

#define cm_list_foreach_safe(it, tmp, head) \
    for ((it) = (head)->next, (tmp) = (it)->next; (it) != (head); (it) = (tmp), (tmp) = (it)->next)

/* A TCP or unix-socket stream, seen as whichever libuv type a call needs. */
typedef union px_stream {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
} px_stream_t;

/* ---- connections: one socket, its buffers and optional TLS ---- */

typedef enum px_conn_kind {
    PX_CONN_CLIENT, /* an application or admin client */
    PX_CONN_SERVER, /* pgshift's connection to a store */
} px_conn_kind_t;

/*
 * The I/O half of a client or server. It owns the uv stream, the read
 * buffer and the output queue. Its owner (client or server) gets every
 * batch of decrypted input through on_read and decides what to consume.
 *
 *   rbuf:  [ consumed | unprocessed (rpos..rlen) | free (rlen..rcap) ]
 *
 * rbuf is taken from the proxy's buffer pool when a read arrives and handed
 * back when everything is consumed, so an idle connection holds no buffer.
 */
struct px_conn {
    px_stream_t h;
    px_conn_kind_t kind;
    const struct px_conn_ops *ops; /* the owner's callbacks */
    void *owner;                   /* px_client_t or px_server_t */
    px_proxy_t *proxy;             /* keeps */

    uint8_t *rbuf; /* pooled when rcap == pool size, else heap */
    size_t rpos;   /* first unprocessed byte */
    size_t rlen;   /* end of received bytes */
    size_t rcap;   /* bytes allocated */

    cm_buf_t out;       /* plaintext queued by the owner, not yet handed to the socket */
    cm_buf_t sendbuf;   /* bytes owned by the in-flight uv_write */
    uv_write_t *wreq;   /* the write in flight, allocated per asynchronous write */
    px_tls_t *tls;      /* NULL for plaintext */
    uint64_t bytes_in;  /* plaintext bytes received */
    uint64_t bytes_out; /* plaintext bytes queued */

    unsigned is_open : 1;           /* the stream handle is initialized */
    unsigned is_closing : 1;        /* uv_close called; freed in the close callback */
    unsigned is_reading : 1;        /* uv_read_start active */
    unsigned is_writing : 1;        /* wreq in flight */
    unsigned want_read : 1;         /* owner wants input (cleared under backpressure) */
    unsigned is_eof : 1;            /* peer closed its side */
    unsigned close_after_flush : 1; /* close once out and sendbuf are written */
    unsigned is_tls_ready : 1;      /* the TLS handshake finished (owner told once) */
};

/* Called with new input in c->rbuf[rpos..rlen); the owner advances rpos. */
typedef void (*px_conn_read_fn)(px_conn_t *c);
/* Called once when the connection failed or the peer closed. */
typedef void (*px_conn_error_fn)(px_conn_t *c, int err);
/* Called when queued output drained below the backpressure mark. */
typedef void (*px_conn_drain_fn)(px_conn_t *c);
/* Called from the close callback: the owner frees itself. */
typedef void (*px_conn_closed_fn)(px_conn_t *c);

typedef struct px_conn_ops {
    px_conn_read_fn on_read;
    px_conn_error_fn on_error;
    px_conn_drain_fn on_drain;
    px_conn_closed_fn on_closed;
} px_conn_ops_t;

void px_conn_init(px_conn_t *c, px_proxy_t *p, px_conn_kind_t kind, const px_conn_ops_t *ops,
                  void *owner);
int px_conn_start_read(px_conn_t *c) MUST_CHECK;
void px_conn_stop_read(px_conn_t *c);
/* Queue bytes (copied) and write them soon; px_conn_flush writes now. */
void px_conn_send(px_conn_t *c, const void *data, size_t len);
void px_conn_flush(px_conn_t *c);
/* Pending output bytes (queued + in flight). */
size_t px_conn_pending(const px_conn_t *c);
/* Drop n processed bytes from the read buffer; releases it when empty. */
void px_conn_consume(px_conn_t *c, size_t n);
/* Make room for a whole message of `need` bytes from rpos. */
void px_conn_reserve(px_conn_t *c, size_t need);
/* Close now (output discarded) or after the queued output is written. */
void px_conn_close(px_conn_t *c);
void px_conn_close_after_flush(px_conn_t *c);
/* Start TLS on an open connection; pending plaintext must be empty. */
int px_conn_start_tls(px_conn_t *c, px_tls_t *tls) MUST_CHECK;
const char *px_conn_peer(px_conn_t *c, char *buf, size_t len);

/* ---- TLS through memory BIOs (proxy/tls.c) ---- */

typedef struct px_tls_ctx px_tls_ctx_t;
int px_tls_server_ctx_new(const char *cert, const char *key, const char *ca, px_tls_ctx_t **out,
                          char **err) MUST_CHECK;
/* sslmode: require, verify-ca or verify-full; rootcert may be "" */
int px_tls_client_ctx_new(const char *sslmode, const char *rootcert, px_tls_ctx_t **out, char **err)
    MUST_CHECK;
void px_tls_ctx_free(px_tls_ctx_t *ctx);
px_tls_t *px_tls_new_server(px_tls_ctx_t *ctx);
px_tls_t *px_tls_new_client(px_tls_ctx_t *ctx, const char *hostname /* SNI, verify-full */);
void px_tls_free(px_tls_t *t);
/* Feed ciphertext; returns 0, or -1 with a TLS error. */
int px_tls_feed(px_tls_t *t, const void *data, size_t len) MUST_CHECK;
/* Decrypt into buf; returns bytes (>0), 0 for "need more", -1 for error/close. */
int px_tls_read(px_tls_t *t, void *buf, size_t len);
/* Encrypt plaintext; returns 0 or -1. */
int px_tls_write(px_tls_t *t, const void *data, size_t len) MUST_CHECK;
/* Append produced ciphertext to out. */
void px_tls_drain(px_tls_t *t, cm_buf_t *out);
bool px_tls_handshake_done(px_tls_t *t);
const char *px_tls_error(px_tls_t *t);

/* ---- stores ---- */

#define PX_MAX_PARAMS 32

typedef struct px_param {
    char *name;
    char *value;
} px_param_t;

typedef struct px_params { /* zero-filled is empty */
    size_t n;
    size_t cap;
    px_param_t *v; /* owned */
} px_params_t;

void px_params_set(px_params_t *ps, const char *name, size_t name_len, const char *value,
                   size_t value_len);
const char *px_params_get(const px_params_t *ps, const char *name);
void px_params_clear(px_params_t *ps);

struct px_store {
    int index;                    /* position in proxy->stores */
    char *name;                   /* [stores] key */
    char *conninfo;               /* as configured */
    char *host;                   /* host name, address or unix socket directory */
    int port;                     /* 5432 by default */
    char *user;                   /* login role on the store */
    char *password;               /* may be NULL */
    char *dbname;                 /* database on the store */
    char *sslmode;                /* disable, allow, prefer, require, verify-ca, verify-full */
    char *sslrootcert;            /* "" when unset */
    char *unix_path;              /* socket path when host is a directory, else NULL */
    struct sockaddr_storage addr; /* resolved TCP address */
    px_tls_ctx_t *tls_ctx;        /* when sslmode asks for TLS */
    px_params_t params;           /* ParameterStatus of the first server login */
    struct px_scram_keycache *scram_keys; /* SCRAM keys of the last login, owned */
    bool has_params;
    bool is_removed; /* dropped from the config by a reload */
    /* stats */
    uint64_t n_queries, n_xacts, bytes_in, bytes_out, n_errors, n_server_conns;
    uint64_t query_time_us, xact_time_us;
    int n_servers; /* open server connections */
    int n_active;  /* linked to a client */
    /* statements held while a tenant of this store was at cutover */
    uint64_t n_cutover_holds, cutover_hold_ms_sum, cutover_hold_ms_max;
    /* transaction pooling (proxy/pool.c) */
    cm_list_t idle;    /* pooled servers lent to nobody, most recently returned first */
    cm_list_t waiters; /* clients waiting for a pooled server, first come first */
    int n_idle;        /* length of idle */
    int n_pooled;      /* pooled servers open: lent, idle or logging in; pool_size or
                          fewer, except after first logins or a smaller pool_size */
    int n_waiting;     /* length of waiters */
    uint64_t n_pool_waits, n_pool_wait_timeouts;
};

/* ---- server connections ---- */

typedef enum px_sv_state {
    PX_SV_CONNECTING, /* [transient] TCP or unix connect in progress */
    PX_SV_SSL_REQ,    /* [transient] sent SSLRequest, waiting for S or N */
    PX_SV_TLS,        /* [transient] TLS handshake */
    PX_SV_LOGIN,      /* startup sent; authenticating and reading parameters */
    PX_SV_ACTIVE,     /* logged in and linked to its client */
    PX_SV_CLOSING,    /* [transient] handles closing; freed in the close callback */
} px_sv_state_t;

struct px_server {
    px_conn_t conn;
    px_sv_state_t state;
    uint64_t id;
    px_store_t *store;   /* keeps */
    px_client_t *client; /* the session that owns it, NULL while closing */
    cm_list_t node;      /* proxy->servers */
    uint32_t be_pid;     /* BackendKeyData of the store's backend */
    uint32_t be_key;
    uint8_t txn_status;       /* last ReadyForQuery status */
    int n_pending;            /* requests (Query, Sync, FunctionCall) awaiting ReadyForQuery */
    size_t fwd_left;          /* bytes of the current message still to stream to the client */
    uint8_t *rq;              /* ring of requests awaiting answers: type | 0x80 when injected */
    uint32_t rq_head;         /* first pending request */
    uint32_t rq_n;            /* pending requests */
    uint32_t rq_visible;      /* pending requests whose answers the client waits for */
    uint32_t rq_cap;          /* ring size */
    unsigned is_fwd_drop : 1; /* the streamed message is an answer pgshift swallows */
    void *scram;              /* px_scram_client_t during SASL */
    uv_timer_t timer;         /* connect timeout */
    uint64_t connect_start_ms;
    uint64_t xact_start_us;
    uint64_t query_start_us;
    int n_handles; /* open uv handles: conn + timer */
    /*
     * Cutover drain: the store is busy for the session from the first
     * request sent while it was idle until a ReadyForQuery 'I' that leaves
     * nothing pending (so an explicit transaction, an extended batch before
     * its Sync and pipelined requests all count). work_gen is the proxy's
     * route_gen when it got busy: the "bound_gen" of the work it carries.
     */
    uint64_t work_gen;
    unsigned is_busy : 1;
    unsigned is_copy_in : 1;  /* the store sent CopyInResponse: client streams CopyData */
    unsigned is_copy_out : 1; /* the store streams CopyData to the client */
    /*
     * Opened ahead of need (the target of a cutover the client is held
     * at) and not used yet: losing it fails nothing.
     */
    unsigned is_warm : 1;
    /*
     * Transaction pooling: a pooled server is lent to one client at a time
     * and returns to store->idle when that client's work on it ends.
     * last_client is the session whose prepared statements and settings the
     * backend holds (0 = none): another borrower resets it first (DISCARD
     * ALL).
     */
    unsigned is_pooled : 1;
    cm_list_t pool_node; /* store->idle while idle */
    uint64_t pool_sig;   /* startup parameters it logged in with (px_pool_sig) */
    uint64_t last_client;
    uint64_t client_gen; /* last_client's gens[store] its backend is up to date with */
    uint64_t idle_since_ms;
    char ctx[64]; /* log prefix */
};

/* ---- client sessions ---- */

typedef enum px_cl_state {
    PX_CL_STARTUP, /* reading SSLRequest / StartupMessage */
    PX_CL_TLS,     /* [transient] TLS handshake after SSLRequest */
    PX_CL_AUTH,    /* authenticating the client */
    PX_CL_WELCOME, /* [transient] authenticated, waiting for the store's parameters */
    PX_CL_READY,   /* logged in; forwarding or running admin commands */
    PX_CL_CLOSING, /* [transient] handles closing; freed in the last close callback */
} px_cl_state_t;

typedef enum px_auth_step {
    PX_AUTH_NONE,
    PX_AUTH_PASSWORD, /* cleartext (unused), md5 */
    PX_AUTH_SASL_INIT,
    PX_AUTH_SASL_CONT,
} px_auth_step_t;

struct px_client {
    px_conn_t conn;
    px_cl_state_t state;
    uint64_t id;
    cm_list_t node; /* proxy->clients */
    bool is_admin;  /* connected through the admin port */
    char *user;
    char *database;
    px_params_t startup;   /* startup parameters to pass to stores (no user/database) */
    uint32_t cancel_key;   /* pgshift's BackendKeyData key; the pid is the client id */
    px_server_t *server;   /* the server the latest requests went to, NULL until needed */
    px_store_t *store;     /* store of `server`; the default store before any request */
    px_server_t **servers; /* by store index: the session's server on each store, or NULL */
    size_t n_servers;      /* length of servers[] */
    /* routing (proxy/router.c) */
    char *tenant;          /* session tenant, NULL = none */
    struct px_stmt *stmts; /* prepared statements by name ("" = unnamed) */
    size_t n_stmts;
    size_t cap_stmts;
    cm_buf_t batch;         /* extended messages held until the batch's store is known */
    int batch_store;        /* store of the current extended batch (since Sync), -1 = none */
    bool batch_refused;     /* an error was reported: drop messages until Sync */
    bool batch_effects;     /* the batch sent more than Parse/Describe to its store */
    bool in_txn;            /* inside BEGIN ... COMMIT as the client sees it */
    int bound_store;        /* store the transaction is bound to, -1 = none */
    bool bound_tentative;   /* bound only by a tenant-less read; may still move */
    char *deferred;         /* SQL held back until the transaction binds ("BEGIN ...") */
    bool has_deferred_work; /* deferred holds more than the BEGIN (SET, NOTIFY, ...) */
    cm_buf_t session_sql;   /* SET statements to replay on a store the session uses later */
    uint64_t lookup_id;     /* pending aggregate lookup, 0 = none */
    char *lookup_key;       /* the key value being looked up, owned */
    const char *local_tag;  /* CommandComplete tag of a statement answered here */
    px_auth_step_t auth_step;
    uint8_t md5_salt[4];
    void *scram;         /* px_scram_server_t during SASL */
    uint8_t txn_status;  /* as last reported to the client */
    size_t fwd_left;     /* bytes of the current message still to stream to the server */
    int n_handles;       /* open uv handles: the conn */
    uint64_t connect_ms; /* wall-clock ms at accept, for SHOW CLIENTS */
    uint64_t last_active_ms;
    uint64_t n_queries;
    uint64_t hold_start_us;       /* cm_now_us() when a statement was first held at a cutover;
                                     0 = not held */
    int hold_store;               /* store of the tenant at cutover that holds it */
    char *hold_tenant;            /* the held statement's tenant, owned; NULL when not held */
    unsigned is_hold_expired : 1; /* held past max_hold_ms: refuse the statement (55000) */
    unsigned is_held : 1;         /* input processing suspended (pause, waiting server) */
    unsigned is_terminating : 1;  /* got Terminate */
    unsigned is_unix : 1;
    unsigned close_when_idle : 1; /* shutdown: close at the next idle point */
    unsigned in_copy_in : 1;      /* streaming CopyData to the server */
    unsigned is_waiting : 1;      /* a message waits: server login, a busy store, a lookup */
    unsigned is_local_portal : 1; /* the batch's portal is answered here (held BEGIN) */
    unsigned is_streaming : 1;    /* admin: a streamed result set (WATCH) is being sent */
    /* transaction pooling (proxy/pool.c) */
    unsigned is_pinned : 1; /* keeps its servers: its session state cannot move */
    uint64_t pool_sig;      /* px_pool_sig of its startup parameters */
    uint64_t *gens;         /* by store: bumped when its state there changes (a SET: all
                               stores; a named Parse or Close: that store); a pooled
                               server of an older generation is reset before use */
    size_t n_gens;
    cm_list_t wait_node;   /* store->waiters while waiting for a pooled server */
    int wait_store;        /* store waited for, -1 = none */
    uint32_t n_pool_takes; /* px_pool_take calls, to tell whether a kick asked */
    uint64_t wait_start_ms;
    char ctx[72]; /* log prefix: "C#12 db/app@127.0.0.1:5000" */
};

/* ---- the process ---- */

typedef struct px_listener {
    px_stream_t h;
    px_proxy_t *proxy;
    bool is_admin;
    bool is_unix;
    bool is_open;
    char *path; /* unix socket path, unlinked at close */
} px_listener_t;

#define PX_MAX_LISTENERS 16

/* Upper bounds (ms) of the cutover hold histogram's buckets; one more is +Inf. */
#define PX_HOLD_BUCKETS 14
extern const uint32_t px_hold_bound_ms[PX_HOLD_BUCKETS - 1];

typedef struct px_stats {
    uint64_t n_accepted;
    uint64_t n_refused;
    uint64_t n_auth_failures;
    uint64_t n_protocol_errors;
    uint64_t n_queries;
    uint64_t n_xacts;
    uint64_t bytes_in;
    uint64_t bytes_out;
    /* cutover holds that ended (released, or refused past max_hold_ms) */
    uint64_t n_cutover_holds;
    uint64_t cutover_hold_ms_max;
    uint64_t n_cutover_hold_timeouts;            /* of them: refused past max_hold_ms */
    uint64_t cutover_hold_us_sum;                /* the ms sum of /metrics is this / 1000 */
    uint64_t cutover_hold_hist[PX_HOLD_BUCKETS]; /* by px_hold_bucket_ms (last = +Inf) */
} px_stats_t;

/* How a cutover hold ended. */
typedef enum px_hold_outcome {
    PX_HOLD_RELEASED, /* the statement went on to a store (to_store) */
    PX_HOLD_REFUSED,  /* the decision after the hold refused it (a route error) */
    PX_HOLD_EXPIRED,  /* held past max_hold_ms: refused with 55000 */
    PX_HOLD_GONE,     /* the client left while held */
} px_hold_outcome_t;

/* One ended cutover hold, kept for SHOW HOLDS (proxy->hold_log). */
typedef struct px_hold_rec {
    uint64_t seq;       /* 1, 2, ... since start */
    uint64_t client_id; /* */
    uint64_t end_unix_ms;
    uint64_t held_us;
    int from_store; /* the tenant's store at the cutover, -1 = unknown */
    int to_store;   /* where the statement went, -1 = nowhere */
    px_hold_outcome_t outcome;
    char tenant[64]; /* truncated to fit */
} px_hold_rec_t;

struct px_proxy {
    uv_loop_t *loop;
    cfg_t *cfg;       /* current snapshot; owned reference */
    char *cfg_path;   /* NULL when started without -c */
    char **overrides; /* -o key=value, re-applied on reload */
    size_t n_overrides;
    px_store_t **stores; /* by index; stores are never freed before exit */
    size_t n_stores;
    px_store_t *default_store;
    void *authfile; /* px_authfile_t */
    px_tls_ctx_t *client_tls;
    px_listener_t listeners[PX_MAX_LISTENERS];
    size_t n_listeners;
    cm_list_t clients;
    cm_list_t servers;
    int n_clients;
    int n_admin_clients;
    uint64_t next_id;
    uint32_t pid_base;
    wire_limits_t limits;
    px_stats_t stats;
    uint64_t start_ms;
    /* pooled read buffers of cfg->pkt_buf_len bytes */
    uint8_t **buf_pool;
    size_t n_buf_pool;
    size_t buf_pool_cap;
    size_t buf_len;
    /* pause / shutdown */
    bool is_paused;
    bool is_shutting_down;
    bool is_finished; /* every handle of the proxy is closing; the loop ends */
    uv_timer_t pause_timer;
    px_client_t *pause_waiter; /* admin client waiting for PAUSE to complete */
    uv_timer_t shutdown_timer;
    uv_timer_t janitor; /* once a second: client login and idle timeouts */
    uv_signal_t sig_term, sig_int, sig_hup;
    uint8_t mock_key[32];               /* keys the mock SCRAM salts of unknown users */
    struct px_scram_cache *scram_cache; /* SCRAM secrets derived from plain passwords */
    size_t n_scram_cache;
    struct px_router *router; /* proxy/router.c state */
    uint64_t route_gen;       /* bumped on every route-table install (cutover holds) */
    px_hold_rec_t *hold_log;  /* ring of hold_log_cap ended holds, NULL when 0 */
    size_t hold_log_cap;      /* cfg->hold_log_size it was made for */
    uint64_t hold_seq;        /* holds recorded since start */
    int n_cutover_unacked;    /* cutovers whose drain this process has not acknowledged yet */
    uv_timer_t pool_wake;     /* hands returned servers to waiting clients (0 ms) */
    bool is_txn_pool;         /* pool_mode = transaction, as started (a restart key) */
    void *http;               /* proxy/http.c state */
    void *admin;              /* proxy/admin.c state */
};

/* proxy/proxy.c */
int px_proxy_init(px_proxy_t *p, uv_loop_t *loop, cfg_t *cfg, char **err) MUST_CHECK;
int px_proxy_listen(px_proxy_t *p, char **err) MUST_CHECK;
int px_proxy_reload(px_proxy_t *p, char **err) MUST_CHECK;
void px_proxy_shutdown(px_proxy_t *p, bool immediate);
void px_proxy_destroy(px_proxy_t *p);
uint8_t *px_proxy_buf_get(px_proxy_t *p);
void px_proxy_buf_put(px_proxy_t *p, uint8_t *buf);
px_store_t *px_proxy_store(px_proxy_t *p, const char *name);
/*
 * The SCRAM secret for a user whose auth_file entry is a plain password,
 * derived once (4096 HMACs) and cached until the auth file is reloaded.
 * Borrows user and password; 0 or -1.
 */
struct px_scram_secret;
int px_proxy_scram_secret(px_proxy_t *p, const char *user, const char *password,
                          struct px_scram_secret *out) MUST_CHECK;
/* Re-evaluate pause and shutdown progress; called when a client goes idle. */
void px_proxy_check_idle(px_proxy_t *p);
void px_proxy_resume(px_proxy_t *p);

/* proxy/listener.c */
int px_listen_tcp(px_proxy_t *p, const char *addr, int port, bool is_admin, char **err) MUST_CHECK;
int px_listen_unix(px_proxy_t *p, const char *dir, int port, bool is_admin, char **err) MUST_CHECK;
void px_listen_close_all(px_proxy_t *p);

/* proxy/store.c */
int px_store_new(const cfg_store_t *cs, int index, px_store_t **out, char **err) MUST_CHECK;
int px_store_update(px_store_t *s, const cfg_store_t *cs, char **err) MUST_CHECK;
void px_store_free(px_store_t *s);

/* proxy/client.c */
void px_client_accept(px_proxy_t *p, uv_stream_t *listener, bool is_admin, bool is_unix);
void px_client_close(px_client_t *c, const char *reason);
/* Send ErrorResponse (FATAL) and close once written. */
void px_client_fail(px_client_t *c, const char *sqlstate, const char *fmt, ...) PRINTF_LIKE(3, 4);
/* Send a non-fatal ErrorResponse (severity ERROR). */
void px_client_error(px_client_t *c, const char *sqlstate, const char *fmt, ...) PRINTF_LIKE(3, 4);
void px_client_send_ready(px_client_t *c);
/* The server finished login: welcome the client or start forwarding. */
void px_client_server_ready(px_client_t *c, px_server_t *s);
/* The server failed or vanished; the client gets 08006 and is closed. */
void px_client_server_lost(px_client_t *c, px_server_t *s, const char *why);
/* Server s answered everything it owed: a client waiting on it may go on. */
void px_client_server_idle(px_client_t *c, px_server_t *s);
/* Continue processing buffered input (after a hold or backpressure). */
void px_client_kick(px_client_t *c);
bool px_client_is_idle(const px_client_t *c);
void px_client_cancel(px_proxy_t *p, uint32_t pid, uint32_t key);
/* Login and idle timeouts; the janitor calls it once a second. */
void px_client_check_timeouts(px_client_t *c, uint64_t now_ms);
const char *px_cl_state_name(px_cl_state_t s);

/* proxy/server.c */
int px_server_connect(px_proxy_t *p, px_store_t *store, px_client_t *client, px_server_t **out)
    MUST_CHECK;
/*
 * Record that a request of `type` (Q, P, B, D, E, C, S, F) was sent, so its
 * answer is matched in order; `swallow` drops the answer (pgshift's own
 * request), except an ErrorResponse of an extended message, which the
 * client must see since its batch fails with it.
 */
void px_server_expect(px_server_t *s, uint8_t type, bool swallow);
/* Requests whose answers the client still waits for. */
uint32_t px_server_visible_pending(const px_server_t *s);
/* Forward the store's output to the client; called from the client's drain. */
void px_server_kick(px_server_t *s);
/* Detach from the client and close (Terminate first when logged in). */
void px_server_release(px_server_t *s);
void px_server_send_cancel(px_proxy_t *p, px_store_t *store, uint32_t pid, uint32_t key);
const char *px_sv_state_name(px_sv_state_t s);

/* proxy/router.c */
struct mig_result;
int px_router_init(px_proxy_t *p, char **err) MUST_CHECK;
void px_router_stop(px_proxy_t *p);
void px_router_destroy(px_proxy_t *p);
/* Route the session's buffered messages to its stores. */
void px_router_input(px_client_t *c);
/* A ReadyForQuery the client saw from s: track the transaction binding. */
void px_router_ready(px_client_t *c, px_server_t *s, uint8_t status);
/* A new server of the session logged in (before any request is sent to it). */
void px_router_server_ready(px_client_t *c, px_server_t *s);
/* s is going away: forget it. */
void px_router_server_gone(px_client_t *c, px_server_t *s);
/* Pooled s answered everything: give it back to the pool unless the session still needs it. */
void px_router_server_idle(px_client_t *c, px_server_t *s);
/* The session ends: free its routing state. */
void px_router_client_gone(px_client_t *c);
/* An admin command the migrator serves; false when sql is not one. */
bool px_router_admin(px_client_t *c, const char *sql);
/*
 * Acknowledge every cutover whose store no longer carries work that began
 * before its hold (px_server_t.is_busy / work_gen). Cheap to call: it
 * returns at once unless p->n_cutover_unacked > 0. Called after a route
 * table install, when a store goes idle or away, and by the janitor.
 */
void px_router_check_drain(px_proxy_t *p);
/* Clients held at a cutover right now. */
int px_router_n_held(px_proxy_t *p);
const char *px_hold_outcome_name(px_hold_outcome_t o);

/* proxy/pool.c: transaction pooling */
typedef enum px_pool_rc {
    PX_POOL_LENT, /* *out is a logged-in server, now the client's */
    PX_POOL_NEW,  /* *out is a new server logging in for the client */
    PX_POOL_WAIT, /* every server is lent: the client is queued and kicked later */
    PX_POOL_FAIL, /* connecting failed */
} px_pool_rc_t;

static inline bool px_pool_on(const px_proxy_t *p)
{
    return p->is_txn_pool;
}
/* A hash of the startup parameters: servers are shared only between equal ones. */
uint64_t px_pool_sig(const px_params_t *startup);
px_pool_rc_t px_pool_take(px_client_t *c, px_store_t *store, px_server_t **out) MUST_CHECK;
/* Open a pooled server for c whatever the pool's size (the first login of a store). */
int px_pool_connect(px_client_t *c, px_store_t *store, px_server_t **out) MUST_CHECK;
/*
 * Give s back to its store's pool if it is pooled and idle at the protocol
 * level (nothing pending, no transaction, no COPY); the caller has checked
 * that the client needs it no more. Returns whether it was taken back (or
 * closed, when the pool holds more than pool_size): either way it is no
 * longer the client's.
 */
bool px_pool_checkin(px_server_t *s);
/* s is closing: leave the pool (frees a slot for a waiter). */
void px_pool_forget(px_server_t *s);
/* s stays with its client for good: it leaves the pool's accounting. */
void px_pool_pin(px_server_t *s);
/* The client stops waiting (it got a server, or it is closing). */
void px_pool_unwait(px_client_t *c);
/* Janitor: close idle servers past server_idle_timeout_ms, fail waiters past
 * pool_wait_timeout_ms. */
void px_pool_check_timeouts(px_proxy_t *p, uint64_t now_ms);
/* Let waiters of every store try again (after a RELOAD that may raise pool_size). */
void px_pool_wake_all(px_proxy_t *p);
/* Close every idle pooled server (shutdown). */
void px_pool_close_idle(px_proxy_t *p);

/* proxy/admin.c */
/* The migrator answered an admin command of client `cookie`; takes res. */
void px_admin_reply(px_proxy_t *p, void *cookie, struct mig_result *res);
void px_admin_query(px_client_t *c, const char *sql);
void px_admin_pause_done(px_proxy_t *p, bool ok);

/* proxy/http.c */
int px_http_start(px_proxy_t *p, char **err) MUST_CHECK;
void px_http_stop(px_proxy_t *p);

#endif
