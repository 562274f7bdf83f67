/*
 * tests/fuzz/fuzz_fe_stream.c - a client's byte stream through the frontend
 * decoders.
 *
 * Properties (besides "no crash, no over-read"): framing is independent of
 * how the stream is split (fuzz_stream.h); wire_validate agrees with every
 * per-type decoder; every view a decoder returns lies inside the body;
 * Query, Parse, Describe, Close, Execute, Sync, Flush, Terminate and
 * PasswordMessage re-encode to the very same bytes.
 */
#include <stdint.h>

#include "tests/fuzz/fuzz_stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_bind(const uint8_t *body, size_t len, const wire_bind_t *b)
{
    uint16_t i, n = b->n_params < 512 ? b->n_params : 512;
    bool is_null;
    wire_str_t v;
    int f;

    FUZZ_CHECK(fz_cstr_in(b->portal, body, len));
    FUZZ_CHECK(fz_cstr_in(b->stmt, body, len));
    FUZZ_CHECK(b->n_formats <= 1 || b->n_formats == b->n_params);
    FUZZ_CHECK(b->params_len <= len);
    for (i = 0; i < n; i++) {
        FUZZ_CHECK(wire_bind_param(b, i, &is_null, &v, &f));
        FUZZ_CHECK(is_null ? v.p == NULL && v.len == 0 : fz_view_in(v, body, len));
        if (b->n_formats == 0) {
            FUZZ_CHECK(f == 0);
        } else {
            const uint8_t *fp = b->formats + 2 * (b->n_formats == 1 ? 0 : i);

            FUZZ_CHECK(f == (int16_t)(uint16_t)(fp[0] << 8 | fp[1]));
        }
    }
    FUZZ_CHECK(!wire_bind_param(b, b->n_params, &is_null, &v, &f));
}

static void check_message(uint8_t type, const uint8_t *body, size_t len, const uint8_t *msg,
                          size_t msg_len)
{
    wire_rc_t v = wire_validate(type, true, body, len);
    cm_buf_t out = { 0 };
    wire_str_t s, d;
    wire_parse_t p;
    wire_bind_t b;
    wire_describe_t desc;
    wire_execute_t e;
    size_t m;

    switch (type) {
    case WIRE_MSG_QUERY:
        FUZZ_CHECK(wire_parse_query(body, len, &s) == v);
        if (v == WIRE_OK) {
            FUZZ_CHECK(fz_cstr_in(s, body, len));
            wire_put_query(&out, s.p);
            fz_same_bytes(&out, msg, msg_len);
        }
        break;
    case WIRE_MSG_PARSE:
        FUZZ_CHECK(wire_parse_parse(body, len, &p) == v);
        if (v == WIRE_OK) {
            FUZZ_CHECK(fz_cstr_in(p.name, body, len) && fz_cstr_in(p.query, body, len));
            wire_put_parse(&out, p.name.p, p.query.p, p.n_param_types, p.param_types);
            fz_same_bytes(&out, msg, msg_len);
        }
        break;
    case WIRE_MSG_BIND:
        FUZZ_CHECK(wire_parse_bind(body, len, &b) == v);
        if (v == WIRE_OK)
            check_bind(body, len, &b);
        break;
    case WIRE_MSG_DESCRIBE:
    case WIRE_MSG_CLOSE:
        if (type == WIRE_MSG_DESCRIBE)
            FUZZ_CHECK(wire_parse_describe(body, len, &desc) == v);
        else
            FUZZ_CHECK(wire_parse_close(body, len, &desc) == v);
        if (v == WIRE_OK) {
            FUZZ_CHECK(desc.what == 'S' || desc.what == 'P');
            FUZZ_CHECK(fz_cstr_in(desc.name, body, len));
            if (type == WIRE_MSG_DESCRIBE)
                wire_put_describe(&out, desc.what, desc.name.p);
            else
                wire_put_close(&out, desc.what, desc.name.p);
            fz_same_bytes(&out, msg, msg_len);
        }
        break;
    case WIRE_MSG_EXECUTE:
        FUZZ_CHECK(wire_parse_execute(body, len, &e) == v);
        if (v == WIRE_OK) {
            FUZZ_CHECK(fz_cstr_in(e.portal, body, len));
            m = wire_msg_begin(&out, WIRE_MSG_EXECUTE);
            cm_buf_append_cstr(&out, e.portal.p);
            cm_buf_append_u32(&out, e.max_rows);
            wire_msg_end(&out, m);
            fz_same_bytes(&out, msg, msg_len);
        }
        break;
    case WIRE_MSG_SYNC:
    case WIRE_MSG_FLUSH:
    case WIRE_MSG_TERMINATE:
        FUZZ_CHECK((v == WIRE_OK) == (len == 0));
        if (v == WIRE_OK) {
            if (type == WIRE_MSG_SYNC)
                wire_put_sync(&out);
            else if (type == WIRE_MSG_FLUSH)
                wire_put_flush(&out);
            else
                wire_put_terminate(&out);
            fz_same_bytes(&out, msg, msg_len);
        }
        break;
    case WIRE_MSG_PASSWORD:
        FUZZ_CHECK(v == WIRE_OK); /* meaning depends on the auth state */
        if (wire_parse_password(body, len, &s) == WIRE_OK) {
            FUZZ_CHECK(fz_cstr_in(s, body, len));
            wire_put_password(&out, s.p);
            fz_same_bytes(&out, msg, msg_len);
            cm_buf_reset(&out);
        }
        if (wire_parse_sasl_initial(body, len, &s, &d) == WIRE_OK) {
            FUZZ_CHECK(fz_cstr_in(s, body, len) && fz_view_in(d, body, len));
            if (d.p != NULL) {
                wire_put_sasl_initial(&out, s.p, d.p, d.len);
                fz_same_bytes(&out, msg, msg_len);
            }
            cm_buf_reset(&out);
        }
        FUZZ_CHECK(wire_parse_sasl_response(body, len, &d) == WIRE_OK);
        FUZZ_CHECK(d.len == len);
        wire_put_sasl_response(&out, d.p, d.len);
        fz_same_bytes(&out, msg, msg_len);
        break;
    case WIRE_MSG_COPY_DATA:
        FUZZ_CHECK(v == WIRE_OK);
        break;
    case WIRE_MSG_COPY_DONE:
        FUZZ_CHECK((v == WIRE_OK) == (len == 0));
        break;
    default:
        /* CopyFail and FunctionCall have no decoder; anything else is unknown. */
        if (type != WIRE_MSG_COPY_FAIL && type != WIRE_MSG_FUNCTION_CALL)
            FUZZ_CHECK(v == WIRE_EPROTO);
        break;
    }
    cm_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fz_stream(data, size, true, check_message);
}
