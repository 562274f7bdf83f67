/*
 * routing/fast.c - the classification of statements that provably touch no
 * tenant data, without libpg_query's parse tree.
 *
 * Simple-protocol clients (pgbench) inline their values, so each text is
 * new, the cache misses and the full classifier (parse + JSON + walk, ~10 us)
 * runs for statements that name no tenant table at all. This file reads the
 * text with a small lexer instead and answers only when the answer provably
 * equals route_classify's:
 *
 * - one statement: the first token is a word, no ';' is followed by anything
 *   but blanks and comments;
 * - no '"', '$' or '\' anywhere: no quoted identifiers (which could name a
 *   table in any spelling), dollar quotes, parameters or escape strings, so
 *   the only literals are '...' with '' doubling and the lexer cannot be
 *   fooled about where a string or comment ends;
 * - no word (outside literals and comments, compared case-insensitively as
 *   PostgreSQL folds unquoted names) equal to a tenant table (the name after
 *   the schema), the tenant / key / position / row-key columns, set_config
 *   or a session-level advisory lock function (pg_advisory_lock,
 *   pg_try_advisory_lock and their _shared forms: they pin the session, see
 *   route_stmt_t.pins_session), and none beginning with pg_temp (a
 *   temporary relation pins it too); no word longer than 63 bytes
 *   (PostgreSQL truncates those, which could turn one into a tenant table's
 *   name); the tenant setting and "pgshift" appear nowhere, not even in a
 *   literal;
 * - the first word is SELECT, VALUES, TABLE or WITH (READ: then no INTO,
 *   INSERT, UPDATE, DELETE or MERGE word, which could make it DDL or a write)
 *   or INSERT, UPDATE, DELETE (WRITE: then no RETURNING word);
 * - at most ROUTE_FAST_MAX_LEN bytes: the full classifier rejects parse trees
 *   nested deeper than 3000 JSON levels, and PostgreSQL's syntax reaches at
 *   most about 1.7 levels per byte;
 * - the grammar accepts it (libpg_query's raw parser, ~1 us, no JSON): text
 *   PostgreSQL rejects is UNKNOWN for the full classifier, and routed as such.
 *
 * With a route_shapes_t (the route cache owns one), the grammar check runs
 * once per shape instead of once per text: the text with its literal
 * operands normalized (see shape_out_t), so "... WHERE aid = 12345" and
 * "... WHERE aid = 678" share it; the answer for a shape is kept too, so a
 * repeated shape costs the lexer only (~0.3 us instead of ~3 us).
 *
 * Pure: no I/O, no globals (the shapes are the caller's).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "routing/routing.h"
#include "routing/routing_int.h"

#define NAME_MAX_LEN 63 /* NAMEDATALEN - 1: longer identifiers are truncated */

typedef enum first_word {
    FIRST_NONE,
    FIRST_READ,
    FIRST_WRITE,
} first_word_t;

static inline bool is_blank(unsigned char c)
{
    /* PostgreSQL's scanner: space [ \t\n\r\f] */
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

static inline bool ident_start(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}

static inline bool ident_cont(unsigned char c)
{
    return ident_start(c) || (c >= '0' && c <= '9') || c == '$';
}

static unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c;
}

/* Whether w[0..wl) folds to exactly name (lower case, NUL-terminated). */
static bool word_is(const char *w, size_t wl, const char *name)
{
    size_t i;

    if (name == NULL)
        return false;
    for (i = 0; i < wl; i++) {
        if (name[i] == '\0' || lower((unsigned char)w[i]) != (unsigned char)name[i])
            return false;
    }
    return name[i] == '\0';
}

/* Whether needle occurs at s[0..m), ignoring ASCII case. */
static bool same_ci(const char *s, const char *needle, size_t m)
{
    for (size_t k = 0; k < m; k++) {
        if (lower((unsigned char)s[k]) != lower((unsigned char)needle[k]))
            return false;
    }
    return true;
}

/* Case-insensitive: does needle (non-empty) occur in s[0..n)? memchr finds the candidates. */
static bool contains_ci(const char *s, size_t n, const char *needle)
{
    size_t m = needle != NULL ? strlen(needle) : 0;
    unsigned char first[2];

    if (m == 0 || m > n)
        return false;
    first[0] = lower((unsigned char)needle[0]);
    first[1] = first[0] >= 'a' && first[0] <= 'z' ? (unsigned char)(first[0] - 'a' + 'A') : 0;
    for (int f = 0; f < 2 && first[f] != 0; f++) {
        const char *p = s, *last = s + (n - m);
        while (p <= last && (p = memchr(p, first[f], (size_t)(last - p) + 1)) != NULL) {
            if (same_ci(p, needle, m))
                return true;
            p++;
        }
    }
    return false;
}

