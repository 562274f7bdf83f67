/*
 * migrator/cmd.c - the admin command parser (mig_cmd_parse) and the
 * per-migration settings: defaults, WITH (key = value) validation, and their
 * JSON form in the migration record. No I/O.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "migrator/migrator_int.h"

/* ---- settings ---------------------------------------------------------------- */

void mig_settings_default(mig_settings_t *s)
{
    s->batch_size = 1000;
    s->max_bulk_copy_rate = 10000;
    s->dual_write_timeout_minutes = 30;
    s->cutover_max_lag_events = 100;
    s->cutover_timeout_ms = 500;
    s->position_mapping_enabled = true;
    s->verify_consistency = true;
    s->migrate_subscriptions = true;
    s->auto_cutover = false;
    s->dual_write_interval_ms = 20;
    s->failure_threshold = 5;
    s->recovery_timeout_seconds = 30;
    s->half_open_max_calls = 1;
}

typedef enum opt_type { OPT_INT, OPT_BOOL } opt_type_t;

typedef struct opt_def {
    const char *key;
    opt_type_t type;
    size_t off;
    long long min, max;
} opt_def_t;

#define OPT_I(k, lo, hi)                                 \
    {                                                    \
#k, OPT_INT, offsetof(mig_settings_t, k), lo, hi \
    }
#define OPT_B(k)                                        \
    {                                                   \
#k, OPT_BOOL, offsetof(mig_settings_t, k), 0, 1 \
    }

static const opt_def_t opt_defs[] = {
    OPT_I(batch_size, 1, 1000000),
    OPT_I(max_bulk_copy_rate, 0, INT_MAX),
    OPT_I(dual_write_timeout_minutes, 1, 10080),
    OPT_I(cutover_max_lag_events, 0, INT_MAX),
    OPT_I(cutover_timeout_ms, 1, 600000),
    OPT_B(position_mapping_enabled),
    OPT_B(verify_consistency),
    OPT_B(migrate_subscriptions),
    OPT_B(auto_cutover),
    OPT_I(dual_write_interval_ms, 1, 10000),
    OPT_I(failure_threshold, 1, 1000),
    OPT_I(recovery_timeout_seconds, 1, 3600),
    OPT_I(half_open_max_calls, 1, 100),
};

static int parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = { "true", "on", "yes", "1", "t" };
    static const char *const no[] = { "false", "off", "no", "0", "f" };

    for (size_t i = 0; i < CM_ARRAY_LEN(yes); i++)
        if (strcasecmp(v, yes[i]) == 0) {
            *out = true;
            return 0;
        }
    for (size_t i = 0; i < CM_ARRAY_LEN(no); i++)
        if (strcasecmp(v, no[i]) == 0) {
            *out = false;
            return 0;
        }
    return -EINVAL;
}

int mig_settings_set(mig_settings_t *s, const char *key, const char *value, char **err)
{
    for (size_t i = 0; i < CM_ARRAY_LEN(opt_defs); i++) {
        const opt_def_t *d = &opt_defs[i];
        char *end;
        long long v;

        if (strcasecmp(d->key, key) != 0)
            continue;
        if (d->type == OPT_BOOL) {
            bool b;

            if (parse_bool(value, &b) != 0) {
                *err = cm_xasprintf("invalid value for %s: \"%s\" (expected true or false)", d->key,
                                    value);
                return -EINVAL;
            }
            *(bool *)((char *)s + d->off) = b;
            return 0;
        }
        errno = 0;
        v = strtoll(value, &end, 10);
        if (*value == '\0' || *end != '\0' || errno != 0 || v < d->min || v > d->max) {
            *err = cm_xasprintf("invalid value for %s: \"%s\" (expected an integer from %lld "
                                "to %lld)",
                                d->key, value, d->min, d->max);
            return -EINVAL;
        }
        *(int *)((char *)s + d->off) = (int)v;
        return 0;
    }
    *err = cm_xasprintf("unknown migration setting \"%s\" (known: batch_size, max_bulk_copy_rate, "
                        "dual_write_timeout_minutes, cutover_max_lag_events, cutover_timeout_ms, "
                        "position_mapping_enabled, verify_consistency, migrate_subscriptions, "
                        "auto_cutover, dual_write_interval_ms, failure_threshold, "
                        "recovery_timeout_seconds, half_open_max_calls)",
                        key);
    return -EINVAL;
}

