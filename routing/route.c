/*
 * routing/route.c - the route table, the aggregate -> tenant map and the
 * route decision.
 *
 * Everything here is a pure function of its arguments: no clock, no I/O, no
 * logging, no globals. The loop owns the mutable pieces (the aggregate map,
 * unfrozen tables); frozen route tables are immutable and shared through
 * atomic reference counts, so a whole new table is published by swapping a
 * pointer. It does not know libpg_query: statements arrive classified.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routing/routing.h"
#include "routing/routing_int.h"

#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_UUID 2950

/* ---- hashing (FNV-1a, 64 bit) ---------------------------------------- */

static uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull;

    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* ---- tenancy --------------------------------------------------------- */

static char *lower_trim(const char *s, size_t n)
{
    char *o;
    size_t k = 0;

    while (n > 0 && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    o = cm_xmalloc(n + 1);
    for (size_t i = 0; i < n; i++)
        o[k++] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] - 'A' + 'a') : s[i];
    o[k] = '\0';
    return o;
}

static char **split_csv(const char *csv, size_t *n_out)
{
    char **out = NULL;
    size_t n = 0;
    const char *p = csv;

    while (p != NULL && *p != '\0') {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char *item = lower_trim(p, len);
        if (item[0] != '\0') {
            out = cm_xrealloc(out, (n + 1) * sizeof(*out));
            out[n++] = item;
        } else {
            free(item);
        }
        p = comma ? comma + 1 : NULL;
    }
    *n_out = n;
    return out;
}

static char *one(const char *s, const char *dflt)
{
    return (s == NULL || *s == '\0') ? cm_xstrdup(dflt) : lower_trim(s, strlen(s));
}

void route_tenancy_init(route_tenancy_t *t, const char *tables_csv, const char *tenant_column,
                        const char *key_columns_csv, const char *position_column,
                        const char *row_key)
{
    memset(t, 0, sizeof(*t));
    t->tables = split_csv((tables_csv && *tables_csv)
                              ? tables_csv
                              : "events,event_outbox,snapshots,projection_checkpoints",
                          &t->n_tables);
    t->key_columns =
        split_csv((key_columns_csv && *key_columns_csv) ? key_columns_csv : "aggregate_id",
                  &t->n_key_columns);
    t->tenant_column = one(tenant_column, "tenant_id");
    t->position_column = one(position_column, "global_position");
    t->row_key = one(row_key, "event_id");
    t->tenant_setting = cm_xstrdup("pgshift.tenant");
}

void route_tenancy_destroy(route_tenancy_t *t)
{
    for (size_t i = 0; i < t->n_tables; i++)
        free(t->tables[i]);
    free(t->tables);
    for (size_t i = 0; i < t->n_key_columns; i++)
        free(t->key_columns[i]);
    free(t->key_columns);
    free(t->tenant_column);
    free(t->position_column);
    free(t->row_key);
    free(t->tenant_setting);
    memset(t, 0, sizeof(*t));
}

/* ---- UUID canonical form -------------------------------------------- */

