/*
 * config/parse.c - the key table, the ini parser, overrides, cross-key
 * validation and the snapshot's lifetime.
 *
 * Every key is one row of `keys[]`: its section, name, type, field, default
 * text, reload class and validator. Defaults exist only there: a snapshot
 * starts as the table's defaults applied through the same setters the file
 * uses, so a default can never bypass a check.
 *
 * This file does no I/O except cfg_load_file() reading the named file, and
 * never logs: every problem comes back as an owned "FILE:LINE: key: reason"
 * string. The snapshot it builds is immutable once published; cfg_set() is
 * for the owner before that (command-line overrides).
 */
#include <ctype.h>
#include <errno.h>
#include <libpq-fe.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config/cfg.h"

/* A string validator: NULL when `v` is acceptable, else a static reason. */
typedef const char *(*cfg_check_fn)(const char *v);

typedef struct cfg_key {
    const char *section;
    const char *name;
    cfg_type_t type;
    size_t off;               /* offsetof(cfg_t, field) */
    const char *def;          /* default, as text in its canonical form */
    cfg_reload_t reload;      /* CFG_RELOAD or CFG_RESTART */
    cfg_check_fn check;       /* string keys: extra validation, or NULL */
    long long min, max;       /* int, size, ms: inclusive range */
    const char *const *names; /* enum keys (and restricted strings): NULL-terminated */
} cfg_key_t;

/* Private bookkeeping of one snapshot (cfg_t.priv). */
typedef struct cfg_priv {
    int *line;        /* per table key: file line that set it, 0 = default or override */
    unsigned derived; /* DERIVED_* bits: fields cfg_validate filled in, to recompute */
} cfg_priv_t;

enum {
    DERIVED_DEFAULT_STORE = CM_BIT(0),
    DERIVED_CONTROL_STORE = CM_BIT(1),
    DERIVED_DATABASE = CM_BIT(2),
};

static const char *const auth_names[] = { "trust", "md5", "scram-sha-256", NULL };
static const char *const tls_names[] = { "disable", "allow", "require", NULL };
static const char *const pool_names[] = { "session", "transaction", NULL };
static const char *const log_names[] = {
    "fatal", "error", "warning", "info", "debug", "noise", NULL
};

_Static_assert(sizeof(cfg_auth_type_t) == sizeof(int), "enum keys are stored as int");
_Static_assert(sizeof(cfg_tls_mode_t) == sizeof(int), "enum keys are stored as int");
_Static_assert(CFG_AUTH_TRUST == 0 && CFG_AUTH_MD5 == 1 && CFG_AUTH_SCRAM == 2,
               "auth_names[] is indexed by cfg_auth_type_t");
_Static_assert(CFG_TLS_DISABLE == 0 && CFG_TLS_ALLOW == 1 && CFG_TLS_REQUIRE == 2,
               "tls_names[] is indexed by cfg_tls_mode_t");
_Static_assert(sizeof(cfg_pool_mode_t) == sizeof(int) && CFG_POOL_SESSION == 0 &&
                   CFG_POOL_TRANSACTION == 1,
               "pool_names[] is indexed by cfg_pool_mode_t");

static const char *check_nonempty(const char *v);
static const char *check_abs_path_or_empty(const char *v);
static const char *check_ident(const char *v);
static const char *check_ident_or_empty(const char *v);
static const char *check_ident_list(const char *v);
static const char *check_table_list(const char *v);

/*
 * Offset of `f`, but only if it has type T: a row whose type does not match
 * its field fails to compile instead of writing the wrong width.
 */
#define OFF(f, T) (offsetof(cfg_t, f) + 0 * sizeof(_Generic(((cfg_t *)0)->f, T : 1)))

#define K_STR(sec, f, def, rl, chk)                                     \
    {                                                                   \
        sec, #f, CFG_T_STRING, OFF(f, char *), def, rl, chk, 0, 0, NULL \
    }
#define K_NAMES(sec, f, def, rl, nm)                                   \
    {                                                                  \
        sec, #f, CFG_T_STRING, OFF(f, char *), def, rl, NULL, 0, 0, nm \
    }
#define K_INT(sec, name, f, def, rl, lo, hi)                           \
    {                                                                  \
        sec, name, CFG_T_INT, OFF(f, int), def, rl, NULL, lo, hi, NULL \
    }
#define K_MS(sec, name, f, def, rl, lo, hi)                           \
    {                                                                 \
        sec, name, CFG_T_MS, OFF(f, int), def, rl, NULL, lo, hi, NULL \
    }
#define K_SIZE(sec, f, def, rl, lo, hi)                                  \
    {                                                                    \
        sec, #f, CFG_T_SIZE, OFF(f, size_t), def, rl, NULL, lo, hi, NULL \
    }
#define K_BOOL(sec, name, f, def, rl)                                  \
    {                                                                  \
        sec, name, CFG_T_BOOL, OFF(f, bool), def, rl, NULL, 0, 0, NULL \
    }
#define K_ENUM(sec, f, T, def, rl, nm)                          \
    {                                                           \
        sec, #f, CFG_T_ENUM, OFF(f, T), def, rl, NULL, 0, 0, nm \
    }

