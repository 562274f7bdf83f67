/*
 * wire/frontend.c - decoders for frontend (client -> server) message bodies.
 *
 * Each decoder takes one message body (the bytes after the 5-byte header),
 * borrows it, and returns views into it. *out is written only on WIRE_OK.
 * Semantic checks that PostgreSQL reports inside a transaction (unknown
 * statement, wrong parameter count, unsupported format code) are left to the
 * server; only what breaks the message structure is WIRE_EPROTO.
 */
#include "wire/wire.h"
#include "wire/wire_int.h"

wire_rc_t wire_parse_query(const uint8_t *body, size_t len, wire_str_t *sql)
{
    wire_rd_t rd;
    wire_str_t s;

    wire_rd_init(&rd, body, len);
    s = wire_rd_cstr(&rd);
    if (!wire_rd_done(&rd))
        return WIRE_EPROTO;
    *sql = s;
    return WIRE_OK;
}

wire_rc_t wire_parse_parse(const uint8_t *body, size_t len, wire_parse_t *out)
{
    wire_rd_t rd;
    wire_parse_t m;

    wire_rd_init(&rd, body, len);
    m.name = wire_rd_cstr(&rd);
    m.query = wire_rd_cstr(&rd);
    m.n_param_types = wire_rd_u16(&rd);
    m.param_types = wire_rd_array(&rd, m.n_param_types, 4);
    if (!wire_rd_done(&rd))
        return WIRE_EPROTO;
    *out = m;
    return WIRE_OK;
}

wire_rc_t wire_parse_bind(const uint8_t *body, size_t len, wire_bind_t *out)
{
    wire_rd_t rd;
    wire_bind_t m;

    wire_rd_init(&rd, body, len);
    m.portal = wire_rd_cstr(&rd);
    m.stmt = wire_rd_cstr(&rd);
    m.n_formats = wire_rd_u16(&rd);
    m.formats = wire_rd_array(&rd, m.n_formats, 2);
    m.n_params = wire_rd_u16(&rd);
    m.params = rd.bad ? NULL : rd.p;
    wire_rd_skip_values(&rd, m.n_params);
    m.params_len = rd.bad ? 0 : (size_t)(rd.p - m.params);
    m.n_result_formats = wire_rd_u16(&rd);
    m.result_formats = wire_rd_array(&rd, m.n_result_formats, 2);
    if (!wire_rd_done(&rd) || !wire_formats_ok(m.n_formats, m.n_params))
        return WIRE_EPROTO;
    if (m.n_params == 0)
        m.params = NULL;
    *out = m;
    return WIRE_OK;
}

/*
 * Walks the parameter area of b, which it borrows, bounded by b->params_len,
 * so a hand-built or inconsistent wire_bind_t yields false, never an overrun.
 */
bool wire_bind_param(const wire_bind_t *b, uint16_t i, bool *is_null, wire_str_t *val, int *format)
{
    wire_rd_t rd;
    uint16_t k;
    int32_t vlen = 0;
    const uint8_t *p = NULL;
    const uint8_t *f;

    if (i >= b->n_params || !wire_formats_ok(b->n_formats, b->n_params))
        return false;
    if (b->n_formats > 0 && b->formats == NULL)
        return false;
    wire_rd_init(&rd, b->params, b->params_len);
    for (k = 0; k <= i && !rd.bad; k++) {
        vlen = wire_rd_i32(&rd);
        if (vlen == -1) {
            p = NULL;
            continue;
        }
        if (vlen < 0)
            return false;
        p = wire_rd_bytes(&rd, (size_t)vlen);
    }
    if (rd.bad)
        return false;
    *is_null = vlen == -1;
    val->p = (const char *)p;
    val->len = vlen == -1 ? 0 : (size_t)vlen;
    if (b->n_formats == 0) {
        *format = 0;
    } else {
        f = b->formats + 2 * (b->n_formats == 1 ? 0 : i);
        /* Format codes are int16 on the wire; keep the sign. */
        *format = (int)(int16_t)(uint16_t)((unsigned)f[0] << 8 | f[1]);
    }
    return true;
}

static wire_rc_t describe_like(const uint8_t *body, size_t len, wire_describe_t *out)
{
    wire_rd_t rd;
    wire_describe_t m;

    wire_rd_init(&rd, body, len);
    m.what = wire_rd_u8(&rd);
    m.name = wire_rd_cstr(&rd);
    if (!wire_rd_done(&rd) || (m.what != 'S' && m.what != 'P'))
        return WIRE_EPROTO;
    *out = m;
    return WIRE_OK;
}

wire_rc_t wire_parse_describe(const uint8_t *body, size_t len, wire_describe_t *out)
{
    return describe_like(body, len, out);
}

wire_rc_t wire_parse_close(const uint8_t *body, size_t len, wire_describe_t *out)
{
    return describe_like(body, len, out);
}

wire_rc_t wire_parse_execute(const uint8_t *body, size_t len, wire_execute_t *out)
{
    wire_rd_t rd;
    wire_execute_t m;

    wire_rd_init(&rd, body, len);
    m.portal = wire_rd_cstr(&rd);
    m.max_rows = wire_rd_u32(&rd);
    if (!wire_rd_done(&rd))
        return WIRE_EPROTO;
    *out = m;
    return WIRE_OK;
}

wire_rc_t wire_parse_password(const uint8_t *body, size_t len, wire_str_t *password)
{
    return wire_parse_query(body, len, password);
}

wire_rc_t wire_parse_sasl_initial(const uint8_t *body, size_t len, wire_str_t *mechanism,
                                  wire_str_t *data)
{
    wire_rd_t rd;
    wire_str_t mech, d = { NULL, 0 };
    int32_t dlen;

    wire_rd_init(&rd, body, len);
    mech = wire_rd_cstr(&rd);
    dlen = wire_rd_i32(&rd);
    if (dlen < -1)
        return WIRE_EPROTO;
    if (dlen >= 0) {
        d.p = (const char *)wire_rd_bytes(&rd, (size_t)dlen);
        d.len = (size_t)dlen;
    }
    if (!wire_rd_done(&rd))
        return WIRE_EPROTO;
    *mechanism = mech;
    *data = d;
    return WIRE_OK;
}

wire_rc_t wire_parse_sasl_response(const uint8_t *body, size_t len, wire_str_t *data)
{
    data->p = (const char *)body;
    data->len = len;
    return WIRE_OK;
}

bool wire_fe_type_known(uint8_t type)
{
    switch (type) {
    case WIRE_MSG_BIND:
    case WIRE_MSG_CLOSE:
    case WIRE_MSG_COPY_DATA:
    case WIRE_MSG_COPY_DONE:
    case WIRE_MSG_COPY_FAIL:
    case WIRE_MSG_DESCRIBE:
    case WIRE_MSG_EXECUTE:
    case WIRE_MSG_FLUSH:
    case WIRE_MSG_FUNCTION_CALL:
    case WIRE_MSG_PARSE:
    case WIRE_MSG_QUERY:
    case WIRE_MSG_SYNC:
    case WIRE_MSG_TERMINATE:
        return true;
    default:
        return false;
    }
}
