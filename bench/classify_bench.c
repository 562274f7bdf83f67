/*
 * bench/classify_bench.c - what routing costs per statement: a classifier
 * miss (libpg_query parse + extraction), a cache hit, and one route decision,
 * for each statement shape of the event store; then, for literal statements
 * on non-tenant tables (pgbench), a new text each time: the full classifier,
 * the fast path and what route_cache_get costs on such a miss.
 *
 *   build/bench/classify_bench [iterations] [--json]
 *
 * Prints one line per shape with nanoseconds per call, then a summary line
 * (the mean over shapes). With --json, one JSON object instead, for
 * bench/routing to merge into its report.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cm.h"
#include "routing/routing.h"

typedef struct shape {
    const char *name;
    const char *sql;
    const char *params[9]; /* text Bind values, NULL-terminated */
} shape_t;

static const shape_t shapes[] = {
    { "version_probe",
      "SELECT COALESCE(MAX(version),0) FROM events WHERE aggregate_id=$1 AND aggregate_type=$2",
      { "6f1c1a8e-4b7d-4d6e-9f7a-1b2c3d4e5f60", "Order", NULL } },
    { "append",
      "INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, tenant_id, "
      "actor_id, version, timestamp, payload) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) RETURNING "
      "global_position",
      { "0b9a7f5e-1111-4222-8333-944455556666", "6f1c1a8e-4b7d-4d6e-9f7a-1b2c3d4e5f60", "Order",
        "Created", "aaaaaaaa-0000-4000-8000-00000000000a", "user-1", "1", "2024-01-01T00:00:00Z",
        "{}" } },
    { "stream_read",
      "SELECT event_id, event_type, version, payload FROM events WHERE aggregate_id = $1 ORDER "
      "BY version",
      { "6f1c1a8e-4b7d-4d6e-9f7a-1b2c3d4e5f60", NULL } },
    { "feed_read",
      "SELECT * FROM events WHERE global_position > $1 AND tenant_id = $2 ORDER BY "
      "global_position LIMIT 500",
      { "0", "aaaaaaaa-0000-4000-8000-00000000000a", NULL } },
    { "outbox_insert",
      "INSERT INTO event_outbox (event_id, tenant_id, aggregate_id, topic, payload) VALUES ($1, "
      "$2, $3, $4, $5)",
      { "0b9a7f5e-1111-4222-8333-944455556666", "aaaaaaaa-0000-4000-8000-00000000000a",
        "6f1c1a8e-4b7d-4d6e-9f7a-1b2c3d4e5f60", "orders", "{}", NULL } },
    { "snapshot_upsert",
      "INSERT INTO snapshots (aggregate_id, aggregate_type, tenant_id, version, state) VALUES "
      "($1, $2, $3, $4, $5) ON CONFLICT (aggregate_id, aggregate_type) DO UPDATE SET version = "
      "EXCLUDED.version, state = EXCLUDED.state",
      { "6f1c1a8e-4b7d-4d6e-9f7a-1b2c3d4e5f60", "Order", "aaaaaaaa-0000-4000-8000-00000000000a",
        "3", "{}" } },
    { "checkpoint_upsert",
      "INSERT INTO projection_checkpoints (projection_name, tenant_id, global_position) VALUES "
      "($1, $2, $3) ON CONFLICT (projection_name, tenant_id) DO UPDATE SET global_position = "
      "EXCLUDED.global_position",
      { "orders", "aaaaaaaa-0000-4000-8000-00000000000a", "42", NULL } },
    { "begin", "BEGIN", { NULL } },
};

#define N_SHAPES (sizeof(shapes) / sizeof(shapes[0]))

/*
 * Literal, non-tenant statements (pgbench's simple protocol): every text is
 * new, so each one is a cache miss. A varying value goes between head and tail.
 */
typedef struct lit_shape {
    const char *name;
    const char *head;
    const char *tail;
} lit_shape_t;

static const lit_shape_t lit_shapes[] = {
    { "pgbench_select", "SELECT abalance FROM pgbench_accounts WHERE aid = ", ";" },
    { "pgbench_update", "UPDATE pgbench_accounts SET abalance = abalance + -4 WHERE aid = ", ";" },
    { "pgbench_insert", "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, ",
      ", 4, CURRENT_TIMESTAMP);" },
};

#define N_LIT   (sizeof(lit_shapes) / sizeof(lit_shapes[0]))
#define N_TEXTS 1024 /* distinct texts per shape, more than the cache holds */

