/*
 * routing/classify.c - SQL text -> route_class_t, on libpg_query.
 *
 * The only file that knows libpg_query and the shape of its parse tree. It
 * asks for the JSON form (pg_query_parse: several times cheaper than the
 * protobuf form plus unpacking, and it needs no protobuf-c headers), reads it
 * with routing/json.c and extracts what routing needs: statement kind, tables,
 * tenant and key values (literals or $n), INSERT rows, tenant settings.
 *
 * It does not evaluate expressions, resolve parameters, know the schema or
 * decide anything; and it never fails: text libpg_query rejects becomes one
 * ROUTE_KIND_UNKNOWN statement.
 */
#include <pg_query.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "routing/routing.h"
#include "routing/routing_int.h"

#define JSON_MAX_DEPTH  3000 /* libpg_query refuses far shallower SQL first */
#define WHERE_MAX_DEPTH 128  /* nested AND levels followed */
#define DEDUP_MAX       256  /* values lists longer than this are not deduplicated */

typedef enum col_role {
    ROLE_NONE,
    ROLE_TENANT,
    ROLE_KEY,
    ROLE_POSITION,
    ROLE_ROW_KEY,
} col_role_t;

typedef struct cls {
    const route_tenancy_t *ten;
    const route_jdoc_t *d;
    const char *sql; /* NUL-terminated copy of the input */
    size_t sql_len;
    route_stmt_t *st;
    size_t cap_tables, cap_tenants, cap_keys, cap_rows;
    int max_param;
    size_t n_tfacts, n_kfacts; /* tenant and key facts noted so far (duplicates too) */
} cls_t;

/* ---- small helpers -------------------------------------------------- */

static bool jkey_eq(const route_jdoc_t *d, uint32_t i, const char *k)
{
    return route_json_key_is(d, i, k);
}

static bool type_is(const char *type, size_t len, const char *name)
{
    return strlen(name) == len && memcmp(type, name, len) == 0;
}

static bool type_prefix(const char *type, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len > n && memcmp(type, prefix, n) == 0;
}

/* The inner object of a Node of the given type, or 0. */
static uint32_t node_of(const route_jdoc_t *d, uint32_t i, const char *type)
{
    const char *t;
    size_t tl;
    uint32_t in = route_json_node(d, i, &t, &tl);

    return in != 0 && type_is(t, tl, type) ? in : 0;
}

/* Last element of an array node, or 0. */
static uint32_t arr_last(const route_jdoc_t *d, uint32_t arr)
{
    uint32_t last = 0;

    if (arr == 0 || d->v[arr].type != ROUTE_J_ARR)
        return 0;
    for (uint32_t c = d->v[arr].child; c != 0; c = d->v[c].next)
        last = c;
    return last;
}

static size_t arr_len(const route_jdoc_t *d, uint32_t arr)
{
    size_t n = 0;

    if (arr == 0 || d->v[arr].type != ROUTE_J_ARR)
        return 0;
    for (uint32_t c = d->v[arr].child; c != 0; c = d->v[c].next)
        n++;
    return n;
}

/* {"String":{"sval":"x"}} -> the sval node (0 when absent: the empty string). */
static uint32_t string_sval(const route_jdoc_t *d, uint32_t i, bool *ok)
{
    uint32_t s = node_of(d, i, "String");

    *ok = s != 0;
    return s ? route_json_get(d, s, "sval") : 0;
}

/* A ColumnRef (possibly under casts): the node holding its column name, or 0. */
static uint32_t column_name(const route_jdoc_t *d, uint32_t i)
{
    uint32_t in, tc;
    bool ok;

    for (int guard = 0; guard < 8 && (tc = node_of(d, i, "TypeCast")) != 0; guard++)
        i = route_json_get(d, tc, "arg");
    in = node_of(d, i, "ColumnRef");
    if (in == 0)
        return 0;
    in = string_sval(d, arr_last(d, route_json_get(d, in, "fields")), &ok);
    return ok ? in : 0;
}

static col_role_t role_of(const cls_t *c, uint32_t name, int *key_idx)
{
    const route_tenancy_t *t = c->ten;

    if (name == 0)
        return ROLE_NONE;
    if (t->tenant_column && route_json_str_eq(c->d, name, t->tenant_column))
        return ROLE_TENANT;
    for (size_t k = 0; k < t->n_key_columns; k++) {
        if (route_json_str_eq(c->d, name, t->key_columns[k])) {
            *key_idx = (int)k;
            return ROLE_KEY;
        }
    }
    if (t->position_column && route_json_str_eq(c->d, name, t->position_column))
        return ROLE_POSITION;
    if (t->row_key && route_json_str_eq(c->d, name, t->row_key))
        return ROLE_ROW_KEY;
    return ROLE_NONE;
}

static void val_free(route_val_t *v)
{
    free(v->text);
    memset(v, 0, sizeof(*v));
}

static route_val_t val_copy(const route_val_t *v)
{
    route_val_t o = *v;

    if (v->text != NULL)
        o.text = cm_xstrdup(v->text);
    return o;
}

static bool val_same(const route_val_t *a, const route_val_t *b)
{
    if (a->kind != b->kind || a->column != b->column)
        return false;
    if (a->kind == ROUTE_VAL_PARAM)
        return a->param == b->param;
    if (a->kind == ROUTE_VAL_LITERAL)
        return strcmp(a->text, b->text) == 0;
    return true;
}