static int hexv(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* PostgreSQL's uuid_in: optional braces, a hyphen allowed after any group of 4 digits. */
bool route_uuid_canon(const char *s, size_t len, char out[37])
{
    static const char hex[] = "0123456789abcdef";
    char digits[32];
    size_t i = 0, nd = 0;

    if (len >= 2 && s[0] == '{') {
        if (s[len - 1] != '}')
            return false;
        s++;
        len -= 2;
    }
    while (i < len) {
        int h = hexv(s[i]);
        if (h < 0 || nd == 32)
            return false;
        digits[nd++] = hex[h];
        i++;
        if (nd % 4 == 0 && nd < 32 && i < len && s[i] == '-')
            i++;
    }
    if (nd != 32)
        return false;
    for (size_t k = 0, o = 0; k < 32; k++) {
        if (k == 8 || k == 12 || k == 16 || k == 20)
            out[o++] = '-';
        out[o++] = digits[k];
    }
    out[36] = '\0';
    return true;
}

/* Canonical copy of a tenant / key value: UUIDs canonical, anything else as is. */
static char *canon_dup(const char *s, size_t len)
{
    char u[37];

    if (route_uuid_canon(s, len, u))
        return cm_xstrdup(u);
    return cm_xstrndup(s, len);
}

/* ---- route table ------------------------------------------------------ */

struct route_table {
    atomic_int refcount;
    bool frozen;
    size_t n_stores;
    char **store_names;
    route_entry_t *entries; /* dense; entries[i].tenant owned */
    size_t n;
    size_t cap;
    uint32_t *slots;    /* open addressing: entries index + 1, 0 = empty */
    size_t n_slots;     /* power of two, > 2 * n */
    uint64_t *hold_min; /* frozen: per store, the lowest hold_gen of its CUTOVER routes,
                           UINT64_MAX = none; NULL before route_table_freeze */
};

static void table_reindex(route_table_t *t)
{
    size_t want = 16;

    while (want < 2 * (t->n + 1))
        want *= 2;
    free(t->slots);
    t->slots = cm_xcalloc(want, sizeof(*t->slots));
    t->n_slots = want;
    for (size_t i = 0; i < t->n; i++) {
        const char *k = t->entries[i].tenant;
        size_t s = hash_bytes(k, strlen(k)) & (want - 1);
        while (t->slots[s] != 0)
            s = (s + 1) & (want - 1);
        t->slots[s] = (uint32_t)(i + 1);
    }
}

/* Index into entries of a canonical tenant, or -1. */
static long table_find(const route_table_t *t, const char *k, size_t len)
{
    size_t s;

    if (t->n_slots == 0)
        return -1;
    s = hash_bytes(k, len) & (t->n_slots - 1);
    while (t->slots[s] != 0) {
        const char *e = t->entries[t->slots[s] - 1].tenant;
        if (strlen(e) == len && memcmp(e, k, len) == 0)
            return (long)t->slots[s] - 1;
        s = (s + 1) & (t->n_slots - 1);
    }
    return -1;
}

route_table_t *route_table_new(size_t n_stores, const char *const *store_names)
{
    route_table_t *t = cm_xcalloc(1, sizeof(*t));

    atomic_init(&t->refcount, 1);
    t->n_stores = n_stores;
    t->store_names = cm_xcalloc(n_stores ? n_stores : 1, sizeof(char *));
    for (size_t i = 0; i < n_stores; i++)
        t->store_names[i] = cm_xstrdup(store_names[i] ? store_names[i] : "");
    table_reindex(t);
    return t;
}

route_table_t *route_table_clone(const route_table_t *src)
{
    route_table_t *t = route_table_new(src->n_stores, (const char *const *)src->store_names);

    t->cap = src->n;
    t->n = src->n;
    t->entries = cm_xcalloc(t->cap ? t->cap : 1, sizeof(*t->entries));
    for (size_t i = 0; i < src->n; i++) {
        t->entries[i] = src->entries[i];
        t->entries[i].tenant = cm_xstrdup(src->entries[i].tenant);
    }
    table_reindex(t);
    return t;
}

void route_table_put(route_table_t *t, const route_entry_t *e)
{
    char *k;
    long i;

    BUG_ON(t->frozen, "route_table_put on a frozen table");
    BUG_ON(e->tenant == NULL, "route without a tenant");
    BUG_ON(e->store < 0 || (size_t)e->store >= t->n_stores, "bad store %d", e->store);
    BUG_ON(e->target_store >= 0 && (size_t)e->target_store >= t->n_stores, "bad target %d",
           e->target_store);
    k = canon_dup(e->tenant, strlen(e->tenant));
    i = table_find(t, k, strlen(k));
    if (i >= 0) {
        free((char *)t->entries[i].tenant);
        t->entries[i] = *e;
        t->entries[i].tenant = k;
        return;
    }
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 16;
        t->entries = cm_xrealloc(t->entries, t->cap * sizeof(*t->entries));
    }
    t->entries[t->n] = *e;
    t->entries[t->n].tenant = k;
    t->n++;
    if (2 * (t->n + 1) > t->n_slots) {
        table_reindex(t);
    } else {
        size_t s = hash_bytes(k, strlen(k)) & (t->n_slots - 1);
        while (t->slots[s] != 0)
            s = (s + 1) & (t->n_slots - 1);
        t->slots[s] = (uint32_t)t->n;
    }
}

bool route_table_del(route_table_t *t, const char *tenant)
{
    char *k;
    long i;

    BUG_ON(t->frozen, "route_table_del on a frozen table");
    k = canon_dup(tenant, strlen(tenant));
    i = table_find(t, k, strlen(k));
    free(k);
    if (i < 0)
        return false;
    free((char *)t->entries[i].tenant);
    t->entries[i] = t->entries[t->n - 1];
    t->n--;
    table_reindex(t);
    return true;
}

void route_table_freeze(route_table_t *t)
{
    if (t->frozen)
        return;
    t->hold_min = cm_xmalloc((t->n_stores ? t->n_stores : 1) * sizeof(*t->hold_min));
    for (size_t i = 0; i < t->n_stores; i++)
        t->hold_min[i] = UINT64_MAX;
    for (size_t i = 0; i < t->n; i++) {
        const route_entry_t *e = &t->entries[i];
        int s = route_entry_store(e);

        if (e->phase == ROUTE_PHASE_CUTOVER && e->hold_gen < t->hold_min[s])
            t->hold_min[s] = e->hold_gen;
    }
    t->frozen = true;
}

