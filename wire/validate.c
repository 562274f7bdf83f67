/*
 * wire/validate.c - structural validation of any protocol 3.0 message body.
 *
 * wire_validate() answers "is this body well formed for its type and
 * direction?" without keeping anything. Types with a decoder go through it,
 * so the two can never disagree; the rest are checked here. Opaque payloads
 * (CopyData, column values, SASL data) are accepted as they are, but their
 * framing (counts and lengths) must add up exactly.
 */
#include "wire/wire.h"
#include "wire/wire_int.h"

static wire_rc_t done_rc(const wire_rd_t *rd)
{
    return wire_rd_done(rd) ? WIRE_OK : WIRE_EPROTO;
}

static wire_rc_t empty_body(size_t len)
{
    return len == 0 ? WIRE_OK : WIRE_EPROTO;
}

/* CopyFail, CommandComplete: one string and nothing else. */
static wire_rc_t one_cstr(const uint8_t *body, size_t len)
{
    wire_str_t s;

    return wire_parse_query(body, len, &s);
}

/* FunctionCall: oid, argument format codes, arguments, result format. */
static wire_rc_t function_call(const uint8_t *body, size_t len)
{
    wire_rd_t rd;
    uint16_t n_formats, n_args;

    wire_rd_init(&rd, body, len);
    (void)wire_rd_u32(&rd);
    n_formats = wire_rd_u16(&rd);
    (void)wire_rd_array(&rd, n_formats, 2);
    n_args = wire_rd_u16(&rd);
    wire_rd_skip_values(&rd, n_args);
    (void)wire_rd_u16(&rd);
    if (!wire_formats_ok(n_formats, n_args))
        return WIRE_EPROTO;
    return done_rc(&rd);
}

/* DataRow: int16 column count, then each column as int32 length (-1 NULL) + bytes. */
static wire_rc_t data_row(const uint8_t *body, size_t len)
{
    wire_rd_t rd;

    wire_rd_init(&rd, body, len);
    wire_rd_skip_values(&rd, wire_rd_u16(&rd));
    return done_rc(&rd);
}

/* FunctionCallResponse: one int32 length (-1 NULL) + bytes. */
static wire_rc_t function_result(const uint8_t *body, size_t len)
{
    wire_rd_t rd;

    wire_rd_init(&rd, body, len);
    wire_rd_skip_values(&rd, 1);
    return done_rc(&rd);
}

/* NegotiateProtocolVersion: newest minor, count, that many option names. */
static wire_rc_t negotiate_version(const uint8_t *body, size_t len)
{
    wire_rd_t rd;
    uint32_t n, i;

    wire_rd_init(&rd, body, len);
    (void)wire_rd_u32(&rd);
    n = wire_rd_u32(&rd);
    if ((size_t)n > wire_rd_left(&rd)) /* each name is at least its NUL */
        return WIRE_EPROTO;
    for (i = 0; i < n && !rd.bad; i++)
        (void)wire_rd_cstr(&rd);
    return done_rc(&rd);
}

/* ParameterDescription: int16 count, that many int32 type OIDs. */
static wire_rc_t param_description(const uint8_t *body, size_t len)
{
    wire_rd_t rd;

    wire_rd_init(&rd, body, len);
    (void)wire_rd_array(&rd, wire_rd_u16(&rd), 4);
    return done_rc(&rd);
}

/*
 * RowDescription: int16 field count, then per field a name and 18 bytes
 * (table oid, column number, type oid, type size, type modifier, format).
 */
static wire_rc_t row_description(const uint8_t *body, size_t len)
{
    wire_rd_t rd;
    uint16_t n, i;
    uint16_t format;

    wire_rd_init(&rd, body, len);
    n = wire_rd_u16(&rd);
    if ((size_t)n > wire_rd_left(&rd) / 19)
        return WIRE_EPROTO;
    for (i = 0; i < n && !rd.bad; i++) {
        (void)wire_rd_cstr(&rd);
        (void)wire_rd_bytes(&rd, 16);
        format = wire_rd_u16(&rd);
        if (format > 1)
            return WIRE_EPROTO;
    }
    return done_rc(&rd);
}