/* Take ownership of a literal's text, canonicalising UUIDs. */
static char *literal_text(char *s)
{
    char canon[37];

    if (route_uuid_canon(s, strlen(s), canon)) {
        free(s);
        return cm_xstrdup(canon);
    }
    return s;
}

/* An integer constant whose value libpg_query's JSON omits (0 and negatives): read the source. */
static char *int_from_source(const cls_t *c, uint32_t aconst)
{
    uint32_t locn = route_json_get(c->d, aconst, "location");
    size_t loc = 0, i, start;
    bool neg = false;
    char *s;

    if (locn != 0 && c->d->v[locn].type == ROUTE_J_NUM) {
        char *txt = route_json_str_dup(c->d, locn);
        long l = strtol(txt, NULL, 10);
        free(txt);
        if (l > 0)
            loc = (size_t)l;
    }
    i = loc;
    if (i < c->sql_len && (c->sql[i] == '-' || c->sql[i] == '+')) {
        neg = c->sql[i] == '-';
        i++;
        while (i < c->sql_len && (c->sql[i] == ' ' || c->sql[i] == '\t' || c->sql[i] == '\n'))
            i++;
    }
    start = i;
    while (i < c->sql_len && c->sql[i] >= '0' && c->sql[i] <= '9')
        i++;
    if (i == start || i - start > 40)
        return cm_xstrdup("0");
    while (start + 1 < i && c->sql[start] == '0')
        start++;
    if (i - start == 1 && c->sql[start] == '0')
        neg = false;
    s = cm_xmalloc(i - start + 2);
    if (neg)
        s[0] = '-';
    memcpy(s + neg, c->sql + start, i - start);
    s[neg + i - start] = '\0';
    return s;
}

/* Value of an expression node: constant, $n (under any casts), NULL, else EXPR. */
static route_val_t value_of(cls_t *c, uint32_t i)
{
    const route_jdoc_t *d = c->d;
    route_val_t v = { .kind = ROUTE_VAL_EXPR };
    uint32_t in, tc, x;

    for (int guard = 0; guard < 8 && (tc = node_of(d, i, "TypeCast")) != 0; guard++)
        i = route_json_get(d, tc, "arg");
    if ((in = node_of(d, i, "ParamRef")) != 0) {
        x = route_json_get(d, in, "number");
        if (x != 0 && d->v[x].type == ROUTE_J_NUM) {
            char *txt = route_json_str_dup(d, x);
            long n = strtol(txt, NULL, 10);
            free(txt);
            if (n > 0 && n <= 65535) {
                v.kind = ROUTE_VAL_PARAM;
                v.param = (int)n;
            }
        }
        return v;
    }
    if ((in = node_of(d, i, "A_Const")) == 0)
        return v;
    x = route_json_get(d, in, "isnull");
    if (x != 0 && d->v[x].type == ROUTE_J_BOOL && d->v[x].bval) {
        v.kind = ROUTE_VAL_NULL;
        return v;
    }
    if ((x = route_json_get(d, in, "sval")) != 0) {
        uint32_t s = route_json_get(d, x, "sval");
        v.kind = ROUTE_VAL_LITERAL;
        v.text = literal_text(s ? route_json_str_dup(d, s) : cm_xstrdup(""));
    } else if ((x = route_json_get(d, in, "ival")) != 0) {
        uint32_t s = route_json_get(d, x, "ival");
        v.kind = ROUTE_VAL_LITERAL;
        v.text = s != 0 && d->v[s].type == ROUTE_J_NUM ? route_json_str_dup(d, s)
                                                       : int_from_source(c, in);
    } else if ((x = route_json_get(d, in, "fval")) != 0) {
        uint32_t s = route_json_get(d, x, "fval");
        v.kind = ROUTE_VAL_LITERAL;
        v.text = s ? route_json_str_dup(d, s) : cm_xstrdup("0");
    } else if ((x = route_json_get(d, in, "boolval")) != 0) {
        uint32_t s = route_json_get(d, x, "boolval");
        v.kind = ROUTE_VAL_LITERAL;
        v.text = cm_xstrdup(s != 0 && d->v[s].bval ? "true" : "false");
    }
    return v;
}

/* ---- collecting into the statement ---------------------------------- */

static void push_val(route_val_t **arr, size_t *n, size_t *cap, const route_val_t *v)
{
    if (*n < DEDUP_MAX) {
        for (size_t i = 0; i < *n; i++)
            if (val_same(&(*arr)[i], v))
                return;
    }
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 4;
        *arr = cm_xrealloc(*arr, *cap * sizeof(**arr));
    }
    (*arr)[(*n)++] = val_copy(v);
}

/* Record a column = value fact (WHERE conjunct, INSERT cell, UPDATE SET). */
static void note(cls_t *c, col_role_t role, int key_idx, const route_val_t *v)
{
    route_stmt_t *st = c->st;

    if (v->kind != ROUTE_VAL_LITERAL && v->kind != ROUTE_VAL_PARAM)
        return;
    if (role == ROLE_TENANT)
        c->n_tfacts++;
    else if (role == ROLE_KEY)
        c->n_kfacts++;
    if (role == ROLE_TENANT) {
        push_val(&st->tenants, &st->n_tenants, &c->cap_tenants, v);
    } else if (role == ROLE_KEY) {
        route_val_t k = *v;
        k.column = key_idx;
        push_val(&st->keys, &st->n_keys, &c->cap_keys, &k);
    }
}