int mig_settings_apply_list(mig_settings_t *s, const char *list, char **err)
{
    char *copy, *save = NULL;
    int rc = 0;

    if (list == NULL || *list == '\0')
        return 0;
    copy = cm_xstrdup(list);
    for (char *kv = strtok_r(copy, ",", &save); kv != NULL && rc == 0;
         kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');

        if (eq == NULL) {
            *err = cm_xasprintf("bad option \"%s\"", kv);
            rc = -EINVAL;
            break;
        }
        *eq = '\0';
        rc = mig_settings_set(s, kv, eq + 1, err);
    }
    free(copy);
    return rc;
}

char *mig_settings_json(const mig_settings_t *s)
{
    return cm_xasprintf(
        "{\"batch_size\": %d, \"max_bulk_copy_rate\": %d, "
        "\"dual_write_timeout_minutes\": %d, \"cutover_max_lag_events\": %d, "
        "\"cutover_timeout_ms\": %d, \"position_mapping_enabled\": %s, "
        "\"verify_consistency\": %s, \"migrate_subscriptions\": %s, "
        "\"auto_cutover\": %s, \"dual_write_interval_ms\": %d, \"failure_threshold\": %d, "
        "\"recovery_timeout_seconds\": %d, \"half_open_max_calls\": %d}",
        s->batch_size, s->max_bulk_copy_rate, s->dual_write_timeout_minutes,
        s->cutover_max_lag_events, s->cutover_timeout_ms,
        s->position_mapping_enabled ? "true" : "false", s->verify_consistency ? "true" : "false",
        s->migrate_subscriptions ? "true" : "false", s->auto_cutover ? "true" : "false",
        s->dual_write_interval_ms, s->failure_threshold, s->recovery_timeout_seconds,
        s->half_open_max_calls);
}

/* ---- lexer ------------------------------------------------------------------- */

typedef struct lexer {
    const char *p;
    char *out; /* next free byte of the caller's storage */
    bool bad;  /* an unterminated literal */
} lexer_t;

typedef struct tok {
    const char *s; /* NULL at the end */
    bool quoted;
} tok_t;

static bool is_punct(char c)
{
    return c == ';' || c == '(' || c == ')' || c == ',' || c == '=';
}

/*
 * Next token into lx->out: a 'quoted' literal (with '' for a quote), a word,
 * or one of ; ( ) , =. Returns s == NULL at the end or on an unterminated
 * literal (then lx->bad is set).
 */
static tok_t lex_next(lexer_t *lx)
{
    tok_t t = { lx->out, false };

    while (isspace((unsigned char)*lx->p))
        lx->p++;
    if (*lx->p == '\0')
        return (tok_t){ NULL, false };
    if (*lx->p == '\'') {
        t.quoted = true;
        lx->p++;
        for (;;) {
            if (*lx->p == '\0') {
                lx->bad = true;
                return (tok_t){ NULL, false };
            }
            if (*lx->p == '\'' && lx->p[1] == '\'') {
                *lx->out++ = '\'';
                lx->p += 2;
            } else if (*lx->p == '\'') {
                lx->p++;
                break;
            } else {
                *lx->out++ = *lx->p++;
            }
        }
    } else if (is_punct(*lx->p)) {
        *lx->out++ = *lx->p++;
    } else {
        while (*lx->p != '\0' && !isspace((unsigned char)*lx->p) && !is_punct(*lx->p) &&
               *lx->p != '\'')
            *lx->out++ = *lx->p++;
    }
    *lx->out++ = '\0';
    return t;
}

static bool is_kw(tok_t t, const char *kw)
{
    return t.s != NULL && !t.quoted && strcasecmp(t.s, kw) == 0;
}

static bool is_punct_tok(tok_t t, char c)
{
    return t.s != NULL && !t.quoted && t.s[0] == c && t.s[1] == '\0';
}

/* A tenant, store or reason: a literal, or a bare word that is not punctuation. */
static bool is_value(tok_t t)
{
    return t.s != NULL && *t.s != '\0' && (t.quoted || !is_punct(t.s[0]));
}

