/*
 * proxy/authfile.c - parse a PgBouncer-style auth_file into a sorted,
 * immutable user -> secret table. The only I/O is px_authfile_load()
 * reading the whole file; parsing works on memory.
 */
#include "proxy/authfile.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/scram.h"

typedef struct af_entry {
    char *user;   /* owned */
    char *secret; /* owned */
    int line;     /* 1-based line it came from, for duplicate errors */
} af_entry_t;

struct px_authfile {
    af_entry_t *entries; /* owned, sorted by user */
    size_t n_entries;
};

static void free_entries(af_entry_t *e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(e[i].user);
        if (e[i].secret != NULL) {
            OPENSSL_cleanse(e[i].secret, strlen(e[i].secret));
            free(e[i].secret);
        }
    }
    free(e);
}

void px_authfile_free(px_authfile_t *af)
{
    if (af == NULL)
        return;
    free_entries(af->entries, af->n_entries);
    free(af);
}

size_t px_authfile_count(const px_authfile_t *af)
{
    return af->n_entries;
}

static int entry_cmp(const void *a, const void *b)
{
    const af_entry_t *x = a, *y = b;
    int c = strcmp(x->user, y->user);

    if (c != 0)
        return c;
    return (x->line > y->line) - (x->line < y->line);
}

const char *px_authfile_find(const px_authfile_t *af, const char *user)
{
    size_t lo = 0, hi = af->n_entries;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(user, af->entries[mid].user);

        if (c == 0)
            return af->entries[mid].secret;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/*
 * Read a quoted field at p (which points at '"') within the line [p, end).
 * On success returns a pointer just past the closing quote and sets *out
 * (owned). On failure returns NULL and sets *why.
 */
static const char *read_quoted(const char *p, const char *end, char **out, const char **why)
{
    cm_buf_t b = { 0 };

    p++; /* opening quote */
    for (;;) {
        if (p == end) {
            cm_buf_free(&b);
            *why = "unterminated quoted string";
            return NULL;
        }
        if (*p == '"') {
            if (p + 1 < end && p[1] == '"') {
                cm_buf_append_u8(&b, '"');
                p += 2;
                continue;
            }
            p++;
            break;
        }
        cm_buf_append_u8(&b, (uint8_t)*p++);
    }
    cm_buf_append_u8(&b, 0);
    *out = (char *)b.data;
    return p;
}

/* Parse one line [p, end). Returns 1 with *user and *secret owned, 0 for a line
 * to skip, -1 with *why set. */
static int parse_line(const char *p, const char *end, char **user, char **secret, const char **why)
{
    char *extra;

    *user = *secret = NULL;
    while (p < end && is_blank(*p))
        p++;
    if (p == end || *p == ';' || *p == '#')
        return 0;
    if (*p != '"') {
        *why = "expected a quoted user name";
        return -1;
    }
    p = read_quoted(p, end, user, why);
    if (p == NULL)
        return -1;
    if (p == end || !is_blank(*p)) {
        *why = p == end ? "missing secret after user name" : "expected a blank after user name";
        goto fail;
    }
    while (p < end && is_blank(*p))
        p++;
    if (p == end || *p != '"') {
        *why = p == end ? "missing secret after user name" : "expected a quoted secret";
        goto fail;
    }
    p = read_quoted(p, end, secret, why);
    if (p == NULL)
        goto fail;
    /* Rest: blanks, extra quoted fields (ignored), a trailing comment. */
    for (;;) {
        const char *q = p;

        while (p < end && is_blank(*p))
            p++;
        if (p == end || *p == ';' || *p == '#')
            break;
        if (*p != '"' || p == q) {
            *why = "unexpected text after secret";
            goto fail;
        }
        p = read_quoted(p, end, &extra, why);
        if (p == NULL)
            goto fail;
        free(extra);
    }
    if ((*user)[0] == '\0') {
        *why = "empty user name";
        goto fail;
    }
    if ((*secret)[0] == '\0') {
        *why = "empty secret";
        goto fail;
    }
    if (px_secret_kind(*secret) == PX_SECRET_BAD) {
        *why = "invalid SCRAM-SHA-256 secret";
        goto fail;
    }
    return 1;

fail:
    free(*user);
    if (*secret != NULL) {
        OPENSSL_cleanse(*secret, strlen(*secret));
        free(*secret);
    }
    *user = *secret = NULL;
    return -1;
}

int px_authfile_parse(const char *text, const char *path, px_authfile_t **out, char **err)
{
    af_entry_t *e = NULL;
    size_t n = 0, cap = 0;
    int line = 0;
    const char *p = text;

    *out = NULL;
    *err = NULL;
    while (*p != '\0') {
        const char *nl = strchr(p, '\n');
        const char *end = nl ? nl : p + strlen(p);
        const char *next = nl ? nl + 1 : end;
        const char *why = NULL;
        char *user, *secret;
        int rc;

        line++;
        if (end > p && end[-1] == '\r')
            end--;
        rc = parse_line(p, end, &user, &secret, &why);
        if (rc < 0) {
            *err = cm_xasprintf("%s:%d: %s", path, line, why);
            goto fail;
        }
        if (rc > 0) {
            if (n == cap) {
                cap = cap ? cap * 2 : 16;
                e = cm_xrealloc(e, cap * sizeof(*e));
            }
            e[n++] = (af_entry_t){ .user = user, .secret = secret, .line = line };
        }
        p = next;
    }
    if (n > 1)
        qsort(e, n, sizeof(*e), entry_cmp);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(e[i - 1].user, e[i].user) == 0) {
            /* After the sort, equal users are ordered by line: report the later one. */
            *err = cm_xasprintf("%s:%d: duplicate user \"%s\" (first on line %d)", path, e[i].line,
                                e[i].user, e[i - 1].line);
            goto fail;
        }
    }
    *out = cm_xcalloc(1, sizeof(**out));
    (*out)->entries = e;
    (*out)->n_entries = n;
    return 0;