static bool is_tenant_table(const route_tenancy_t *t, const char *schema, const char *rel)
{
    for (size_t i = 0; i < t->n_tables; i++) {
        const char *cfg = t->tables[i];
        const char *dot = strchr(cfg, '.');
        if (dot == NULL) {
            if (strcmp(cfg, rel) == 0)
                return true;
        } else if (strcmp(dot + 1, rel) == 0 &&
                   (schema == NULL || (strlen(schema) == (size_t)(dot - cfg) &&
                                       memcmp(cfg, schema, (size_t)(dot - cfg)) == 0))) {
            return true;
        }
    }
    return false;
}

/* Add a RangeVar's table; returns the stored name. */
static const char *add_table(cls_t *c, uint32_t rangevar)
{
    route_stmt_t *st = c->st;
    uint32_t rn = route_json_get(c->d, rangevar, "relname");
    uint32_t sn = route_json_get(c->d, rangevar, "schemaname");
    char *rel, *schema = NULL, *name;

    if (rn == 0 || c->d->v[rn].type != ROUTE_J_STR)
        return NULL;
    rel = route_json_str_dup(c->d, rn);
    if (sn != 0 && c->d->v[sn].type == ROUTE_J_STR)
        schema = route_json_str_dup(c->d, sn);
    if (is_tenant_table(c->ten, schema, rel))
        st->touches_tenant_table = true;
    name = schema ? cm_xasprintf("%s.%s", schema, rel) : cm_xstrdup(rel);
    free(rel);
    free(schema);
    for (size_t i = 0; i < st->n_tables; i++) {
        if (strcmp(st->tables[i], name) == 0) {
            free(name);
            return st->tables[i];
        }
    }
    if (st->n_tables == c->cap_tables) {
        c->cap_tables = c->cap_tables ? c->cap_tables * 2 : 4;
        st->tables = cm_xrealloc(st->tables, c->cap_tables * sizeof(*st->tables));
    }
    st->tables[st->n_tables++] = name;
    return name;
}

static bool op_is(const cls_t *c, uint32_t aexpr, const char *op)
{
    uint32_t names = route_json_get(c->d, aexpr, "name");
    bool ok;

    /* Only unqualified operators: OPERATOR(pg_catalog.=) is left alone. */
    if (arr_len(c->d, names) != 1)
        return false;
    return route_json_str_eq(c->d, string_sval(c->d, arr_last(c->d, names), &ok), op);
}

static void note_position_min(cls_t *c, uint32_t valnode)
{
    route_val_t v = value_of(c, valnode);

    if ((v.kind == ROUTE_VAL_LITERAL || v.kind == ROUTE_VAL_PARAM) &&
        c->st->position_min.kind == ROUTE_VAL_NONE)
        c->st->position_min = v;
    else
        val_free(&v);
}

/* column OP value, in either order */
static void where_op(cls_t *c, uint32_t ae)
{
    const route_jdoc_t *d = c->d;
    uint32_t l = route_json_get(d, ae, "lexpr"), r = route_json_get(d, ae, "rexpr");
    uint32_t lcol = column_name(d, l), rcol = column_name(d, r);
    uint32_t col, val;
    bool col_left;
    col_role_t role;
    int key_idx = 0;

    if ((lcol == 0) == (rcol == 0))
        return; /* col = col, or no column */
    col_left = lcol != 0;
    col = col_left ? lcol : rcol;
    val = col_left ? r : l;
    role = role_of(c, col, &key_idx);
    if (role == ROLE_NONE)
        return;
    if (op_is(c, ae, "=")) {
        route_val_t v = value_of(c, val);
        note(c, role, key_idx, &v);
        val_free(&v);
    } else if (role == ROLE_POSITION && (col_left ? op_is(c, ae, ">") || op_is(c, ae, ">=")
                                                  : op_is(c, ae, "<") || op_is(c, ae, "<="))) {
        note_position_min(c, val);
    }
}

static void where_walk(cls_t *c, uint32_t i, int depth);

/*
 * a OR b OR ...: the rows can be of any tenant that some branch names. The
 * OR's tenants hold for the statement only when every branch names a tenant,
 * and its keys only when every branch names a key (routing goes by tenants
 * first, so a tenant of one branch must not hide the key of another);
 * otherwise they are dropped again. A position bound inside an OR bounds
 * nothing.
 */
static void where_or(cls_t *c, uint32_t args, int depth)
{
    const route_jdoc_t *d = c->d;
    route_stmt_t *st = c->st;
    size_t t0 = st->n_tenants, k0 = st->n_keys, tf0 = c->n_tfacts, kf0 = c->n_kfacts;
    route_val_t pos0 = st->position_min;
    bool every_t = true, every_k = true;

    for (uint32_t a = d->v[args].child; a != 0; a = d->v[a].next) {
        size_t tf = c->n_tfacts, kf = c->n_kfacts;

        where_walk(c, a, depth + 1);
        every_t &= c->n_tfacts > tf;
        every_k &= c->n_kfacts > kf;
    }
    if (!every_t) {
        while (st->n_tenants > t0)
            val_free(&st->tenants[--st->n_tenants]);
        c->n_tfacts = tf0; /* retracted: an enclosing OR must not count them */
    }
    if (!every_k) {
        while (st->n_keys > k0)
            val_free(&st->keys[--st->n_keys]);
        c->n_kfacts = kf0;
    }
    if (pos0.kind == ROUTE_VAL_NONE && st->position_min.kind != ROUTE_VAL_NONE) {
        val_free(&st->position_min);
        st->position_min = pos0;
    }
}

