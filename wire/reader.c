/*
 * wire/reader.c - the bounded reader, message framing and the startup family.
 *
 * Everything here reads untrusted bytes: no function allocates, aborts or
 * reads outside [buf, buf + len). The reader's `bad` flag is sticky so that
 * decoders read straight through a message and check once at the end
 * (PostgreSQL's pq_getmsgend rule: a message is good only when every byte
 * was consumed and nothing overran).
 */
#include <string.h>

#include "wire/wire.h"
#include "wire/wire_int.h"

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Borrows p (may be NULL when len is 0). */
void wire_rd_init(wire_rd_t *rd, const uint8_t *p, size_t len)
{
    static const uint8_t empty[1];

    /* NULL + 0 is undefined behaviour in C; point empty input somewhere real. */
    if (p == NULL || len == 0) {
        rd->p = rd->end = empty;
    } else {
        rd->p = p;
        rd->end = p + len;
    }
    rd->bad = false;
}

size_t wire_rd_left(const wire_rd_t *rd)
{
    return rd->bad ? 0 : (size_t)(rd->end - rd->p);
}

/* Claim n bytes; on shortage mark the reader bad and return NULL. */
static const uint8_t *rd_take(wire_rd_t *rd, size_t n)
{
    const uint8_t *p;

    if (rd->bad || (size_t)(rd->end - rd->p) < n) {
        rd->bad = true;
        return NULL;
    }
    p = rd->p;
    rd->p += n;
    return p;
}

uint8_t wire_rd_u8(wire_rd_t *rd)
{
    const uint8_t *p = rd_take(rd, 1);

    return p ? p[0] : 0;
}

uint16_t wire_rd_u16(wire_rd_t *rd)
{
    const uint8_t *p = rd_take(rd, 2);

    return p ? be16(p) : 0;
}

uint32_t wire_rd_u32(wire_rd_t *rd)
{
    const uint8_t *p = rd_take(rd, 4);

    return p ? be32(p) : 0;
}

int32_t wire_rd_i32(wire_rd_t *rd)
{
    uint32_t v = wire_rd_u32(rd);

    /* Two's complement without implementation-defined conversion. */
    return v <= INT32_MAX ? (int32_t)v : -(int32_t)(~v) - 1;
}

/* Returns a view into the reader's buffer; {NULL, 0} on overrun. */
wire_str_t wire_rd_cstr(wire_rd_t *rd)
{
    wire_str_t s = { NULL, 0 };
    const uint8_t *nul;

    if (rd->bad)
        return s;
    nul = memchr(rd->p, '\0', (size_t)(rd->end - rd->p));
    if (nul == NULL) {
        rd->bad = true;
        return s;
    }
    s.p = (const char *)rd->p;
    s.len = (size_t)(nul - rd->p);
    rd->p = nul + 1;
    return s;
}

/* Returns a pointer into the reader's buffer, or NULL on overrun. */
const uint8_t *wire_rd_bytes(wire_rd_t *rd, size_t n)
{
    return rd_take(rd, n);
}

bool wire_rd_done(const wire_rd_t *rd)
{
    return !rd->bad && rd->p == rd->end;
}

void wire_rd_skip_values(wire_rd_t *rd, uint32_t n)
{
    uint32_t i;
    int32_t vlen;

    if ((size_t)n > wire_rd_left(rd) / 4) { /* each value has at least its length */
        rd->bad = true;
        return;
    }
    for (i = 0; i < n && !rd->bad; i++) {
        vlen = wire_rd_i32(rd);
        if (vlen == -1)
            continue;
        if (vlen < 0)
            rd->bad = true;
        else
            (void)rd_take(rd, (size_t)vlen);
    }
}

const uint8_t *wire_rd_array(wire_rd_t *rd, uint32_t n, size_t item_len)
{
    const uint8_t *p;

    if ((size_t)n > wire_rd_left(rd) / item_len) {
        rd->bad = true;
        return NULL;
    }
    p = rd_take(rd, (size_t)n * item_len);
    return n == 0 ? NULL : p;
}

bool wire_formats_ok(uint16_t n_formats, uint16_t n_values)
{
    /* Protocol docs, Bind: zero codes (all text), one (applies to all), or one per value. */
    return n_formats <= 1 || n_formats == n_values;
}

/* ---- framing ---- */

wire_rc_t wire_hdr_decode(const uint8_t *buf, size_t len, const wire_limits_t *lim, wire_hdr_t *out)
{
    uint32_t n;

    if (len < WIRE_HDR_LEN)
        return WIRE_PARTIAL;
    n = be32(buf + 1);
    if (n < 4)
        return WIRE_EPROTO;
    if ((size_t)(n - 4) > lim->max_msg_len)
        return WIRE_ETOOBIG;
    out->type = buf[0];
    out->body_len = n - 4;
    return WIRE_OK;
}