#define KB 1024LL
#define MB (1024LL * 1024)
#define GB (1024LL * 1024 * 1024)

/* The order here is the order of SHOW CONFIG, the sample file and the docs. */
static const cfg_key_t keys[] = {
    K_STR("pgshift", listen_addr, "127.0.0.1", CFG_RESTART, NULL),
    K_INT("pgshift", "listen_port", listen_port, "6432", CFG_RESTART, 1, 65535),
    K_INT("pgshift", "admin_port", admin_port, "6433", CFG_RESTART, 0, 65535),
    K_INT("pgshift", "http_port", http_port, "9930", CFG_RESTART, 0, 65535),
    K_STR("pgshift", unix_socket_dir, "", CFG_RESTART, check_abs_path_or_empty),
    K_ENUM("pgshift", auth_type, cfg_auth_type_t, "scram-sha-256", CFG_RELOAD, auth_names),
    K_STR("pgshift", auth_file, "", CFG_RELOAD, NULL),
    K_STR("pgshift", admin_users, "", CFG_RELOAD, NULL),
    K_STR("pgshift", default_store, "", CFG_RELOAD, check_ident_or_empty),
    K_STR("pgshift", control_store, "", CFG_RESTART, check_ident_or_empty),
    K_STR("pgshift", database, "", CFG_RELOAD, NULL),
    K_BOOL("pgshift", "tenant_from_user", tenant_from_user, "false", CFG_RELOAD),
    K_NAMES("pgshift", log_level, "info", CFG_RELOAD, log_names),
    K_STR("pgshift", pidfile, "", CFG_RESTART, NULL),

    K_INT("pgshift", "max_client_conn", max_client_conn, "10000", CFG_RELOAD, 1, 1000000),
    K_SIZE("pgshift", max_message_len, "64MB", CFG_RELOAD, 1 * KB, 1 * GB),
    K_SIZE("pgshift", pkt_buf_len, "16kB", CFG_RELOAD, 1 * KB, 64 * MB),
    K_SIZE("pgshift", max_buffer_len, "1MB", CFG_RELOAD, 1 * KB, 1 * GB),
    K_MS("pgshift", "client_login_timeout_ms", client_login_timeout_ms, "60000", CFG_RELOAD, 1,
         INT_MAX),
    K_MS("pgshift", "client_idle_timeout_ms", client_idle_timeout_ms, "0", CFG_RELOAD, 0, INT_MAX),
    K_MS("pgshift", "server_connect_timeout_ms", server_connect_timeout_ms, "15000", CFG_RELOAD, 1,
         INT_MAX),
    K_MS("pgshift", "shutdown_timeout_ms", shutdown_timeout_ms, "30000", CFG_RELOAD, 0, INT_MAX),
    K_MS("pgshift", "pause_timeout_ms", pause_timeout_ms, "10000", CFG_RELOAD, 1, INT_MAX),
    K_MS("pgshift", "max_hold_ms", max_hold_ms, "10000", CFG_RELOAD, 100, 600000),
    K_INT("pgshift", "hold_log_size", hold_log_size, "1000", CFG_RELOAD, 0, 1000000),

    K_ENUM("pgshift", pool_mode, cfg_pool_mode_t, "session", CFG_RESTART, pool_names),
    K_INT("pgshift", "pool_size", pool_size, "20", CFG_RELOAD, 1, 100000),
    K_MS("pgshift", "pool_wait_timeout_ms", pool_wait_timeout_ms, "120000", CFG_RELOAD, 0, INT_MAX),
    K_MS("pgshift", "server_idle_timeout_ms", server_idle_timeout_ms, "600000", CFG_RELOAD, 0,
         INT_MAX),

    K_ENUM("pgshift", client_tls_mode, cfg_tls_mode_t, "disable", CFG_RELOAD, tls_names),
    K_STR("pgshift", client_tls_cert_file, "", CFG_RELOAD, NULL),
    K_STR("pgshift", client_tls_key_file, "", CFG_RELOAD, NULL),
    K_STR("pgshift", client_tls_ca_file, "", CFG_RELOAD, NULL),

    /* [stores] sits here: its keys are the store names (see parse_store). */

    /* Which tables hold tenant data is baked into the routing state and caches. */
    K_STR("tenancy", tenant_tables, "events,event_outbox,snapshots,projection_checkpoints",
          CFG_RESTART, check_table_list),
    K_STR("tenancy", tenant_column, "tenant_id", CFG_RESTART, check_ident),
    K_STR("tenancy", key_columns, "aggregate_id", CFG_RESTART, check_ident_list),
    K_STR("tenancy", position_column, "global_position", CFG_RESTART, check_ident),
    K_STR("tenancy", row_key, "event_id", CFG_RESTART, check_ident),
    K_INT("tenancy", "statement_cache_size", statement_cache_size, "4096", CFG_RESTART, 1,
          10000000),
    K_INT("tenancy", "key_map_size", key_map_size, "1000000", CFG_RESTART, 1, 100000000),

    K_INT("migration", "batch_size", mig_batch_size, "1000", CFG_RELOAD, 1, 1000000),
    K_INT("migration", "max_bulk_copy_rate", mig_max_bulk_copy_rate, "10000", CFG_RELOAD, 0,
          INT_MAX),
    K_INT("migration", "dual_write_timeout_minutes", mig_dual_write_timeout_minutes, "30",
          CFG_RELOAD, 1, 10080),
    K_INT("migration", "cutover_max_lag_events", mig_cutover_max_lag_events, "100", CFG_RELOAD, 0,
          INT_MAX),
    K_MS("migration", "cutover_timeout_ms", mig_cutover_timeout_ms, "500", CFG_RELOAD, 1, INT_MAX),
    K_BOOL("migration", "position_mapping_enabled", mig_position_mapping_enabled, "true",
           CFG_RELOAD),
    K_BOOL("migration", "verify_consistency", mig_verify_consistency, "true", CFG_RELOAD),
    K_BOOL("migration", "migrate_subscriptions", mig_migrate_subscriptions, "true", CFG_RELOAD),
    K_BOOL("migration", "auto_cutover", mig_auto_cutover, "false", CFG_RELOAD),
    K_MS("migration", "dual_write_interval_ms", mig_dual_write_interval_ms, "20", CFG_RELOAD, 1,
         10000),
    K_INT("migration", "failure_threshold", mig_failure_threshold, "5", CFG_RELOAD, 1, 1000),
    K_INT("migration", "recovery_timeout_seconds", mig_recovery_timeout_seconds, "30", CFG_RELOAD,
          1, 3600),
    K_INT("migration", "half_open_max_calls", mig_half_open_max_calls, "1", CFG_RELOAD, 1, 100),
};

