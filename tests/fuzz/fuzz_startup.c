/*
 * tests/fuzz/fuzz_startup.c - the startup family (StartupMessage, SSLRequest,
 * GSSENCRequest, CancelRequest) as a client sends it before authentication.
 *
 * The input is decoded packet by packet until the decoder stops. Properties:
 * used <= len; WIRE_PARTIAL consumes and writes nothing; every strict prefix
 * of an accepted packet is PARTIAL, and one-byte-at-a-time delivery yields
 * the same packets as all at once; unread bytes are ASan-poisoned; views
 * lie inside the packet and are NUL-terminated; wire_startup_param finds the
 * first pair of each name; SSLRequest, CancelRequest and 3.0
 * StartupMessages re-encode to the very same bytes.
 */
#include <sanitizer/asan_interface.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                      \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "fuzz property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

#define MAX_PACKETS 64

static const wire_limits_t lim = { .max_msg_len = 1 << 20, .max_startup_len = 10000 };

static int cstr_in(wire_str_t v, const uint8_t *base, size_t len)
{
    const uint8_t *p = (const uint8_t *)v.p;

    return p != NULL && p >= base && p < base + len && v.len < (size_t)(base + len - p) &&
           p[v.len] == '\0' && memchr(p, '\0', v.len) == NULL;
}

static void check_packet(const wire_startup_t *s, const uint8_t *pkt, size_t len)
{
    cm_buf_t out = { 0 };
    const char *names[WIRE_MAX_STARTUP_PARAMS], *values[WIRE_MAX_STARTUP_PARAMS];
    size_t i, j;
    wire_str_t v;

    switch (s->kind) {
    case WIRE_STARTUP_SSL_REQUEST:
        wire_put_ssl_request(&out);
        break;
    case WIRE_STARTUP_GSSENC_REQUEST:
        FUZZ_CHECK(len == 8);
        cm_buf_append_u32(&out, 8);
        cm_buf_append_u32(&out, WIRE_GSSENC_REQUEST_CODE);
        break;
    case WIRE_STARTUP_CANCEL:
        wire_put_cancel(&out, s->cancel_pid, s->cancel_key);
        break;
    case WIRE_STARTUP_MESSAGE:
        FUZZ_CHECK(s->version >> 16 == 3);
        FUZZ_CHECK(s->n_params <= WIRE_MAX_STARTUP_PARAMS);
        for (i = 0; i < s->n_params; i++) {
            FUZZ_CHECK(cstr_in(s->names[i], pkt, len) && cstr_in(s->values[i], pkt, len));
            FUZZ_CHECK(s->names[i].len > 0);
            names[i] = s->names[i].p;
            values[i] = s->values[i].p;
            v = wire_startup_param(s, names[i]);
            for (j = 0; strcmp(names[j], names[i]) != 0; j++)
                ;
            FUZZ_CHECK(v.p == s->values[j].p && v.len == s->values[j].len);
        }
        if (s->version != WIRE_PROTO_V3)
            break; /* wire_put_startup always writes 3.0 */
        wire_put_startup(&out, names, values, s->n_params);
        break;
    default:
        FUZZ_CHECK(0);
    }
    if (out.len > 0) {
        FUZZ_CHECK(out.len == len);
        FUZZ_CHECK(memcmp(out.data, pkt, len) == 0);
    }
    cm_buf_free(&out);
}

/*
 * Decode packets from buf with `avail` bytes visible; returns how many
 * were accepted, their sizes in used[], the stopping result in *end_rc.
 */
static size_t run(const uint8_t *buf, size_t avail, size_t *used, wire_rc_t *end_rc, bool check)
{
    size_t off = 0, n = 0, k;
    wire_startup_t *s = malloc(sizeof(*s)), *poison = malloc(sizeof(*s));
    wire_rc_t rc = WIRE_PARTIAL;

    FUZZ_CHECK(s != NULL && poison != NULL);
    memset(poison, 0x5c, sizeof(*poison));
    while (n < MAX_PACKETS) {
        size_t u = 0xabcdef;

        memcpy(s, poison, sizeof(*s));
        rc = wire_startup_decode(buf + off, avail - off, &lim, s, &u);
        if (rc == WIRE_PARTIAL) {
            FUZZ_CHECK(u == 0xabcdef);
            FUZZ_CHECK(memcmp(s, poison, sizeof(*s)) == 0);
            break;
        }
        if (rc != WIRE_OK)
            break;
        FUZZ_CHECK(u >= 8 && u <= avail - off && u <= lim.max_startup_len);
        if (check) {
            check_packet(s, buf + off, u);
            /* Every strict prefix is PARTIAL (the length comes first). */
            for (k = 0; k < u; k += 1 + k / 4) {
                memcpy(s, poison, sizeof(*s));
                FUZZ_CHECK(wire_startup_decode(buf + off, k, &lim, s, &u) == WIRE_PARTIAL);
            }
        }
        used[n++] = u;
        off += u;
    }
    *end_rc = rc;
    free(s);
    free(poison);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf;
    size_t used_all[MAX_PACKETS], used_bytes[MAX_PACKETS];
    size_t n_all, n_bytes = 0, off = 0, avail, k, from = 0;
    wire_rc_t rc_all, rc = WIRE_PARTIAL;

    if (size == 0 || size > 4 * 10000)
        return 0;
    buf = malloc(size);
    FUZZ_CHECK(buf != NULL);
    memcpy(buf, data, size);
    n_all = run(buf, size, used_all, &rc_all, true);

    /* Byte-at-a-time delivery with the unreceived tail poisoned. */
    ASAN_POISON_MEMORY_REGION(buf, size);
    for (avail = 1; avail <= size && n_bytes < MAX_PACKETS; avail++) {
        ASAN_UNPOISON_MEMORY_REGION(buf + from, avail - from);
        from = avail & ~(size_t)7;
        n_bytes += (k = run(buf + off, avail - off, used_bytes + n_bytes, &rc, false));
        for (; k > 0; k--)
            off += used_bytes[n_bytes - k];
        if (rc != WIRE_OK && rc != WIRE_PARTIAL)
            break;
    }
    ASAN_UNPOISON_MEMORY_REGION(buf, size);
    if (n_bytes > n_all)
        n_bytes = n_all; /* the whole pass stops at MAX_PACKETS too */
    FUZZ_CHECK(n_bytes == n_all);
    FUZZ_CHECK(memcmp(used_all, used_bytes, n_all * sizeof(size_t)) == 0);
    if (n_all < MAX_PACKETS)
        FUZZ_CHECK(rc == rc_all);
    free(buf);
    return 0;
}