/* Follow AND-ed conjuncts (and OR-ed alternatives) of a qualification: col = value facts. */
static void where_walk(cls_t *c, uint32_t i, int depth)
{
    const route_jdoc_t *d = c->d;
    uint32_t in;

    if (i == 0 || depth > WHERE_MAX_DEPTH)
        return;
    if ((in = node_of(d, i, "BoolExpr")) != 0) {
        uint32_t args = route_json_get(d, in, "args");
        uint32_t op = route_json_get(d, in, "boolop");

        if (args == 0)
            return;
        if (route_json_str_eq(d, op, "AND_EXPR")) {
            for (uint32_t a = d->v[args].child; a != 0; a = d->v[a].next)
                where_walk(c, a, depth + 1);
        } else if (route_json_str_eq(d, op, "OR_EXPR")) {
            where_or(c, args, depth);
        }
        return;
    }
    if ((in = node_of(d, i, "A_Expr")) != 0) {
        uint32_t kind = route_json_get(d, in, "kind");
        if (kind == 0 || route_json_str_eq(d, kind, "AEXPR_OP")) {
            where_op(c, in);
        } else if (route_json_str_eq(d, kind, "AEXPR_IN") && op_is(c, in, "=")) {
            uint32_t col = column_name(d, route_json_get(d, in, "lexpr"));
            uint32_t list = node_of(d, route_json_get(d, in, "rexpr"), "List");
            uint32_t items = route_json_get(d, list, "items");
            int key_idx = 0;
            col_role_t role = role_of(c, col, &key_idx);
            if (role == ROLE_NONE || items == 0)
                return;
            for (uint32_t it = d->v[items].child; it != 0; it = d->v[it].next) {
                route_val_t v = value_of(c, it);
                note(c, role, key_idx, &v);
                val_free(&v);
            }
        }
    }
}

static void set_row_field(route_row_t *row, col_role_t role, const route_val_t *v)
{
    route_val_t *dst = NULL;

    switch (role) {
    case ROLE_TENANT:
        dst = &row->tenant;
        break;
    case ROLE_KEY:
        dst = &row->key;
        break;
    case ROLE_POSITION:
        dst = &row->position;
        break;
    case ROLE_ROW_KEY:
        dst = &row->row_key;
        break;
    case ROLE_NONE:
        return;
    default:
        BUG_ON(1, "bad column role %d", (int)role);
    }
    if (dst->kind == ROUTE_VAL_NONE) /* first key column wins */
        *dst = val_copy(v);
}

/* INSERT: its VALUES rows, matched against its column list. */
static void insert_stmt(cls_t *c, uint32_t ins)
{
    const route_jdoc_t *d = c->d;
    route_stmt_t *st = c->st;
    uint32_t rel = route_json_get(d, ins, "relation");
    uint32_t cols = route_json_get(d, ins, "cols");
    uint32_t sel = node_of(d, route_json_get(d, ins, "selectStmt"), "SelectStmt");
    uint32_t lists = route_json_get(d, sel, "valuesLists");
    size_t n_cols = arr_len(d, cols), j;
    col_role_t *roles;
    int *key_idx;
    bool tenant_table, any = false;
    const char *name = add_table(c, rel);

    if (rel != 0 && route_json_get(d, rel, "relname") != 0 && name != NULL &&
        is_tenant_table(c->ten, NULL, strrchr(name, '.') ? strrchr(name, '.') + 1 : name))
        tenant_table = true;
    else
        tenant_table = false;
    if (n_cols == 0 || lists == 0)
        return;
    roles = cm_xcalloc(n_cols, sizeof(*roles));
    key_idx = cm_xcalloc(n_cols, sizeof(*key_idx));
    j = 0;
    for (uint32_t col = d->v[cols].child; col != 0; col = d->v[col].next, j++) {
        uint32_t rt = node_of(d, col, "ResTarget");
        roles[j] = role_of(c, route_json_get(d, rt, "name"), &key_idx[j]);
        any |= roles[j] != ROLE_NONE;
    }
    if (!any) {
        free(roles);
        free(key_idx);
        return;
    }
    for (uint32_t l = d->v[lists].child; l != 0; l = d->v[l].next) {
        uint32_t items = route_json_get(d, node_of(d, l, "List"), "items");
        route_row_t row;

        memset(&row, 0, sizeof(row));
        j = 0;
        for (uint32_t it = items ? d->v[items].child : 0; it != 0 && j < n_cols;
             it = d->v[it].next, j++) {
            route_val_t v;
            if (roles[j] == ROLE_NONE)
                continue;
            v = value_of(c, it);
            note(c, roles[j], key_idx[j], &v);
            set_row_field(&row, roles[j], &v);
            val_free(&v);
        }
        if (tenant_table) {
            if (st->n_rows == c->cap_rows) {
                c->cap_rows = c->cap_rows ? c->cap_rows * 2 : 4;
                st->rows = cm_xrealloc(st->rows, c->cap_rows * sizeof(*st->rows));
            }
            st->rows[st->n_rows++] = row;
        } else {
            val_free(&row.tenant);
            val_free(&row.key);
            val_free(&row.row_key);
            val_free(&row.position);
        }
    }
    free(roles);
    free(key_idx);
}

