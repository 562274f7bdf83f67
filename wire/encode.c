/*
 * wire/encode.c - encoders: each appends one whole message to a caller-owned
 * cm_buf_t and never sends. Strings are borrowed C strings (so they cannot
 * contain a NUL); binary data is borrowed pointer + length. The buffer grows
 * through cm_buf_*, which aborts on OOM.
 */
#include <string.h>

#include "wire/wire.h"

size_t wire_msg_begin(cm_buf_t *out, uint8_t type)
{
    size_t start = out->len;

    cm_buf_append_u8(out, type);
    cm_buf_append_u32(out, 0); /* patched by wire_msg_end */
    return start;
}

void wire_msg_end(cm_buf_t *out, size_t start)
{
    size_t n;

    BUG_ON(start + WIRE_HDR_LEN > out->len, "wire_msg_end without wire_msg_begin");
    n = out->len - start - 1; /* the length counts itself, not the type byte */
    BUG_ON(n > UINT32_MAX, "message of %zu bytes", n);
    cm_buf_put_u32(out, start + 1, (uint32_t)n);
}

/* The startup family has no type byte: the length comes first. */
static size_t startup_begin(cm_buf_t *out)
{
    size_t start = out->len;

    cm_buf_append_u32(out, 0);
    return start;
}

static void startup_end(cm_buf_t *out, size_t start)
{
    size_t n = out->len - start;

    BUG_ON(n > UINT32_MAX, "startup packet of %zu bytes", n);
    cm_buf_put_u32(out, start, (uint32_t)n);
}

/* A message with no body. */
static void put_empty(cm_buf_t *out, uint8_t type)
{
    wire_msg_end(out, wire_msg_begin(out, type));
}

static void put_cstr_msg(cm_buf_t *out, uint8_t type, const char *s)
{
    size_t m = wire_msg_begin(out, type);

    cm_buf_append_cstr(out, s);
    wire_msg_end(out, m);
}

/* ---- frontend ---- */

/* Borrows names[0..n) and values[0..n); writes protocol 3.0. */
void wire_put_startup(cm_buf_t *out, const char *const *names, const char *const *values, size_t n)
{
    size_t m = startup_begin(out), i;

    cm_buf_append_u32(out, WIRE_PROTO_V3);
    for (i = 0; i < n; i++) {
        cm_buf_append_cstr(out, names[i]);
        cm_buf_append_cstr(out, values[i]);
    }
    cm_buf_append_u8(out, 0);
    startup_end(out, m);
}

void wire_put_ssl_request(cm_buf_t *out)
{
    cm_buf_append_u32(out, 8);
    cm_buf_append_u32(out, WIRE_SSL_REQUEST_CODE);
}

void wire_put_cancel(cm_buf_t *out, uint32_t pid, uint32_t key)
{
    cm_buf_append_u32(out, 16);
    cm_buf_append_u32(out, WIRE_CANCEL_REQUEST_CODE);
    cm_buf_append_u32(out, pid);
    cm_buf_append_u32(out, key);
}

void wire_put_query(cm_buf_t *out, const char *sql)
{
    put_cstr_msg(out, WIRE_MSG_QUERY, sql);
}

/* Borrows types (n_types big-endian OIDs, 4 bytes each). */
void wire_put_parse(cm_buf_t *out, const char *name, const char *query, uint16_t n_types,
                    const uint8_t *types)
{
    size_t m = wire_msg_begin(out, WIRE_MSG_PARSE);

    BUG_ON(n_types > 0 && types == NULL, "parse with %u types and no type array", n_types);
    cm_buf_append_cstr(out, name);
    cm_buf_append_cstr(out, query);
    cm_buf_append_u16(out, n_types);
    if (n_types > 0)
        cm_buf_append(out, types, (size_t)n_types * 4);
    wire_msg_end(out, m);
}

static void put_describe_like(cm_buf_t *out, uint8_t type, uint8_t what, const char *name)
{
    size_t m = wire_msg_begin(out, type);

    BUG_ON(what != 'S' && what != 'P', "describe/close of kind %d", what);
    cm_buf_append_u8(out, what);
    cm_buf_append_cstr(out, name);
    wire_msg_end(out, m);
}

void wire_put_describe(cm_buf_t *out, uint8_t what, const char *name)
{
    put_describe_like(out, WIRE_MSG_DESCRIBE, what, name);
}

void wire_put_close(cm_buf_t *out, uint8_t what, const char *name)
{
    put_describe_like(out, WIRE_MSG_CLOSE, what, name);
}

void wire_put_sync(cm_buf_t *out)
{
    put_empty(out, WIRE_MSG_SYNC);
}

void wire_put_flush(cm_buf_t *out)
{
    put_empty(out, WIRE_MSG_FLUSH);
}

void wire_put_terminate(cm_buf_t *out)
{
    put_empty(out, WIRE_MSG_TERMINATE);
}

