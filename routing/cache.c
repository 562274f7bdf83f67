/*
 * routing/cache.c - classifications cached by query text.
 *
 * A hash of the text picks a bucket; a hit also compares the whole text, so
 * two texts never share a classification. At most `capacity` entries are
 * kept, the least recently used evicted first. Entries hold a reference on
 * their route_class_t and hand out new ones, so a classification the proxy
 * still uses (a prepared statement) outlives its eviction. A miss tries
 * route_classify_fast first; its answers are returned without an entry, so
 * one-off texts with literal values do not evict the texts that repeat.
 * Loop thread only.
 */
#include <stdlib.h>
#include <string.h>

#include "routing/routing.h"
#include "routing/routing_int.h"

typedef struct centry {
    uint64_t hash;
    char *text; /* owned copy of the key */
    size_t len;
    route_class_t *cls;   /* one reference held by the cache */
    struct centry *chain; /* bucket chain */
    struct centry *prev;  /* LRU list: head = most recent */
    struct centry *next;
} centry_t;

struct route_cache {
    const route_tenancy_t *ten; /* kept */
    size_t capacity;
    size_t n;
    centry_t **buckets;
    size_t n_buckets; /* power of two */
    centry_t *head;   /* most recently used */
    centry_t *tail;   /* least recently used */
    uint64_t hits, misses, fast, evictions;
    route_shapes_t *shapes; /* literal-normalized texts the fast path's grammar check passed */
};

uint64_t route_hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full);
    size_t i = 0;

    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h ^= w * 0x87C37B91114253D5ull;
        h = (h << 31 | h >> 33) * 0x4CF5AD432745937Full;
    }
    if (i < n) {
        uint64_t w = 0;
        memcpy(&w, s + i, n - i);
        h ^= w * 0x87C37B91114253D5ull;
        h = (h << 31 | h >> 33) * 0x4CF5AD432745937Full;
    }
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    return h;
}

route_cache_t *route_cache_new(size_t capacity, const route_tenancy_t *ten)
{
    route_cache_t *c = cm_xcalloc(1, sizeof(*c));

    BUG_ON(capacity == 0, "route cache of capacity 0");
    c->ten = ten;
    c->capacity = capacity;
    c->n_buckets = 16;
    while (c->n_buckets < capacity && c->n_buckets < ((size_t)1 << 30))
        c->n_buckets *= 2;
    c->buckets = cm_xcalloc(c->n_buckets, sizeof(*c->buckets));
    c->shapes = route_shapes_new();
    return c;
}

static void lru_unlink(route_cache_t *c, centry_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(route_cache_t *c, centry_t *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (c->tail == NULL)
        c->tail = e;
}

static void entry_free(centry_t *e)
{
    route_class_unref(e->cls);
    free(e->text);
    free(e);
}

static void evict_tail(route_cache_t *c)
{
    centry_t *e = c->tail, **pp;

    BUG_ON(e == NULL, "evict from an empty route cache");
    pp = &c->buckets[e->hash & (c->n_buckets - 1)];
    while (*pp != e) {
        BUG_ON(*pp == NULL, "route cache entry not in its bucket");
        pp = &(*pp)->chain;
    }
    *pp = e->chain;
    lru_unlink(c, e);
    entry_free(e);
    c->n--;
    c->evictions++;
}

void route_cache_free(route_cache_t *c)
{
    centry_t *e, *next;

    if (c == NULL)
        return;
    for (e = c->head; e != NULL; e = next) {
        next = e->next;
        entry_free(e);
    }
    free(c->buckets);
    route_shapes_free(c->shapes);
    free(c);
}

route_class_t *route_cache_get(route_cache_t *c, const char *sql, size_t len)
{
    uint64_t h = route_hash_bytes(sql, len);
    centry_t **bucket = &c->buckets[h & (c->n_buckets - 1)], *e;
    route_class_t *cls;

    for (e = *bucket; e != NULL; e = e->chain) {
        if (e->hash == h && e->len == len && memcmp(e->text, sql, len) == 0) {
            c->hits++;
            if (c->head != e) {
                lru_unlink(c, e);
                lru_push_front(c, e);
            }
            return route_class_ref(e->cls);
        }
    }
    c->misses++;
    /* Provably tenant-free texts (literal values: rarely seen twice) skip the parse and the LRU. */
    if ((cls = route_classify_fast_shaped(sql, len, c->ten, c->shapes)) != NULL) {
        c->fast++;
        return cls;
    }
    if (c->n >= c->capacity)
        evict_tail(c);
    e = cm_xcalloc(1, sizeof(*e));
    e->hash = h;
    e->len = len;
    e->text = cm_xmalloc(len ? len : 1);
    if (len > 0)
        memcpy(e->text, sql, len);
    e->cls = route_classify(sql, len, c->ten);
    /* The eviction above may have emptied this bucket: read it again. */
    bucket = &c->buckets[h & (c->n_buckets - 1)];
    e->chain = *bucket;
    *bucket = e;
    lru_push_front(c, e);
    c->n++;
    return route_class_ref(e->cls);
}

route_cache_stats_t route_cache_stats(const route_cache_t *c)
{
    route_cache_stats_t s = {
        .hits = c->hits,
        .misses = c->misses,
        .fast = c->fast,
        .evictions = c->evictions,
        .n_entries = c->n,
        .capacity = c->capacity,
    };
    return s;
}