const route_entry_t *route_table_get(const route_table_t *t, const char *tenant, size_t len)
{
    char u[37];
    long i;

    if (route_uuid_canon(tenant, len, u))
        i = table_find(t, u, 36);
    else
        i = table_find(t, tenant, len);
    return i >= 0 ? &t->entries[i] : NULL;
}

size_t route_table_len(const route_table_t *t)
{
    return t->n;
}

const route_entry_t *route_table_at(const route_table_t *t, size_t i)
{
    BUG_ON(i >= t->n, "route_table_at(%zu) of %zu", i, t->n);
    return &t->entries[i];
}

size_t route_table_n_stores(const route_table_t *t)
{
    return t->n_stores;
}

const char *route_table_store_name(const route_table_t *t, int store)
{
    if (store < 0 || (size_t)store >= t->n_stores)
        return "?";
    return t->store_names[store];
}

int route_entry_store(const route_entry_t *e)
{
    if (e->state == ROUTE_STATE_MIGRATING && e->phase == ROUTE_PHASE_COMPLETED &&
        e->target_store >= 0)
        return e->target_store;
    return e->store;
}

size_t route_table_set_hold_gens(route_table_t *t, const route_table_t *prev, uint64_t gen)
{
    size_t n = 0;

    BUG_ON(t->frozen, "route_table_set_hold_gens on a frozen table");
    for (size_t i = 0; i < t->n; i++) {
        route_entry_t *e = &t->entries[i];
        const route_entry_t *old;

        if (e->phase != ROUTE_PHASE_CUTOVER) {
            e->hold_gen = 0;
            continue;
        }
        n++;
        e->hold_gen = gen;
        old = prev ? route_table_get(prev, e->tenant, strlen(e->tenant)) : NULL;
        if (old != NULL && old->phase == ROUTE_PHASE_CUTOVER &&
            old->migration_id == e->migration_id && old->cutover_attempt == e->cutover_attempt &&
            old->hold_gen != 0)
            e->hold_gen = old->hold_gen;
    }
    return n;
}

route_table_t *route_table_ref(route_table_t *t)
{
    int old = atomic_fetch_add(&t->refcount, 1);

    BUG_ON(old <= 0, "route_table_ref on a freed table");
    return t;
}

void route_table_unref(route_table_t *t)
{
    int old;

    if (t == NULL)
        return;
    old = atomic_fetch_sub(&t->refcount, 1);
    BUG_ON(old <= 0, "route_table_unref on a freed table");
    if (old > 1)
        return;
    for (size_t i = 0; i < t->n; i++)
        free((char *)t->entries[i].tenant);
    free(t->entries);
    for (size_t i = 0; i < t->n_stores; i++)
        free(t->store_names[i]);
    free(t->store_names);
    free(t->slots);
    free(t->hold_min);
    free(t);
}

const char *route_state_str(route_state_t s)
{
    switch (s) {
    case ROUTE_STATE_NORMAL:
        return "normal";
    case ROUTE_STATE_MIGRATING:
        return "migrating";
    }
    return "?";
}

const char *route_phase_str(route_phase_t p)
{
    switch (p) {
    case ROUTE_PHASE_NONE:
        return "none";
    case ROUTE_PHASE_PENDING:
        return "pending";
    case ROUTE_PHASE_BULK_COPY:
        return "bulk_copy";
    case ROUTE_PHASE_DUAL_WRITE:
        return "dual_write";
    case ROUTE_PHASE_CUTOVER:
        return "cutover";
    case ROUTE_PHASE_COMPLETED:
        return "completed";
    case ROUTE_PHASE_ABORTED:
        return "aborted";
    case ROUTE_PHASE_FAILED:
        return "failed";
    }
    return "?";
}

/* ---- aggregate -> tenant map ----------------------------------------- */

typedef struct agg_ent {
    char *key;     /* canonical, owned; NULL = free slot */
    char *tenant;  /* canonical, owned; NULL = negative entry */
    uint64_t hash; /* of key */
    int32_t next;  /* bucket chain, -1 = end */
    bool ref;      /* clock: learned again since the hand last passed */
} agg_ent_t;

struct route_aggmap {
    size_t cap;       /* entries */
    size_t n;         /* used entries */
    agg_ent_t *ents;  /* cap */
    int32_t *buckets; /* n_buckets heads, -1 = empty */
    size_t n_buckets; /* power of two */
    int32_t *free_list;
    size_t n_free;
    size_t hand; /* clock hand */
};

