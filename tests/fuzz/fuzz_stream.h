/*
 * tests/fuzz/fuzz_stream.h - the stream half shared by fuzz_fe_stream and
 * fuzz_be_stream (a header of static functions, included once per target).
 *
 * The input is a byte stream as a peer would send it. It is framed message by
 * message three times: all at once, one byte at a time, and in pseudo-random
 * chunks. Bytes not yet "received" are ASan-poisoned, so a decoder that peeks
 * past what it was given crashes. The three passes must yield the same
 * messages and stop at the same place with the same result. Each message body
 * is then copied into an exact-size heap block and handed to the target's
 * check_message(), which runs the per-type properties.
 */
#ifndef PGSHIFT_FUZZ_STREAM_H
#define PGSHIFT_FUZZ_STREAM_H

#include <sanitizer/asan_interface.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire/wire.h"

#define FUZZ_CHECK(cond)                                                                      \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "fuzz property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

/* A view lies inside [base, base + len) (a NULL view counts as inside). */
static int fz_view_in(wire_str_t v, const uint8_t *base, size_t len)
{
    const uint8_t *p = (const uint8_t *)v.p;

    if (p == NULL)
        return v.len == 0;
    return p >= base && p <= base + len && v.len <= (size_t)(base + len - p);
}

/* A NUL-terminated view: inside, and its NUL inside too. */
static int fz_cstr_in(wire_str_t v, const uint8_t *base, size_t len)
{
    return v.p != NULL && fz_view_in(v, base, len) && (const uint8_t *)v.p + v.len < base + len &&
           v.p[v.len] == '\0' && memchr(v.p, '\0', v.len) == NULL;
}

/* The encoder wrote exactly the original message. */
static void fz_same_bytes(const cm_buf_t *b, const uint8_t *msg, size_t msg_len)
{
    FUZZ_CHECK(b->len == msg_len);
    FUZZ_CHECK(memcmp(b->data, msg, msg_len) == 0);
}

typedef struct fz_msg {
    uint8_t type;
    size_t off; /* offset of the type byte in the input */
    size_t len; /* header + body */
} fz_msg_t;

typedef struct fz_pass {
    fz_msg_t *msgs;
    size_t n_msgs, cap;
    wire_rc_t end_rc; /* the result that stopped the pass (PARTIAL: ran out of bytes) */
    size_t end_off;   /* where it stopped */
} fz_pass_t;

static void fz_pass_add(fz_pass_t *p, const fz_msg_t *m)
{
    if (p->n_msgs == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 64;
        p->msgs = realloc(p->msgs, p->cap * sizeof(*p->msgs));
        FUZZ_CHECK(p->msgs != NULL);
    }
    p->msgs[p->n_msgs++] = *m;
}

/* The caller's buffer buf[0..size) is poisoned past what has been "received". */
static void fz_run_pass(uint8_t *buf, size_t size, const wire_limits_t *lim, const size_t *ends,
                        size_t n_ends, fz_pass_t *out)
{
    size_t off = 0, avail = 0, i;
    wire_rc_t rc = WIRE_PARTIAL;

    ASAN_POISON_MEMORY_REGION(buf, size);
    for (i = 0; i < n_ends; i++) {
        size_t from = avail & ~(size_t)7;

        avail = ends[i];
        ASAN_UNPOISON_MEMORY_REGION(buf + from, avail - from);
        for (;;) {
            wire_hdr_t hdr = { 0xee, 0xeeeeeeee };
            const uint8_t *body = (const uint8_t *)&hdr;
            size_t used = 0xabcdef;
            fz_msg_t m;

            rc = wire_msg_next(buf + off, avail - off, lim, &hdr, &body, &used);
            if (rc == WIRE_PARTIAL) {
                /* Nothing consumed, nothing written. */
                FUZZ_CHECK(used == 0xabcdef);
                FUZZ_CHECK(hdr.type == 0xee && hdr.body_len == 0xeeeeeeee);
                FUZZ_CHECK(body == (const uint8_t *)&hdr);
                break;
            }
            if (rc != WIRE_OK)
                goto done;
            FUZZ_CHECK(used <= avail - off);
            FUZZ_CHECK(used == WIRE_HDR_LEN + (size_t)hdr.body_len);
            FUZZ_CHECK(body == buf + off + WIRE_HDR_LEN);
            FUZZ_CHECK(hdr.type == buf[off]);
            FUZZ_CHECK(hdr.body_len <= lim->max_msg_len);
            m.type = hdr.type;
            m.off = off;
            m.len = used;
            fz_pass_add(out, &m);
            off += used;
        }
    }
done:
    FUZZ_CHECK(rc != WIRE_OK);
    /* An error is decided by the header alone, whatever the split. */
    if (rc == WIRE_EPROTO || rc == WIRE_ETOOBIG)
        FUZZ_CHECK(avail - off >= WIRE_HDR_LEN);
    out->end_rc = rc;
    out->end_off = off;
    ASAN_UNPOISON_MEMORY_REGION(buf, size);
}