#define N_KEYS CM_ARRAY_LEN(keys)

/* Section order of SHOW CONFIG; "stores" is not in keys[]. */
static const char *const sections[] = { "pgshift", "stores", "tenancy", "migration" };

/* ---- the table's public face ---------------------------------------- */

size_t cfg_n_keys(void)
{
    return N_KEYS;
}

const char *cfg_key_name(size_t i, const char **section)
{
    BUG_ON(i >= N_KEYS, "key index %zu", i);
    if (section != NULL)
        *section = keys[i].section;
    return keys[i].name;
}

const char *cfg_key_default(size_t i)
{
    BUG_ON(i >= N_KEYS, "key index %zu", i);
    return keys[i].def;
}

cfg_type_t cfg_key_type(size_t i)
{
    BUG_ON(i >= N_KEYS, "key index %zu", i);
    return keys[i].type;
}

cfg_reload_t cfg_key_reload(size_t i)
{
    BUG_ON(i >= N_KEYS, "key index %zu", i);
    return keys[i].reload;
}

/* ---- validators --------------------------------------------------------- */

static bool is_ident(const char *s, size_t n)
{
    if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
            return false;
    return true;
}

static const char *check_nonempty(const char *v)
{
    return *v == '\0' ? "must not be empty" : NULL;
}

static const char *check_abs_path_or_empty(const char *v)
{
    return *v == '\0' || *v == '/' ? NULL : "must be an absolute path or empty";
}

static const char *check_ident(const char *v)
{
    return is_ident(v, strlen(v)) ? NULL : "must be an identifier [A-Za-z_][A-Za-z0-9_]*";
}

static const char *check_ident_or_empty(const char *v)
{
    return *v == '\0' ? NULL : check_ident(v);
}

/*
 * A comma-separated list of identifiers (spaces around commas allowed); with
 * `qualified`, each item may be schema.name.
 */
static const char *check_list(const char *v, bool qualified)
{
    const char *p = v;

    if (check_nonempty(v) != NULL)
        return "must not be empty";
    for (;;) {
        size_t n;
        const char *dot;

        while (*p == ' ')
            p++;
        n = strcspn(p, ", ");
        dot = qualified ? memchr(p, '.', n) : NULL;
        if (dot != NULL
                ? !(is_ident(p, (size_t)(dot - p)) && is_ident(dot + 1, n - (size_t)(dot + 1 - p)))
                : !is_ident(p, n))
            return qualified ? "must be a comma-separated list of [schema.]table names"
                             : "must be a comma-separated list of identifiers";
        p += n;
        while (*p == ' ')
            p++;
        if (*p == '\0')
            return NULL;
        if (*p != ',')
            return qualified ? "must be a comma-separated list of [schema.]table names"
                             : "must be a comma-separated list of identifiers";
        p++;
    }
}

static const char *check_ident_list(const char *v)
{
    return check_list(v, false);
}

static const char *check_table_list(const char *v)
{
    return check_list(v, true);
}

/* ---- value parsing ---------------------------------------------------- */

static char *join_names(const char *const *names)
{
    cm_buf_t b = { 0 };
    char *s;

    for (size_t i = 0; names[i] != NULL; i++) {
        if (i > 0)
            cm_buf_append(&b, ", ", 2);
        cm_buf_append(&b, names[i], strlen(names[i]));
    }
    s = cm_xstrndup((const char *)b.data, b.len);
    cm_buf_free(&b);
    return s;
}

