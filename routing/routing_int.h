/*
 * routing/routing_int.h - internals shared inside routing/ only: a small,
 * bounded JSON reader (for libpg_query's parse tree) and value helpers.
 */
#ifndef PGSHIFT_ROUTING_INT_H
#define PGSHIFT_ROUTING_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum route_jtype {
    ROUTE_J_NULL,
    ROUTE_J_BOOL,
    ROUTE_J_NUM,
    ROUTE_J_STR,
    ROUTE_J_ARR,
    ROUTE_J_OBJ,
} route_jtype_t;

/*
 * One JSON value. Nodes are stored in preorder, so the subtree of node i is
 * the index range [i, end). Index 0 is the root; as a link, 0 means none
 * (the root is never a child or a sibling).
 */
typedef struct route_jnode {
    uint8_t type;     /* route_jtype_t */
    bool bval;        /* ROUTE_J_BOOL */
    bool has_escape;  /* ROUTE_J_STR: the raw text holds a backslash */
    uint32_t key;     /* offset of the member name in the source (object members) */
    uint32_t key_len; /* its length, raw */
    uint32_t off;     /* STR: raw content between the quotes; NUM: the number */
    uint32_t len;     /* */
    uint32_t child;   /* first child, 0 = none */
    uint32_t next;    /* next sibling, 0 = none */
    uint32_t end;     /* one past the last node of the subtree */
} route_jnode_t;

typedef struct route_jdoc {
    const char *src;  /* borrowed JSON text */
    route_jnode_t *v; /* owned */
    uint32_t n;
    uint32_t cap;
} route_jdoc_t;

/*
 * Parse len bytes of JSON into d (nesting deeper than max_depth, more than
 * 2^31 nodes or bytes, or any syntax error fail). Borrows src, which must
 * outlive d. Returns 0 or -1; either way free with route_json_free.
 */
int route_json_parse(route_jdoc_t *d, const char *src, size_t len, unsigned max_depth)
    __attribute__((warn_unused_result));
void route_json_free(route_jdoc_t *d);

/* Member `key` of object node obj, or 0. */
uint32_t route_json_get(const route_jdoc_t *d, uint32_t obj, const char *key);
/* Whether node i's member name equals key. */
bool route_json_key_is(const route_jdoc_t *d, uint32_t i, const char *key);
/* Whether string node i decodes to exactly lit (case-sensitive). */
bool route_json_str_eq(const route_jdoc_t *d, uint32_t i, const char *lit);
/* The decoded string (STR) or text (NUM, BOOL) of node i; owned, free(). */
char *route_json_str_dup(const route_jdoc_t *d, uint32_t i);
/* Node type helper: a "Node" is {"TypeName": {...}}; returns the inner object or 0. */
uint32_t route_json_node(const route_jdoc_t *d, uint32_t i, const char **type, size_t *type_len);

/*
 * Whether libpg_query's grammar accepts `text` (NUL-terminated) as exactly
 * one statement, without building its parse tree (routing/fast.c confirms
 * its answers with it). Borrows text. Defined in routing/classify.c.
 */
bool route_parse_is_one_stmt(const char *text);

/*
 * Literal-normalized texts the grammar accepted (routing/fast.c), so the
 * fast path parses each shape once. Loop thread only, like the route cache
 * that owns it.
 */
struct route_class;
struct route_tenancy;
typedef struct route_shapes route_shapes_t;
route_shapes_t *route_shapes_new(void);
void route_shapes_free(route_shapes_t *sh); /* NULL is a no-op */
/* route_classify_fast, with sh (may be NULL) remembering the accepted shapes. */
struct route_class *route_classify_fast_shaped(const char *sql, size_t len,
                                               const struct route_tenancy *ten, route_shapes_t *sh);

/* 64-bit hash of n bytes: 8 bytes a step, multiply-xorshift mixing (cache and fast path). */
uint64_t route_hash_bytes(const char *s, size_t n);

#endif