typedef struct lit_result {
    double full_ns;  /* route_classify: libpg_query parse + JSON walk */
    double fast_ns;  /* route_classify_fast */
    double cache_ns; /* route_cache_get on a new text: what the proxy pays */
} lit_result_t;

typedef struct result {
    double miss_ns;
    double hit_ns;
    double decide_ns;
} result_t;

static volatile size_t sink; /* keeps the optimiser from dropping the work */

static result_t run_shape(const shape_t *s, long iters, const route_tenancy_t *ten,
                          const route_table_t *table, const route_aggmap_t *aggs)
{
    size_t len = strlen(s->sql);
    route_cache_t *cache = route_cache_new(64, ten);
    route_param_t p[9];
    route_params_t bind = { .v = p };
    route_session_t sess = { .bound_store = -1, .default_store = 0, .aggs = aggs };
    route_class_t *cl;
    result_t r;
    uint64_t t0;
    long miss_iters = iters / 10 > 0 ? iters / 10 : 1;

    for (size_t i = 0; i < 9 && s->params[i] != NULL; i++) {
        p[i] = (route_param_t){ .data = (const uint8_t *)s->params[i],
                                .len = (int32_t)strlen(s->params[i]) };
        bind.n = i + 1;
    }
    /* miss: what the first sight of a text costs */
    t0 = cm_now_us();
    for (long i = 0; i < miss_iters; i++) {
        cl = route_classify(s->sql, len, ten);
        sink += cl->n_stmts;
        route_class_unref(cl);
    }
    r.miss_ns = (double)(cm_now_us() - t0) * 1000.0 / (double)miss_iters;
    /* hit: the hot path for a text seen before */
    route_class_unref(route_cache_get(cache, s->sql, len));
    t0 = cm_now_us();
    for (long i = 0; i < iters; i++) {
        cl = route_cache_get(cache, s->sql, len);
        sink += cl->n_stmts;
        route_class_unref(cl);
    }
    r.hit_ns = (double)(cm_now_us() - t0) * 1000.0 / (double)iters;
    /* the decision on a classified statement with its Bind */
    cl = route_cache_get(cache, s->sql, len);
    t0 = cm_now_us();
    for (long i = 0; i < iters; i++) {
        route_decision_t d = route_decide(table, &sess, &cl->stmts[0], &bind);
        sink += (size_t)d.store;
    }
    r.decide_ns = (double)(cm_now_us() - t0) * 1000.0 / (double)iters;
    route_class_unref(cl);
    route_cache_free(cache);
    return r;
}

static lit_result_t run_literal(const lit_shape_t *s, long iters, const route_tenancy_t *ten)
{
    char *texts[N_TEXTS];
    size_t lens[N_TEXTS];
    route_cache_t *cache = route_cache_new(64, ten);
    route_class_t *cl;
    lit_result_t r;
    uint64_t t0;
    long full_iters = iters / 10 > 0 ? iters / 10 : 1;

    for (int i = 0; i < N_TEXTS; i++) {
        texts[i] = cm_xasprintf("%s%d%s", s->head, 100000 + i * 7919, s->tail);
        lens[i] = strlen(texts[i]);
    }
    cl = route_classify_fast(texts[0], lens[0], ten);
    if (cl == NULL) {
        fprintf(stderr, "classify_bench: %s does not take the fast path\n", s->name);
        exit(1);
    }
    route_class_unref(cl);
    t0 = cm_now_us();
    for (long i = 0; i < full_iters; i++) {
        cl = route_classify(texts[i % N_TEXTS], lens[i % N_TEXTS], ten);
        sink += cl->n_stmts;
        route_class_unref(cl);
    }
    r.full_ns = (double)(cm_now_us() - t0) * 1000.0 / (double)full_iters;
    t0 = cm_now_us();
    for (long i = 0; i < iters; i++) {
        cl = route_classify_fast(texts[i % N_TEXTS], lens[i % N_TEXTS], ten);
        sink += cl->n_stmts;
        route_class_unref(cl);
    }
    r.fast_ns = (double)(cm_now_us() - t0) * 1000.0 / (double)iters;
    t0 = cm_now_us();
    for (long i = 0; i < iters; i++) {
        cl = route_cache_get(cache, texts[i % N_TEXTS], lens[i % N_TEXTS]);
        sink += cl->n_stmts;
        route_class_unref(cl);
    }
    r.cache_ns = (double)(cm_now_us() - t0) * 1000.0 / (double)iters;
    if (route_cache_stats(cache).fast != (uint64_t)iters) {
        fprintf(stderr, "classify_bench: %s: cache misses did not take the fast path\n", s->name);
        exit(1);
    }
    route_cache_free(cache);
    for (int i = 0; i < N_TEXTS; i++)
        free(texts[i]);
    return r;
}