/* Decimal digits with an optional sign; the unparsed suffix goes to *end. */
static bool parse_ll(const char *v, long long *out, const char **end)
{
    char *e;

    if (!(isdigit((unsigned char)v[0]) ||
          ((v[0] == '-' || v[0] == '+') && isdigit((unsigned char)v[1]))))
        return false;
    errno = 0;
    *out = strtoll(v, &e, 10);
    if (errno == ERANGE)
        *out = v[0] == '-' ? LLONG_MIN : LLONG_MAX; /* caught by every range check */
    *end = e;
    return true;
}

/* A unit suffix after a number: spaces, then one of `units` (case-insensitive). */
static bool parse_unit(const char *s, const char *const *units, const long long *mult, long long *m)
{
    while (*s == ' ')
        s++;
    if (*s == '\0') {
        *m = 1;
        return true;
    }
    for (size_t i = 0; units[i] != NULL; i++) {
        if (strcasecmp(s, units[i]) == 0) {
            *m = mult[i];
            return true;
        }
    }
    return false;
}

static const char *const size_units[] = { "B", "kB", "MB", "GB", "k", "M", "G", NULL };
static const long long size_mult[] = { 1, KB, MB, GB, KB, MB, GB };
static const char *const ms_units[] = { "ms", "s", "min", "h", NULL };
static const long long ms_mult[] = { 1, 1000, 60000, 3600000 };

/* Range text for messages, with sizes in their natural unit. */
static char *range_text(const cfg_key_t *k)
{
    if (k->type == CFG_T_SIZE) {
        char lo[32], hi[32];
        const long long v[2] = { k->min, k->max };
        char *out[2] = { lo, hi };

        for (int i = 0; i < 2; i++) {
            if (v[i] % GB == 0)
                snprintf(out[i], 32, "%lldGB", v[i] / GB);
            else if (v[i] % MB == 0)
                snprintf(out[i], 32, "%lldMB", v[i] / MB);
            else if (v[i] % KB == 0)
                snprintf(out[i], 32, "%lldkB", v[i] / KB);
            else
                snprintf(out[i], 32, "%lld", v[i]);
        }
        return cm_xasprintf("%s..%s", lo, hi);
    }
    return cm_xasprintf("%lld..%lld", k->min, k->max);
}

/*
 * Parses `v` for key `k` and stores it into c's field, replacing (and freeing)
 * the old value. Returns 0, or -1 with *reason owned (free()) and c unchanged.
 */
static int key_set(cfg_t *c, const cfg_key_t *k, const char *v, char **reason)
{
    void *field = (char *)c + k->off;
    long long n, m;
    const char *end;

    switch (k->type) {
    case CFG_T_STRING: {
        const char *canon = v;

        if (k->names != NULL) {
            size_t i;

            for (i = 0; k->names[i] != NULL; i++)
                if (strcasecmp(v, k->names[i]) == 0)
                    break;
            if (k->names[i] == NULL) {
                char *all = join_names(k->names);

                *reason = cm_xasprintf("\"%s\" is not one of %s", v, all);
                free(all);
                return -1;
            }
            canon = k->names[i];
        }
        if (k->check != NULL && (end = k->check(canon)) != NULL) {
            *reason = cm_xasprintf("\"%s\": %s", v, end);
            return -1;
        }
        free(*(char **)field);
        *(char **)field = cm_xstrdup(canon);
        return 0;
    }
    case CFG_T_ENUM:
        for (int i = 0; k->names[i] != NULL; i++) {
            if (strcasecmp(v, k->names[i]) == 0) {
                *(int *)field = i;
                return 0;
            }
        }
        {
            char *all = join_names(k->names);

            *reason = cm_xasprintf("\"%s\" is not one of %s", v, all);
            free(all);
        }
        return -1;
    case CFG_T_BOOL: {
        static const char *const yes[] = { "true", "on", "yes", "1" };
        static const char *const no[] = { "false", "off", "no", "0" };

        for (size_t i = 0; i < CM_ARRAY_LEN(yes); i++) {
            if (strcasecmp(v, yes[i]) == 0) {
                *(bool *)field = true;
                return 0;
            }
            if (strcasecmp(v, no[i]) == 0) {
                *(bool *)field = false;
                return 0;
            }
        }
        *reason = cm_xasprintf("\"%s\" is not a boolean (true/false/on/off/yes/no/1/0)", v);
        return -1;
    }
    case CFG_T_INT:
        if (!parse_ll(v, &n, &end) || *end != '\0') {
            *reason = cm_xasprintf("\"%s\" is not an integer", v);
            return -1;
        }
        m = 1;
        break;
    case CFG_T_MS:
        if (!parse_ll(v, &n, &end) || !parse_unit(end, ms_units, ms_mult, &m)) {
            *reason = cm_xasprintf("\"%s\" is not a duration (milliseconds, or ms/s/min/h)", v);
            return -1;
        }
        break;
    case CFG_T_SIZE:
        if (!parse_ll(v, &n, &end) || !parse_unit(end, size_units, size_mult, &m)) {
            *reason = cm_xasprintf("\"%s\" is not a size (bytes, or kB/MB/GB)", v);
            return -1;
        }
        break;
    default:
        BUG_ON(1, "key %s: bad type %d", k->name, (int)k->type);
    }

    /* Numeric keys: scale by the unit without overflow, then range-check. */
    if (n > 0 && n > LLONG_MAX / m)
        n = LLONG_MAX;
    else if (n < 0 && n < LLONG_MIN / m)
        n = LLONG_MIN;
    else
        n *= m;
    if (n < k->min || n > k->max) {
        char *r = range_text(k);

        *reason = cm_xasprintf("%s is out of range %s", v, r);
        free(r);
        return -1;
    }
    if (k->type == CFG_T_SIZE)
        *(size_t *)field = (size_t)n;
    else
        *(int *)field = (int)n;
    return 0;
}

