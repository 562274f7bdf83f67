/*
 * tests/fuzz/fuzz_be_stream.c - a server's byte stream through the backend
 * decoders.
 *
 * Properties (besides "no crash, no over-read"): framing is independent of
 * how the stream is split (fuzz_stream.h); wire_validate agrees with every
 * per-type decoder; views lie inside the body; ErrorResponse,
 * NoticeResponse, ParameterStatus, ReadyForQuery, BackendKeyData,
 * CommandComplete, NotificationResponse, most Authentication requests and
 * the empty messages re-encode to the very same bytes.
 */
#include <stdint.h>

#include "tests/fuzz/fuzz_stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_error(const uint8_t *body, size_t len, const wire_error_t *e, bool is_notice,
                        const uint8_t *msg, size_t msg_len)
{
    cm_buf_t out = { 0 };
    size_t i, j;
    wire_str_t f;

    FUZZ_CHECK(e->n_fields <= WIRE_MAX_FIELDS);
    for (i = 0; i < e->n_fields; i++) {
        FUZZ_CHECK(e->codes[i] != 0);
        FUZZ_CHECK(fz_cstr_in(e->values[i], body, len));
        /* wire_error_field returns the first field with that code. */
        f = wire_error_field(e, e->codes[i]);
        for (j = 0; e->codes[j] != e->codes[i]; j++)
            ;
        FUZZ_CHECK(f.p == e->values[j].p && f.len == e->values[j].len);
    }
    FUZZ_CHECK(wire_error_field(e, 0).p == NULL);
    if (e->n_fields < WIRE_MAX_FIELDS) { /* nothing was skipped */
        wire_put_error_fields(&out, is_notice, e);
        fz_same_bytes(&out, msg, msg_len);
    }
    cm_buf_free(&out);
}

static void check_auth(const uint8_t *body, size_t len, const wire_auth_t *a, const uint8_t *msg,
                       size_t msg_len)
{
    cm_buf_t out = { 0 };
    wire_rd_t rd;
    wire_str_t mech;
    size_t n_mechs = 0;
    char first[256];

    switch (a->code) {
    case WIRE_AUTH_OK:
        wire_put_auth_ok(&out);
        break;
    case WIRE_AUTH_CLEARTEXT:
        wire_put_auth_cleartext(&out);
        break;
    case WIRE_AUTH_MD5:
        wire_put_auth_md5(&out, a->md5_salt);
        break;
    case WIRE_AUTH_SASL_CONTINUE:
        FUZZ_CHECK(fz_view_in(a->sasl_data, body, len));
        wire_put_auth_sasl_continue(&out, a->sasl_data.p, a->sasl_data.len);
        break;
    case WIRE_AUTH_SASL_FINAL:
        FUZZ_CHECK(fz_view_in(a->sasl_data, body, len));
        wire_put_auth_sasl_final(&out, a->sasl_data.p, a->sasl_data.len);
        break;
    case WIRE_AUTH_SASL:
        FUZZ_CHECK(fz_view_in(a->mechanisms, body, len));
        wire_rd_init(&rd, (const uint8_t *)a->mechanisms.p, a->mechanisms.len);
        for (;;) {
            mech = wire_rd_cstr(&rd);
            FUZZ_CHECK(!rd.bad);
            if (mech.len == 0)
                break;
            FUZZ_CHECK(wire_auth_has_mechanism(a, mech.p));
            n_mechs++;
        }
        FUZZ_CHECK(wire_rd_done(&rd));
        if (n_mechs == 1 && a->mechanisms.len < sizeof(first)) {
            memcpy(first, a->mechanisms.p, a->mechanisms.len);
            wire_put_auth_sasl(&out, first);
        }
        break;
    default:
        break;
    }
    if (out.len > 0)
        fz_same_bytes(&out, msg, msg_len);
    cm_buf_free(&out);
}

