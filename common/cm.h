/*
 * common/cm.h - the project's small toolbox: attributes, assertions,
 * allocation that aborts on OOM, and a growable byte buffer.
 *
 * Everything in the tree may include this header; it pulls in no library
 * beyond libc.
 */
#ifndef PGSHIFT_CM_H
#define PGSHIFT_CM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MUST_CHECK        __attribute__((warn_unused_result))
#define NORETURN          __attribute__((noreturn))
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#define CM_UNUSED         __attribute__((unused))

#define CM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define CM_MIN(a, b)    ((a) < (b) ? (a) : (b))
#define CM_MAX(a, b)    ((a) > (b) ? (a) : (b))
#define CM_BIT(n)       (1u << (n))

/* Recover the struct that embeds a member (intrusive containers). */
#define cm_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

NORETURN void cm_panic(const char *file, int line, const char *fmt, ...) PRINTF_LIKE(3, 4);

/* A bug in pgshift, never bad input: print where and abort. */
#define BUG_ON(cond, ...)                              \
    do {                                               \
        if (__builtin_expect(!!(cond), 0))             \
            cm_panic(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

/* Allocation never fails: out of memory aborts (Redis zmalloc, h2o). */
void *cm_xmalloc(size_t n);
void *cm_xcalloc(size_t n, size_t size);
void *cm_xrealloc(void *p, size_t n);
char *cm_xstrdup(const char *s);
char *cm_xstrndup(const char *s, size_t n);
char *cm_xasprintf(const char *fmt, ...) PRINTF_LIKE(1, 2);

/*
 * A growable byte buffer that encoders append to. A zero-filled cm_buf_t is
 * a valid empty buffer. `data` may move on every append: never keep a pointer
 * into it across an append.
 */
typedef struct cm_buf {
    uint8_t *data; /* owned; NULL while empty */
    size_t len;    /* bytes in use */
    size_t cap;    /* bytes allocated */
} cm_buf_t;

void cm_buf_reserve(cm_buf_t *b, size_t extra);
void cm_buf_append(cm_buf_t *b, const void *p, size_t n);
void cm_buf_append_u8(cm_buf_t *b, uint8_t v);
void cm_buf_append_u16(cm_buf_t *b, uint16_t v);         /* network order */
void cm_buf_append_u32(cm_buf_t *b, uint32_t v);         /* network order */
void cm_buf_append_cstr(cm_buf_t *b, const char *s);     /* with its NUL */
void cm_buf_append_json_str(cm_buf_t *b, const char *s); /* "s" as a JSON string, no NUL */
void cm_buf_put_u32(cm_buf_t *b, size_t at, uint32_t v); /* overwrite, network order */
void cm_buf_consume(cm_buf_t *b, size_t n);              /* drop n bytes from the front */
void cm_buf_reset(cm_buf_t *b);                          /* len = 0, keeps memory */
void cm_buf_free(cm_buf_t *b);                           /* frees memory, back to empty */

/* Monotonic clock in milliseconds / microseconds. */
uint64_t cm_now_ms(void);
uint64_t cm_now_us(void);
/* Wall-clock (real time) milliseconds since the epoch, for display. */
uint64_t cm_wall_ms(void);

#endif