/* UPDATE / ON CONFLICT DO UPDATE: SET tenant_col = X names a tenant too. */
static void set_list(cls_t *c, uint32_t targets)
{
    const route_jdoc_t *d = c->d;

    if (targets == 0 || d->v[targets].type != ROUTE_J_ARR)
        return;
    for (uint32_t t = d->v[targets].child; t != 0; t = d->v[t].next) {
        uint32_t rt = node_of(d, t, "ResTarget");
        int key_idx = 0;
        col_role_t role = role_of(c, route_json_get(d, rt, "name"), &key_idx);
        if (role != ROLE_NONE) {
            route_val_t v = value_of(c, route_json_get(d, rt, "val"));
            note(c, role, key_idx, &v);
            val_free(&v);
        }
    }
}

/*
 * The session-level advisory lock functions: their locks outlive the
 * transaction (the _xact_ variants end with it and do not pin).
 */
static const char *const session_lock_funcs[] = {
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
};

/* A FuncCall object calling one of session_lock_funcs (any schema: failing safe). */
static bool func_takes_session_lock(const route_jdoc_t *d, uint32_t fc)
{
    bool ok;
    uint32_t name = string_sval(d, arr_last(d, route_json_get(d, fc, "funcname")), &ok);

    if (!ok || name == 0)
        return false;
    for (size_t i = 0; i < CM_ARRAY_LEN(session_lock_funcs); i++) {
        if (route_json_str_eq(d, name, session_lock_funcs[i]))
            return true;
    }
    return false;
}

/*
 * A RangeVar of a temporary relation: TEMP / TEMPORARY ("relpersistence":
 * "t") or qualified by the pg_temp schema (pg_temp, pg_temp_N), which makes
 * CREATE TABLE pg_temp.x create a temporary table too.
 */
static bool rangevar_is_temp(const route_jdoc_t *d, uint32_t rv)
{
    uint32_t schema = route_json_get(d, rv, "schemaname");
    bool temp = route_json_str_eq(d, route_json_get(d, rv, "relpersistence"), "t");

    if (!temp && schema != 0 && d->v[schema].type == ROUTE_J_STR) {
        char *s = route_json_str_dup(d, schema);
        temp = strcmp(s, "pg_temp") == 0 || strncmp(s, "pg_temp_", 8) == 0;
        free(s);
    }
    return temp;
}

/*
 * Scan the whole statement subtree once: tables, qualifications, nested
 * writes, RETURNING, parameters, temporary relations and session-level
 * advisory locks (pins_session). Returns whether it holds an INTO clause.
 */
static bool scan(cls_t *c, uint32_t root)
{
    const route_jdoc_t *d = c->d;
    route_stmt_t *st = c->st;
    bool has_into = false;

    for (uint32_t i = root; i < d->v[root].end; i++) {
        bool rangevar = false;
        if (d->v[i].type != ROUTE_J_OBJ)
            continue;
        for (uint32_t ch = d->v[i].child; ch != 0; ch = d->v[ch].next) {
            if (jkey_eq(d, ch, "relname")) {
                rangevar = d->v[ch].type == ROUTE_J_STR;
            } else if (jkey_eq(d, ch, "whereClause") || jkey_eq(d, ch, "quals")) {
                where_walk(c, ch, 0);
            } else if (jkey_eq(d, ch, "returningList")) {
                st->has_returning = true;
            } else if (jkey_eq(d, ch, "intoClause")) {
                has_into = true;
            } else if (jkey_eq(d, ch, "ParamRef")) {
                uint32_t x = route_json_get(d, ch, "number");
                if (x != 0 && d->v[x].type == ROUTE_J_NUM) {
                    char *txt = route_json_str_dup(d, x);
                    long n = strtol(txt, NULL, 10);
                    free(txt);
                    if (n > c->max_param && n <= 65535)
                        c->max_param = (int)n;
                }
            } else if (jkey_eq(d, ch, "InsertStmt")) {
                st->is_write = true;
                /* Its relation is found by this scan too; add_table dedups. */
                insert_stmt(c, ch);
            } else if (jkey_eq(d, ch, "UpdateStmt")) {
                st->is_write = true;
                set_list(c, route_json_get(d, ch, "targetList"));
            } else if (jkey_eq(d, ch, "DeleteStmt") || jkey_eq(d, ch, "MergeStmt")) {
                st->is_write = true;
            } else if (jkey_eq(d, ch, "onConflictClause")) {
                set_list(c, route_json_get(d, ch, "targetList"));
            } else if (jkey_eq(d, ch, "FuncCall")) {
                if (func_takes_session_lock(d, ch))
                    st->pins_session = true;
            }
        }
        if (rangevar) {
            (void)add_table(c, i);
            if (rangevar_is_temp(d, i))
                st->pins_session = true;
        }
    }
    return has_into;
}

/* ---- statement kinds ------------------------------------------------ */

static bool setting_is_tenant(const cls_t *c, uint32_t name)
{
    char *s;
    bool is;

    if (name == 0 || c->d->v[name].type != ROUTE_J_STR)
        return false;
    s = route_json_str_dup(c->d, name);
    is = strcasecmp(s, c->ten->tenant_setting) == 0;
    free(s);
    return is;
}

