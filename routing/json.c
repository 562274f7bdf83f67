/*
 * routing/json.c - a small JSON reader for libpg_query's parse tree.
 *
 * It builds a flat array of nodes in preorder, so callers scan a subtree as
 * an index range instead of recursing. Strings stay undecoded in the source
 * until a caller asks for them. It accepts RFC 8259 JSON with limits on
 * depth and size, never aborts on bad input and knows nothing about SQL.
 */
#include <stdlib.h>
#include <string.h>

#include "common/cm.h"
#include "routing/routing_int.h"

typedef struct jparser {
    route_jdoc_t *d;
    const char *s;
    size_t pos;
    size_t len;
    unsigned max_depth;
    bool bad;
} jparser_t;

static void skip_ws(jparser_t *p)
{
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        p->pos++;
    }
}

static uint32_t new_node(jparser_t *p)
{
    route_jdoc_t *d = p->d;

    if (d->n == d->cap) {
        uint32_t cap = d->cap ? d->cap * 2 : 64;
        d->v = cm_xrealloc(d->v, (size_t)cap * sizeof(*d->v));
        d->cap = cap;
    }
    memset(&d->v[d->n], 0, sizeof(d->v[0]));
    return d->n++;
}

/* Scan a string starting at the opening quote; sets *off and *len to the raw content. */
static bool scan_string(jparser_t *p, uint32_t *off, uint32_t *len, bool *has_escape)
{
    size_t i = p->pos + 1;

    *has_escape = false;
    while (i < p->len) {
        unsigned char c = (unsigned char)p->s[i];
        if (c == '"') {
            *off = (uint32_t)(p->pos + 1);
            *len = (uint32_t)(i - p->pos - 1);
            p->pos = i + 1;
            return true;
        }
        if (c == '\\') {
            *has_escape = true;
            if (i + 1 >= p->len)
                return false;
            i += 2;
            continue;
        }
        if (c < 0x20)
            return false;
        i++;
    }
    return false;
}

static bool lit(jparser_t *p, const char *word)
{
    size_t n = strlen(word);

    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0)
        return false;
    p->pos += n;
    return true;
}

static void parse_value(jparser_t *p, uint32_t idx, unsigned depth);

/* Parse the members (object) or elements (array) of node idx; p->pos is past the bracket. */
static void parse_children(jparser_t *p, uint32_t idx, bool is_obj, unsigned depth)
{
    char close = is_obj ? '}' : ']';
    uint32_t prev = 0;

    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        return;
    }
    for (;;) {
        uint32_t key_off = 0, key_len = 0, child;
        bool esc;

        skip_ws(p);
        if (is_obj) {
            if (p->pos >= p->len || p->s[p->pos] != '"' ||
                !scan_string(p, &key_off, &key_len, &esc)) {
                p->bad = true;
                return;
            }
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') {
                p->bad = true;
                return;
            }
            p->pos++;
            skip_ws(p);
        }
        child = new_node(p);
        p->d->v[child].key = key_off;
        p->d->v[child].key_len = key_len;
        if (prev)
            p->d->v[prev].next = child;
        else
            p->d->v[idx].child = child;
        prev = child;
        parse_value(p, child, depth + 1);
        if (p->bad)
            return;
        skip_ws(p);
        if (p->pos >= p->len) {
            p->bad = true;
            return;
        }
        if (p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->s[p->pos] == close) {
            p->pos++;
            return;
        }
        p->bad = true;
        return;
    }
}

static void parse_value(jparser_t *p, uint32_t idx, unsigned depth)
{
    char c;

    if (depth > p->max_depth || p->d->n >= (1u << 30)) {
        p->bad = true;
        return;
    }
    skip_ws(p);
    if (p->pos >= p->len) {
        p->bad = true;
        return;
    }
    c = p->s[p->pos];
    if (c == '{' || c == '[') {
        p->d->v[idx].type = c == '{' ? ROUTE_J_OBJ : ROUTE_J_ARR;
        p->pos++;
        parse_children(p, idx, c == '{', depth);
    } else if (c == '"') {
        uint32_t off, len;
        bool esc;
        if (!scan_string(p, &off, &len, &esc)) {
            p->bad = true;
            return;
        }
        p->d->v[idx].type = ROUTE_J_STR;
        p->d->v[idx].off = off;
        p->d->v[idx].len = len;
        p->d->v[idx].has_escape = esc;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        size_t start = p->pos;
        while (p->pos < p->len && strchr("+-0123456789.eE", p->s[p->pos]) != NULL &&
               p->s[p->pos] != '\0')
            p->pos++;
        p->d->v[idx].type = ROUTE_J_NUM;
        p->d->v[idx].off = (uint32_t)start;
        p->d->v[idx].len = (uint32_t)(p->pos - start);
    } else if (lit(p, "true") || lit(p, "false")) {
        p->d->v[idx].type = ROUTE_J_BOOL;
        p->d->v[idx].bval = c == 't';
        p->d->v[idx].off = (uint32_t)(p->pos - (c == 't' ? 4 : 5));
        p->d->v[idx].len = c == 't' ? 4 : 5;
    } else if (lit(p, "null")) {
        p->d->v[idx].type = ROUTE_J_NULL;
    } else {
        p->bad = true;
        return;
    }
    /* Children were appended after idx: the subtree ends at the current count. */
    p->d->v[idx].end = p->d->n;
}

