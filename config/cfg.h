/*
 * config/cfg.h - the configuration: one ini file parsed into an immutable,
 * reference-counted snapshot. Reload builds and validates a whole new
 * snapshot, then the loop swaps it in.
 *
 * Every key is one row of the table in config/parse.c (name, type, field,
 * default, reload class, validator). Defaults live only there.
 */
#ifndef PGSHIFT_CFG_H
#define PGSHIFT_CFG_H

#include <stdbool.h>
#include <stddef.h>

#include "common/cm.h"

typedef enum cfg_auth_type {
    CFG_AUTH_TRUST,
    CFG_AUTH_MD5,
    CFG_AUTH_SCRAM, /* scram-sha-256 */
} cfg_auth_type_t;

typedef enum cfg_tls_mode {
    CFG_TLS_DISABLE, /* refuse SSLRequest ('N') */
    CFG_TLS_ALLOW,   /* accept TLS when the client asks */
    CFG_TLS_REQUIRE, /* refuse clients that do not use TLS */
} cfg_tls_mode_t;

typedef enum cfg_pool_mode {
    CFG_POOL_SESSION,     /* a client keeps its server connections for its session */
    CFG_POOL_TRANSACTION, /* server connections return to the store's pool between transactions */
} cfg_pool_mode_t;

typedef struct cfg_store {
    char *name;     /* the key in [stores] */
    char *conninfo; /* libpq connection string, as written */
} cfg_store_t;

typedef struct cfg {
    int refcount; /* loop thread and migrator threads hold references */
    char *path;   /* file it came from, "" when parsed from text */

    /* [pgshift] */
    char *listen_addr;         /* "127.0.0.1"; comma-separated list allowed */
    int listen_port;           /* 6432 */
    int admin_port;            /* 6433; 0 = off */
    int http_port;             /* 9930; 0 = off */
    char *unix_socket_dir;     /* "" = no unix socket */
    cfg_auth_type_t auth_type; /* scram-sha-256 */
    char *auth_file;           /* "" = none (only trust works) */
    char *admin_users;         /* comma-separated user names */
    char *default_store;       /* "" = the first store in [stores] */
    char *control_store;       /* "" = the default store */
    char *database;            /* "" = the default store's dbname */
    bool tenant_from_user;     /* user names "user.tenant" carry the tenant */
    char *log_level;           /* info */
    char *pidfile;             /* "" = none */

    /* limits */
    int max_client_conn;           /* 10000 */
    size_t max_message_len;        /* 67108864: largest message body accepted */
    size_t pkt_buf_len;            /* 16384: per-connection read buffer */
    size_t max_buffer_len;         /* 1048576: pending output per connection before backpressure */
    int client_login_timeout_ms;   /* 60000 */
    int client_idle_timeout_ms;    /* 0 = off */
    int server_connect_timeout_ms; /* 15000 */
    int shutdown_timeout_ms;       /* 30000: SIGTERM drain budget */
    int pause_timeout_ms;          /* 10000: default PAUSE wait on the admin console */
    int max_hold_ms;               /* 10000: longest a statement is held at a cutover */
    int hold_log_size;             /* 1000: ended cutover holds kept for SHOW HOLDS */

    /* server connection pooling */
    cfg_pool_mode_t pool_mode;  /* session */
    int pool_size;              /* 20: pooled server connections per store (transaction mode) */
    int pool_wait_timeout_ms;   /* 120000: longest a client waits for a pooled server; 0 = off */
    int server_idle_timeout_ms; /* 600000: close pooled servers idle longer; 0 = never */

    /* TLS towards clients */
    cfg_tls_mode_t client_tls_mode; /* disable */
    char *client_tls_cert_file;
    char *client_tls_key_file;
    char *client_tls_ca_file;

    /* [stores] */
    size_t n_stores;
    cfg_store_t *stores;

    /* [tenancy] */
    char *tenant_tables;      /* "events,event_outbox,snapshots,projection_checkpoints" */
    char *tenant_column;      /* "tenant_id" */
    char *key_columns;        /* "aggregate_id" */
    char *position_column;    /* "global_position" */
    char *row_key;            /* "event_id" */
    int statement_cache_size; /* 4096: classified query texts kept (LRU) */
    int key_map_size;         /* 1000000: learned key -> tenant entries (aggregate_id) */

    /* [migration] defaults for MIGRATE ... WITH (...) */
    int mig_batch_size;                 /* 1000 */
    int mig_max_bulk_copy_rate;         /* 10000 events/s, 0 = unlimited */
    int mig_dual_write_timeout_minutes; /* 30 */
    int mig_cutover_max_lag_events;     /* 100 */
    int mig_cutover_timeout_ms;         /* 500 */
    bool mig_position_mapping_enabled;  /* true */
    bool mig_verify_consistency;        /* true */
    bool mig_migrate_subscriptions;     /* true */
    bool mig_auto_cutover;              /* false */
    int mig_dual_write_interval_ms;     /* 20 */
    int mig_failure_threshold;          /* 5 */
    int mig_recovery_timeout_seconds;   /* 30 */
    int mig_half_open_max_calls;        /* 1 */

    struct cfg_priv *priv; /* config/ only: key lines, derived defaults; NULL is valid */
} cfg_t;