/* Current value of key k in c, as text in the same form as the table's defaults. Owned. */
static char *key_text(const cfg_t *c, const cfg_key_t *k)
{
    const void *field = (const char *)c + k->off;

    switch (k->type) {
    case CFG_T_STRING: {
        const char *s = *(char *const *)field;

        return cm_xstrdup(s != NULL ? s : "");
    }
    case CFG_T_ENUM: {
        int v = *(const int *)field;

        for (int i = 0; k->names[i] != NULL; i++)
            if (i == v)
                return cm_xstrdup(k->names[i]);
        return cm_xasprintf("%d", v);
    }
    case CFG_T_BOOL:
        return cm_xstrdup(*(const bool *)field ? "true" : "false");
    case CFG_T_INT:
    case CFG_T_MS:
        return cm_xasprintf("%d", *(const int *)field);
    case CFG_T_SIZE: {
        size_t v = *(const size_t *)field;

        if (v != 0 && v % (size_t)GB == 0)
            return cm_xasprintf("%zuGB", v / (size_t)GB);
        if (v != 0 && v % (size_t)MB == 0)
            return cm_xasprintf("%zuMB", v / (size_t)MB);
        if (v != 0 && v % (size_t)KB == 0)
            return cm_xasprintf("%zukB", v / (size_t)KB);
        return cm_xasprintf("%zu", v);
    }
    default:
        BUG_ON(1, "key %s: bad type %d", k->name, (int)k->type);
    }
    return NULL;
}

static const cfg_key_t *key_find(const char *section, const char *name, size_t *idx)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0) {
            if (idx != NULL)
                *idx = i;
            return &keys[i];
        }
    }
    return NULL;
}

static size_t key_index(const char *name)
{
    size_t i;

    BUG_ON(key_find("pgshift", name, &i) == NULL, "no key %s", name);
    return i;
}

/* ---- snapshot lifetime ------------------------------------------------ */

/* A snapshot holding the table's defaults and no store. Returns owned (cfg_unref). */
static cfg_t *cfg_alloc_defaults(void)
{
    cfg_t *c = cm_xcalloc(1, sizeof(*c));

    c->refcount = 1;
    c->path = cm_xstrdup("");
    c->priv = cm_xcalloc(1, sizeof(*c->priv));
    c->priv->line = cm_xcalloc(N_KEYS, sizeof(int));
    for (size_t i = 0; i < N_KEYS; i++) {
        char *reason = NULL;

        if (key_set(c, &keys[i], keys[i].def, &reason) != 0)
            BUG_ON(1, "default of %s: %s", keys[i].name, reason);
    }
    return c;
}

cfg_t *cfg_ref(cfg_t *c)
{
    BUG_ON(c->refcount <= 0, "cfg_ref on a freed snapshot");
    c->refcount++;
    return c;
}

void cfg_unref(cfg_t *c)
{
    if (c == NULL)
        return;
    BUG_ON(c->refcount <= 0, "cfg_unref on a freed snapshot");
    if (--c->refcount > 0)
        return;
    for (size_t i = 0; i < N_KEYS; i++)
        if (keys[i].type == CFG_T_STRING)
            free(*(char **)((char *)c + keys[i].off));
    for (size_t i = 0; i < c->n_stores; i++) {
        free(c->stores[i].name);
        free(c->stores[i].conninfo);
    }
    free(c->stores);
    if (c->priv != NULL) {
        free(c->priv->line);
        free(c->priv);
    }
    free(c->path);
    free(c);
}

/* ---- stores ------------------------------------------------------------ */

const cfg_store_t *cfg_store_find(const cfg_t *c, const char *name)
{
    for (size_t i = 0; i < c->n_stores; i++)
        if (strcmp(c->stores[i].name, name) == 0)
            return &c->stores[i];
    return NULL;
}

/* Checks a conninfo with libpq. NULL when fine, else an owned reason. */
static char *conninfo_problem(const char *conninfo)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &errmsg);
    char *reason = NULL;

    if (opts == NULL) {
        size_t n;

        if (errmsg == NULL)
            return cm_xstrdup("cannot parse connection string (out of memory)");
        n = strlen(errmsg);
        while (n > 0 && (errmsg[n - 1] == '\n' || errmsg[n - 1] == ' '))
            n--;
        reason = cm_xasprintf("bad connection string: %.*s", (int)n, errmsg);
        PQfreemem(errmsg);
        return reason;
    }
    PQconninfoFree(opts);
    return NULL;
}

/*
 * Adds store `name` or replaces its conninfo (replace=true, for overrides).
 * Returns 0, or -1 with *reason owned.
 */