/* A new tenant value for the setting; an empty literal means "no tenant". */
static void set_tenant(cls_t *c, route_val_t v)
{
    route_stmt_t *st = c->st;

    st->kind = ROUTE_KIND_SESSION_SET;
    if (v.kind == ROUTE_VAL_LITERAL && v.text[0] == '\0') {
        val_free(&v);
        st->set_op = ROUTE_SET_RESET;
        return;
    }
    if (v.kind == ROUTE_VAL_NULL) {
        st->set_op = ROUTE_SET_RESET;
        return;
    }
    st->set_op = ROUTE_SET_TENANT;
    st->set_value = v;
}

static void variable_set(cls_t *c, uint32_t in)
{
    const route_jdoc_t *d = c->d;
    route_stmt_t *st = c->st;
    uint32_t kind = route_json_get(d, in, "kind");
    uint32_t name = route_json_get(d, in, "name");
    uint32_t loc = route_json_get(d, in, "is_local");
    bool tenant = setting_is_tenant(c, name);

    st->kind = ROUTE_KIND_SESSION_OTHER;
    st->set_is_local = loc != 0 && d->v[loc].bval;
    if (route_json_str_eq(d, kind, "VAR_SET_VALUE") && tenant) {
        uint32_t args = route_json_get(d, in, "args");
        if (arr_len(d, args) == 1) {
            set_tenant(c, value_of(c, d->v[args].child));
        } else {
            st->kind = ROUTE_KIND_SESSION_SET;
            st->set_op = ROUTE_SET_TENANT;
            st->set_value.kind = ROUTE_VAL_EXPR;
        }
    } else if ((route_json_str_eq(d, kind, "VAR_SET_DEFAULT") ||
                route_json_str_eq(d, kind, "VAR_RESET")) &&
               tenant) {
        st->kind = ROUTE_KIND_SESSION_SET;
        st->set_op = ROUTE_SET_RESET;
    } else if (route_json_str_eq(d, kind, "VAR_RESET_ALL")) {
        st->set_op = ROUTE_SET_RESET;
    } else if (route_json_str_eq(d, kind, "VAR_SET_MULTI") &&
               route_json_str_eq(d, name, "TRANSACTION")) {
        st->kind = ROUTE_KIND_TXN_OTHER;
    }
}

/* SELECT set_config('pgshift.tenant', X, is_local) with nothing else. */
static bool select_set_config(cls_t *c, uint32_t sel)
{
    const route_jdoc_t *d = c->d;
    uint32_t tl = route_json_get(d, sel, "targetList");
    uint32_t fc, args, a0, a1, a2, fname, in;
    route_val_t v;
    bool ok;

    if (arr_len(d, tl) != 1 || route_json_get(d, sel, "fromClause") != 0)
        return false;
    fc = node_of(d, route_json_get(d, node_of(d, d->v[tl].child, "ResTarget"), "val"), "FuncCall");
    fname = string_sval(d, arr_last(d, route_json_get(d, fc, "funcname")), &ok);
    if (fc == 0 || !route_json_str_eq(d, fname, "set_config"))
        return false;
    args = route_json_get(d, fc, "args");
    if (arr_len(d, args) != 3)
        return false;
    a0 = d->v[args].child;
    a1 = d->v[a0].next;
    a2 = d->v[a1].next;
    v = value_of(c, a0);
    ok = v.kind == ROUTE_VAL_LITERAL && strcasecmp(v.text, c->ten->tenant_setting) == 0;
    val_free(&v);
    if (!ok)
        return false;
    set_tenant(c, value_of(c, a1));
    in = route_json_get(d, node_of(d, a2, "A_Const"), "boolval");
    c->st->set_is_local = in != 0 && route_json_get(d, in, "boolval") != 0 &&
                          d->v[route_json_get(d, in, "boolval")].bval;
    return true;
}

static route_kind_t txn_kind(const cls_t *c, uint32_t in)
{
    const route_jdoc_t *d = c->d;
    uint32_t k = route_json_get(d, in, "kind");
    uint32_t chain = route_json_get(d, in, "chain");

    c->st->txn_chain = chain != 0 && d->v[chain].bval;
    if (route_json_str_eq(d, k, "TRANS_STMT_BEGIN") || route_json_str_eq(d, k, "TRANS_STMT_START"))
        return ROUTE_KIND_TXN_BEGIN;
    if (route_json_str_eq(d, k, "TRANS_STMT_COMMIT") ||
        route_json_str_eq(d, k, "TRANS_STMT_PREPARE"))
        return ROUTE_KIND_TXN_COMMIT;
    if (route_json_str_eq(d, k, "TRANS_STMT_ROLLBACK"))
        return ROUTE_KIND_TXN_ROLLBACK;
    return ROUTE_KIND_TXN_OTHER;
}

static const char *const ddl_types[] = {
    "IndexStmt",          "ViewStmt",        "RuleStmt",          "RenameStmt",
    "CommentStmt",        "GrantStmt",       "GrantRoleStmt",     "CompositeTypeStmt",
    "SecLabelStmt",       "DefineStmt",      "ReassignOwnedStmt", "ImportForeignSchemaStmt",
    "RefreshMatViewStmt", "AlterSystemStmt",
};

#define CURSOR_OPT_HOLD 0x0020 /* PostgreSQL's parsenodes.h: DECLARE ... WITH HOLD */

