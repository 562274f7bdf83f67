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

void mig_event_free(mig_event_t *ev)
{
    if (ev == NULL)
        return;
    mig_routes_free(ev->routes, ev->n_routes);
    mig_result_free(ev->result);
    free(ev);
}