static int store_set(cfg_t *c, const char *name, const char *conninfo, bool replace, char **reason)
{
    cfg_store_t *s;

    if (!is_ident(name, strlen(name))) {
        *reason = cm_xstrdup("store names must be identifiers [A-Za-z_][A-Za-z0-9_]*");
        return -1;
    }
    if ((*reason = conninfo_problem(conninfo)) != NULL)
        return -1;
    s = (cfg_store_t *)cfg_store_find(c, name);
    if (s != NULL) {
        BUG_ON(!replace, "duplicate store %s not caught", name);
        free(s->conninfo);
        s->conninfo = cm_xstrdup(conninfo);
        return 0;
    }
    c->stores = cm_xrealloc(c->stores, (c->n_stores + 1) * sizeof(*c->stores));
    s = &c->stores[c->n_stores++];
    s->name = cm_xstrdup(name);
    s->conninfo = cm_xstrdup(conninfo);
    return 0;
}

/*
 * The database a conninfo connects to, following libpq: dbname, else the
 * user name, else "postgres". Environment defaults (PGDATABASE, PGUSER, the
 * OS user) are deliberately ignored so a config means the same everywhere.
 * Returns owned.
 */
static char *conninfo_dbname(const char *conninfo)
{
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    const char *db = NULL, *user = NULL;
    char *ret;

    if (opts == NULL)
        return cm_xstrdup("postgres");
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (o->val == NULL || o->val[0] == '\0')
            continue;
        if (strcmp(o->keyword, "dbname") == 0)
            db = o->val;
        else if (strcmp(o->keyword, "user") == 0)
            user = o->val;
    }
    /* A dbname that is itself a connection string: take the dbname inside it. */
    if (db != NULL && (strchr(db, '=') != NULL || strncmp(db, "postgres://", 11) == 0 ||
                       strncmp(db, "postgresql://", 13) == 0)) {
        char *inner = conninfo_dbname(db);

        PQconninfoFree(opts);
        return inner;
    }
    ret = cm_xstrdup(db != NULL ? db : user != NULL ? user : "postgres");
    PQconninfoFree(opts);
    return ret;
}

/* ---- validation -------------------------------------------------------- */

static const char *src_name(const cfg_t *c)
{
    return c->path != NULL && c->path[0] != '\0' ? c->path : "(config)";
}

/* "FILE:LINE: key: reason", or "FILE: key: reason" when the key did not come from the file. */
static char *key_error(const cfg_t *c, const char *key, const char *reason)
{
    size_t i;
    int line = 0;

    if (c->priv != NULL && key_find("pgshift", key, &i) != NULL)
        line = c->priv->line[i];
    if (line > 0)
        return cm_xasprintf("%s:%d: %s: %s", src_name(c), line, key, reason);
    return cm_xasprintf("%s: %s: %s", src_name(c), key, reason);
}

static void set_string(char **field, const char *v)
{
    char *old = *field;

    *field = cm_xstrdup(v);
    free(old);
}

int cfg_validate(cfg_t *c, char **err)
{
    unsigned derived = c->priv != NULL ? c->priv->derived : 0;
    const cfg_store_t *def;

    if (c->n_stores == 0) {
        *err = cm_xasprintf("%s: stores: at least one store is required in [stores]", src_name(c));
        return -1;
    }

    /* "" (or a value we derived before an override changed its source) means: derive. */
    if (c->default_store[0] == '\0' || (derived & DERIVED_DEFAULT_STORE)) {
        set_string(&c->default_store, c->stores[0].name);
        derived |= DERIVED_DEFAULT_STORE;
    }
    def = cfg_store_find(c, c->default_store);
    if (def == NULL) {
        char *r = cm_xasprintf("no store named \"%s\" in [stores]", c->default_store);

        *err = key_error(c, "default_store", r);
        free(r);
        return -1;
    }
    if (c->control_store[0] == '\0' || (derived & DERIVED_CONTROL_STORE)) {
        set_string(&c->control_store, c->default_store);
        derived |= DERIVED_CONTROL_STORE;
    }
    if (cfg_store_find(c, c->control_store) == NULL) {
        char *r = cm_xasprintf("no store named \"%s\" in [stores]", c->control_store);

        *err = key_error(c, "control_store", r);
        free(r);
        return -1;
    }
    if (c->database[0] == '\0' || (derived & DERIVED_DATABASE)) {
        char *db = conninfo_dbname(def->conninfo);

        free(c->database);
        c->database = db;
        derived |= DERIVED_DATABASE;
    }
    if (c->priv != NULL)
        c->priv->derived = derived;

    if (c->listen_addr[0] == '\0' && c->unix_socket_dir[0] == '\0') {
        *err = key_error(c, "listen_addr", "empty, and no unix_socket_dir: nothing to listen on");
        return -1;
    }
    if (c->admin_port != 0 && c->admin_port == c->listen_port) {
        *err = key_error(c, "admin_port", "same as listen_port");
        return -1;
    }
    if (c->http_port != 0 && (c->http_port == c->listen_port || c->http_port == c->admin_port)) {
        *err = key_error(c, "http_port", "same as listen_port or admin_port");
        return -1;
    }
    if (c->auth_type != CFG_AUTH_TRUST && c->auth_file[0] == '\0') {
        *err = key_error(c, "auth_file", "required unless auth_type = trust");
        return -1;
    }
    if (c->client_tls_mode != CFG_TLS_DISABLE) {
        if (c->client_tls_cert_file[0] == '\0') {
            *err = key_error(c, "client_tls_cert_file",
                             "required when client_tls_mode is allow or require");
            return -1;
        }
        if (c->client_tls_key_file[0] == '\0') {
            *err = key_error(c, "client_tls_key_file",
                             "required when client_tls_mode is allow or require");
            return -1;
        }
    }
    return 0;
}