static void fz_same_pass(const fz_pass_t *a, const fz_pass_t *b)
{
    size_t i;

    FUZZ_CHECK(a->n_msgs == b->n_msgs);
    FUZZ_CHECK(a->end_rc == b->end_rc);
    FUZZ_CHECK(a->end_off == b->end_off);
    for (i = 0; i < a->n_msgs; i++) {
        FUZZ_CHECK(a->msgs[i].type == b->msgs[i].type);
        FUZZ_CHECK(a->msgs[i].off == b->msgs[i].off);
        FUZZ_CHECK(a->msgs[i].len == b->msgs[i].len);
    }
}

typedef void (*fz_check_fn)(uint8_t type, const uint8_t *body, size_t len, const uint8_t *msg,
                            size_t msg_len);

static int fz_stream(const uint8_t *data, size_t size, bool is_frontend, fz_check_fn check)
{
    /* Small enough that the fuzzer meets ETOOBIG, large enough for real messages. */
    const wire_limits_t lim = { .max_msg_len = 8192, .max_startup_len = 10000 };
    fz_pass_t whole = { 0 }, bytes = { 0 }, chunks = { 0 };
    size_t *ends, n_ends = 0, i, pos;
    uint32_t h = 2166136261u;
    uint8_t *buf;

    if (size == 0)
        return 0;
    buf = malloc(size);
    ends = malloc(size * sizeof(*ends));
    FUZZ_CHECK(buf != NULL && ends != NULL);
    memcpy(buf, data, size);

    fz_run_pass(buf, size, &lim, &size, 1, &whole);

    for (i = 0; i < size; i++)
        ends[i] = i + 1;
    fz_run_pass(buf, size, &lim, ends, size, &bytes);
    fz_same_pass(&whole, &bytes);

    /* Chunk sizes 1..64 from an FNV-1a hash of the input: deterministic per input. */
    for (i = 0; i < size; i++)
        h = (h ^ data[i]) * 16777619u;
    for (pos = 0; pos < size;) {
        h ^= h << 13;
        h ^= h >> 17;
        h ^= h << 5;
        pos += 1 + h % 64;
        ends[n_ends++] = pos < size ? pos : size;
    }
    fz_run_pass(buf, size, &lim, ends, n_ends, &chunks);
    fz_same_pass(&whole, &chunks);

    for (i = 0; i < whole.n_msgs; i++) {
        const fz_msg_t *m = &whole.msgs[i];
        size_t body_len = m->len - WIRE_HDR_LEN;
        /* An exact-size copy: reading one byte past the body is caught. */
        uint8_t *body = malloc(body_len ? body_len : 1);
        wire_hdr_t hdr;
        wire_rc_t rc;

        FUZZ_CHECK(body != NULL);
        if (body_len > 0)
            memcpy(body, buf + m->off + WIRE_HDR_LEN, body_len);
        else
            ASAN_POISON_MEMORY_REGION(body, 1);
        FUZZ_CHECK(wire_hdr_decode(buf + m->off, WIRE_HDR_LEN, &lim, &hdr) == WIRE_OK);
        FUZZ_CHECK(hdr.body_len == body_len);
        rc = wire_validate(m->type, is_frontend, body, body_len);
        FUZZ_CHECK(rc == WIRE_OK || rc == WIRE_EPROTO);
        check(m->type, body, body_len, buf + m->off, m->len);
        ASAN_UNPOISON_MEMORY_REGION(body, 1);
        free(body);
    }

    free(whole.msgs);
    free(bytes.msgs);
    free(chunks.msgs);
    free(ends);
    free(buf);
    return 0;
}

#endif