route_aggmap_t *route_aggmap_new(size_t capacity)
{
    route_aggmap_t *m = cm_xcalloc(1, sizeof(*m));

    BUG_ON(capacity == 0 || capacity > INT32_MAX / 4, "bad aggmap capacity %zu", capacity);
    m->cap = capacity;
    m->ents = cm_xcalloc(capacity, sizeof(*m->ents));
    m->n_buckets = 16;
    while (m->n_buckets < capacity)
        m->n_buckets *= 2;
    m->buckets = cm_xmalloc(m->n_buckets * sizeof(*m->buckets));
    for (size_t i = 0; i < m->n_buckets; i++)
        m->buckets[i] = -1;
    m->free_list = cm_xmalloc(capacity * sizeof(*m->free_list));
    for (size_t i = 0; i < capacity; i++)
        m->free_list[i] = (int32_t)(capacity - 1 - i);
    m->n_free = capacity;
    return m;
}

void route_aggmap_free(route_aggmap_t *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->cap; i++) {
        free(m->ents[i].key);
        free(m->ents[i].tenant);
    }
    free(m->ents);
    free(m->buckets);
    free(m->free_list);
    free(m);
}

static int32_t agg_find(const route_aggmap_t *m, const char *k, uint64_t h)
{
    for (int32_t i = m->buckets[h & (m->n_buckets - 1)]; i >= 0; i = m->ents[i].next)
        if (m->ents[i].hash == h && strcmp(m->ents[i].key, k) == 0)
            return i;
    return -1;
}

static void agg_unlink(route_aggmap_t *m, int32_t idx)
{
    int32_t *pp = &m->buckets[m->ents[idx].hash & (m->n_buckets - 1)];

    while (*pp != idx) {
        BUG_ON(*pp < 0, "aggmap entry %d not in its bucket", idx);
        pp = &m->ents[*pp].next;
    }
    *pp = m->ents[idx].next;
    free(m->ents[idx].key);
    free(m->ents[idx].tenant);
    memset(&m->ents[idx], 0, sizeof(m->ents[idx]));
    m->free_list[m->n_free++] = idx;
    m->n--;
}

void route_aggmap_learn(route_aggmap_t *m, const char *key, size_t key_len, const char *tenant,
                        size_t tenant_len)
{
    char *k = canon_dup(key, key_len);
    uint64_t h = hash_bytes(k, strlen(k));
    int32_t i = agg_find(m, k, h);

    if (i >= 0) {
        free(k);
        free(m->ents[i].tenant);
        m->ents[i].tenant = tenant ? canon_dup(tenant, tenant_len) : NULL;
        m->ents[i].ref = true;
        return;
    }
    if (m->n_free == 0) {
        /* Clock: skip (and clear) entries learned again since the last pass. */
        for (;;) {
            agg_ent_t *e = &m->ents[m->hand];
            size_t at = m->hand;
            m->hand = (m->hand + 1) % m->cap;
            if (e->key == NULL)
                continue;
            if (e->ref) {
                e->ref = false;
                continue;
            }
            agg_unlink(m, (int32_t)at);
            break;
        }
    }
    i = m->free_list[--m->n_free];
    m->ents[i].key = k;
    m->ents[i].tenant = tenant ? canon_dup(tenant, tenant_len) : NULL;
    m->ents[i].hash = h;
    m->ents[i].ref = false;
    m->ents[i].next = m->buckets[h & (m->n_buckets - 1)];
    m->buckets[h & (m->n_buckets - 1)] = i;
    m->n++;
}

bool route_aggmap_get(const route_aggmap_t *m, const char *key, size_t key_len, const char **tenant)
{
    char u[37], buf[ROUTE_VALUE_MAX + 1];
    const char *k = buf;
    char *tmp = NULL;
    int32_t i;

    if (route_uuid_canon(key, key_len, u)) {
        k = u;
    } else if (key_len <= ROUTE_VALUE_MAX) {
        memcpy(buf, key, key_len);
        buf[key_len] = '\0';
    } else {
        k = tmp = cm_xstrndup(key, key_len);
    }
    i = agg_find(m, k, hash_bytes(k, strlen(k)));
    free(tmp);
    if (i < 0)
        return false;
    *tenant = m->ents[i].tenant;
    return true;
}

void route_aggmap_forget(route_aggmap_t *m, const char *key, size_t key_len)
{
    char *k = canon_dup(key, key_len);
    int32_t i = agg_find(m, k, hash_bytes(k, strlen(k)));

    free(k);
    if (i >= 0)
        agg_unlink(m, i);
}

size_t route_aggmap_len(const route_aggmap_t *m)
{
    return m->n;
}

/* ---- decision ---------------------------------------------------------- */

/*
 * Resolve a value to canonical text in out. Returns 1 resolved, 0 no value
 * (none, NULL, expression, unbound or NULL parameter), -1 too long.
 */