/* ---- the ini parser ---------------------------------------------------- */

static char *trim(char *s)
{
    char *e;

    while (*s == ' ' || *s == '\t')
        s++;
    e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
        e--;
    *e = '\0';
    return s;
}

/*
 * Removes the double quotes around a value in place: inside them \" and \\
 * stand for " and \. Returns the reason when the quotes are malformed.
 */
static const char *unquote(char *v)
{
    char *r, *w;

    if (v[0] != '"')
        return NULL;
    for (r = v + 1, w = v; *r != '\0' && *r != '"'; r++) {
        if (*r == '\\' && (r[1] == '"' || r[1] == '\\'))
            r++;
        *w++ = *r;
    }
    if (*r != '"')
        return "unterminated quoted value";
    if (r[1] != '\0')
        return "text after the closing quote";
    *w = '\0';
    return NULL;
}

static bool section_known(const char *s)
{
    for (size_t i = 0; i < CM_ARRAY_LEN(sections); i++)
        if (strcmp(sections[i], s) == 0)
            return true;
    return false;
}

int cfg_parse_text(const char *text, const char *path, cfg_t **out, char **err)
{
    cfg_t *c = cfg_alloc_defaults();
    char *copy = cm_xstrdup(text);
    char *section = NULL, *next;
    int *store_line = NULL;
    int lineno = 0;

    free(c->path);
    c->path = cm_xstrdup(path != NULL ? path : "");
    for (char *line = copy; line != NULL; line = next) {
        char *eq, *key, *val, *reason = NULL;
        const char *why;
        size_t idx;

        next = strchr(line, '\n');
        if (next != NULL)
            *next++ = '\0';
        lineno++;
        line = trim(line);
        if (line[0] == '\0' || line[0] == ';' || line[0] == '#')
            continue;
        if (line[0] == '[') {
            char *end = strchr(line, ']');

            if (end == NULL || end[1] != '\0') {
                *err =
                    cm_xasprintf("%s:%d: %s: malformed section header", src_name(c), lineno, line);
                goto fail;
            }
            *end = '\0';
            section = trim(line + 1);
            if (!section_known(section)) {
                *err = cm_xasprintf("%s:%d: [%s]: unknown section", src_name(c), lineno, section);
                goto fail;
            }
            continue;
        }
        eq = strchr(line, '=');
        if (eq == NULL) {
            *err = cm_xasprintf("%s:%d: %s: missing '='", src_name(c), lineno, line);
            goto fail;
        }
        *eq = '\0';
        key = trim(line);
        val = trim(eq + 1);
        if (key[0] == '\0') {
            *err = cm_xasprintf("%s:%d: (empty): missing key before '='", src_name(c), lineno);
            goto fail;
        }
        if (section == NULL) {
            *err = cm_xasprintf("%s:%d: %s: key before any [section]", src_name(c), lineno, key);
            goto fail;
        }
        if ((why = unquote(val)) != NULL) {
            *err = cm_xasprintf("%s:%d: %s: %s", src_name(c), lineno, key, why);
            goto fail;
        }

        if (strcmp(section, "stores") == 0) {
            const cfg_store_t *dup = cfg_store_find(c, key);

            if (dup != NULL) {
                *err = cm_xasprintf("%s:%d: %s: duplicate key (first set on line %d)", src_name(c),
                                    lineno, key, store_line[dup - c->stores]);
                goto fail;
            }
            if (store_set(c, key, val, false, &reason) != 0) {
                *err = cm_xasprintf("%s:%d: %s: %s", src_name(c), lineno, key, reason);
                free(reason);
                goto fail;
            }
            store_line = cm_xrealloc(store_line, c->n_stores * sizeof(int));
            store_line[c->n_stores - 1] = lineno;
            continue;
        }
        if (key_find(section, key, &idx) == NULL) {
            *err =
                cm_xasprintf("%s:%d: %s: unknown key in [%s]", src_name(c), lineno, key, section);
            goto fail;
        }
        if (c->priv->line[idx] != 0) {
            *err = cm_xasprintf("%s:%d: %s: duplicate key (first set on line %d)", src_name(c),
                                lineno, key, c->priv->line[idx]);
            goto fail;
        }
        if (key_set(c, &keys[idx], val, &reason) != 0) {
            *err = cm_xasprintf("%s:%d: %s: %s", src_name(c), lineno, key, reason);
            free(reason);
            goto fail;
        }
        c->priv->line[idx] = lineno;
    }
    if (cfg_validate(c, err) != 0)
        goto fail;
    free(store_line);
    free(copy);
    *out = c;
    return 0;

fail:
    free(store_line);
    free(copy);
    cfg_unref(c);
    return -1;
}

