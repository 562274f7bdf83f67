/*
 * tests/fuzz/fuzz_classify.c - arbitrary text through the classifier, the
 * cache and the decision (libFuzzer + ASan/UBSan; leaks fail the run).
 *
 * Properties checked besides "no crash, no leak":
 * - an unparseable text is exactly one UNKNOWN statement with a message;
 * - statement spans lie inside the text;
 * - tenant and key values are literals or $n within max_param;
 * - the cache returns the same classification for the same text, and a
 *   fresh parse agrees with it;
 * - every decision is well formed (a store in range for SEND, an SQLSTATE
 *   for REFUSE, a key for NEED_LOOKUP).
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const names[] = { "main", "east" };
    route_tenancy_t ten;
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
    CHECK(again == cl);
    fresh = route_classify(text, size, &ten);
    CHECK(fresh->n_stmts == cl->n_stmts && fresh->is_error == cl->is_error);
    for (size_t i = 0; i < cl->n_stmts; i++) {
        CHECK(fresh->stmts[i].kind == cl->stmts[i].kind);
        CHECK(fresh->stmts[i].n_tenants == cl->stmts[i].n_tenants);
        CHECK(fresh->stmts[i].n_rows == cl->stmts[i].n_rows);
    }

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
    route_tenancy_destroy(&ten);
    return 0;
}