/*
 * The names a word must not be, filtered by (first letter, length) so that
 * most words are dismissed with one bit test.
 */
typedef struct names {
    const route_tenancy_t *ten;
    uint64_t len_mask[28]; /* by first letter a-z, '_', other: bit n = a name of n bytes */
} names_t;

static unsigned letter_slot(unsigned char c)
{
    c = lower(c);
    return c >= 'a' && c <= 'z' ? (unsigned)(c - 'a') : c == '_' ? 26u : 27u;
}

static const char *table_name(const char *configured)
{
    const char *dot = strrchr(configured, '.');

    return dot != NULL ? dot + 1 : configured;
}

static void names_add(names_t *nm, const char *name)
{
    size_t n = name != NULL ? strlen(name) : 0;

    if (n > 0 && n <= NAME_MAX_LEN)
        nm->len_mask[letter_slot((unsigned char)name[0])] |= (uint64_t)1 << n;
}

/* Functions whose locks outlive the transaction: the full classifier sets pins_session. */
static const char *const session_lock_funcs[] = {
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
};

static void names_init(names_t *nm, const route_tenancy_t *ten)
{
    memset(nm, 0, sizeof(*nm));
    nm->ten = ten;
    for (size_t i = 0; i < ten->n_tables; i++)
        names_add(nm, table_name(ten->tables[i]));
    for (size_t i = 0; i < ten->n_key_columns; i++)
        names_add(nm, ten->key_columns[i]);
    names_add(nm, ten->tenant_column);
    names_add(nm, ten->position_column);
    names_add(nm, ten->row_key);
    names_add(nm, "set_config");
    for (size_t i = 0; i < CM_ARRAY_LEN(session_lock_funcs); i++)
        names_add(nm, session_lock_funcs[i]);
}

/*
 * A word (1..NAME_MAX_LEN bytes) that could make the statement touch tenant
 * data or the setting, or pin the session (an advisory lock, pg_temp).
 */
static bool word_is_tenancy(const names_t *nm, const char *w, size_t wl)
{
    const route_tenancy_t *ten = nm->ten;

    if (wl >= 7 && same_ci(w, "pg_temp", 7))
        return true;
    if ((nm->len_mask[letter_slot((unsigned char)w[0])] >> wl & 1) == 0)
        return false;
    for (size_t i = 0; i < CM_ARRAY_LEN(session_lock_funcs); i++) {
        if (word_is(w, wl, session_lock_funcs[i]))
            return true;
    }
    for (size_t i = 0; i < ten->n_tables; i++) {
        if (word_is(w, wl, table_name(ten->tables[i])))
            return true;
    }
    for (size_t i = 0; i < ten->n_key_columns; i++) {
        if (word_is(w, wl, ten->key_columns[i]))
            return true;
    }
    return word_is(w, wl, ten->tenant_column) || word_is(w, wl, ten->position_column) ||
           word_is(w, wl, ten->row_key) || word_is(w, wl, "set_config");
}

static first_word_t first_kind(const char *w, size_t wl)
{
    if (word_is(w, wl, "select") || word_is(w, wl, "values") || word_is(w, wl, "table") ||
        word_is(w, wl, "with"))
        return FIRST_READ;
    if (word_is(w, wl, "insert") || word_is(w, wl, "update") || word_is(w, wl, "delete"))
        return FIRST_WRITE;
    return FIRST_NONE;
}

/* Words after which a READ-looking statement may write or create a table. */
static bool word_may_write(const char *w, size_t wl)
{
    switch (wl) {
    case 4:
        return word_is(w, wl, "into");
    case 5:
        return word_is(w, wl, "merge");
    case 6:
        return word_is(w, wl, "insert") || word_is(w, wl, "update") || word_is(w, wl, "delete");
    default:
        return false;
    }
}

/*
 * The shape of a text: the text with its literal operands normalized ('...'
 * to '', integers to 0) where the raw grammar provably accepts the shape
 * exactly when it accepts the text. A literal is normalized only right
 * after an operator (= < > + - * / %), where the grammar reads any literal
 * as an a_expr operand and never looks at its value (unlike, say,
 * float(0), where "(" precedes it); a plain '...' string (no prefix letter,
 * no '&' anywhere in the text, so no U&'' and no UESCAPE) of any content is
 * one Sconst, and an integer of at most 9 digits without '.', exponent or
 * trailing letters is one ICONST. Token boundaries, blanks, comments and
 * ';' are kept, so the token sequence the grammar sees is the same.
 */
typedef struct shape_out {
    char *buf;     /* ROUTE_FAST_MAX_LEN + 1 bytes */
    size_t len;    /* bytes written */
    size_t copied; /* source bytes up to here are accounted for */
} shape_out_t;