int cfg_load_file(const char *path, cfg_t **out, char **err)
{
    FILE *f = fopen(path, "rb");
    cm_buf_t b = { 0 };
    char chunk[8192];
    size_t n;
    int rc;

    if (f == NULL) {
        *err = cm_xasprintf("%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        cm_buf_append(&b, chunk, n);
    if (ferror(f)) {
        *err = cm_xasprintf("%s: cannot read: %s", path, strerror(errno));
        fclose(f);
        cm_buf_free(&b);
        return -1;
    }
    fclose(f);
    if (memchr(b.data, '\0', b.len) != NULL) {
        *err = cm_xasprintf("%s: contains a NUL byte", path);
        cm_buf_free(&b);
        return -1;
    }
    cm_buf_append_u8(&b, 0);
    rc = cfg_parse_text((const char *)b.data, path, out, err);
    cm_buf_free(&b);
    return rc;
}

cfg_t *cfg_new_default(void)
{
    cfg_t *c = cfg_alloc_defaults();
    char *err = NULL, *reason = NULL;

    /* The default auth_type needs an auth_file; a file-less snapshot can only trust. */
    c->auth_type = CFG_AUTH_TRUST;
    if (store_set(c, "main", "host=127.0.0.1 port=5432 dbname=postgres", false, &reason) != 0)
        BUG_ON(1, "default store: %s", reason);
    if (cfg_validate(c, &err) != 0)
        BUG_ON(1, "default config: %s", err);
    return c;
}

/* ---- overrides ----------------------------------------------------------- */

int cfg_set(cfg_t *c, const char *key, const char *value, char **err)
{
    const char *dot = strchr(key, '.');
    const cfg_key_t *k = NULL;
    char *reason = NULL;
    size_t idx = 0;

    if (dot != NULL) {
        char *section = cm_xstrndup(key, (size_t)(dot - key));

        if (strcmp(section, "stores") == 0) {
            free(section);
            if (store_set(c, dot + 1, value, true, &reason) != 0) {
                *err = cm_xasprintf("override: %s: %s", key, reason);
                free(reason);
                return -1;
            }
            return 0;
        }
        if (!section_known(section)) {
            *err = cm_xasprintf("override: %s: unknown section [%s]", key, section);
            free(section);
            return -1;
        }
        k = key_find(section, dot + 1, &idx);
        free(section);
    } else {
        /* Bare names: [pgshift] first, then the other sections in table order. */
        k = key_find("pgshift", key, &idx);
        for (size_t i = 0; k == NULL && i < N_KEYS; i++) {
            if (strcmp(keys[i].name, key) == 0) {
                k = &keys[i];
                idx = i;
            }
        }
    }
    if (k == NULL) {
        *err = cm_xasprintf("override: %s: unknown key", key);
        return -1;
    }
    if (key_set(c, k, value, &reason) != 0) {
        *err = cm_xasprintf("override: %s: %s", key, reason);
        free(reason);
        return -1;
    }
    if (c->priv != NULL) {
        c->priv->line[idx] = 0;
        if (idx == key_index("default_store"))
            c->priv->derived &= ~(unsigned)DERIVED_DEFAULT_STORE;
        else if (idx == key_index("control_store"))
            c->priv->derived &= ~(unsigned)DERIVED_CONTROL_STORE;
        else if (idx == key_index("database"))
            c->priv->derived &= ~(unsigned)DERIVED_DATABASE;
    }
    return 0;
}

/* ---- comparisons and listing ------------------------------------------ */

const char *cfg_restart_needed(const cfg_t *a, const cfg_t *b)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        char *ta, *tb;
        bool same;

        if (keys[i].reload != CFG_RESTART)
            continue;
        ta = key_text(a, &keys[i]);
        tb = key_text(b, &keys[i]);
        same = strcmp(ta, tb) == 0;
        free(ta);
        free(tb);
        if (!same)
            return keys[i].name;
    }
    return NULL;
}

void cfg_each(const cfg_t *c, cfg_each_cb cb, void *arg)
{
    for (size_t s = 0; s < CM_ARRAY_LEN(sections); s++) {
        if (strcmp(sections[s], "stores") == 0) {
            for (size_t i = 0; i < c->n_stores; i++) {
                char *masked = cfg_conninfo_mask(c->stores[i].conninfo);

                cb(arg, "stores", c->stores[i].name, masked, "", true);
                free(masked);
            }
            continue;
        }
        for (size_t i = 0; i < N_KEYS; i++) {
            char *v;

            if (strcmp(keys[i].section, sections[s]) != 0)
                continue;
            v = key_text(c, &keys[i]);
            cb(arg, keys[i].section, keys[i].name, v, keys[i].def, keys[i].reload == CFG_RELOAD);
            free(v);
        }
    }
}

bool cfg_is_admin(const cfg_t *c, const char *user)
{
    const char *p = c->admin_users;
    size_t ulen = strlen(user);

    if (p == NULL || ulen == 0)
        return false;
    while (*p != '\0') {
        size_t n;

        p += strspn(p, ", \t");
        n = strcspn(p, ", \t");
        if (n == ulen && strncmp(p, user, n) == 0)
            return true;
        p += n;
    }
    return false;
}