/* An integer member (libpg_query omits zeros: 0 when absent or not a number). */
static long json_int(const route_jdoc_t *d, uint32_t i)
{
    char *txt;
    long v;

    if (i == 0 || d->v[i].type != ROUTE_J_NUM)
        return 0;
    txt = route_json_str_dup(d, i);
    v = strtol(txt, NULL, 10);
    free(txt);
    return v;
}

static route_kind_t base_kind(cls_t *c, uint32_t node, int depth)
{
    const route_jdoc_t *d = c->d;
    route_stmt_t *st = c->st;
    const char *t;
    size_t tl;
    uint32_t in = route_json_node(d, node, &t, &tl);

    if (in == 0)
        return ROUTE_KIND_UNKNOWN;
    if (type_is(t, tl, "SelectStmt")) {
        if (select_set_config(c, in))
            return ROUTE_KIND_SESSION_SET;
        return ROUTE_KIND_READ;
    }
    if (type_is(t, tl, "InsertStmt") || type_is(t, tl, "UpdateStmt") ||
        type_is(t, tl, "DeleteStmt") || type_is(t, tl, "MergeStmt")) {
        uint32_t rel = route_json_get(d, in, "relation");
        st->is_write = true;
        if (rel != 0)
            st->target = add_table(c, rel);
        return ROUTE_KIND_WRITE;
    }
    if (type_is(t, tl, "TruncateStmt")) {
        uint32_t rels = route_json_get(d, in, "relations");
        st->is_write = true;
        if (rels != 0 && d->v[rels].child != 0)
            st->target = add_table(c, node_of(d, d->v[rels].child, "RangeVar"));
        return ROUTE_KIND_WRITE;
    }
    if (type_is(t, tl, "TransactionStmt"))
        return txn_kind(c, in);
    if (type_is(t, tl, "VariableSetStmt")) {
        variable_set(c, in);
        return st->kind;
    }
    if (type_is(t, tl, "VariableShowStmt")) {
        st->is_tenant_show = setting_is_tenant(c, route_json_get(d, in, "name"));
        st->is_show = true;
        return ROUTE_KIND_SESSION_OTHER;
    }
    if (type_is(t, tl, "DiscardStmt")) {
        if (route_json_str_eq(d, route_json_get(d, in, "target"), "DISCARD_ALL"))
            st->set_op = ROUTE_SET_RESET;
        return ROUTE_KIND_SESSION_OTHER;
    }
    st->is_notify = type_is(t, tl, "NotifyStmt");
    if (type_is(t, tl, "ListenStmt") || type_is(t, tl, "UnlistenStmt") || st->is_notify) {
        st->pins_session = type_is(t, tl, "ListenStmt");
        return ROUTE_KIND_SESSION_OTHER;
    }
    if (type_is(t, tl, "ConstraintsSetStmt"))
        return ROUTE_KIND_TXN_OTHER;
    if (type_is(t, tl, "CopyStmt")) {
        uint32_t from = route_json_get(d, in, "is_from");
        uint32_t rel = route_json_get(d, in, "relation");
        if (rel != 0)
            st->target = add_table(c, rel);
        if (from != 0 && d->v[from].bval) {
            st->is_write = true;
            return ROUTE_KIND_COPY_IN;
        }
        return ROUTE_KIND_COPY_OUT;
    }
    if (type_is(t, tl, "ExplainStmt")) {
        route_kind_t k = depth < 4 ? base_kind(c, route_json_get(d, in, "query"), depth + 1)
                                   : ROUTE_KIND_UTILITY;
        return k == ROUTE_KIND_UNKNOWN ? ROUTE_KIND_UTILITY : k;
    }
    if (type_is(t, tl, "PrepareStmt") || type_is(t, tl, "LoadStmt")) {
        st->pins_session = true; /* a named statement, a loaded library */
        return ROUTE_KIND_UTILITY;
    }
    if (type_is(t, tl, "DeclareCursorStmt")) {
        if (json_int(d, route_json_get(d, in, "options")) & CURSOR_OPT_HOLD)
            st->pins_session = true; /* the cursor outlives the transaction */
        return ROUTE_KIND_UTILITY;
    }
    if (type_is(t, tl, "CallStmt") || type_is(t, tl, "DoStmt")) {
        st->is_write = true;
        return ROUTE_KIND_UTILITY;
    }
    if (type_prefix(t, tl, "Create") || type_prefix(t, tl, "Alter") || type_prefix(t, tl, "Drop")) {
        st->is_write = true;
        return ROUTE_KIND_DDL;
    }
    for (size_t i = 0; i < CM_ARRAY_LEN(ddl_types); i++) {
        if (type_is(t, tl, ddl_types[i])) {
            st->is_write = true;
            return ROUTE_KIND_DDL;
        }
    }
    return ROUTE_KIND_UTILITY;
}

static size_t json_size(const route_jdoc_t *d, uint32_t i)
{
    if (i == 0 || d->v[i].type != ROUTE_J_NUM)
        return 0;
    {
        char *txt = route_json_str_dup(d, i);
        long v = strtol(txt, NULL, 10);
        free(txt);
        return v > 0 ? (size_t)v : 0;
    }
}