static int resolve(const route_val_t *v, const route_params_t *bind, char out[ROUTE_VALUE_MAX + 1])
{
    const route_param_t *p;
    char u[37];
    size_t len;

    if (v->kind == ROUTE_VAL_LITERAL) {
        len = strlen(v->text);
        if (len > ROUTE_VALUE_MAX)
            return -1;
        memcpy(out, v->text, len + 1);
        return 1;
    }
    if (v->kind != ROUTE_VAL_PARAM || bind == NULL || v->param < 1 || (size_t)v->param > bind->n)
        return 0;
    p = &bind->v[v->param - 1];
    if (p->len < 0 || (p->len > 0 && p->data == NULL))
        return 0;
    if (p->is_binary) {
        const uint8_t *b = p->data;
        if ((p->type_oid == OID_UUID || p->type_oid == 0) && p->len == 16) {
            static const char hex[] = "0123456789abcdef";
            size_t o = 0;
            for (int i = 0; i < 16; i++) {
                if (i == 4 || i == 6 || i == 8 || i == 10)
                    out[o++] = '-';
                out[o++] = hex[b[i] >> 4];
                out[o++] = hex[b[i] & 15];
            }
            out[o] = '\0';
            return 1;
        }
        if ((p->type_oid == OID_INT2 && p->len == 2) || (p->type_oid == OID_INT4 && p->len == 4) ||
            (p->type_oid == OID_INT8 && p->len == 8)) {
            int64_t x = 0;
            for (int i = 0; i < p->len; i++)
                x = (int64_t)((uint64_t)x << 8 | b[i]);
            if (p->len == 2)
                x = (int16_t)x;
            else if (p->len == 4)
                x = (int32_t)x;
            snprintf(out, ROUTE_VALUE_MAX + 1, "%lld", (long long)x);
            return 1;
        }
        if (p->type_oid == OID_UUID)
            return 0; /* a binary uuid of the wrong size: PostgreSQL rejects it */
    }
    len = (size_t)p->len;
    if (memchr(p->data, '\0', len) != NULL)
        return 0;
    if (route_uuid_canon((const char *)p->data, len, u)) {
        memcpy(out, u, 37);
        return 1;
    }
    if (len > ROUTE_VALUE_MAX)
        return -1;
    memcpy(out, p->data, len);
    out[len] = '\0';
    return 1;
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);

    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static route_decision_t refuse(route_decision_t d, route_reason_t why, const char *sqlstate)
{
    d.action = ROUTE_ACT_REFUSE;
    d.reason = why;
    d.store = -1;
    d.binds = d.tentative = d.rebind = false;
    copy_str(d.sqlstate, sizeof(d.sqlstate), sqlstate);
    return d;
}

static route_decision_t send_to(route_decision_t d, int store, route_reason_t why)
{
    d.action = ROUTE_ACT_SEND;
    d.store = store;
    d.reason = why;
    return d;
}

/* Statement kinds that carry no data: transaction control and session commands. */
static route_decision_t decide_control(route_decision_t d, const route_session_t *sess,
                                       const route_stmt_t *stmt, int def)
{
    bool bound = sess->in_txn && sess->bound_store >= 0;
    bool unbound_txn = sess->in_txn && sess->bound_store < 0;

    switch (stmt->kind) {
    case ROUTE_KIND_TXN_BEGIN:
        if (bound)
            return send_to(d, sess->bound_store, ROUTE_R_TXN_BOUND);
        d.action = ROUTE_ACT_DEFER;
        d.reason = ROUTE_R_TXN_DEFER;
        return d;
    case ROUTE_KIND_TXN_OTHER:
        if (bound)
            return send_to(d, sess->bound_store, ROUTE_R_TXN_BOUND);
        if (unbound_txn) {
            d.action = ROUTE_ACT_DEFER;
            d.reason = ROUTE_R_TXN_DEFER;
            return d;
        }
        return send_to(d, def, ROUTE_R_TXN_NONE);
    case ROUTE_KIND_TXN_COMMIT:
    case ROUTE_KIND_TXN_ROLLBACK:
        if (bound)
            return send_to(d, sess->bound_store, ROUTE_R_TXN_BOUND);
        if (unbound_txn) {
            d.action = ROUTE_ACT_LOCAL;
            d.reason = ROUTE_R_TXN_LOCAL;
            return d;
        }
        return send_to(d, def, ROUTE_R_TXN_NONE);
    case ROUTE_KIND_SESSION_SET:
    case ROUTE_KIND_SESSION_OTHER:
        if (bound)
            return send_to(d, sess->bound_store, ROUTE_R_SESSION_CMD);
        if (unbound_txn && stmt->is_show) {
            /* It must answer with its row now: a store answers it (and may still move). */
            d = send_to(d, def, ROUTE_R_SESSION_CMD);
            d.binds = true;
            d.tentative = true;
            return d;
        }
        if (unbound_txn) {
            d.action = ROUTE_ACT_DEFER;
            d.reason = ROUTE_R_SESSION_DEFER;
            return d;
        }
        return send_to(d, def, ROUTE_R_SESSION_CMD);
    case ROUTE_KIND_UNKNOWN:
        d = send_to(d, bound ? sess->bound_store : def, ROUTE_R_UNPARSED);
        if (unbound_txn) {
            d.binds = true;
            d.tentative = true;
        }
        return d;
    case ROUTE_KIND_READ:
    case ROUTE_KIND_WRITE:
    case ROUTE_KIND_DDL:
    case ROUTE_KIND_UTILITY:
    case ROUTE_KIND_COPY_IN:
    case ROUTE_KIND_COPY_OUT:
    default:
        BUG_ON(1, "decide_control on kind %d", (int)stmt->kind);
    }
    return d;
}