int route_json_parse(route_jdoc_t *d, const char *src, size_t len, unsigned max_depth)
{
    jparser_t p = { .d = d, .s = src, .len = len, .max_depth = max_depth };

    memset(d, 0, sizeof(*d));
    d->src = src;
    if (len >= (1u << 31))
        return -1;
    (void)new_node(&p);
    parse_value(&p, 0, 0);
    skip_ws(&p);
    if (p.bad || p.pos != p.len)
        return -1;
    return 0;
}

void route_json_free(route_jdoc_t *d)
{
    free(d->v);
    memset(d, 0, sizeof(*d));
}

bool route_json_key_is(const route_jdoc_t *d, uint32_t i, const char *key)
{
    size_t n = strlen(key);

    return d->v[i].key_len == n && memcmp(d->src + d->v[i].key, key, n) == 0;
}

uint32_t route_json_get(const route_jdoc_t *d, uint32_t obj, const char *key)
{
    if (obj >= d->n || d->v[obj].type != ROUTE_J_OBJ)
        return 0;
    for (uint32_t c = d->v[obj].child; c != 0; c = d->v[c].next)
        if (route_json_key_is(d, c, key))
            return c;
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool read_u16(const char *s, size_t n, size_t i, unsigned *out)
{
    unsigned v = 0;

    if (i + 4 > n)
        return false;
    for (size_t k = 0; k < 4; k++) {
        int h = hexval(s[i + k]);
        if (h < 0)
            return false;
        v = v * 16 + (unsigned)h;
    }
    *out = v;
    return true;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/*
 * Decode the raw string s[0..n) into out (room for n + 1 bytes: decoding
 * never grows the text). Returns the decoded length; out is NUL-terminated.
 * A NUL produced by \u0000 is kept in the length but ends C-string use.
 */
static size_t decode(const char *s, size_t n, char *out)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned cp, lo;
        if (s[i] != '\\' || i + 1 >= n) {
            out[o++] = s[i];
            continue;
        }
        i++;
        switch (s[i]) {
        case 'b':
            out[o++] = '\b';
            break;
        case 'f':
            out[o++] = '\f';
            break;
        case 'n':
            out[o++] = '\n';
            break;
        case 'r':
            out[o++] = '\r';
            break;
        case 't':
            out[o++] = '\t';
            break;
        case 'u':
            if (!read_u16(s, n, i + 1, &cp)) {
                out[o++] = 'u';
                break;
            }
            i += 4;
            /* A surrogate pair takes 12 source bytes and gives 4: still no growth. */
            if (cp >= 0xD800 && cp < 0xDC00 && i + 2 < n && s[i + 1] == '\\' && s[i + 2] == 'u' &&
                read_u16(s, n, i + 3, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                i += 6;
            } else if (cp >= 0xD800 && cp < 0xE000) {
                cp = 0xFFFD;
            }
            o += put_utf8(out + o, cp);
            break;
        default: /* \" \\ \/ and anything else: the character itself */
            out[o++] = s[i];
            break;
        }
    }
    out[o] = '\0';
    return o;
}

char *route_json_str_dup(const route_jdoc_t *d, uint32_t i)
{
    const route_jnode_t *n = &d->v[i];
    char *out = cm_xmalloc((size_t)n->len + 1);

    if (n->type == ROUTE_J_STR && n->has_escape) {
        decode(d->src + n->off, n->len, out);
    } else {
        memcpy(out, d->src + n->off, n->len);
        out[n->len] = '\0';
    }
    return out;
}

bool route_json_str_eq(const route_jdoc_t *d, uint32_t i, const char *lit_s)
{
    const route_jnode_t *n;
    size_t l = strlen(lit_s);
    bool eq;
    char *tmp;

    if (i == 0 || i >= d->n || d->v[i].type != ROUTE_J_STR)
        return false;
    n = &d->v[i];
    if (!n->has_escape)
        return n->len == l && memcmp(d->src + n->off, lit_s, l) == 0;
    tmp = route_json_str_dup(d, i);
    eq = strcmp(tmp, lit_s) == 0;
    free(tmp);
    return eq;
}

uint32_t route_json_node(const route_jdoc_t *d, uint32_t i, const char **type, size_t *type_len)
{
    uint32_t c;

    if (i == 0 || i >= d->n || d->v[i].type != ROUTE_J_OBJ)
        return 0;
    c = d->v[i].child;
    if (c == 0 || d->v[c].type != ROUTE_J_OBJ)
        return 0;
    if (type != NULL) {
        *type = d->src + d->v[c].key;
        *type_len = d->v[c].key_len;
    }
    return c;
}