static void check_message(uint8_t type, const uint8_t *body, size_t len, const uint8_t *msg,
                          size_t msg_len)
{
    wire_rc_t v = wire_validate(type, false, body, len);
    cm_buf_t out = { 0 };
    wire_auth_t a;
    wire_error_t e;
    wire_param_status_t ps;
    wire_notification_t n;
    wire_copy_response_t c;
    wire_str_t s;
    uint32_t pid, key;
    uint8_t z;

    switch (type) {
    case WIRE_MSG_AUTH:
        FUZZ_CHECK(wire_parse_auth(body, len, &a) == v);
        if (v == WIRE_OK)
            check_auth(body, len, &a, msg, msg_len);
        break;
    case WIRE_MSG_BACKEND_KEY_DATA:
        FUZZ_CHECK(wire_parse_backend_key(body, len, &pid, &key) == v);
        FUZZ_CHECK((v == WIRE_OK) == (len == 8));
        if (v == WIRE_OK)
            wire_put_backend_key(&out, pid, key);
        break;
    case WIRE_MSG_ERROR_RESPONSE:
    case WIRE_MSG_NOTICE_RESPONSE:
        FUZZ_CHECK(wire_parse_error(body, len, &e) == v);
        if (v == WIRE_OK)
            check_error(body, len, &e, type == WIRE_MSG_NOTICE_RESPONSE, msg, msg_len);
        break;
    case WIRE_MSG_PARAMETER_STATUS:
        FUZZ_CHECK(wire_parse_param_status(body, len, &ps) == v);
        if (v == WIRE_OK) {
            FUZZ_CHECK(fz_cstr_in(ps.name, body, len) && fz_cstr_in(ps.value, body, len));
            wire_put_param_status(&out, ps.name.p, ps.value.p);
        }
        break;
    case WIRE_MSG_READY_FOR_QUERY:
        FUZZ_CHECK(wire_parse_ready(body, len, &z) == v);
        if (v == WIRE_OK)
            wire_put_ready(&out, z);
        break;
    case WIRE_MSG_COMMAND_COMPLETE:
        FUZZ_CHECK(wire_parse_command_complete(body, len, &s) == v);
        if (v == WIRE_OK) {
            FUZZ_CHECK(fz_cstr_in(s, body, len));
            wire_put_command_complete(&out, s.p);
        }
        break;
    case WIRE_MSG_NOTIFICATION:
        FUZZ_CHECK(wire_parse_notification(body, len, &n) == v);
        if (v == WIRE_OK) {
            FUZZ_CHECK(fz_cstr_in(n.channel, body, len) && fz_cstr_in(n.payload, body, len));
            wire_put_notification(&out, n.pid, n.channel.p, n.payload.p);
        }
        break;
    case WIRE_MSG_COPY_IN_RESPONSE:
    case WIRE_MSG_COPY_OUT_RESPONSE:
    case WIRE_MSG_COPY_BOTH_RESPONSE:
        FUZZ_CHECK(wire_parse_copy_response(body, len, &c) == v);
        if (v == WIRE_OK) {
            FUZZ_CHECK(c.format <= 1);
            FUZZ_CHECK(len == 3 + 2 * (size_t)c.n_columns);
            FUZZ_CHECK(c.n_columns == 0 || c.column_formats == body + 3);
        }
        break;
    case WIRE_MSG_PARSE_COMPLETE:
    case WIRE_MSG_BIND_COMPLETE:
    case WIRE_MSG_CLOSE_COMPLETE:
    case WIRE_MSG_NO_DATA:
    case WIRE_MSG_EMPTY_QUERY:
        FUZZ_CHECK((v == WIRE_OK) == (len == 0));
        if (v != WIRE_OK)
            break;
        if (type == WIRE_MSG_PARSE_COMPLETE)
            wire_put_parse_complete(&out);
        else if (type == WIRE_MSG_BIND_COMPLETE)
            wire_put_bind_complete(&out);
        else if (type == WIRE_MSG_CLOSE_COMPLETE)
            wire_put_close_complete(&out);
        else if (type == WIRE_MSG_NO_DATA)
            wire_put_no_data(&out);
        else
            wire_put_empty_query(&out);
        break;
    case WIRE_MSG_PORTAL_SUSPENDED:
    case WIRE_MSG_COPY_DONE:
        FUZZ_CHECK((v == WIRE_OK) == (len == 0));
        break;
    case WIRE_MSG_COPY_DATA:
        FUZZ_CHECK(v == WIRE_OK);
        break;
    case WIRE_MSG_DATA_ROW:
    case WIRE_MSG_ROW_DESCRIPTION:
    case WIRE_MSG_PARAMETER_DESCRIPTION:
    case WIRE_MSG_FUNCTION_CALL_RESPONSE:
    case WIRE_MSG_NEGOTIATE_VERSION:
        break; /* wire_validate only */
    default:
        FUZZ_CHECK(v == WIRE_EPROTO);
        break;
    }
    if (out.len > 0)
        fz_same_bytes(&out, msg, msg_len);
    cm_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fz_stream(data, size, false, check_message);
}