/* True when only an optional ";" is left. */
static bool lex_at_end(lexer_t *lx)
{
    tok_t t = lex_next(lx);

    if (is_punct_tok(t, ';'))
        t = lex_next(lx);
    return t.s == NULL && !lx->bad;
}

static bool parse_id(tok_t t, int64_t *id)
{
    char *end;
    long long v;

    if (t.s == NULL || *t.s == '\0' || !isdigit((unsigned char)*t.s))
        return false;
    errno = 0;
    v = strtoll(t.s, &end, 10);
    if (*end != '\0' || errno != 0 || v <= 0)
        return false;
    *id = v;
    return true;
}

static int syntax(lexer_t *lx, char **err, const char *expected)
{
    *err = lx->bad ? cm_xstrdup("syntax error: unterminated quoted string")
                   : cm_xasprintf("syntax error: expected %s", expected);
    return -EINVAL;
}

/* WITH ( key = value [, ...] ): into storage as "key=value,key=value". */
static int parse_with(lexer_t *lx, mig_cmd_t *out, char **err)
{
    static const char *const expected = "WITH (key = value, ...)";
    mig_settings_t probe;
    char *list = lx->out, *w;
    size_t n = 0;
    const char *keys[CM_ARRAY_LEN(opt_defs)];
    tok_t t = lex_next(lx);

    if (!is_punct_tok(t, '('))
        return syntax(lx, err, expected);
    /* The list is built after the tokens: reserve its room first (tokens are copies of input). */
    w = list;
    lx->out = list + strlen(lx->p) + 2;
    mig_settings_default(&probe);
    for (;;) {
        tok_t k = lex_next(lx), eq, v;
        size_t kl, vl;

        if (k.s == NULL || k.quoted || is_punct(k.s[0]))
            return syntax(lx, err, expected);
        eq = lex_next(lx);
        v = lex_next(lx);
        if (!is_punct_tok(eq, '=') || !is_value(v))
            return syntax(lx, err, expected);
        if (mig_settings_set(&probe, k.s, v.s, err) != 0)
            return -EINVAL;
        for (size_t i = 0; i < n; i++)
            if (strcasecmp(keys[i], k.s) == 0) {
                *err = cm_xasprintf("migration setting \"%s\" given twice", k.s);
                return -EINVAL;
            }
        BUG_ON(n >= CM_ARRAY_LEN(keys), "more distinct keys than known settings");
        keys[n++] = k.s;
        kl = strlen(k.s);
        vl = strlen(v.s);
        if (w != list)
            *w++ = ',';
        for (size_t i = 0; i < kl; i++)
            *w++ = (char)tolower((unsigned char)k.s[i]);
        *w++ = '=';
        memcpy(w, v.s, vl);
        w += vl;
        t = lex_next(lx);
        if (is_punct_tok(t, ')'))
            break;
        if (!is_punct_tok(t, ','))
            return syntax(lx, err, expected);
    }
    *w = '\0';
    out->options = list;
    return 0;
}

/*
 * Storage: tokens are copies of parts of the input, each with a NUL, so 2x the
 * input is plenty; WITH lists take another input length at most.
 */