void wire_put_password(cm_buf_t *out, const char *password)
{
    put_cstr_msg(out, WIRE_MSG_PASSWORD, password);
}

/* Borrows data[0..len); data may be NULL only when len is 0. */
void wire_put_sasl_initial(cm_buf_t *out, const char *mechanism, const void *data, size_t len)
{
    size_t m = wire_msg_begin(out, WIRE_MSG_PASSWORD);

    BUG_ON(len > INT32_MAX, "SASL data of %zu bytes", len);
    cm_buf_append_cstr(out, mechanism);
    cm_buf_append_u32(out, (uint32_t)len);
    cm_buf_append(out, data, len);
    wire_msg_end(out, m);
}

void wire_put_sasl_response(cm_buf_t *out, const void *data, size_t len)
{
    size_t m = wire_msg_begin(out, WIRE_MSG_PASSWORD);

    cm_buf_append(out, data, len);
    wire_msg_end(out, m);
}

/* ---- backend ---- */

static void put_auth(cm_buf_t *out, uint32_t code, const void *data, size_t len)
{
    size_t m = wire_msg_begin(out, WIRE_MSG_AUTH);

    cm_buf_append_u32(out, code);
    cm_buf_append(out, data, len);
    wire_msg_end(out, m);
}

void wire_put_auth_ok(cm_buf_t *out)
{
    put_auth(out, WIRE_AUTH_OK, NULL, 0);
}

void wire_put_auth_cleartext(cm_buf_t *out)
{
    put_auth(out, WIRE_AUTH_CLEARTEXT, NULL, 0);
}

void wire_put_auth_md5(cm_buf_t *out, const uint8_t salt[4])
{
    put_auth(out, WIRE_AUTH_MD5, salt, 4);
}

void wire_put_auth_sasl(cm_buf_t *out, const char *mechanism)
{
    size_t m = wire_msg_begin(out, WIRE_MSG_AUTH);

    cm_buf_append_u32(out, WIRE_AUTH_SASL);
    cm_buf_append_cstr(out, mechanism);
    cm_buf_append_u8(out, 0); /* end of the mechanism list */
    wire_msg_end(out, m);
}

void wire_put_auth_sasl_continue(cm_buf_t *out, const void *data, size_t len)
{
    put_auth(out, WIRE_AUTH_SASL_CONTINUE, data, len);
}

void wire_put_auth_sasl_final(cm_buf_t *out, const void *data, size_t len)
{
    put_auth(out, WIRE_AUTH_SASL_FINAL, data, len);
}

void wire_put_backend_key(cm_buf_t *out, uint32_t pid, uint32_t key)
{
    size_t m = wire_msg_begin(out, WIRE_MSG_BACKEND_KEY_DATA);

    cm_buf_append_u32(out, pid);
    cm_buf_append_u32(out, key);
    wire_msg_end(out, m);
}

void wire_put_param_status(cm_buf_t *out, const char *name, const char *value)
{
    size_t m = wire_msg_begin(out, WIRE_MSG_PARAMETER_STATUS);

    cm_buf_append_cstr(out, name);
    cm_buf_append_cstr(out, value);
    wire_msg_end(out, m);
}

void wire_put_ready(cm_buf_t *out, uint8_t txn_status)
{
    size_t m = wire_msg_begin(out, WIRE_MSG_READY_FOR_QUERY);

    cm_buf_append_u8(out, txn_status);
    wire_msg_end(out, m);
}

static void put_field(cm_buf_t *out, uint8_t code, const char *value)
{
    cm_buf_append_u8(out, code);
    cm_buf_append_cstr(out, value);
}

void wire_put_error(cm_buf_t *out, bool is_notice, const char *severity, const char *sqlstate,
                    const char *message, const char *detail)
{
    size_t m = wire_msg_begin(out, is_notice ? WIRE_MSG_NOTICE_RESPONSE : WIRE_MSG_ERROR_RESPONSE);

    put_field(out, WIRE_FIELD_SEVERITY, severity);
    put_field(out, WIRE_FIELD_SEVERITY_NL, severity);
    put_field(out, WIRE_FIELD_SQLSTATE, sqlstate);
    put_field(out, WIRE_FIELD_MESSAGE, message);
    if (detail != NULL)
        put_field(out, WIRE_FIELD_DETAIL, detail);
    cm_buf_append_u8(out, 0);
    wire_msg_end(out, m);
}

