/*
 * common/cm.c - allocation, panics, byte buffers and clocks.
 */
#include "common/cm.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void cm_panic(const char *file, int line, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "pgshift: BUG at %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    abort();
}

static void *oom_check(void *p, size_t n)
{
    if (p == NULL && n != 0) {
        fprintf(stderr, "pgshift: out of memory allocating %zu bytes\n", n);
        abort();
    }
    return p;
}

void *cm_xmalloc(size_t n)
{
    return oom_check(malloc(n ? n : 1), n ? n : 1);
}

void *cm_xcalloc(size_t n, size_t size)
{
    return oom_check(calloc(n ? n : 1, size ? size : 1), 1);
}

void *cm_xrealloc(void *p, size_t n)
{
    return oom_check(realloc(p, n ? n : 1), n ? n : 1);
}

char *cm_xstrdup(const char *s)
{
    return cm_xstrndup(s, strlen(s));
}

char *cm_xstrndup(const char *s, size_t n)
{
    char *d = cm_xmalloc(n + 1);

    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *cm_xasprintf(const char *fmt, ...)
{
    va_list ap;
    int n;
    char *s;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    BUG_ON(n < 0, "bad format %s", fmt);
    s = cm_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

void cm_buf_reserve(cm_buf_t *b, size_t extra)
{
    size_t need = b->len + extra;
    size_t cap;

    if (need <= b->cap)
        return;
    cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    b->data = cm_xrealloc(b->data, cap);
    b->cap = cap;
}

void cm_buf_append(cm_buf_t *b, const void *p, size_t n)
{
    if (n == 0)
        return;
    cm_buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void cm_buf_append_u8(cm_buf_t *b, uint8_t v)
{
    cm_buf_append(b, &v, 1);
}

void cm_buf_append_u16(cm_buf_t *b, uint16_t v)
{
    uint8_t x[2] = { (uint8_t)(v >> 8), (uint8_t)v };

    cm_buf_append(b, x, 2);
}

void cm_buf_append_u32(cm_buf_t *b, uint32_t v)
{
    uint8_t x[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };

    cm_buf_append(b, x, 4);
}

void cm_buf_append_cstr(cm_buf_t *b, const char *s)
{
    cm_buf_append(b, s, strlen(s) + 1);
}

void cm_buf_append_json_str(cm_buf_t *b, const char *s)
{
    cm_buf_append_u8(b, '"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') {
            cm_buf_append_u8(b, '\\');
            cm_buf_append_u8(b, (uint8_t)*s);
        } else if ((unsigned char)*s < 0x20) {
            char e[8];

            snprintf(e, sizeof(e), "\\u%04x", (unsigned)*s);
            cm_buf_append(b, e, 6);
        } else {
            cm_buf_append_u8(b, (uint8_t)*s);
        }
    }
    cm_buf_append_u8(b, '"');
}

void cm_buf_put_u32(cm_buf_t *b, size_t at, uint32_t v)
{
    BUG_ON(at + 4 > b->len, "cm_buf_put_u32 past end");
    b->data[at] = (uint8_t)(v >> 24);
    b->data[at + 1] = (uint8_t)(v >> 16);
    b->data[at + 2] = (uint8_t)(v >> 8);
    b->data[at + 3] = (uint8_t)v;
}

void cm_buf_consume(cm_buf_t *b, size_t n)
{
    BUG_ON(n > b->len, "cm_buf_consume past end");
    if (n == b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

void cm_buf_reset(cm_buf_t *b)
{
    b->len = 0;
}

void cm_buf_free(cm_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

uint64_t cm_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t cm_now_ms(void)
{
    return cm_now_us() / 1000u;
}

uint64_t cm_wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