int mig_cmd_parse(const char *sql, mig_cmd_t *out, char **storage, char **err)
{
    lexer_t lx = { 0 };
    tok_t t1, t2;

    *storage = cm_xmalloc(4 * strlen(sql) + 16);
    lx.p = sql;
    lx.out = *storage;
    memset(out, 0, sizeof(*out));
    t1 = lex_next(&lx);
    t2 = lex_next(&lx);

    if (is_kw(t1, "SHOW")) {
        if (is_kw(t2, "ROUTES") || is_kw(t2, "TENANTS") || is_kw(t2, "MIGRATIONS")) {
            if (!lex_at_end(&lx)) {
                *err = cm_xasprintf("syntax error: SHOW %s takes no arguments", t2.s);
                return -EINVAL;
            }
            out->kind = is_kw(t2, "ROUTES")    ? MIG_CMD_SHOW_ROUTES
                        : is_kw(t2, "TENANTS") ? MIG_CMD_SHOW_TENANTS
                                               : MIG_CMD_SHOW_MIGRATIONS;
            return 0;
        }
        if (is_kw(t2, "MIGRATION") || is_kw(t2, "AUDIT")) {
            bool audit = is_kw(t2, "AUDIT");

            if (!parse_id(lex_next(&lx), &out->migration_id) || !lex_at_end(&lx))
                return syntax(&lx, err, audit ? "SHOW AUDIT id" : "SHOW MIGRATION id");
            out->kind = audit ? MIG_CMD_SHOW_AUDIT : MIG_CMD_SHOW_MIGRATION;
            return 0;
        }
        return 1;
    }
    if (is_kw(t1, "ROUTE") || is_kw(t1, "MIGRATE")) {
        bool migrate = is_kw(t1, "MIGRATE");
        const char *expected = migrate ? "MIGRATE TENANT 'tenant' TO 'store' [WITH (key = value, "
                                         "...)]"
                                       : "ROUTE TENANT 'tenant' TO 'store'";
        tok_t tenant, to, store, next;

        if (!is_kw(t2, "TENANT"))
            return syntax(&lx, err, expected);
        tenant = lex_next(&lx);
        to = lex_next(&lx);
        store = lex_next(&lx);
        if (!is_value(tenant) || !is_kw(to, "TO") || !is_value(store))
            return syntax(&lx, err, expected);
        out->kind = migrate ? MIG_CMD_MIGRATE : MIG_CMD_ROUTE_TENANT;
        out->tenant = tenant.s;
        out->store = store.s;
        if (!migrate)
            return lex_at_end(&lx) ? 0 : syntax(&lx, err, expected);
        {
            const char *save = lx.p;

            next = lex_next(&lx);
            if (is_kw(next, "WITH")) {
                int rc = parse_with(&lx, out, err);

                if (rc != 0)
                    return rc;
            } else {
                lx.p = save;
            }
        }
        return lex_at_end(&lx) ? 0 : syntax(&lx, err, expected);
    }
    if (is_kw(t1, "CUTOVER") || is_kw(t1, "VERIFY")) {
        /* CUTOVER id, or CUTOVER MIGRATION id; VERIFY the same */
        bool cut = is_kw(t1, "CUTOVER");
        tok_t id = is_kw(t2, "MIGRATION") ? lex_next(&lx) : t2;

        if (!parse_id(id, &out->migration_id) || !lex_at_end(&lx))
            return syntax(&lx, err, cut ? "CUTOVER id" : "VERIFY id");
        out->kind = cut ? MIG_CMD_CUTOVER : MIG_CMD_VERIFY;
        return 0;
    }
    if (is_kw(t1, "PAUSE") || is_kw(t1, "RESUME") || is_kw(t1, "ABORT") || is_kw(t1, "WATCH")) {
        bool takes_reason = is_kw(t1, "PAUSE") || is_kw(t1, "ABORT");
        const char *expected = is_kw(t1, "PAUSE")    ? "PAUSE MIGRATION id ['reason']"
                               : is_kw(t1, "RESUME") ? "RESUME MIGRATION id"
                               : is_kw(t1, "ABORT")  ? "ABORT MIGRATION id ['reason']"
                                                     : "WATCH MIGRATION id";

        /* Plain PAUSE [timeout] / RESUME (and ABORT, WATCH of anything else) are not ours. */
        if (!is_kw(t2, "MIGRATION"))
            return lx.bad ? syntax(&lx, err, expected) : 1;
        if (!parse_id(lex_next(&lx), &out->migration_id))
            return syntax(&lx, err, expected);
        if (takes_reason) {
            const char *save = lx.p;
            tok_t r = lex_next(&lx);

            if (r.s != NULL && r.quoted)
                out->reason = r.s;
            else
                lx.p = save;
        }
        if (!lex_at_end(&lx))
            return syntax(&lx, err, expected);
        out->kind = is_kw(t1, "PAUSE")    ? MIG_CMD_PAUSE_MIGRATION
                    : is_kw(t1, "RESUME") ? MIG_CMD_RESUME_MIGRATION
                    : is_kw(t1, "ABORT")  ? MIG_CMD_ABORT_MIGRATION
                                          : MIG_CMD_WATCH_MIGRATION;
        return 0;
    }
    return 1;
}
