/*
 * tests/fuzz/fuzz_classify.c - arbitrary text through the classifier, the
 * cache and the decision (libFuzzer + ASan/UBSan; leaks fail the run).
 *
 * Properties checked besides "no crash, no leak":
 * - an unparseable text is exactly one UNKNOWN statement with a message;
 * - statement spans lie inside the text;
 * - tenant and key values are literals or $n within max_param;
 * - the cache returns the same classification for the same text (a new
 *   one each time when the fast path answered), and a fresh parse agrees;
 * - every decision is well formed (a store in range for SEND, an SQLSTATE
 *   for REFUSE, a key for NEED_LOOKUP);
 * - whenever route_classify_fast answers (for the default tenancy and for
 *   one with one-letter names, which random text hits often), its answer
 *   equals route_classify's on every field but the table list, and every
 *   decision on it equals the decision on the full classification.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routing/routing.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                   \
    do {                                                                           \
        if (!(c)) {                                                                \
            fprintf(stderr, "fuzz_classify: %s:%d: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                               \
        }                                                                          \
    } while (0)

static void check_val(const route_val_t *v, int max_param)
{
    CHECK(v->kind == ROUTE_VAL_LITERAL || v->kind == ROUTE_VAL_PARAM);
    if (v->kind == ROUTE_VAL_LITERAL)
        CHECK(v->text != NULL);
    else
        CHECK(v->param >= 1 && v->param <= max_param);
}

static void check_class(const route_class_t *cl, size_t text_len)
{
    if (cl->is_error) {
        CHECK(cl->n_stmts == 1);
        CHECK(cl->stmts[0].kind == ROUTE_KIND_UNKNOWN);
        CHECK(cl->error != NULL);
        return;
    }
    for (size_t i = 0; i < cl->n_stmts; i++) {
        const route_stmt_t *st = &cl->stmts[i];
        CHECK(st->kind != ROUTE_KIND_UNKNOWN);
        CHECK(st->loc <= text_len && st->len <= text_len - st->loc);
        CHECK(st->has_tenant_info == (st->n_tenants > 0 || st->n_keys > 0));
        for (size_t k = 0; k < st->n_tenants; k++)
            check_val(&st->tenants[k], cl->max_param);
        for (size_t k = 0; k < st->n_keys; k++)
            check_val(&st->keys[k], cl->max_param);
        for (size_t k = 0; k < st->n_tables; k++)
            CHECK(st->tables[k] != NULL);
        if (st->target != NULL) {
            bool found = false;
            for (size_t k = 0; k < st->n_tables; k++)
                found |= st->tables[k] == st->target;
            CHECK(found);
        }
        CHECK(st->set_op == ROUTE_SET_NONE || st->kind == ROUTE_KIND_SESSION_SET ||
              st->kind == ROUTE_KIND_SESSION_OTHER);
        (void)route_kind_str(st->kind);
    }
}

static void check_decision(const route_decision_t *d, const route_table_t *t)
{
    switch (d->action) {
    case ROUTE_ACT_SEND:
        CHECK(d->store >= 0 && (size_t)d->store < route_table_n_stores(t));
        CHECK(d->sqlstate[0] == '\0');
        break;
    case ROUTE_ACT_REFUSE:
        CHECK(strlen(d->sqlstate) == 5 && d->message[0] != '\0' && d->store == -1);
        break;
    case ROUTE_ACT_NEED_LOOKUP:
        CHECK(d->key_column >= 0);
        break;
    case ROUTE_ACT_HOLD:
    case ROUTE_ACT_DEFER:
    case ROUTE_ACT_LOCAL:
        CHECK(d->store == -1);
        break;
    }
    (void)route_reason_str(d->reason);
    (void)route_action_str(d->action);
}

static void check_decisions_equal(const route_table_t *t, const route_stmt_t *a,
                                  const route_stmt_t *b)
{
    static const char *const tenants[] = { NULL, "ta", "tcut" };

    for (int s = 0; s < 12; s++) {
        route_session_t sess = { .tenant = tenants[s % 3],
                                 .bound_store = (s / 3) >= 2 ? 1 : -1,
                                 .bound_tentative = (s / 3) == 3,
                                 .in_txn = (s / 3) >= 1,
                                 .default_store = 0 };
        route_decision_t da = route_decide(t, &sess, a, NULL);
        route_decision_t db = route_decide(t, &sess, b, NULL);
        CHECK(da.action == db.action && da.reason == db.reason && da.store == db.store);
        CHECK(da.binds == db.binds && da.tentative == db.tentative && da.rebind == db.rebind);
        CHECK(da.route == db.route && strcmp(da.tenant, db.tenant) == 0);
        CHECK(strcmp(da.sqlstate, db.sqlstate) == 0);
    }
}

/* The fast path, when it answers, against the full classifier. */
static void check_fast(const char *text, size_t size, const route_tenancy_t *ten,
                       const route_table_t *t, const route_class_t *known_full)
{
    route_class_t *fast = route_classify_fast(text, size, ten), *full;
    const route_stmt_t *a, *b;

    if (fast == NULL)
        return;
    full =
        known_full ? route_class_ref((route_class_t *)known_full) : route_classify(text, size, ten);
    CHECK(!full->is_error && !fast->is_error && fast->error == NULL);
    CHECK(full->n_stmts == 1 && fast->n_stmts == 1);
    CHECK(fast->max_param == full->max_param && fast->refcount == 1);
    a = &fast->stmts[0];
    b = &full->stmts[0];
    CHECK(a->kind == b->kind);
    CHECK(a->is_write == b->is_write);
    CHECK(a->has_returning == b->has_returning);
    CHECK(a->touches_tenant_table == b->touches_tenant_table);
    CHECK(a->has_tenant_info == b->has_tenant_info);
    CHECK(a->loc == b->loc && a->len == b->len);
    CHECK(a->n_tenants == b->n_tenants && a->n_keys == b->n_keys && a->n_rows == b->n_rows);
    CHECK(a->position_min.kind == b->position_min.kind);
    CHECK(a->set_op == b->set_op && a->set_value.kind == b->set_value.kind);
    CHECK(a->set_is_local == b->set_is_local && a->is_tenant_show == b->is_tenant_show);
    CHECK(a->txn_chain == b->txn_chain);
    CHECK(a->n_tables == 0 && a->target == NULL);
    check_decisions_equal(t, a, b);
    route_class_unref(full);
    route_class_unref(fast);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const names[] = { "main", "east" };
    route_tenancy_t ten, ten1;
    route_table_t *t;
    route_aggmap_t *aggs;
    route_cache_t *cache;
    route_class_t *cl, *again, *fresh;
    route_entry_t e = { .tenant = "ta", .store = 1, .target_store = -1 };
    const char *text = (const char *)data;
    const char *nul = size ? memchr(text, '\0', size) : NULL;
    size_t text_len = nul ? (size_t)(nul - text) : size;
    route_param_t p[4];
    route_params_t bind = { .n = 4, .v = p };

    route_tenancy_init(&ten, NULL, NULL, NULL, NULL, NULL);
    route_tenancy_init(&ten1, "t, s.u", "c", "k, kk", "p", "r");
    t = route_table_new(2, names);
    route_table_put(t, &e);
    e.tenant = "tcut", e.state = ROUTE_STATE_MIGRATING, e.phase = ROUTE_PHASE_CUTOVER;
    e.target_store = 0;
    route_table_put(t, &e);
    route_table_freeze(t);
    aggs = route_aggmap_new(8);
    route_aggmap_learn(aggs, "k", 1, "ta", 2);
    cache = route_cache_new(4, &ten);

    cl = route_cache_get(cache, text, size);
    check_class(cl, text_len);
    again = route_cache_get(cache, text, size);
    if (route_cache_stats(cache).fast == 0) {
        CHECK(again == cl); /* parsed and cached */
    } else {
        /*
         * Fast answers are not in the LRU; the fast path keeps the last answer
         * per literal-normalized shape, so the same text gets the same shared
         * answer (a reference each, plus the shape slot's), or a fresh one.
         */
        CHECK(route_cache_stats(cache).fast == 2);
        CHECK((again == cl && cl->refcount == 3) ||
              (again != cl && again->refcount <= 2 && cl->refcount <= 2));
    }
    fresh = route_classify(text, size, &ten);
    CHECK(fresh->n_stmts == cl->n_stmts && fresh->is_error == cl->is_error);
    for (size_t i = 0; i < cl->n_stmts; i++) {
        CHECK(fresh->stmts[i].kind == cl->stmts[i].kind);
        CHECK(fresh->stmts[i].n_tenants == cl->stmts[i].n_tenants);
        CHECK(fresh->stmts[i].n_rows == cl->stmts[i].n_rows);
    }
    check_fast(text, size, &ten, t, fresh);
    check_fast(text, size, &ten1, t, NULL);

    /* Parameters drawn from the input itself, text and binary. */
    for (int i = 0; i < 4; i++) {
        size_t off = size ? (size_t)(i * 7) % size : 0;
        p[i].data = data + off;
        p[i].len = (int32_t)((size - off) < 20 ? (size - off) : 20);
        p[i].is_binary = i & 1;
        p[i].type_oid = i == 3 ? 2950 : 0;
    }
    p[2].len = size > 40 ? -1 : p[2].len;

    for (size_t i = 0; i < cl->n_stmts; i++) {
        for (int s = 0; s < 6; s++) {
            route_session_t sess = { .tenant = (s & 1) ? "ta" : NULL,
                                     .bound_store = s >= 2 ? (s & 1) : -1,
                                     .bound_tentative = s == 4,
                                     .in_txn = s >= 2,
                                     .default_store = 0,
                                     .aggs = s == 5 ? NULL : aggs };
            route_decision_t d = route_decide(t, &sess, &cl->stmts[i], NULL);
            check_decision(&d, t);
            d = route_decide(t, &sess, &cl->stmts[i], size ? &bind : NULL);
            check_decision(&d, t);
        }
        (void)route_learn_rows(aggs, &cl->stmts[i], size ? &bind : NULL);
    }

    route_class_unref(fresh);
    route_class_unref(again);
    route_class_unref(cl);
    route_cache_free(cache);
    route_aggmap_free(aggs);
    route_table_unref(t);
    route_tenancy_destroy(&ten1);
    route_tenancy_destroy(&ten);
    return 0;
}
