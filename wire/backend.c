/*
 * wire/backend.c - decoders for backend (server -> client) message bodies.
 *
 * Same contract as frontend.c: borrow the body, return views into it, write
 * *out only on WIRE_OK, and accept a message only when every byte was read.
 */
#include <string.h>

#include "wire/wire.h"
#include "wire/wire_int.h"

wire_rc_t wire_parse_auth(const uint8_t *body, size_t len, wire_auth_t *out)
{
    wire_rd_t rd;
    wire_auth_t m;
    const uint8_t *salt, *start;
    wire_str_t mech;

    memset(&m, 0, sizeof(m));
    wire_rd_init(&rd, body, len);
    m.code = wire_rd_u32(&rd);
    if (rd.bad)
        return WIRE_EPROTO;
    switch (m.code) {
    case WIRE_AUTH_OK:
    case WIRE_AUTH_KRB5:
    case WIRE_AUTH_CLEARTEXT:
    case WIRE_AUTH_SCM:
    case WIRE_AUTH_GSS:
    case WIRE_AUTH_SSPI:
        break;
    case WIRE_AUTH_MD5:
        salt = wire_rd_bytes(&rd, 4);
        if (salt != NULL)
            memcpy(m.md5_salt, salt, 4);
        break;
    case WIRE_AUTH_GSS_CONTINUE:
    case WIRE_AUTH_SASL_CONTINUE:
    case WIRE_AUTH_SASL_FINAL:
        m.sasl_data.len = wire_rd_left(&rd);
        m.sasl_data.p = (const char *)wire_rd_bytes(&rd, m.sasl_data.len);
        break;
    case WIRE_AUTH_SASL:
        /* Mechanism names, each NUL-terminated, then an empty name. */
        start = rd.p;
        do {
            mech = wire_rd_cstr(&rd);
        } while (!rd.bad && mech.len > 0);
        if (!rd.bad) {
            m.mechanisms.p = (const char *)start;
            m.mechanisms.len = (size_t)(rd.p - start);
        }
        break;
    default:
        return WIRE_EPROTO;
    }
    if (!wire_rd_done(&rd))
        return WIRE_EPROTO;
    *out = m;
    return WIRE_OK;
}

/* Borrows a; walks a->mechanisms without reading past a->mechanisms.len. */
bool wire_auth_has_mechanism(const wire_auth_t *a, const char *name)
{
    wire_rd_t rd;
    wire_str_t mech;
    size_t nlen = strlen(name);

    if (a->code != WIRE_AUTH_SASL || a->mechanisms.p == NULL)
        return false;
    wire_rd_init(&rd, (const uint8_t *)a->mechanisms.p, a->mechanisms.len);
    for (;;) {
        mech = wire_rd_cstr(&rd);
        if (rd.bad || mech.len == 0)
            return false;
        if (mech.len == nlen && memcmp(mech.p, name, nlen) == 0)
            return true;
    }
}

wire_rc_t wire_parse_backend_key(const uint8_t *body, size_t len, uint32_t *pid, uint32_t *key)
{
    wire_rd_t rd;
    uint32_t p, k;

    wire_rd_init(&rd, body, len);
    p = wire_rd_u32(&rd);
    k = wire_rd_u32(&rd);
    if (!wire_rd_done(&rd))
        return WIRE_EPROTO;
    *pid = p;
    *key = k;
    return WIRE_OK;
}

wire_rc_t wire_parse_param_status(const uint8_t *body, size_t len, wire_param_status_t *out)
{
    wire_rd_t rd;
    wire_param_status_t m;

    wire_rd_init(&rd, body, len);
    m.name = wire_rd_cstr(&rd);
    m.value = wire_rd_cstr(&rd);
    if (!wire_rd_done(&rd))
        return WIRE_EPROTO;
    *out = m;
    return WIRE_OK;
}

wire_rc_t wire_parse_ready(const uint8_t *body, size_t len, uint8_t *txn_status)
{
    wire_rd_t rd;
    uint8_t s;

    wire_rd_init(&rd, body, len);
    s = wire_rd_u8(&rd);
    if (!wire_rd_done(&rd))
        return WIRE_EPROTO;
    if (s != WIRE_TXN_IDLE && s != WIRE_TXN_INTXN && s != WIRE_TXN_FAILED)
        return WIRE_EPROTO;
    *txn_status = s;
    return WIRE_OK;
}

wire_rc_t wire_parse_error(const uint8_t *body, size_t len, wire_error_t *out)
{
    wire_rd_t rd;
    wire_error_t m;
    uint8_t code;
    wire_str_t value;

    memset(&m, 0, sizeof(m));
    wire_rd_init(&rd, body, len);
    for (;;) {
        code = wire_rd_u8(&rd);
        if (rd.bad)
            return WIRE_EPROTO; /* no terminating zero byte */
        if (code == 0)
            break;
        value = wire_rd_cstr(&rd);
        if (rd.bad)
            return WIRE_EPROTO;
        if (m.n_fields < WIRE_MAX_FIELDS) {
            m.codes[m.n_fields] = code;
            m.values[m.n_fields] = value;
            m.n_fields++;
        }
    }
    if (!wire_rd_done(&rd))
        return WIRE_EPROTO;
    *out = m;
    return WIRE_OK;
}

/* Returns a view borrowed from e; the first field with `code` wins. */
wire_str_t wire_error_field(const wire_error_t *e, uint8_t code)
{
    wire_str_t none = { NULL, 0 };
    size_t i;

    for (i = 0; i < e->n_fields && i < WIRE_MAX_FIELDS; i++)
        if (e->codes[i] == code)
            return e->values[i];
    return none;
}

wire_rc_t wire_parse_notification(const uint8_t *body, size_t len, wire_notification_t *out)
{
    wire_rd_t rd;
    wire_notification_t m;

    wire_rd_init(&rd, body, len);
    m.pid = wire_rd_u32(&rd);
    m.channel = wire_rd_cstr(&rd);
    m.payload = wire_rd_cstr(&rd);
    if (!wire_rd_done(&rd))
        return WIRE_EPROTO;
    *out = m;
    return WIRE_OK;
}

wire_rc_t wire_parse_copy_response(const uint8_t *body, size_t len, wire_copy_response_t *out)
{
    wire_rd_t rd;
    wire_copy_response_t m;

    wire_rd_init(&rd, body, len);
    m.format = wire_rd_u8(&rd);
    m.n_columns = wire_rd_u16(&rd);
    m.column_formats = wire_rd_array(&rd, m.n_columns, 2);
    if (!wire_rd_done(&rd) || m.format > 1)
        return WIRE_EPROTO;
    *out = m;
    return WIRE_OK;
}

wire_rc_t wire_parse_command_complete(const uint8_t *body, size_t len, wire_str_t *tag)
{
    return wire_parse_query(body, len, tag);
}
