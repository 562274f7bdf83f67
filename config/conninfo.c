/*
 * config/conninfo.c - password masking for libpq connection strings, so
 * SHOW CONFIG and logs can print a store's conninfo.
 *
 * It reads both forms libpq accepts (keyword/value and postgresql:// URIs)
 * with libpq's own tokenizing rules, but does not validate them: parse.c
 * rejects malformed strings with PQconninfoParse before they get here. On
 * text it cannot tokenize it masks everything after the failure point,
 * because printing a password is worse than printing too little.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "config/cfg.h"

#define MASK "***"

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool is_uri(const char *s)
{
    return starts_with(s, "postgresql://") || starts_with(s, "postgres://");
}

/* Appends the URI `s` to out with the userinfo password and any password= parameter masked. */
static void mask_uri(cm_buf_t *out, const char *s)
{
    const char *p = strstr(s, "://") + 3;
    const char *q;

    cm_buf_append(out, s, (size_t)(p - s));
    /* libpq looks for the credentials designator '@' before the first '/'. */
    q = p + strcspn(p, "@/");
    if (*q == '@') {
        const char *colon = memchr(p, ':', (size_t)(q - p));

        if (colon != NULL) {
            cm_buf_append(out, p, (size_t)(colon + 1 - p));
            cm_buf_append(out, MASK, strlen(MASK));
        } else {
            cm_buf_append(out, p, (size_t)(q - p));
        }
        p = q;
    }
    q = strchr(p, '?');
    if (q == NULL) {
        cm_buf_append(out, p, strlen(p));
        return;
    }
    cm_buf_append(out, p, (size_t)(q + 1 - p));
    p = q + 1;
    while (*p != '\0') {
        size_t n = strcspn(p, "&");

        if (n >= 9 && strncmp(p, "password=", 9) == 0) {
            cm_buf_append(out, p, 9);
            cm_buf_append(out, MASK, strlen(MASK));
        } else {
            cm_buf_append(out, p, n);
        }
        p += n;
        if (*p == '&')
            cm_buf_append_u8(out, *p++);
    }
}

static void mask_into(cm_buf_t *out, const char *s);

/* Appends `v` as a keyword/value value: quoted when it was, escaped as libpq unescapes. */
static void append_value(cm_buf_t *out, const char *v, bool quoted)
{
    if (quoted)
        cm_buf_append_u8(out, '\'');
    for (; *v != '\0'; v++) {
        if (*v == '\\' || *v == '\'' || (!quoted && isspace((unsigned char)*v)))
            cm_buf_append_u8(out, '\\');
        cm_buf_append_u8(out, (uint8_t)*v);
    }
    if (quoted)
        cm_buf_append_u8(out, '\'');
}

/* Appends the keyword/value string `s` with password values masked. */
static void mask_kv(cm_buf_t *out, const char *s)
{
    const char *p = s;

    for (;;) {
        const char *kw, *kw_end, *raw, *start = p;
        cm_buf_t val = { 0 };
        bool quoted = false;

        while (isspace((unsigned char)*p))
            p++;
        cm_buf_append(out, start, (size_t)(p - start));
        if (*p == '\0')
            return;
        kw = p;
        while (*p != '\0' && *p != '=' && !isspace((unsigned char)*p))
            p++;
        kw_end = p;
        while (isspace((unsigned char)*p))
            p++;
        if (*p != '=')
            goto malformed;
        p++;
        while (isspace((unsigned char)*p))
            p++;
        cm_buf_append(out, kw, (size_t)(p - kw));
        raw = p;
        if (*p == '\'') {
            quoted = true;
            for (p++; *p != '\'' && *p != '\0'; p++) {
                if (*p == '\\' && p[1] != '\0')
                    p++;
                cm_buf_append_u8(&val, (uint8_t)*p);
            }
            if (*p != '\'') {
                cm_buf_free(&val);
                goto malformed;
            }
            p++;
        } else {
            for (; *p != '\0' && !isspace((unsigned char)*p); p++) {
                if (*p == '\\' && p[1] != '\0')
                    p++;
                cm_buf_append_u8(&val, (uint8_t)*p);
            }
        }
        cm_buf_append_u8(&val, 0);
        if ((size_t)(kw_end - kw) == 8 && strncmp(kw, "password", 8) == 0) {
            cm_buf_append(out, MASK, strlen(MASK));
        } else if ((size_t)(kw_end - kw) == 6 && strncmp(kw, "dbname", 6) == 0 &&
                   (is_uri((char *)val.data) || strchr((char *)val.data, '=') != NULL)) {
            /* libpq expands a dbname that is itself a connection string. */
            cm_buf_t inner = { 0 };

            mask_into(&inner, (char *)val.data);
            cm_buf_append_u8(&inner, 0);
            append_value(out, (char *)inner.data, quoted);
            cm_buf_free(&inner);
        } else {
            cm_buf_append(out, raw, (size_t)(p - raw)); /* as written */
        }
        cm_buf_free(&val);
    }

malformed:
    cm_buf_append(out, MASK, strlen(MASK));
}

static void mask_into(cm_buf_t *out, const char *s)
{
    if (is_uri(s))
        mask_uri(out, s);
    else
        mask_kv(out, s);
}

char *cfg_conninfo_mask(const char *conninfo)
{
    cm_buf_t out = { 0 };
    char *ret;

    mask_into(&out, conninfo);
    ret = out.len == 0 ? cm_xstrdup("") : cm_xstrndup((const char *)out.data, out.len);
    cm_buf_free(&out);
    return ret;
}