/* Reload class of a key: a reload applies it, or it waits for a restart. */
typedef enum cfg_reload {
    CFG_RELOAD,  /* a RELOAD applies the new value */
    CFG_RESTART, /* logged and ignored by RELOAD until the next start */
} cfg_reload_t;

/* Value type of a key, as the table in config/parse.c parses it. */
typedef enum cfg_type {
    CFG_T_STRING, /* text; some keys restrict it to a list of names */
    CFG_T_INT,    /* decimal integer within the key's range */
    CFG_T_SIZE,   /* bytes, optionally with a kB/MB/GB suffix (1024-based) */
    CFG_T_BOOL,   /* true/false/on/off/yes/no/1/0 */
    CFG_T_ENUM,   /* one name of a fixed list, stored as an enum */
    CFG_T_MS,     /* milliseconds, optionally with a ms/s/min/h suffix */
} cfg_type_t;

/*
 * Parse ini text. `path` only names the source in errors. On success returns
 * 0 and *out is a new snapshot with refcount 1 (free with cfg_unref), already
 * passed through cfg_validate (so derived defaults are filled in). On
 * failure returns -1, *out is untouched, and *err is an owned message of the
 * form "FILE:LINE: key: reason" (free()).
 */
int cfg_parse_text(const char *text, const char *path, cfg_t **out, char **err) MUST_CHECK;
/* Read the file and parse it; same contract. */
int cfg_load_file(const char *path, cfg_t **out, char **err) MUST_CHECK;
/* Defaults only, plus one store; used by tests and the demo. */
cfg_t *cfg_new_default(void);

/*
 * Apply a command-line override "key=value" (section optional:
 * "pgshift.listen_port=7000" or "listen_port=7000"). Returns 0 or -1 with *err.
 * A bare key is looked up in [pgshift] first, then [tenancy], [migration];
 * "stores.NAME" adds or replaces a store. Only on a snapshot nobody else holds
 * yet; call cfg_validate after the last override. On error c is unchanged.
 */
int cfg_set(cfg_t *c, const char *key, const char *value, char **err) MUST_CHECK;
/*
 * Cross-key validation after overrides (default store exists, ...). Also
 * (re)computes the derived defaults: default_store, control_store and
 * database that were "" or derived before follow their source again.
 */
int cfg_validate(cfg_t *c, char **err) MUST_CHECK;

cfg_t *cfg_ref(cfg_t *c);
void cfg_unref(cfg_t *c);

const cfg_store_t *cfg_store_find(const cfg_t *c, const char *name);
/* Names a key that differs between a and b and needs a restart, or NULL. Static string. */
const char *cfg_restart_needed(const cfg_t *a, const cfg_t *b);

/* Iterate over every key as "section", "name", current value text (for SHOW CONFIG). */
typedef void (*cfg_each_cb)(void *arg, const char *section, const char *name, const char *value,
                            const char *default_value, bool reloadable);
void cfg_each(const cfg_t *c, cfg_each_cb cb, void *arg);

/* True when `user` is listed in admin_users. */
bool cfg_is_admin(const cfg_t *c, const char *user);

/*
 * The key table, for tests, docs checks and SHOW CONFIG. Keys are numbered
 * 0..cfg_n_keys()-1 in table order; [stores] entries are not table keys.
 * Returned strings are static.
 */
size_t cfg_n_keys(void);
const char *cfg_key_name(size_t i, const char **section);
const char *cfg_key_default(size_t i); /* default text, e.g. "64MB", "" */
cfg_type_t cfg_key_type(size_t i);
cfg_reload_t cfg_key_reload(size_t i);

/*
 * Copy of a libpq connection string (key=value or URI form) with every
 * password value replaced by "***". Returns owned (free()).
 */
char *cfg_conninfo_mask(const char *conninfo);

#endif