wire_rc_t wire_msg_next(const uint8_t *buf, size_t len, const wire_limits_t *lim, wire_hdr_t *hdr,
                        const uint8_t **body, size_t *used)
{
    wire_hdr_t h;
    wire_rc_t rc = wire_hdr_decode(buf, len, lim, &h);

    if (rc != WIRE_OK)
        return rc;
    if (len - WIRE_HDR_LEN < h.body_len)
        return WIRE_PARTIAL;
    *hdr = h;
    *body = buf + WIRE_HDR_LEN;
    *used = WIRE_HDR_LEN + (size_t)h.body_len;
    return WIRE_OK;
}

/* ---- startup family ---- */

/* Name/value pairs up to a final empty name that must be the last byte. */
static wire_rc_t startup_params(wire_rd_t *rd, wire_startup_t *s)
{
    wire_str_t name, value;

    s->n_params = 0;
    for (;;) {
        name = wire_rd_cstr(rd);
        if (rd->bad)
            return WIRE_EPROTO; /* no final NUL */
        if (name.len == 0)
            break;
        value = wire_rd_cstr(rd);
        if (rd->bad)
            return WIRE_EPROTO; /* a name without a value */
        if (s->n_params == WIRE_MAX_STARTUP_PARAMS)
            return WIRE_EPROTO;
        s->names[s->n_params] = name;
        s->values[s->n_params] = value;
        s->n_params++;
    }
    /* PostgreSQL: "expected terminator as last byte". */
    return wire_rd_done(rd) ? WIRE_OK : WIRE_EPROTO;
}

wire_rc_t wire_startup_decode(const uint8_t *buf, size_t len, const wire_limits_t *lim,
                              wire_startup_t *out, size_t *used)
{
    wire_rd_t rd;
    uint32_t n, code;
    wire_startup_kind_t kind;
    wire_rc_t rc;

    if (len < 4)
        return WIRE_PARTIAL;
    n = be32(buf);
    if (n < 8) /* the length and the code at least (ProcessStartupPacket) */
        return WIRE_EPROTO;
    if (n > lim->max_startup_len)
        return WIRE_ETOOBIG;
    if (len < n)
        return WIRE_PARTIAL;
    code = be32(buf + 4);
    switch (code) {
    case WIRE_SSL_REQUEST_CODE:
        kind = WIRE_STARTUP_SSL_REQUEST;
        break;
    case WIRE_GSSENC_REQUEST_CODE:
        kind = WIRE_STARTUP_GSSENC_REQUEST;
        break;
    case WIRE_CANCEL_REQUEST_CODE:
        kind = WIRE_STARTUP_CANCEL;
        break;
    default:
        if (code >> 16 != 3)
            return WIRE_EPROTO;
        kind = WIRE_STARTUP_MESSAGE;
        break;
    }
    out->kind = kind;
    out->version = 0;
    out->cancel_pid = 0;
    out->cancel_key = 0;
    out->n_params = 0;
    switch (kind) {
    case WIRE_STARTUP_SSL_REQUEST:
    case WIRE_STARTUP_GSSENC_REQUEST:
        if (n != 8)
            return WIRE_EPROTO;
        break;
    case WIRE_STARTUP_CANCEL:
        /* Protocol 3.0: exactly pid and key. */
        if (n != 16)
            return WIRE_EPROTO;
        out->cancel_pid = be32(buf + 8);
        out->cancel_key = be32(buf + 12);
        break;
    case WIRE_STARTUP_MESSAGE:
        out->version = code;
        wire_rd_init(&rd, buf + 8, n - 8);
        rc = startup_params(&rd, out);
        if (rc != WIRE_OK)
            return rc;
        break;
    default:
        return WIRE_EPROTO;
    }
    *used = n;
    return WIRE_OK;
}

/* Returns a view borrowed from s; the first pair wins when a name repeats. */
wire_str_t wire_startup_param(const wire_startup_t *s, const char *name)
{
    wire_str_t none = { NULL, 0 };
    size_t i, nlen = strlen(name);

    for (i = 0; i < s->n_params && i < WIRE_MAX_STARTUP_PARAMS; i++)
        if (s->names[i].len == nlen && memcmp(s->names[i].p, name, nlen) == 0)
            return s->values[i];
    return none;
}

const char *wire_rc_str(wire_rc_t rc)
{
    switch (rc) {
    case WIRE_OK:
        return "ok";
    case WIRE_PARTIAL:
        return "incomplete message";
    case WIRE_EPROTO:
        return "protocol violation";
    case WIRE_ETOOBIG:
        return "message too large";
    default:
        return "unknown wire result";
    }
}