/*
 * Whether tenant route e holds the statement: at cutover, only a transaction
 * already bound to the tenant's current store, that began before the hold,
 * goes on.
 */
static bool cutover_holds(const route_session_t *sess, bool bound, const route_entry_t *e)
{
    if (e == NULL || e->phase != ROUTE_PHASE_CUTOVER)
        return false;
    return !(bound && sess->bound_store == route_entry_store(e) && sess->bound_gen < e->hold_gen);
}

/*
 * Whether a route on `store` is at cutover with a hold that began at or
 * before generation gen: work of a transaction from gen on that names one
 * of those tenants must wait, so an unknown key cannot simply be trusted to
 * the bound store.
 */
static bool store_held_since(const route_table_t *t, int store, uint64_t gen)
{
    if (t->hold_min != NULL)
        return t->hold_min[store] <= gen;
    for (size_t i = 0; i < t->n; i++) {
        const route_entry_t *e = &t->entries[i];

        if (e->phase == ROUTE_PHASE_CUTOVER && route_entry_store(e) == store && e->hold_gen <= gen)
            return true;
    }
    return false;
}

static int tenant_store(const route_table_t *t, const char *tenant, int def,
                        const route_entry_t **entry)
{
    const route_entry_t *e = route_table_get(t, tenant, strlen(tenant));

    *entry = e;
    return e ? route_entry_store(e) : def;
}