static bool is_operator_end(unsigned char c)
{
    return c == '=' || c == '<' || c == '>' || c == '+' || c == '-' || c == '*' || c == '/' ||
           c == '%';
}

/* Replace the token s[a..b) by rep in the shape (the bytes before it are copied as they are). */
static void shape_replace(shape_out_t *out, const char *s, size_t a, size_t b, const char *rep)
{
    size_t rl = strlen(rep);

    memcpy(out->buf + out->len, s + out->copied, a - out->copied);
    out->len += a - out->copied;
    memcpy(out->buf + out->len, rep, rl);
    out->len += rl;
    out->copied = b;
}

/*
 * Lex s[0..n): the kind of its one statement, or FIRST_NONE when the text is
 * not provably tenant-free, single and of a fast kind. *end is the offset of
 * the terminating ';', or 0 when there is none (route_stmt_t.len).
 */
static first_word_t lex(const char *s, size_t n, const names_t *nm, size_t *end, shape_out_t *out)
{
    first_word_t first = FIRST_NONE;
    bool ended = false, may_write = false, returning = false;
    unsigned char prev = 0; /* last character of the previous token (blanks, comments skipped) */
    size_t i = 0;

    *end = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];

        if (is_blank(c)) {
            i++;
        } else if (c == '-' && i + 1 < n && s[i + 1] == '-') {
            while (i < n && s[i] != '\n' && s[i] != '\r')
                i++;
        } else if (c == '/' && i + 1 < n && s[i + 1] == '*') {
            size_t depth = 1; /* comments nest */
            i += 2;
            while (depth > 0) {
                if (i + 1 >= n)
                    return FIRST_NONE; /* unterminated */
                if (s[i] == '/' && s[i + 1] == '*') {
                    depth++;
                    i += 2;
                } else if (s[i] == '*' && s[i + 1] == '/') {
                    depth--;
                    i += 2;
                } else {
                    i++;
                }
            }
        } else if (ended) {
            return FIRST_NONE; /* a second statement (or a second ';') */
        } else if (c == '\'') {
            size_t a = i;

            for (i++;; i++) {
                if (i >= n)
                    return FIRST_NONE; /* unterminated */
                if (s[i] == '\'') {
                    if (i + 1 < n && s[i + 1] == '\'') {
                        i++; /* '' is a quote inside the literal */
                        continue;
                    }
                    break;
                }
            }
            i++;
            /* A plain '...' operand (no E/U&/B/X/N prefix): its content never matters. */
            if (out != NULL && is_operator_end(prev) &&
                (a == 0 || !ident_cont((unsigned char)s[a - 1])))
                shape_replace(out, s, a, i, "''");
            prev = '\'';
        } else if (ident_start(c)) {
            size_t w = i, wl;
            while (i < n && ident_cont((unsigned char)s[i]))
                i++;
            wl = i - w;
            if (wl > NAME_MAX_LEN || word_is_tenancy(nm, s + w, wl))
                return FIRST_NONE;
            if (first == FIRST_NONE) {
                first = first_kind(s + w, wl);
                if (first == FIRST_NONE)
                    return FIRST_NONE;
            } else {
                may_write |= word_may_write(s + w, wl);
                returning |= wl == 9 && word_is(s + w, wl, "returning");
            }
            prev = (unsigned char)s[i - 1];
        } else if (first == FIRST_NONE) {
            return FIRST_NONE; /* must begin with a keyword: "(SELECT ...)" is left alone */
        } else if (c == ';') {
            ended = true;
            *end = i;
            prev = c;
            i++;
        } else if (c >= '0' && c <= '9') {
            size_t a = i;

            while (i < n && s[i] >= '0' && s[i] <= '9')
                i++;
            /*
             * An integer operand of at most 9 digits (an ICONST whatever its
             * value): not part of a number with '.' or an exponent, no
             * trailing junk (PostgreSQL 15 rejects "123abc").
             */
            if (out != NULL && is_operator_end(prev) && i - a <= 9 && (a == 0 || s[a - 1] != '.') &&
                (i == n || (s[i] != '.' && !ident_cont((unsigned char)s[i]))))
                shape_replace(out, s, a, i, "0");
            prev = '0';
        } else {
            prev = c;
            i++; /* operators, punctuation */
        }
    }
    if ((first == FIRST_READ && may_write) || (first == FIRST_WRITE && returning))
        return FIRST_NONE;
    return first;
}

/* ---- shapes the grammar accepted ---- */

#define SHAPE_SLOTS    256 /* power of two */
#define SHAPE_MAX_HITS 16

typedef struct shape {
    uint64_t hash;
    char *key; /* owned shape text, NULL = empty slot */
    size_t len;
    unsigned hits;      /* a colliding new shape takes the slot only at 0 */
    route_class_t *cls; /* the last answer for this shape (one reference), or NULL */
} shape_t;