void wire_put_error_fields(cm_buf_t *out, bool is_notice, const wire_error_t *e)
{
    size_t m = wire_msg_begin(out, is_notice ? WIRE_MSG_NOTICE_RESPONSE : WIRE_MSG_ERROR_RESPONSE);
    size_t i;

    BUG_ON(e->n_fields > WIRE_MAX_FIELDS, "error with %zu fields", e->n_fields);
    for (i = 0; i < e->n_fields; i++) {
        BUG_ON(e->codes[i] == 0, "error field code 0");
        BUG_ON(e->values[i].len > 0 && memchr(e->values[i].p, 0, e->values[i].len) != NULL,
               "error field with a NUL byte");
        cm_buf_append_u8(out, e->codes[i]);
        cm_buf_append(out, e->values[i].p, e->values[i].len);
        cm_buf_append_u8(out, 0);
    }
    cm_buf_append_u8(out, 0);
    wire_msg_end(out, m);
}

void wire_put_negotiate_version(cm_buf_t *out, uint32_t newest_minor, const char *const *unknown,
                                size_t n_unknown)
{
    size_t m = wire_msg_begin(out, WIRE_MSG_NEGOTIATE_VERSION), i;

    BUG_ON(n_unknown > INT32_MAX, "%zu unknown options", n_unknown);
    cm_buf_append_u32(out, newest_minor);
    cm_buf_append_u32(out, (uint32_t)n_unknown);
    for (i = 0; i < n_unknown; i++)
        cm_buf_append_cstr(out, unknown[i]);
    wire_msg_end(out, m);
}

/* pg_type.typlen for the types a proxy is likely to describe; -1 (varlena) otherwise. */
static uint16_t type_len(uint32_t oid)
{
    switch (oid) {
    case 16: /* bool */
        return 1;
    case 21: /* int2 */
        return 2;
    case 23:  /* int4 */
    case 26:  /* oid */
    case 700: /* float4 */
        return 4;
    case 20:   /* int8 */
    case 701:  /* float8 */
    case 1114: /* timestamp */
    case 1184: /* timestamptz */
        return 8;
    default:
        return 0xffff;
    }
}

/* Borrows names[0..n) and types[0..n) (types may be NULL: all text). */
void wire_put_row_description(cm_buf_t *out, const char *const *names, const uint32_t *types,
                              size_t n)
{
    size_t m = wire_msg_begin(out, WIRE_MSG_ROW_DESCRIPTION), i;
    uint32_t oid;

    BUG_ON(n > UINT16_MAX, "%zu columns", n);
    cm_buf_append_u16(out, (uint16_t)n);
    for (i = 0; i < n; i++) {
        oid = types != NULL ? types[i] : 25;
        cm_buf_append_cstr(out, names[i]);
        cm_buf_append_u32(out, 0);   /* table oid: not a table column */
        cm_buf_append_u16(out, 0);   /* column number */
        cm_buf_append_u32(out, oid); /* type oid */
        cm_buf_append_u16(out, type_len(oid));
        cm_buf_append_u32(out, 0xffffffffu); /* type modifier -1 */
        cm_buf_append_u16(out, 0);           /* text format */
    }
    wire_msg_end(out, m);
}

/* Borrows values[0..n); a NULL pointer is SQL NULL (length -1). */
void wire_put_data_row(cm_buf_t *out, const char *const *values, size_t n)
{
    size_t m = wire_msg_begin(out, WIRE_MSG_DATA_ROW), i, len;

    BUG_ON(n > UINT16_MAX, "%zu columns", n);
    cm_buf_append_u16(out, (uint16_t)n);
    for (i = 0; i < n; i++) {
        if (values[i] == NULL) {
            cm_buf_append_u32(out, 0xffffffffu);
            continue;
        }
        len = strlen(values[i]);
        BUG_ON(len > INT32_MAX, "column value of %zu bytes", len);
        cm_buf_append_u32(out, (uint32_t)len);
        cm_buf_append(out, values[i], len);
    }
    wire_msg_end(out, m);
}

void wire_put_command_complete(cm_buf_t *out, const char *tag)
{
    put_cstr_msg(out, WIRE_MSG_COMMAND_COMPLETE, tag);
}

void wire_put_empty_query(cm_buf_t *out)
{
    put_empty(out, WIRE_MSG_EMPTY_QUERY);
}

void wire_put_parse_complete(cm_buf_t *out)
{
    put_empty(out, WIRE_MSG_PARSE_COMPLETE);
}

void wire_put_bind_complete(cm_buf_t *out)
{
    put_empty(out, WIRE_MSG_BIND_COMPLETE);
}

void wire_put_close_complete(cm_buf_t *out)
{
    put_empty(out, WIRE_MSG_CLOSE_COMPLETE);
}

void wire_put_no_data(cm_buf_t *out)
{
    put_empty(out, WIRE_MSG_NO_DATA);
}

void wire_put_notification(cm_buf_t *out, uint32_t pid, const char *channel, const char *payload)
{
    size_t m = wire_msg_begin(out, WIRE_MSG_NOTIFICATION);

    cm_buf_append_u32(out, pid);
    cm_buf_append_cstr(out, channel);
    cm_buf_append_cstr(out, payload);
    wire_msg_end(out, m);
}