route_decision_t route_decide(const route_table_t *t, const route_session_t *sess,
                              const route_stmt_t *stmt, const route_params_t *bind)
{
    route_decision_t d;
    char val[ROUTE_VALUE_MAX + 1], sess_tenant[ROUTE_VALUE_MAX + 1];
    const route_entry_t *e = NULL, *held = NULL;
    bool has_sess = false, bound, fallback;
    int def = sess->default_store, store = -1;
    route_reason_t why;

    memset(&d, 0, sizeof(d));
    d.store = -1;
    d.key_column = -1;
    BUG_ON(def < 0 || (size_t)def >= t->n_stores, "bad default store %d", def);
    BUG_ON(sess->bound_store >= 0 && (size_t)sess->bound_store >= t->n_stores, "bad bound store %d",
           sess->bound_store);
    bound = sess->in_txn && sess->bound_store >= 0;

    switch (stmt->kind) {
    case ROUTE_KIND_READ:
    case ROUTE_KIND_WRITE:
    case ROUTE_KIND_DDL:
    case ROUTE_KIND_UTILITY:
    case ROUTE_KIND_COPY_IN:
    case ROUTE_KIND_COPY_OUT:
        break;
    case ROUTE_KIND_UNKNOWN:
    case ROUTE_KIND_TXN_BEGIN:
    case ROUTE_KIND_TXN_COMMIT:
    case ROUTE_KIND_TXN_ROLLBACK:
    case ROUTE_KIND_TXN_OTHER:
    case ROUTE_KIND_SESSION_SET:
    case ROUTE_KIND_SESSION_OTHER:
        return decide_control(d, sess, stmt, def);
    default:
        BUG_ON(1, "bad statement kind %d", (int)stmt->kind);
    }

    if (sess->tenant != NULL && sess->tenant[0] != '\0') {
        route_val_t sv = { .kind = ROUTE_VAL_LITERAL, .text = (char *)sess->tenant };
        char u[37];
        if (resolve(&sv, NULL, sess_tenant) < 0) {
            snprintf(d.message, sizeof(d.message), "session tenant is longer than %d bytes",
                     ROUTE_VALUE_MAX);
            return refuse(d, ROUTE_R_VALUE_TOO_LONG, "22023");
        }
        if (route_uuid_canon(sess_tenant, strlen(sess_tenant), u))
            memcpy(sess_tenant, u, 37);
        has_sess = true;
    }

    /* Rule 1: the statement's own tenants; all on one store, all the session's. */
    for (size_t i = 0; i < stmt->n_tenants; i++) {
        const route_entry_t *te;
        int s;
        int r = resolve(&stmt->tenants[i], bind, val);
        if (r < 0) {
            snprintf(d.message, sizeof(d.message), "tenant value is longer than %d bytes",
                     ROUTE_VALUE_MAX);
            return refuse(d, ROUTE_R_VALUE_TOO_LONG, "22023");
        }
        if (r == 0)
            continue;
        if (has_sess && strcmp(val, sess_tenant) != 0) {
            snprintf(d.message, sizeof(d.message),
                     "statement tenant \"%.80s\" does not match the session tenant \"%.80s\"", val,
                     sess_tenant);
            return refuse(d, ROUTE_R_TENANT_MISMATCH, "42501");
        }
        s = tenant_store(t, val, def, &te);
        if (held == NULL && cutover_holds(sess, bound, te))
            held = te;
        if (store < 0) {
            store = s;
            e = te;
            copy_str(d.tenant, sizeof(d.tenant), val);
        } else if (s != store) {
            if (stmt->n_rows > 1) {
                snprintf(d.message, sizeof(d.message),
                         "INSERT has rows for tenants on different stores (\"%.60s\" on store "
                         "\"%.30s\", \"%.60s\" on store \"%.30s\")",
                         d.tenant, route_table_store_name(t, store), val,
                         route_table_store_name(t, s));
                return refuse(d, ROUTE_R_ROWS_MULTI_STORE, "0A000");
            }
            snprintf(d.message, sizeof(d.message),
                     "statement names tenants on different stores (\"%.60s\" on store "
                     "\"%.30s\", \"%.60s\" on store \"%.30s\")",
                     d.tenant, route_table_store_name(t, store), val, route_table_store_name(t, s));
            return refuse(d, ROUTE_R_MULTI_STORE, "0A000");
        }
    }
    if (store >= 0) {
        why = ROUTE_R_STMT_TENANT;
    } else if (has_sess) {
        /* Rule 2: the session tenant. */
        store = tenant_store(t, sess_tenant, def, &e);
        if (cutover_holds(sess, bound, e))
            held = e;
        copy_str(d.tenant, sizeof(d.tenant), sess_tenant);
        why = ROUTE_R_SESSION_TENANT;
    } else {
        /* Rule 3: keys whose tenant is known; rule 4: the default store. */
        bool any_negative = false;
        why = ROUTE_R_DEFAULT;
        for (size_t i = 0; sess->aggs != NULL && i < stmt->n_keys; i++) {
            const char *kt;
            const route_entry_t *te;
            int s;
            if (resolve(&stmt->keys[i], bind, val) <= 0)
                continue;
            if (!route_aggmap_get(sess->aggs, val, strlen(val), &kt)) {
                if (bound && !sess->bound_tentative &&
                    !store_held_since(t, sess->bound_store, sess->bound_gen))
                    continue; /* the bound store answers; no lookup round trip */
                d.action = ROUTE_ACT_NEED_LOOKUP;
                d.reason = ROUTE_R_KEY_UNKNOWN;
                d.key_column = stmt->keys[i].column;
                copy_str(d.key, sizeof(d.key), val);
                return d;
            }
            if (kt == NULL) {
                any_negative = true;
                continue;
            }
            s = tenant_store(t, kt, def, &te);
            if (held == NULL && cutover_holds(sess, bound, te))
                held = te;
            if (store < 0) {
                store = s;
                e = te;
                copy_str(d.tenant, sizeof(d.tenant), kt);
                why = ROUTE_R_KEY_TENANT;
            } else if (s != store) {
                snprintf(d.message, sizeof(d.message),
                         "statement names keys of tenants on different stores (\"%.60s\" on "
                         "store \"%.30s\", \"%.60s\" on store \"%.30s\")",
                         d.tenant, route_table_store_name(t, store), kt,
                         route_table_store_name(t, s));
                return refuse(d, ROUTE_R_MULTI_STORE, "0A000");
            }
        }
        if (store < 0) {
            store = def;
            why = any_negative ? ROUTE_R_KEY_NO_TENANT : ROUTE_R_DEFAULT;
        }
    }
    d.route = e;
    fallback = why == ROUTE_R_DEFAULT || why == ROUTE_R_KEY_NO_TENANT;

    /* Inside a bound transaction, statements without a tenant stay on its store. */
    if (fallback && bound) {
        store = sess->bound_store;
        why = ROUTE_R_BOUND;
    }
    /*
     * At cutover only a transaction that was on the tenant's store before the
     * hold goes on (cutover_holds). A later one waits; a tentative one then
     * moves to the tenant's new store through the rebind below once released.
     */
    if (held != NULL) {
        d.action = ROUTE_ACT_HOLD;
        d.reason = ROUTE_R_CUTOVER_HOLD;
        d.store = -1;
        d.route = held;
        copy_str(d.tenant, sizeof(d.tenant), held->tenant);
        return d;
    }
    if (bound && store != sess->bound_store) {
        if (!sess->bound_tentative) {
            snprintf(d.message, sizeof(d.message),
                     "statement routes to store \"%.60s\" but the transaction is bound to store "
                     "\"%.60s\"",
                     route_table_store_name(t, store),
                     route_table_store_name(t, sess->bound_store));
            return refuse(d, ROUTE_R_CROSS_STORE, "0A000");
        }
        d = send_to(d, store, ROUTE_R_REBIND);
        d.rebind = true;
        d.binds = true;
        d.tentative = false;
        return d;
    }
    d = send_to(d, store, why);
    if (sess->in_txn) {
        bool firm = !(fallback && !stmt->is_write);
        if (!bound) {
            d.binds = true;
            d.tentative = !firm;
        } else if (sess->bound_tentative && firm) {
            d.binds = true; /* the tentative binding becomes firm */
        }
    }
    return d;
}

