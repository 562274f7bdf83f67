/*
 * migrator/result.c - admin result sets, route arrays and events: building
 * and freeing them. No I/O.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migrator/migrator_int.h"

void mig_result_free(mig_result_t *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n_cols; i++)
        free(r->cols[i]);
    free(r->cols);
    for (size_t i = 0; i < r->n_rows * r->n_cols; i++)
        free(r->cells[i]);
    free(r->cells);
    free(r->tag);
    free(r->err_sqlstate);
    free(r->err_message);
    free(r);
}

mig_result_t *mig_result_new(const char *tag, size_t n_cols, const char *const *cols)
{
    mig_result_t *r = cm_xcalloc(1, sizeof(*r));

    r->tag = cm_xstrdup(tag);
    for (size_t i = 0; i < n_cols; i++)
        mig_result_add_col(r, cols[i]);
    return r;
}

void mig_result_add_col(mig_result_t *r, const char *name)
{
    BUG_ON(r->n_rows != 0, "column added after rows");
    r->cols = cm_xrealloc(r->cols, (r->n_cols + 1) * sizeof(*r->cols));
    r->cols[r->n_cols++] = cm_xstrdup(name);
}

void mig_result_add_row(mig_result_t *r, const char *const *cells)
{
    size_t base = r->n_rows * r->n_cols;

    r->cells = cm_xrealloc(r->cells, (base + r->n_cols) * sizeof(*r->cells));
    for (size_t i = 0; i < r->n_cols; i++)
        r->cells[base + i] = cells[i] ? cm_xstrdup(cells[i]) : NULL;
    r->n_rows++;
}

mig_result_t *mig_result_error(const char *sqlstate, const char *fmt, ...)
{
    mig_result_t *r = cm_xcalloc(1, sizeof(*r));
    va_list ap;
    int n;

    BUG_ON(strlen(sqlstate) != 5, "bad sqlstate %s", sqlstate);
    r->err_sqlstate = cm_xstrdup(sqlstate);
    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    BUG_ON(n < 0, "bad format %s", fmt);
    r->err_message = cm_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(r->err_message, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return r;
}

void mig_route_clear(mig_route_t *r)
{
    free(r->tenant);
    free(r->store);
    free(r->state);
    free(r->phase);
    free(r->target_store);
    memset(r, 0, sizeof(*r));
}

void mig_routes_free(mig_route_t *routes, size_t n)
{
    for (size_t i = 0; i < n; i++)
        mig_route_clear(&routes[i]);
    free(routes);
}

static char *dup_or_null(const char *s)
{
    return s ? cm_xstrdup(s) : NULL;
}

void mig_route_copy(mig_route_t *dst, const mig_route_t *src)
{
    *dst = *src;
    dst->tenant = dup_or_null(src->tenant);
    dst->store = dup_or_null(src->store);
    dst->state = dup_or_null(src->state);
    dst->phase = dup_or_null(src->phase);
    dst->target_store = dup_or_null(src->target_store);
}

/* ---- the routes in force ---- */

void mig_overlay_load(mig_overlay_t *o, mig_route_t *routes, size_t n, uint64_t at_us)
{
    size_t k = 0;

    mig_routes_free(o->routes, o->n_routes);
    o->routes = routes;
    o->n_routes = n;
    o->has_routes = true;
    for (size_t i = 0; i < o->n_pins; i++) {
        if (o->pins_at_us[i] < at_us) {
            mig_route_clear(&o->pins[i]); /* the load saw it, or something newer */
            continue;
        }
        o->pins[k] = o->pins[i];
        o->pins_at_us[k++] = o->pins_at_us[i];
    }
    o->n_pins = k;
}

void mig_overlay_publish(mig_overlay_t *o, const mig_route_t *route, uint64_t at_us)
{
    size_t i = 0;

    while (i < o->n_pins && strcmp(o->pins[i].tenant, route->tenant) != 0)
        i++;
    if (i == o->n_pins) {
        o->pins = cm_xrealloc(o->pins, (o->n_pins + 1) * sizeof(*o->pins));
        o->pins_at_us = cm_xrealloc(o->pins_at_us, (o->n_pins + 1) * sizeof(*o->pins_at_us));
        o->n_pins++;
    } else {
        mig_route_clear(&o->pins[i]);
    }
    mig_route_copy(&o->pins[i], route);
    o->pins_at_us[i] = at_us;
}

static int route_cmp(const void *a, const void *b)
{
    return strcmp(((const mig_route_t *)a)->tenant, ((const mig_route_t *)b)->tenant);
}

mig_route_t *mig_overlay_routes(const mig_overlay_t *o, size_t *n)
{
    mig_route_t *out;
    size_t k = 0;

    *n = 0;
    if (!o->has_routes)
        return NULL;
    out = cm_xcalloc(o->n_routes + o->n_pins + 1, sizeof(*out));
    for (size_t i = 0; i < o->n_routes; i++) {
        bool pinned = false;

        for (size_t p = 0; p < o->n_pins && !pinned; p++)
            pinned = strcmp(o->pins[p].tenant, o->routes[i].tenant) == 0;
        if (!pinned)
            mig_route_copy(&out[k++], &o->routes[i]);
    }
    for (size_t p = 0; p < o->n_pins; p++)
        mig_route_copy(&out[k++], &o->pins[p]);
    if (o->n_pins > 0)
        qsort(out, k, sizeof(*out), route_cmp);
    *n = k;
    return out;
}

void mig_overlay_free(mig_overlay_t *o)
{
    mig_routes_free(o->routes, o->n_routes);
    mig_routes_free(o->pins, o->n_pins);
    free(o->pins_at_us);
    memset(o, 0, sizeof(*o));
}

void mig_event_free(mig_event_t *ev)
{
    if (ev == NULL)
        return;
    mig_routes_free(ev->routes, ev->n_routes);
    mig_result_free(ev->result);
    free(ev);
}