fail:
    free_entries(e, n);
    return -1;
}

int px_authfile_load(const char *path, px_authfile_t **out, char **err)
{
    FILE *f;
    cm_buf_t b = { 0 };
    char chunk[8192];
    size_t got;
    int rc;

    *out = NULL;
    *err = NULL;
    f = fopen(path, "rb");
    if (f == NULL) {
        *err = cm_xasprintf("%s: %s", path, strerror(errno));
        return -1;
    }
    while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (b.len + got > PX_AUTHFILE_MAX_LEN) {
            *err = cm_xasprintf("%s: file larger than %u bytes", path, PX_AUTHFILE_MAX_LEN);
            goto fail;
        }
        cm_buf_append(&b, chunk, got);
    }
    if (ferror(f)) {
        *err = cm_xasprintf("%s: read error", path);
        goto fail;
    }
    fclose(f);
    f = NULL;
    if (b.len > 0 && memchr(b.data, '\0', b.len) != NULL) {
        size_t at = (size_t)((uint8_t *)memchr(b.data, '\0', b.len) - b.data);
        int line = 1;

        for (size_t i = 0; i < at; i++)
            line += b.data[i] == '\n';
        *err = cm_xasprintf("%s:%d: NUL byte in file", path, line);
        goto fail;
    }
    cm_buf_append_u8(&b, 0);
    rc = px_authfile_parse((const char *)b.data, path, out, err);
    OPENSSL_cleanse(b.data, b.len);
    OPENSSL_cleanse(chunk, sizeof(chunk));
    cm_buf_free(&b);
    return rc;

fail:
    if (f != NULL)
        fclose(f);
    if (b.data != NULL)
        OPENSSL_cleanse(b.data, b.len);
    OPENSSL_cleanse(chunk, sizeof(chunk));
    cm_buf_free(&b);
    return -1;
}