size_t route_learn_rows(route_aggmap_t *m, const route_stmt_t *stmt, const route_params_t *bind)
{
    char key[ROUTE_VALUE_MAX + 1], tenant[ROUTE_VALUE_MAX + 1];
    size_t n = 0;

    for (size_t i = 0; i < stmt->n_rows; i++) {
        const route_row_t *r = &stmt->rows[i];
        int tr;
        if (resolve(&r->key, bind, key) <= 0)
            continue;
        if (r->tenant.kind == ROUTE_VAL_NULL ||
            (r->tenant.kind == ROUTE_VAL_PARAM && bind != NULL && r->tenant.param >= 1 &&
             (size_t)r->tenant.param <= bind->n && bind->v[r->tenant.param - 1].len < 0)) {
            route_aggmap_learn(m, key, strlen(key), NULL, 0);
            n++;
            continue;
        }
        tr = resolve(&r->tenant, bind, tenant);
        if (tr <= 0)
            continue;
        route_aggmap_learn(m, key, strlen(key), tenant, strlen(tenant));
        n++;
    }
    return n;
}

const char *route_action_str(route_action_t a)
{
    switch (a) {
    case ROUTE_ACT_SEND:
        return "send";
    case ROUTE_ACT_REFUSE:
        return "refuse";
    case ROUTE_ACT_HOLD:
        return "hold";
    case ROUTE_ACT_NEED_LOOKUP:
        return "need_lookup";
    case ROUTE_ACT_DEFER:
        return "defer";
    case ROUTE_ACT_LOCAL:
        return "local";
    }
    return "?";
}

const char *route_reason_str(route_reason_t r)
{
    switch (r) {
    case ROUTE_R_STMT_TENANT:
        return "statement tenant";
    case ROUTE_R_SESSION_TENANT:
        return "session tenant";
    case ROUTE_R_KEY_TENANT:
        return "key tenant";
    case ROUTE_R_KEY_NO_TENANT:
        return "key without tenant, default store";
    case ROUTE_R_DEFAULT:
        return "no tenant, default store";
    case ROUTE_R_BOUND:
        return "no tenant, bound store";
    case ROUTE_R_REBIND:
        return "tentative transaction moves to the tenant store";
    case ROUTE_R_UNPARSED:
        return "unparseable, bound or default store";
    case ROUTE_R_TXN_BOUND:
        return "transaction control, bound store";
    case ROUTE_R_TXN_DEFER:
        return "transaction control held until the transaction binds";
    case ROUTE_R_TXN_LOCAL:
        return "end of an unbound transaction, answered locally";
    case ROUTE_R_TXN_NONE:
        return "transaction control outside a transaction, default store";
    case ROUTE_R_SESSION_CMD:
        return "session command";
    case ROUTE_R_SESSION_DEFER:
        return "session command held until the transaction binds";
    case ROUTE_R_CUTOVER_HOLD:
        return "tenant at cutover";
    case ROUTE_R_KEY_UNKNOWN:
        return "key tenant unknown, look it up";
    case ROUTE_R_TENANT_MISMATCH:
        return "statement tenant contradicts the session tenant";
    case ROUTE_R_CROSS_STORE:
        return "statement crosses the bound store";
    case ROUTE_R_ROWS_MULTI_STORE:
        return "insert rows on different stores";
    case ROUTE_R_MULTI_STORE:
        return "statement tenants on different stores";
    case ROUTE_R_VALUE_TOO_LONG:
        return "tenant value too long";
    }
    return "?";
}