static void classify_stmt(cls_t *c, uint32_t raw, route_stmt_t *st)
{
    uint32_t node = route_json_get(c->d, raw, "stmt");
    bool into;

    c->st = st;
    c->cap_tables = c->cap_tenants = c->cap_keys = c->cap_rows = 0;
    st->loc = json_size(c->d, route_json_get(c->d, raw, "stmt_location"));
    st->len = json_size(c->d, route_json_get(c->d, raw, "stmt_len"));
    st->kind = base_kind(c, node, 0);
    into = node != 0 && scan(c, node);
    if (st->kind == ROUTE_KIND_READ && into) {
        st->kind = ROUTE_KIND_DDL; /* SELECT ... INTO creates a table */
        st->is_write = true;
    } else if (st->kind == ROUTE_KIND_READ && st->is_write) {
        st->kind = ROUTE_KIND_WRITE; /* a data-modifying WITH */
    }
    st->has_tenant_info = st->n_tenants > 0 || st->n_keys > 0;
}

static void stmt_destroy(route_stmt_t *st)
{
    for (size_t i = 0; i < st->n_tables; i++)
        free(st->tables[i]);
    free(st->tables);
    for (size_t i = 0; i < st->n_tenants; i++)
        val_free(&st->tenants[i]);
    free(st->tenants);
    for (size_t i = 0; i < st->n_keys; i++)
        val_free(&st->keys[i]);
    free(st->keys);
    for (size_t i = 0; i < st->n_rows; i++) {
        val_free(&st->rows[i].tenant);
        val_free(&st->rows[i].key);
        val_free(&st->rows[i].row_key);
        val_free(&st->rows[i].position);
    }
    free(st->rows);
    val_free(&st->position_min);
    val_free(&st->set_value);
}

static void class_set_error(route_class_t *cl, const char *msg)
{
    cl->is_error = true;
    cl->error = cm_xstrdup(msg ? msg : "unparseable statement");
    cl->n_stmts = 1;
    cl->stmts = cm_xcalloc(1, sizeof(*cl->stmts));
    cl->stmts[0].kind = ROUTE_KIND_UNKNOWN;
}

route_class_t *route_classify(const char *sql, size_t len, const route_tenancy_t *ten)
{
    route_class_t *cl = cm_xcalloc(1, sizeof(*cl));
    const char *nul = len > 0 ? memchr(sql, '\0', len) : NULL;
    size_t n = len == 0 ? 0 : nul ? (size_t)(nul - sql) : len;
    char *text = n > 0 ? cm_xstrndup(sql, n) : cm_xstrdup("");
    PgQueryParseResult r;
    route_jdoc_t d;
    uint32_t stmts;
    cls_t c;

    cl->refcount = 1;
    r = pg_query_parse(text);
    if (r.error != NULL) {
        class_set_error(cl, r.error->message);
        goto out;
    }
    if (r.parse_tree == NULL ||
        route_json_parse(&d, r.parse_tree, strlen(r.parse_tree), JSON_MAX_DEPTH) != 0) {
        if (r.parse_tree != NULL)
            route_json_free(&d);
        class_set_error(cl, "statement too complex to route");
        goto out;
    }
    stmts = route_json_get(&d, 0, "stmts");
    memset(&c, 0, sizeof(c));
    c.ten = ten;
    c.d = &d;
    c.sql = text;
    c.sql_len = n;
    cl->n_stmts = arr_len(&d, stmts);
    if (cl->n_stmts > 0) {
        size_t i = 0;
        cl->stmts = cm_xcalloc(cl->n_stmts, sizeof(*cl->stmts));
        for (uint32_t s = d.v[stmts].child; s != 0; s = d.v[s].next)
            classify_stmt(&c, s, &cl->stmts[i++]);
    }
    cl->max_param = c.max_param;
    route_json_free(&d);
out:
    pg_query_free_parse_result(r);
    free(text);
    return cl;
}

bool route_parse_is_one_stmt(const char *text)
{
    /* The same raw parser as pg_query_parse, without the JSON output. */
    PgQuerySplitResult r = pg_query_split_with_parser(text);
    bool ok = r.error == NULL && r.n_stmts == 1;

    pg_query_free_split_result(r);
    return ok;
}

route_class_t *route_class_ref(route_class_t *c)
{
    BUG_ON(c->refcount <= 0, "route_class_ref on a freed class");
    c->refcount++;
    return c;
}

void route_class_unref(route_class_t *c)
{
    if (c == NULL)
        return;
    BUG_ON(c->refcount <= 0, "route_class_unref on a freed class");
    if (--c->refcount > 0)
        return;
    for (size_t i = 0; i < c->n_stmts; i++)
        stmt_destroy(&c->stmts[i]);
    free(c->stmts);
    free(c->error);
    free(c);
}

const char *route_kind_str(route_kind_t k)
{
    switch (k) {
    case ROUTE_KIND_UNKNOWN:
        return "unknown";
    case ROUTE_KIND_READ:
        return "read";
    case ROUTE_KIND_WRITE:
        return "write";
    case ROUTE_KIND_TXN_BEGIN:
        return "txn_begin";
    case ROUTE_KIND_TXN_COMMIT:
        return "txn_commit";
    case ROUTE_KIND_TXN_ROLLBACK:
        return "txn_rollback";
    case ROUTE_KIND_TXN_OTHER:
        return "txn_other";
    case ROUTE_KIND_SESSION_SET:
        return "session_set";
    case ROUTE_KIND_SESSION_OTHER:
        return "session_other";
    case ROUTE_KIND_DDL:
        return "ddl";
    case ROUTE_KIND_UTILITY:
        return "utility";
    case ROUTE_KIND_COPY_IN:
        return "copy_in";
    case ROUTE_KIND_COPY_OUT:
        return "copy_out";
    }
    return "?";
}