static wire_rc_t validate_frontend(uint8_t type, const uint8_t *body, size_t len)
{
    union {
        wire_str_t s;
        wire_parse_t parse;
        wire_bind_t bind;
        wire_describe_t describe;
        wire_execute_t execute;
    } u;

    switch (type) {
    case WIRE_MSG_BIND:
        return wire_parse_bind(body, len, &u.bind);
    case WIRE_MSG_CLOSE:
        return wire_parse_close(body, len, &u.describe);
    case WIRE_MSG_COPY_DATA:
        return WIRE_OK;
    case WIRE_MSG_COPY_DONE:
        return empty_body(len);
    case WIRE_MSG_COPY_FAIL:
        return one_cstr(body, len);
    case WIRE_MSG_DESCRIBE:
        return wire_parse_describe(body, len, &u.describe);
    case WIRE_MSG_EXECUTE:
        return wire_parse_execute(body, len, &u.execute);
    case WIRE_MSG_FLUSH:
        return empty_body(len);
    case WIRE_MSG_FUNCTION_CALL:
        return function_call(body, len);
    case WIRE_MSG_PARSE:
        return wire_parse_parse(body, len, &u.parse);
    case WIRE_MSG_PASSWORD:
        /* PasswordMessage, SASLInitialResponse, SASLResponse or GSSResponse:
         * only the authentication state knows which, so accept any body. */
        return WIRE_OK;
    case WIRE_MSG_QUERY:
        return wire_parse_query(body, len, &u.s);
    case WIRE_MSG_SYNC:
        return empty_body(len);
    case WIRE_MSG_TERMINATE:
        return empty_body(len);
    default:
        return WIRE_EPROTO;
    }
}

static wire_rc_t validate_backend(uint8_t type, const uint8_t *body, size_t len)
{
    union {
        wire_str_t s;
        wire_auth_t auth;
        wire_error_t error;
        wire_param_status_t param_status;
        wire_notification_t notification;
        wire_copy_response_t copy;
        uint32_t u32[2];
        uint8_t u8;
    } u;

    switch (type) {
    case WIRE_MSG_AUTH:
        return wire_parse_auth(body, len, &u.auth);
    case WIRE_MSG_BACKEND_KEY_DATA:
        return wire_parse_backend_key(body, len, &u.u32[0], &u.u32[1]);
    case WIRE_MSG_BIND_COMPLETE:
    case WIRE_MSG_CLOSE_COMPLETE:
    case WIRE_MSG_EMPTY_QUERY:
    case WIRE_MSG_NO_DATA:
    case WIRE_MSG_PARSE_COMPLETE:
    case WIRE_MSG_PORTAL_SUSPENDED:
    case WIRE_MSG_COPY_DONE:
        return empty_body(len);
    case WIRE_MSG_COMMAND_COMPLETE:
        return wire_parse_command_complete(body, len, &u.s);
    case WIRE_MSG_COPY_IN_RESPONSE:
    case WIRE_MSG_COPY_OUT_RESPONSE:
    case WIRE_MSG_COPY_BOTH_RESPONSE:
        return wire_parse_copy_response(body, len, &u.copy);
    case WIRE_MSG_COPY_DATA:
        return WIRE_OK;
    case WIRE_MSG_DATA_ROW:
        return data_row(body, len);
    case WIRE_MSG_ERROR_RESPONSE:
    case WIRE_MSG_NOTICE_RESPONSE:
        return wire_parse_error(body, len, &u.error);
    case WIRE_MSG_FUNCTION_CALL_RESPONSE:
        return function_result(body, len);
    case WIRE_MSG_NEGOTIATE_VERSION:
        return negotiate_version(body, len);
    case WIRE_MSG_NOTIFICATION:
        return wire_parse_notification(body, len, &u.notification);
    case WIRE_MSG_PARAMETER_DESCRIPTION:
        return param_description(body, len);
    case WIRE_MSG_PARAMETER_STATUS:
        return wire_parse_param_status(body, len, &u.param_status);
    case WIRE_MSG_READY_FOR_QUERY:
        return wire_parse_ready(body, len, &u.u8);
    case WIRE_MSG_ROW_DESCRIPTION:
        return row_description(body, len);
    default:
        return WIRE_EPROTO;
    }
}

/* Borrows body for the duration of the call. */
wire_rc_t wire_validate(uint8_t type, bool is_frontend, const uint8_t *body, size_t len)
{
    return is_frontend ? validate_frontend(type, body, len) : validate_backend(type, body, len);
}