int main(int argc, char **argv)
{
    static const char *const names[] = { "main", "east" };
    long iters = 200000;
    bool json = false;
    route_tenancy_t ten;
    route_table_t *table;
    route_aggmap_t *aggs;
    result_t res[N_SHAPES], mean = { 0, 0, 0 };
    lit_result_t lit[N_LIT];
    route_entry_t e = { .tenant = "aaaaaaaa-0000-4000-8000-00000000000a",
                        .store = 1,
                        .target_store = -1,
                        .version = 1 };

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else if (atol(argv[i]) > 0)
            iters = atol(argv[i]);
        else {
            fprintf(stderr, "usage: %s [iterations] [--json]\n", argv[0]);
            return 2;
        }
    }
    route_tenancy_init(&ten, NULL, NULL, NULL, NULL, NULL);
    table = route_table_new(2, names);
    for (int i = 0; i < 1000; i++) { /* a realistic number of routes */
        char t[40];
        route_entry_t x = e;
        snprintf(t, sizeof(t), "tenant-%d", i);
        x.tenant = t;
        x.store = i & 1;
        route_table_put(table, &x);
    }
    route_table_put(table, &e);
    route_table_freeze(table);
    aggs = route_aggmap_new(100000);
    route_aggmap_learn(aggs, "6f1c1a8e-4b7d-4d6e-9f7a-1b2c3d4e5f60", 36, e.tenant, 36);

    for (size_t i = 0; i < N_SHAPES; i++) {
        res[i] = run_shape(&shapes[i], iters, &ten, table, aggs);
        mean.miss_ns += res[i].miss_ns / (double)N_SHAPES;
        mean.hit_ns += res[i].hit_ns / (double)N_SHAPES;
        mean.decide_ns += res[i].decide_ns / (double)N_SHAPES;
    }
    for (size_t i = 0; i < N_LIT; i++)
        lit[i] = run_literal(&lit_shapes[i], iters, &ten);
    if (json) {
        printf("{\"iterations\": %ld, \"fast_path\": {", iters);
        for (size_t i = 0; i < N_LIT; i++)
            printf("%s\"%s\": {\"full_ns\": %.0f, \"fast_ns\": %.0f, \"cache_miss_ns\": %.0f}",
                   i ? ", " : "", lit_shapes[i].name, lit[i].full_ns, lit[i].fast_ns,
                   lit[i].cache_ns);
        printf("}, \"shapes\": {");
        for (size_t i = 0; i < N_SHAPES; i++)
            printf("%s\"%s\": {\"miss_ns\": %.0f, \"hit_ns\": %.0f, \"decide_ns\": %.0f}",
                   i ? ", " : "", shapes[i].name, res[i].miss_ns, res[i].hit_ns, res[i].decide_ns);
        printf("}, \"mean\": {\"miss_ns\": %.0f, \"hit_ns\": %.0f, \"decide_ns\": %.0f}}\n",
               mean.miss_ns, mean.hit_ns, mean.decide_ns);
    } else {
        printf("%-18s %12s %12s %12s\n", "shape", "miss ns", "hit ns", "decide ns");
        for (size_t i = 0; i < N_SHAPES; i++)
            printf("%-18s %12.0f %12.0f %12.0f\n", shapes[i].name, res[i].miss_ns, res[i].hit_ns,
                   res[i].decide_ns);
        printf("%-18s %12.0f %12.0f %12.0f\n", "mean", mean.miss_ns, mean.hit_ns, mean.decide_ns);
        printf("\nliteral, non-tenant statements, a new text each time (cache miss):\n");
        printf("%-18s %12s %12s %12s\n", "shape", "full ns", "fast ns", "cache ns");
        for (size_t i = 0; i < N_LIT; i++)
            printf("%-18s %12.0f %12.0f %12.0f\n", lit_shapes[i].name, lit[i].full_ns,
                   lit[i].fast_ns, lit[i].cache_ns);
    }
    route_aggmap_free(aggs);
    route_table_unref(table);
    route_tenancy_destroy(&ten);
    return sink == (size_t)-1; /* never true; uses sink */
}