struct route_shapes {
    const route_tenancy_t *ten; /* the tenancy `names` was built for */
    names_t names;
    shape_t slot[SHAPE_SLOTS];
};

route_shapes_t *route_shapes_new(void)
{
    return cm_xcalloc(1, sizeof(route_shapes_t));
}

static void shape_clear(shape_t *e)
{
    free(e->key);
    route_class_unref(e->cls);
    memset(e, 0, sizeof(*e));
}

void route_shapes_free(route_shapes_t *sh)
{
    if (sh == NULL)
        return;
    for (size_t i = 0; i < SHAPE_SLOTS; i++)
        shape_clear(&sh->slot[i]);
    free(sh);
}

static route_class_t *class_new(first_word_t first, size_t end)
{
    route_class_t *cl = cm_xcalloc(1, sizeof(*cl));

    cl->refcount = 1;
    cl->n_stmts = 1;
    cl->stmts = cm_xcalloc(1, sizeof(*cl->stmts));
    cl->stmts[0].kind = first == FIRST_READ ? ROUTE_KIND_READ : ROUTE_KIND_WRITE;
    cl->stmts[0].is_write = first == FIRST_WRITE;
    cl->stmts[0].loc = 0; /* the first statement starts at 0 even after blanks */
    cl->stmts[0].len = end;
    return cl;
}

static bool class_is(const route_class_t *cl, first_word_t first, size_t end)
{
    return cl != NULL && cl->stmts[0].len == end &&
           cl->stmts[0].kind == (first == FIRST_READ ? ROUTE_KIND_READ : ROUTE_KIND_WRITE);
}

route_class_t *route_classify_fast_shaped(const char *sql, size_t len, const route_tenancy_t *ten,
                                          route_shapes_t *sh)
{
    const char *nul = len > 0 ? memchr(sql, '\0', len) : NULL;
    size_t n = nul != NULL ? (size_t)(nul - sql) : len, end;
    char text[ROUTE_FAST_MAX_LEN + 1];
    char key[ROUTE_FAST_MAX_LEN + 1];
    shape_out_t out = { .buf = key };
    first_word_t first;
    names_t nm_local;
    const names_t *nm;
    shape_t *e = NULL;
    uint64_t h = 0;
    bool shaped;

    if (n == 0 || n > ROUTE_FAST_MAX_LEN || memchr(sql, '"', n) != NULL ||
        memchr(sql, '$', n) != NULL || memchr(sql, '\\', n) != NULL)
        return NULL;
    if (contains_ci(sql, n, "pgshift") ||
        (ten->tenant_setting != NULL &&
         !contains_ci(ten->tenant_setting, strlen(ten->tenant_setting), "pgshift") &&
         contains_ci(sql, n, ten->tenant_setting)))
        return NULL;
    if (sh != NULL) {
        if (sh->ten != ten) {
            names_init(&sh->names, ten);
            sh->ten = ten;
        }
        nm = &sh->names;
    } else {
        names_init(&nm_local, ten);
        nm = &nm_local;
    }
    shaped = sh != NULL && memchr(sql, '&', n) == NULL;
    first = lex(sql, n, nm, &end, shaped ? &out : NULL);
    if (first == FIRST_NONE)
        return NULL;
    if (shaped) {
        memcpy(key + out.len, sql + out.copied, n - out.copied);
        out.len += n - out.copied;
        h = route_hash_bytes(key, out.len);
        e = &sh->slot[h & (SHAPE_SLOTS - 1)];
        if (e->key != NULL && e->hash == h && e->len == out.len &&
            memcmp(e->key, key, out.len) == 0) {
            /* The grammar accepted this shape before, so it accepts this text. */
            if (e->hits < SHAPE_MAX_HITS)
                e->hits++;
            if (!class_is(e->cls, first, end)) {
                route_class_unref(e->cls);
                e->cls = class_new(first, end);
            }
            return route_class_ref(e->cls);
        }
    }
    memcpy(text, sql, n);
    text[n] = '\0';
    if (!route_parse_is_one_stmt(text))
        return NULL;
    if (e != NULL) {
        if (e->key != NULL && e->hits > 0) {
            e->hits--; /* a shape in use keeps its slot against one-off shapes */
        } else {
            shape_clear(e);
            e->hash = h;
            e->len = out.len;
            e->key = cm_xmalloc(out.len + 1);
            memcpy(e->key, key, out.len);
            e->key[out.len] = '\0';
            e->cls = class_new(first, end);
            return route_class_ref(e->cls);
        }
    }
    return class_new(first, end);
}

route_class_t *route_classify_fast(const char *sql, size_t len, const route_tenancy_t *ten)
{
    return route_classify_fast_shaped(sql, len, ten, NULL);
}
