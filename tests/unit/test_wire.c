/*
 * tests/unit/test_wire.c - the wire codec against hand-built byte vectors.
 *
 * Tables of bodies per message type (valid, short, overrun, missing NUL,
 * trailing garbage, huge counts and lengths) run through both wire_validate
 * and the per-type decoder; field-level checks on real message sequences;
 * encode -> decode round trips for every encoder.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
/* cmocka.h needs the headers above first. */
#include <cmocka.h>

#include "wire/wire.h"

/* A byte-string literal and its length, NULs included. */
#define BYTES(s) (const uint8_t *)(s), sizeof(s) - 1

static const wire_limits_t lim = { .max_msg_len = 1 << 20, .max_startup_len = 10000 };

static bool str_eq(wire_str_t s, const char *want)
{
    return s.p != NULL && s.len == strlen(want) && memcmp(s.p, want, s.len) == 0;
}

#define assert_str(s, want) assert_true(str_eq((s), (want)))

/* assert_int_equal that names the table case when it fails. */
#define assert_case_equal(name, got, want)                                     \
    do {                                                                       \
        long long got_ = (long long)(got);                                     \
        long long want_ = (long long)(want);                                   \
        if (got_ != want_)                                                     \
            print_message("case \"%s\": %lld != %lld\n", (name), got_, want_); \
        assert_int_equal(got_, want_);                                         \
    } while (0)

/* ---- bounded reader ---- */

static void test_rd_basic(void **state)
{
    static const uint8_t b[] = { 1, 0, 2, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xfe, 'h', 'i', 0, 'x' };
    wire_rd_t rd;
    wire_str_t s;

    (void)state;
    wire_rd_init(&rd, b, sizeof(b));
    assert_int_equal(wire_rd_u8(&rd), 1);
    assert_int_equal(wire_rd_u16(&rd), 2);
    assert_int_equal(wire_rd_u32(&rd), 3);
    assert_int_equal(wire_rd_i32(&rd), -2);
    s = wire_rd_cstr(&rd);
    assert_str(s, "hi");
    assert_int_equal(s.p[s.len], '\0');
    assert_false(wire_rd_done(&rd)); /* one byte left */
    assert_non_null(wire_rd_bytes(&rd, 1));
    assert_true(wire_rd_done(&rd));
    /* Reading past the end is sticky and yields zeros / NULL views. */
    assert_int_equal(wire_rd_u8(&rd), 0);
    assert_true(rd.bad);
    assert_false(wire_rd_done(&rd));
    assert_null(wire_rd_bytes(&rd, 0));
    assert_null(wire_rd_cstr(&rd).p);
}

static void test_rd_overruns(void **state)
{
    static const uint8_t b[] = { 'a', 'b', 'c' };
    wire_rd_t rd;

    (void)state;
    wire_rd_init(&rd, b, 3);
    assert_int_equal(wire_rd_u32(&rd), 0);
    assert_true(rd.bad);
    assert_int_equal(wire_rd_u8(&rd), 0); /* sticky even though 3 bytes remain */

    wire_rd_init(&rd, b, 3);
    assert_null(wire_rd_cstr(&rd).p); /* no NUL inside the bounds */
    assert_true(rd.bad);

    wire_rd_init(&rd, b, 2);
    assert_null(wire_rd_bytes(&rd, 3));
    assert_true(rd.bad);

    wire_rd_init(&rd, b, 2);
    assert_int_equal(wire_rd_u16(&rd), ('a' << 8) | 'b');
    assert_true(wire_rd_done(&rd));

    wire_rd_init(&rd, NULL, 0); /* empty input is legal */
    assert_true(wire_rd_done(&rd));
    assert_non_null(wire_rd_bytes(&rd, 0));
    assert_true(wire_rd_done(&rd));
    assert_int_equal(wire_rd_u8(&rd), 0);
    assert_false(wire_rd_done(&rd));
}

/* ---- framing ---- */

struct hdr_case {
    const char *name;
    const uint8_t *buf;
    size_t len;
    size_t max;
    wire_rc_t rc;
    uint8_t type;
    uint32_t body_len;
};

static void test_hdr_decode(void **state)
{
    static const struct hdr_case cases[] = {
        { "empty", BYTES(""), 100, WIRE_PARTIAL, 0, 0 },
        { "type only", BYTES("Q"), 100, WIRE_PARTIAL, 0, 0 },
        { "4 of 5", BYTES("Q\0\0\0"), 100, WIRE_PARTIAL, 0, 0 },
        { "sync", BYTES("S\0\0\0\4"), 100, WIRE_OK, 'S', 0 },
        { "body not needed", BYTES("Q\0\0\0\x0d"), 100, WIRE_OK, 'Q', 9 },
        { "len 3", BYTES("Q\0\0\0\3"), 100, WIRE_EPROTO, 0, 0 },
        { "len 0", BYTES("Q\0\0\0\0"), 100, WIRE_EPROTO, 0, 0 },
        { "at limit", BYTES("d\0\0\0\x68"), 100, WIRE_OK, 'd', 100 },
        { "over limit", BYTES("d\0\0\0\x69"), 100, WIRE_ETOOBIG, 0, 0 },
        { "huge", BYTES("d\x7f\xff\xff\xff"), 1 << 20, WIRE_ETOOBIG, 0, 0 },
        { "all ones", BYTES("d\xff\xff\xff\xff"), 1 << 20, WIRE_ETOOBIG, 0, 0 },
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct hdr_case *c = &cases[i];
        wire_limits_t l = { .max_msg_len = c->max, .max_startup_len = 10000 };
        wire_hdr_t h = { 0xaa, 0xdeadbeef };

        assert_case_equal(c->name, wire_hdr_decode(c->buf, c->len, &l, &h), c->rc);
        if (c->rc == WIRE_OK) {
            assert_case_equal(c->name, h.type, c->type);
            assert_case_equal(c->name, h.body_len, c->body_len);
        } else {
            assert_case_equal(c->name, h.type, 0xaa); /* untouched */
            assert_case_equal(c->name, h.body_len, 0xdeadbeef);
        }
    }
}

static void test_msg_next(void **state)
{
    static const uint8_t stream[] = "Q\0\0\0\x0dSELECT 1\0S\0\0\0\4X";
    size_t len = sizeof(stream) - 1, used = 777, k;
    wire_hdr_t h;
    const uint8_t *body = NULL;

    (void)state;
    assert_int_equal(wire_msg_next(stream, len, &lim, &h, &body, &used), WIRE_OK);
    assert_int_equal(h.type, 'Q');
    assert_int_equal(used, 14);
    assert_ptr_equal(body, stream + 5);
    assert_int_equal(wire_msg_next(stream + 14, len - 14, &lim, &h, &body, &used), WIRE_OK);
    assert_int_equal(h.type, 'S');
    assert_int_equal(used, 5);
    used = 777;
    assert_int_equal(wire_msg_next(stream + 19, len - 19, &lim, &h, &body, &used), WIRE_PARTIAL);
    assert_int_equal(used, 777);
    /* Every strict prefix of the Query is PARTIAL and consumes nothing. */
    for (k = 0; k < 14; k++) {
        assert_int_equal(wire_msg_next(stream, k, &lim, &h, &body, &used), WIRE_PARTIAL);
        assert_int_equal(used, 777);
    }
}

/* ---- startup family ---- */

/* A StartupMessage as psql sends it: user, database, options, application_name. */
static const uint8_t startup_psql[] = {
    0,   0,   0,   78,  0,   3,   0,   0,   'u', 's', 'e', 'r', 0,   'a', 'l', 'i',
    'c', 'e', 0,   'd', 'a', 't', 'a', 'b', 'a', 's', 'e', 0,   'e', 'v', 'e', 'n',
    't', 's', 0,   'o', 'p', 't', 'i', 'o', 'n', 's', 0,   '-', 'c', ' ', 'g', 'e',
    'q', 'o', '=', 'o', 'f', 'f', 0,   'a', 'p', 'p', 'l', 'i', 'c', 'a', 't', 'i',
    'o', 'n', '_', 'n', 'a', 'm', 'e', 0,   'p', 's', 'q', 'l', 0,   0,
};

struct startup_case {
    const char *name;
    const uint8_t *buf;
    size_t len;
    wire_rc_t rc;
    size_t used;
};

static void test_startup_table(void **state)
{
    static const struct startup_case cases[] = {
        { "empty", BYTES(""), WIRE_PARTIAL, 0 },
        { "3 bytes", BYTES("\0\0\0"), WIRE_PARTIAL, 0 },
        { "len only", BYTES("\0\0\0\x08"), WIRE_PARTIAL, 0 },
        { "len 7", BYTES("\0\0\0\x07\0\3\0"), WIRE_EPROTO, 0 },
        { "len 0", BYTES("\0\0\0\0"), WIRE_EPROTO, 0 },
        { "over 10000", BYTES("\0\0\x27\x11"), WIRE_ETOOBIG, 0 },
        { "huge", BYTES("\xff\xff\xff\xff"), WIRE_ETOOBIG, 0 },
        { "ssl", BYTES("\0\0\0\x08\x04\xd2\x16\x2f"), WIRE_OK, 8 },
        { "ssl + plaintext after", BYTES("\0\0\0\x08\x04\xd2\x16\x2fQ"), WIRE_OK, 8 },
        { "ssl len 12", BYTES("\0\0\0\x0c\x04\xd2\x16\x2f\0\0\0\0"), WIRE_EPROTO, 0 },
        { "gssenc", BYTES("\0\0\0\x08\x04\xd2\x16\x30"), WIRE_OK, 8 },
        { "cancel", BYTES("\0\0\0\x10\x04\xd2\x16\x2e\0\0\x30\x39\xde\xad\xbe\xef"), WIRE_OK, 16 },
        { "cancel short", BYTES("\0\0\0\x0c\x04\xd2\x16\x2e\0\0\x30\x39"), WIRE_EPROTO, 0 },
        { "cancel partial", BYTES("\0\0\0\x10\x04\xd2\x16\x2e\0\0"), WIRE_PARTIAL, 0 },
        { "unknown 1234.1", BYTES("\0\0\0\x08\x04\xd2\0\x01"), WIRE_EPROTO, 0 },
        { "v2", BYTES("\0\0\0\x0a\0\2\0\0\0\0"), WIRE_EPROTO, 0 },
        { "v3 no params", BYTES("\0\0\0\x09\0\3\0\0\0"), WIRE_OK, 9 },
        { "v3.2 accepted", BYTES("\0\0\0\x0f\0\3\0\2u\0bob\0\0"), WIRE_OK, 15 },
        { "missing final NUL", BYTES("\0\0\0\x0e\0\3\0\0u\0bob\0"), WIRE_EPROTO, 0 },
        { "no terminator at all", BYTES("\0\0\0\x08\0\3\0\0"), WIRE_EPROTO, 0 },
        { "name without value", BYTES("\0\0\0\x0c\0\3\0\0u\0b\0"), WIRE_EPROTO, 0 },
        { "value unterminated", BYTES("\0\0\0\x0d\0\3\0\0u\0bob"), WIRE_EPROTO, 0 },
        { "trailing garbage", BYTES("\0\0\0\x10\0\3\0\0u\0bob\0\0x"), WIRE_EPROTO, 0 },
        { "body partial", BYTES("\0\0\0\x0f\0\3\0\0u\0bo"), WIRE_PARTIAL, 0 },
        { "psql", startup_psql, sizeof(startup_psql), WIRE_OK, 78 },
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct startup_case *c = &cases[i];
        wire_startup_t s;
        size_t used = 4242;

        memset(&s, 0x5a, sizeof(s));
        assert_case_equal(c->name, wire_startup_decode(c->buf, c->len, &lim, &s, &used), c->rc);
        if (c->rc == WIRE_OK)
            assert_case_equal(c->name, used, c->used);
        else
            assert_case_equal(c->name, used, 4242);
        if (c->rc == WIRE_PARTIAL) {
            uint8_t poison[sizeof(s)];

            memset(poison, 0x5a, sizeof(poison));
            assert_memory_equal(&s, poison, sizeof(s));
        }
    }
}

static void test_startup_fields(void **state)
{
    wire_startup_t s;
    size_t used = 0;
    wire_limits_t tight = { .max_msg_len = 100, .max_startup_len = 77 };
    static const uint8_t cancel[] = "\0\0\0\x10\x04\xd2\x16\x2e\0\0\x30\x39\xde\xad\xbe\xef";

    (void)state;
    assert_int_equal(wire_startup_decode(startup_psql, sizeof(startup_psql), &lim, &s, &used),
                     WIRE_OK);
    assert_int_equal(s.kind, WIRE_STARTUP_MESSAGE);
    assert_int_equal(s.version, WIRE_PROTO_V3);
    assert_int_equal(s.n_params, 4);
    assert_str(wire_startup_param(&s, "user"), "alice");
    assert_str(wire_startup_param(&s, "database"), "events");
    assert_str(wire_startup_param(&s, "options"), "-c geqo=off");
    assert_str(wire_startup_param(&s, "application_name"), "psql");
    assert_null(wire_startup_param(&s, "replication").p);
    assert_null(wire_startup_param(&s, "use").p);
    assert_int_equal(s.values[0].p[s.values[0].len], '\0');

    /* The startup limit, not the message limit, applies. */
    assert_int_equal(wire_startup_decode(startup_psql, sizeof(startup_psql), &tight, &s, &used),
                     WIRE_ETOOBIG);

    assert_int_equal(wire_startup_decode(cancel, sizeof(cancel) - 1, &lim, &s, &used), WIRE_OK);
    assert_int_equal(s.kind, WIRE_STARTUP_CANCEL);
    assert_int_equal(s.cancel_pid, 12345);
    assert_int_equal(s.cancel_key, 0xdeadbeef);
}

static void test_startup_too_many_params(void **state)
{
    cm_buf_t b = { 0 };
    const char *names[WIRE_MAX_STARTUP_PARAMS + 1];
    const char *values[WIRE_MAX_STARTUP_PARAMS + 1];
    wire_startup_t s;
    size_t used, i;

    (void)state;
    for (i = 0; i <= WIRE_MAX_STARTUP_PARAMS; i++) {
        names[i] = "n";
        values[i] = "v";
    }
    wire_put_startup(&b, names, values, WIRE_MAX_STARTUP_PARAMS);
    assert_int_equal(wire_startup_decode(b.data, b.len, &lim, &s, &used), WIRE_OK);
    assert_int_equal(s.n_params, WIRE_MAX_STARTUP_PARAMS);
    cm_buf_reset(&b);
    wire_put_startup(&b, names, values, WIRE_MAX_STARTUP_PARAMS + 1);
    assert_int_equal(wire_startup_decode(b.data, b.len, &lim, &s, &used), WIRE_EPROTO);
    cm_buf_free(&b);
}

/* ---- body tables: wire_validate and the per-type decoders agree ---- */

struct body_case {
    const char *name;
    uint8_t type;
    const uint8_t *body;
    size_t len;
    wire_rc_t rc;
};

/* The per-type decoder for (type, direction), or -1 when only wire_validate exists. */
static int decode_by_type(uint8_t type, bool fe, const uint8_t *b, size_t n)
{
    union {
        wire_str_t s;
        wire_parse_t parse;
        wire_bind_t bind;
        wire_describe_t d;
        wire_execute_t e;
        wire_auth_t auth;
        wire_error_t err;
        wire_param_status_t ps;
        wire_notification_t notif;
        wire_copy_response_t copy;
        uint32_t k[2];
        uint8_t z;
    } u;

    if (fe) {
        switch (type) {
        case 'Q':
            return wire_parse_query(b, n, &u.s);
        case 'P':
            return wire_parse_parse(b, n, &u.parse);
        case 'B':
            return wire_parse_bind(b, n, &u.bind);
        case 'D':
            return wire_parse_describe(b, n, &u.d);
        case 'C':
            return wire_parse_close(b, n, &u.d);
        case 'E':
            return wire_parse_execute(b, n, &u.e);
        default:
            return -1;
        }
    }
    switch (type) {
    case 'R':
        return wire_parse_auth(b, n, &u.auth);
    case 'K':
        return wire_parse_backend_key(b, n, &u.k[0], &u.k[1]);
    case 'S':
        return wire_parse_param_status(b, n, &u.ps);
    case 'Z':
        return wire_parse_ready(b, n, &u.z);
    case 'E':
    case 'N':
        return wire_parse_error(b, n, &u.err);
    case 'A':
        return wire_parse_notification(b, n, &u.notif);
    case 'G':
    case 'H':
    case 'W':
        return wire_parse_copy_response(b, n, &u.copy);
    case 'C':
        return wire_parse_command_complete(b, n, &u.s);
    default:
        return -1;
    }
}

static void run_body_cases(const struct body_case *cases, size_t n, bool fe)
{
    size_t i;
    int d;

    for (i = 0; i < n; i++) {
        const struct body_case *c = &cases[i];

        assert_case_equal(c->name, wire_validate(c->type, fe, c->body, c->len), c->rc);
        d = decode_by_type(c->type, fe, c->body, c->len);
        if (d >= 0)
            assert_case_equal(c->name, d, c->rc);
    }
}

#define OK(t, n, s)             \
    {                           \
        n, t, BYTES(s), WIRE_OK \
    }
#define BAD(t, n, s)                \
    {                               \
        n, t, BYTES(s), WIRE_EPROTO \
    }

static void test_frontend_table(void **state)
{
    static const struct body_case cases[] = {
        OK('Q', "select", "SELECT 1\0"),
        OK('Q', "empty query", "\0"),
        BAD('Q', "empty body", ""),
        BAD('Q', "missing NUL", "SELECT 1"),
        BAD('Q', "trailing", "SELECT 1\0x"),
        BAD('Q', "two strings", "a\0b\0"),
        OK('P', "unnamed no types", "\0SELECT 1\0\0\0"),
        OK('P', "named one type", "s1\0SELECT $1\0\0\1\0\0\0\x17"),
        BAD('P', "type overrun", "s1\0SELECT $1\0\0\2\0\0\0\x17"),
        BAD('P', "huge count", "\0q\0\xff\xff\0\0\0\x17"),
        BAD('P', "count cut", "\0q\0\0"),
        BAD('P', "query missing NUL", "\0SELECT 1"),
        BAD('P', "trailing", "\0q\0\0\0z"),
        OK('B', "two text params, one NULL",
           "\0\0\0\0\0\2\0\0\0\1"
           "5\xff\xff\xff\xff\0\0"),
        OK('B', "one binary code", "p\0s\0\0\1\0\1\0\1\0\0\0\4\0\0\0\7\0\1\0\1"),
        OK('B', "n codes", "\0\0\0\2\0\0\0\1\0\2\0\0\0\0\0\0\0\0\0\0"),
        BAD('B', "2 codes 3 params", "\0\0\0\2\0\0\0\1\0\3\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
        BAD('B', "length -2", "\0\0\0\0\0\1\xff\xff\xff\xfe\0\0"),
        BAD('B', "value overrun",
            "\0\0\0\0\0\1\0\0\0\x09"
            "abc\0\0"),
        BAD('B', "huge value length", "\0\0\0\0\0\1\x7f\xff\xff\xff\0\0"),
        BAD('B', "huge param count", "\0\0\0\0\xff\xff\0\0"),
        BAD('B', "huge format count", "\0\0\xff\xff\0\0\0\0"),
        BAD('B', "no result formats", "\0\0\0\0\0\0"),
        BAD('B', "trailing", "\0\0\0\0\0\0\0\0!"),
        BAD('B', "portal missing NUL", "portal"),
        OK('D', "statement", "S\0"),
        OK('D', "portal", "Pcur\0"),
        BAD('D', "bad kind", "X\0"),
        BAD('D', "missing NUL", "S"),
        BAD('D', "empty", ""),
        BAD('D', "trailing", "S\0\0"),
        OK('C', "statement", "Ss1\0"),
        BAD('C', "bad kind", "s\0"),
        BAD('C', "trailing", "Pp\0x"),
        OK('E', "all rows", "\0\0\0\0\0"),
        OK('E', "100 rows", "cur\0\0\0\0\x64"),
        BAD('E', "short", "\0\0\0\0"),
        BAD('E', "trailing", "\0\0\0\0\0\0"),
        OK('S', "sync", ""),
        BAD('S', "sync with body", "x"),
        OK('H', "flush", ""),
        BAD('H', "flush with body", "\0"),
        OK('X', "terminate", ""),
        BAD('X', "terminate with body", "bye"),
        OK('c', "copy done", ""),
        BAD('c', "copy done with body", "\0"),
        OK('d', "copy data", "1\tfoo\n"),
        OK('d', "copy data empty", ""),
        OK('f', "copy fail", "cancelled\0"),
        BAD('f', "copy fail missing NUL", "cancelled"),
        OK('F', "function call",
           "\0\0\x04\xd2\0\1\0\1\0\1\0\0\0\2"
           "ab\0\0"),
        OK('F', "function call NULL arg", "\0\0\x04\xd2\0\0\0\1\xff\xff\xff\xff\0\1"),
        BAD('F', "2 formats 1 arg", "\0\0\x04\xd2\0\2\0\1\0\1\0\1\0\0\0\0\0\0"),
        BAD('F', "no result format", "\0\0\x04\xd2\0\0\0\0"),
        BAD('F', "arg overrun", "\0\0\x04\xd2\0\0\0\1\0\0\0\x10\0\0"),
        OK('p', "password", "secret\0"),
        OK('p', "anything", "\x01\x02"),
        OK('p', "empty", ""),
        BAD('Z', "backend type", "I"),
        BAD('T', "backend type", ""),
        BAD(0, "zero type", ""),
    };

    (void)state;
    run_body_cases(cases, sizeof(cases) / sizeof(cases[0]), true);
}

static void test_backend_table(void **state)
{
    static const struct body_case cases[] = {
        OK('R', "ok", "\0\0\0\0"),
        BAD('R', "ok trailing", "\0\0\0\0x"),
        BAD('R', "short code", "\0\0"),
        OK('R', "cleartext", "\0\0\0\3"),
        OK('R', "md5", "\0\0\0\5salt"),
        BAD('R', "md5 short salt", "\0\0\0\5sal"),
        BAD('R', "md5 long salt", "\0\0\0\5salty"),
        OK('R', "sasl", "\0\0\0\x0aSCRAM-SHA-256\0\0"),
        OK('R', "sasl two", "\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"),
        BAD('R', "sasl no list end", "\0\0\0\x0aSCRAM-SHA-256\0"),
        BAD('R', "sasl trailing", "\0\0\0\x0a\0x"),
        OK('R', "sasl continue", "\0\0\0\x0br=abc,s=xyz,i=4096"),
        OK('R', "sasl final", "\0\0\0\x0cv=sig"),
        OK('R', "gss continue", "\0\0\0\x08\x01\x02"),
        BAD('R', "unknown code", "\0\0\0\x63"),
        OK('K', "key data", "\0\0\x30\x39\xde\xad\xbe\xef"),
        BAD('K', "short", "\0\0\x30\x39\xde\xad\xbe"),
        BAD('K', "long", "\0\0\x30\x39\xde\xad\xbe\xef\0"),
        OK('2', "bind complete", ""),
        BAD('2', "bind complete body", "x"),
        OK('3', "close complete", ""),
        OK('1', "parse complete", ""),
        BAD('1', "parse complete body", "\0"),
        OK('I', "empty query", ""),
        OK('n', "no data", ""),
        OK('s', "portal suspended", ""),
        BAD('s', "portal suspended body", "x"),
        OK('c', "copy done", ""),
        OK('C', "insert", "INSERT 0 1\0"),
        BAD('C', "missing NUL", "SELECT 1"),
        BAD('C', "trailing", "SELECT 1\0\0"),
        OK('G', "copy in text", "\0\0\1\0\0"),
        OK('H', "copy out binary", "\1\0\2\0\1\0\1"),
        OK('W', "copy both", "\0\0\0"),
        BAD('G', "format 2", "\2\0\0"),
        BAD('G', "columns overrun", "\0\0\2\0\0"),
        BAD('H', "huge columns", "\0\xff\xff"),
        BAD('W', "trailing", "\0\0\0\0"),
        OK('d', "copy data", "anything"),
        OK('D', "two columns", "\0\2\0\0\0\1a\xff\xff\xff\xff"),
        OK('D', "no columns", "\0\0"),
        OK('D', "empty value", "\0\1\0\0\0\0"),
        BAD('D', "length -2", "\0\1\xff\xff\xff\xfe"),
        BAD('D', "value overrun", "\0\1\0\0\0\5ab"),
        BAD('D', "missing column", "\0\2\0\0\0\1a"),
        BAD('D', "trailing", "\0\1\0\0\0\1ab"),
        BAD('D', "huge count", "\xff\xff\0\0\0\0"),
        BAD('D', "empty", ""),
        OK('E', "error", "SERROR\0VERROR\0C42P01\0Mrelation \"t\" does not exist\0\0"),
        OK('E', "no fields", "\0"),
        BAD('E', "empty", ""),
        BAD('E', "no terminator", "SERROR\0"),
        BAD('E', "value missing NUL", "SERROR"),
        BAD('E', "trailing", "\0x"),
        OK('N', "notice", "SNOTICE\0C00000\0Mhi\0\0"),
        OK('V', "function result", "\0\0\0\2ab"),
        OK('V', "function NULL", "\xff\xff\xff\xff"),
        BAD('V', "overrun", "\0\0\0\3ab"),
        BAD('V', "empty", ""),
        OK('v', "negotiate", "\0\0\0\0\0\0\0\1_pq_.opt\0"),
        OK('v', "negotiate none", "\0\0\0\1\0\0\0\0"),
        BAD('v', "missing option", "\0\0\0\0\0\0\0\2_pq_.opt\0"),
        BAD('v', "huge count", "\0\0\0\0\x7f\xff\xff\xff\0"),
        OK('A', "notification", "\0\0\0\1chan\0payload\0"),
        OK('A', "empty payload", "\0\0\0\1chan\0\0"),
        BAD('A', "missing payload", "\0\0\0\1chan\0"),
        OK('t', "param description", "\0\1\0\0\0\x17"),
        OK('t', "no params", "\0\0"),
        BAD('t', "overrun", "\0\2\0\0\0\x17"),
        OK('S', "param status", "client_encoding\0UTF8\0"),
        BAD('S', "no value", "client_encoding\0"),
        BAD('S', "trailing", "a\0b\0c"),
        OK('Z', "idle", "I"),
        OK('Z', "in txn", "T"),
        OK('Z', "failed", "E"),
        BAD('Z', "bad status", "X"),
        BAD('Z', "empty", ""),
        BAD('Z', "long", "II"),
        OK('T', "one field", "\0\1id\0\0\0\x40\0\0\1\0\0\0\x17\0\4\xff\xff\xff\xff\0\0"),
        OK('T', "no fields", "\0\0"),
        BAD('T', "format 2", "\0\1id\0\0\0\x40\0\0\1\0\0\0\x17\0\4\xff\xff\xff\xff\0\2"),
        BAD('T', "field short", "\0\1id\0\0\0\x40\0\0\1\0\0\0\x17\0\4\xff\xff\xff\xff\0"),
        BAD('T', "missing field", "\0\2id\0\0\0\x40\0\0\1\0\0\0\x17\0\4\xff\xff\xff\xff\0\0"),
        BAD('T', "name missing NUL", "\0\1id"),
        BAD('p', "frontend type", "secret\0"),
        BAD('P', "frontend type", "\0q\0\0\0"),
        BAD('Q', "frontend type", "x\0"),
    };

    (void)state;
    run_body_cases(cases, sizeof(cases) / sizeof(cases[0]), false);
}

/* ---- field-level checks on real messages ---- */

/* libpq's PQexecParams("SELECT $1::int, $2", 2, NULL, {"42", NULL}, ...). */
static const uint8_t pipeline[] = {
    /* Parse */
    'P', 0, 0, 0, 0x1a, 0, 'S', 'E', 'L', 'E', 'C', 'T', ' ', '$', '1', ':', ':', 'i', 'n', 't',
    ',', ' ', '$', '2', 0, 0, 0,
    /* Bind: 0 formats, 2 params ("42", NULL), 1 result format (binary) */
    'B', 0, 0, 0, 0x18, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2, '4', '2', 0xff, 0xff, 0xff, 0xff, 0, 1, 0, 1,
    /* Describe portal */
    'D', 0, 0, 0, 6, 'P', 0,
    /* Execute, all rows */
    'E', 0, 0, 0, 9, 0, 0, 0, 0, 0,
    /* Sync */
    'S', 0, 0, 0, 4
};

static void test_pipeline(void **state)
{
    size_t off = 0, used = 0;
    wire_hdr_t h;
    const uint8_t *body;
    wire_parse_t p;
    wire_bind_t b;
    wire_describe_t d;
    wire_execute_t e;
    bool is_null;
    wire_str_t v;
    int fmt;
    static const uint8_t want_types[] = { 'P', 'B', 'D', 'E', 'S' };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(want_types); i++) {
        assert_int_equal(
            wire_msg_next(pipeline + off, sizeof(pipeline) - off, &lim, &h, &body, &used), WIRE_OK);
        assert_int_equal(h.type, want_types[i]);
        assert_int_equal(wire_validate(h.type, true, body, h.body_len), WIRE_OK);
        switch (h.type) {
        case 'P':
            assert_int_equal(wire_parse_parse(body, h.body_len, &p), WIRE_OK);
            assert_str(p.name, "");
            assert_str(p.query, "SELECT $1::int, $2");
            assert_int_equal(p.query.p[p.query.len], '\0');
            assert_int_equal(p.n_param_types, 0);
            break;
        case 'B':
            assert_int_equal(wire_parse_bind(body, h.body_len, &b), WIRE_OK);
            assert_str(b.portal, "");
            assert_str(b.stmt, "");
            assert_int_equal(b.n_formats, 0);
            assert_int_equal(b.n_params, 2);
            assert_int_equal(b.n_result_formats, 1);
            assert_int_equal(b.result_formats[1], 1);
            assert_true(wire_bind_param(&b, 0, &is_null, &v, &fmt));
            assert_false(is_null);
            assert_int_equal(v.len, 2);
            assert_memory_equal(v.p, "42", 2);
            assert_int_equal(fmt, 0);
            assert_true(wire_bind_param(&b, 1, &is_null, &v, &fmt));
            assert_true(is_null);
            assert_false(wire_bind_param(&b, 2, &is_null, &v, &fmt));
            break;
        case 'D':
            assert_int_equal(wire_parse_describe(body, h.body_len, &d), WIRE_OK);
            assert_int_equal(d.what, 'P');
            assert_str(d.name, "");
            break;
        case 'E':
            assert_int_equal(wire_parse_execute(body, h.body_len, &e), WIRE_OK);
            assert_str(e.portal, "");
            assert_int_equal(e.max_rows, 0);
            break;
        case 'S':
            assert_int_equal(h.body_len, 0);
            break;
        default:
            fail();
        }
        off += used;
    }
    assert_int_equal(off, sizeof(pipeline));
    assert_int_equal(wire_msg_next(pipeline + off, 0, &lim, &h, &body, &used), WIRE_PARTIAL);
}

static void test_bind_formats(void **state)
{
    /* 3 params "a", NULL, "\x01\x02"; the format codes vary per case. */
    static const uint8_t zero[] = "\0\0\0\0"
                                  "\0\3\0\0\0\1a\xff\xff\xff\xff\0\0\0\2\1\2\0\0";
    static const uint8_t one[] = "\0\0\0\1\0\1"
                                 "\0\3\0\0\0\1a\xff\xff\xff\xff\0\0\0\2\1\2\0\0";
    static const uint8_t n[] = "\0\0\0\3\0\0\0\1\0\1"
                               "\0\3\0\0\0\1a\xff\xff\xff\xff\0\0\0\2\1\2\0\0";
    static const uint8_t two[] = "\0\0\0\2\0\0\0\1"
                                 "\0\3\0\0\0\1a\xff\xff\xff\xff\0\0\0\2\1\2\0\0";
    static const uint8_t none[] = "p\0s\0\0\0\0\0\0\0";
    wire_bind_t b;
    bool is_null;
    wire_str_t v;
    int f;
    uint16_t i;

    (void)state;
    assert_int_equal(wire_parse_bind(zero, sizeof(zero) - 1, &b), WIRE_OK);
    for (i = 0; i < 3; i++) {
        assert_true(wire_bind_param(&b, i, &is_null, &v, &f));
        assert_int_equal(f, 0);
        assert_int_equal(is_null, i == 1);
    }
    assert_true(wire_bind_param(&b, 2, &is_null, &v, &f));
    assert_int_equal(v.len, 2);
    assert_memory_equal(v.p, "\x01\x02", 2);

    assert_int_equal(wire_parse_bind(one, sizeof(one) - 1, &b), WIRE_OK);
    for (i = 0; i < 3; i++) {
        assert_true(wire_bind_param(&b, i, &is_null, &v, &f));
        assert_int_equal(f, 1);
    }
    assert_false(wire_bind_param(&b, 3, &is_null, &v, &f));

    assert_int_equal(wire_parse_bind(n, sizeof(n) - 1, &b), WIRE_OK);
    assert_true(wire_bind_param(&b, 0, &is_null, &v, &f));
    assert_int_equal(f, 0);
    assert_str(v, "a");
    assert_true(wire_bind_param(&b, 1, &is_null, &v, &f));
    assert_int_equal(f, 1);
    assert_true(is_null);
    assert_null(v.p);
    assert_int_equal(v.len, 0);
    assert_true(wire_bind_param(&b, 2, &is_null, &v, &f));
    assert_int_equal(f, 1);
    assert_false(is_null);

    assert_int_equal(wire_parse_bind(two, sizeof(two) - 1, &b), WIRE_EPROTO);

    assert_int_equal(wire_parse_bind(none, sizeof(none) - 1, &b), WIRE_OK);
    assert_str(b.portal, "p");
    assert_str(b.stmt, "s");
    assert_int_equal(b.n_params, 0);
    assert_false(wire_bind_param(&b, 0, &is_null, &v, &f));

    /* A hand-built struct that lies about its sizes is refused, not overrun. */
    assert_int_equal(wire_parse_bind(zero, sizeof(zero) - 1, &b), WIRE_OK);
    b.params_len = 6;
    assert_true(wire_bind_param(&b, 0, &is_null, &v, &f));
    assert_false(wire_bind_param(&b, 2, &is_null, &v, &f));
}

/* A real ErrorResponse from PostgreSQL 15 for SELECT * FROM missing. */
static const uint8_t error_missing[] = "SERROR\0VERROR\0C42P01\0Mrelation \"missing\" does not "
                                       "exist\0P15\0Fparse_relation.c\0L1392\0RparserOpenTable\0\0";

static void test_error_fields(void **state)
{
    wire_error_t e;
    uint8_t many[1 + 40 * 3 + 1];
    size_t i;

    (void)state;
    assert_int_equal(wire_parse_error(error_missing, sizeof(error_missing) - 1, &e), WIRE_OK);
    assert_int_equal(e.n_fields, 8);
    assert_str(wire_error_field(&e, WIRE_FIELD_SEVERITY), "ERROR");
    assert_str(wire_error_field(&e, WIRE_FIELD_SQLSTATE), "42P01");
    assert_str(wire_error_field(&e, WIRE_FIELD_MESSAGE), "relation \"missing\" does not exist");
    assert_str(wire_error_field(&e, 'R'), "parserOpenTable");
    assert_null(wire_error_field(&e, WIRE_FIELD_DETAIL).p);

    /* 40 fields: the first WIRE_MAX_FIELDS are kept, the rest skipped, still OK. */
    for (i = 0; i < 40; i++) {
        many[i * 3] = (uint8_t)('a' + (i % 26));
        many[i * 3 + 1] = (uint8_t)('0' + (i % 10));
        many[i * 3 + 2] = 0;
    }
    many[120] = 0;
    assert_int_equal(wire_parse_error(many, 121, &e), WIRE_OK);
    assert_int_equal(e.n_fields, WIRE_MAX_FIELDS);
    assert_int_equal(e.codes[31], 'a' + 5);
    assert_int_equal(wire_parse_error(many, 120, &e), WIRE_EPROTO); /* no terminator */
}

static void test_backend_fields(void **state)
{
    wire_auth_t a;
    wire_param_status_t ps;
    wire_notification_t n;
    wire_copy_response_t c;
    wire_str_t s;
    uint32_t pid, key;
    uint8_t z;

    (void)state;
    assert_int_equal(wire_parse_auth(BYTES("\0\0\0\5\x01\x02\x03\x04"), &a), WIRE_OK);
    assert_int_equal(a.code, WIRE_AUTH_MD5);
    assert_memory_equal(a.md5_salt, "\x01\x02\x03\x04", 4);
    assert_int_equal(wire_parse_auth(BYTES("\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"), &a),
                     WIRE_OK);
    assert_int_equal(a.code, WIRE_AUTH_SASL);
    assert_int_equal(a.mechanisms.len, 34);
    assert_true(wire_auth_has_mechanism(&a, "SCRAM-SHA-256"));
    assert_true(wire_auth_has_mechanism(&a, "SCRAM-SHA-256-PLUS"));
    assert_false(wire_auth_has_mechanism(&a, "SCRAM"));
    assert_int_equal(wire_parse_auth(BYTES("\0\0\0\x0br=abc"), &a), WIRE_OK);
    assert_int_equal(a.code, WIRE_AUTH_SASL_CONTINUE);
    assert_int_equal(a.sasl_data.len, 5);
    assert_memory_equal(a.sasl_data.p, "r=abc", 5);
    assert_false(wire_auth_has_mechanism(&a, "SCRAM-SHA-256"));

    assert_int_equal(wire_parse_backend_key(BYTES("\0\0\x30\x39\xde\xad\xbe\xef"), &pid, &key),
                     WIRE_OK);
    assert_int_equal(pid, 12345);
    assert_int_equal(key, 0xdeadbeef);

    assert_int_equal(wire_parse_param_status(BYTES("TimeZone\0UTC\0"), &ps), WIRE_OK);
    assert_str(ps.name, "TimeZone");
    assert_str(ps.value, "UTC");

    assert_int_equal(wire_parse_ready(BYTES("T"), &z), WIRE_OK);
    assert_int_equal(z, WIRE_TXN_INTXN);

    assert_int_equal(wire_parse_notification(BYTES("\0\0\1\0ch\0hello\0"), &n), WIRE_OK);
    assert_int_equal(n.pid, 256);
    assert_str(n.channel, "ch");
    assert_str(n.payload, "hello");

    assert_int_equal(wire_parse_copy_response(BYTES("\1\0\2\0\1\0\1"), &c), WIRE_OK);
    assert_int_equal(c.format, 1);
    assert_int_equal(c.n_columns, 2);
    assert_int_equal(c.column_formats[3], 1);

    assert_int_equal(wire_parse_command_complete(BYTES("UPDATE 7\0"), &s), WIRE_OK);
    assert_str(s, "UPDATE 7");
}

static void test_frontend_auth_fields(void **state)
{
    wire_str_t mech, data, pw;

    (void)state;
    assert_int_equal(wire_parse_password(BYTES("md5abcdef\0"), &pw), WIRE_OK);
    assert_str(pw, "md5abcdef");
    assert_int_equal(wire_parse_password(BYTES("secret"), &pw), WIRE_EPROTO);
    assert_int_equal(wire_parse_password(BYTES("a\0b"), &pw), WIRE_EPROTO);

    assert_int_equal(wire_parse_sasl_initial(BYTES("SCRAM-SHA-256\0\0\0\0\x05n,,n="), &mech, &data),
                     WIRE_OK);
    assert_str(mech, "SCRAM-SHA-256");
    assert_int_equal(data.len, 5);
    assert_memory_equal(data.p, "n,,n=", 5);
    assert_int_equal(wire_parse_sasl_initial(BYTES("M\0\xff\xff\xff\xff"), &mech, &data), WIRE_OK);
    assert_null(data.p);
    assert_int_equal(data.len, 0);
    assert_int_equal(wire_parse_sasl_initial(BYTES("M\0\0\0\0\0"), &mech, &data), WIRE_OK);
    assert_non_null(data.p); /* present but empty, unlike -1 */
    assert_int_equal(wire_parse_sasl_initial(BYTES("M\0\xff\xff\xff\xfe"), &mech, &data),
                     WIRE_EPROTO);
    assert_int_equal(wire_parse_sasl_initial(BYTES("M\0\0\0\0\x06n,,n="), &mech, &data),
                     WIRE_EPROTO);
    assert_int_equal(wire_parse_sasl_initial(BYTES("M\0\0\0\0\x04n,,n="), &mech, &data),
                     WIRE_EPROTO);
    assert_int_equal(wire_parse_sasl_initial(BYTES("M"), &mech, &data), WIRE_EPROTO);

    assert_int_equal(wire_parse_sasl_response(BYTES("c=biws,r=x"), &data), WIRE_OK);
    assert_int_equal(data.len, 10);
}

/* ---- encoders: encode -> decode round trips ---- */

/* Decode exactly one typed message spanning all of b; returns its body. */
static const uint8_t *one_msg(const cm_buf_t *b, uint8_t type, bool fe, size_t *body_len)
{
    wire_hdr_t h;
    const uint8_t *body = NULL;
    size_t used = 0;

    assert_int_equal(wire_msg_next(b->data, b->len, &lim, &h, &body, &used), WIRE_OK);
    assert_int_equal(used, b->len);
    assert_int_equal(h.type, type);
    assert_int_equal(wire_validate(h.type, fe, body, h.body_len), WIRE_OK);
    *body_len = h.body_len;
    return body;
}

static void test_roundtrip_frontend(void **state)
{
    cm_buf_t b = { 0 };
    const uint8_t *body;
    size_t n, used;
    wire_str_t s, d;
    wire_parse_t p;
    wire_describe_t desc;
    wire_startup_t st;
    static const uint8_t types[] = { 0, 0, 0, 23, 0, 0, 0, 25 };
    static const char *const names[] = { "user", "database" };
    static const char *const values[] = { "bob", "" };

    (void)state;
    wire_put_query(&b, "SELECT 'x'");
    body = one_msg(&b, 'Q', true, &n);
    assert_int_equal(wire_parse_query(body, n, &s), WIRE_OK);
    assert_str(s, "SELECT 'x'");

    cm_buf_reset(&b);
    wire_put_parse(&b, "s1", "SELECT $1, $2", 2, types);
    body = one_msg(&b, 'P', true, &n);
    assert_int_equal(wire_parse_parse(body, n, &p), WIRE_OK);
    assert_str(p.name, "s1");
    assert_str(p.query, "SELECT $1, $2");
    assert_int_equal(p.n_param_types, 2);
    assert_memory_equal(p.param_types, types, 8);

    cm_buf_reset(&b);
    wire_put_parse(&b, "", "SELECT 1", 0, NULL);
    body = one_msg(&b, 'P', true, &n);
    assert_int_equal(wire_parse_parse(body, n, &p), WIRE_OK);
    assert_int_equal(p.n_param_types, 0);

    cm_buf_reset(&b);
    wire_put_describe(&b, 'S', "s1");
    body = one_msg(&b, 'D', true, &n);
    assert_int_equal(wire_parse_describe(body, n, &desc), WIRE_OK);
    assert_int_equal(desc.what, 'S');
    assert_str(desc.name, "s1");

    cm_buf_reset(&b);
    wire_put_close(&b, 'P', "c");
    body = one_msg(&b, 'C', true, &n);
    assert_int_equal(wire_parse_close(body, n, &desc), WIRE_OK);
    assert_int_equal(desc.what, 'P');
    assert_str(desc.name, "c");

    cm_buf_reset(&b);
    wire_put_sync(&b);
    (void)one_msg(&b, 'S', true, &n);
    assert_int_equal(n, 0);
    cm_buf_reset(&b);
    wire_put_flush(&b);
    (void)one_msg(&b, 'H', true, &n);
    assert_int_equal(n, 0);
    cm_buf_reset(&b);
    wire_put_terminate(&b);
    (void)one_msg(&b, 'X', true, &n);
    assert_int_equal(n, 0);

    cm_buf_reset(&b);
    wire_put_password(&b, "hunter2");
    body = one_msg(&b, 'p', true, &n);
    assert_int_equal(wire_parse_password(body, n, &s), WIRE_OK);
    assert_str(s, "hunter2");

    cm_buf_reset(&b);
    wire_put_sasl_initial(&b, "SCRAM-SHA-256", "n,,n=,r=abc", 11);
    body = one_msg(&b, 'p', true, &n);
    assert_int_equal(wire_parse_sasl_initial(body, n, &s, &d), WIRE_OK);
    assert_str(s, "SCRAM-SHA-256");
    assert_int_equal(d.len, 11);
    assert_memory_equal(d.p, "n,,n=,r=abc", 11);

    cm_buf_reset(&b);
    wire_put_sasl_response(&b, "c=biws", 6);
    body = one_msg(&b, 'p', true, &n);
    assert_int_equal(wire_parse_sasl_response(body, n, &d), WIRE_OK);
    assert_int_equal(d.len, 6);
    assert_memory_equal(d.p, "c=biws", 6);

    cm_buf_reset(&b);
    wire_put_startup(&b, names, values, 2);
    assert_int_equal(wire_startup_decode(b.data, b.len, &lim, &st, &used), WIRE_OK);
    assert_int_equal(used, b.len);
    assert_int_equal(st.kind, WIRE_STARTUP_MESSAGE);
    assert_int_equal(st.version, WIRE_PROTO_V3);
    assert_int_equal(st.n_params, 2);
    assert_str(wire_startup_param(&st, "user"), "bob");
    assert_str(wire_startup_param(&st, "database"), "");

    cm_buf_reset(&b);
    wire_put_ssl_request(&b);
    assert_int_equal(wire_startup_decode(b.data, b.len, &lim, &st, &used), WIRE_OK);
    assert_int_equal(used, 8);
    assert_int_equal(st.kind, WIRE_STARTUP_SSL_REQUEST);

    cm_buf_reset(&b);
    wire_put_cancel(&b, 4242, 0x01020304);
    assert_int_equal(wire_startup_decode(b.data, b.len, &lim, &st, &used), WIRE_OK);
    assert_int_equal(used, 16);
    assert_int_equal(st.kind, WIRE_STARTUP_CANCEL);
    assert_int_equal(st.cancel_pid, 4242);
    assert_int_equal(st.cancel_key, 0x01020304);
    cm_buf_free(&b);
}

static void test_roundtrip_backend(void **state)
{
    cm_buf_t b = { 0 };
    const uint8_t *body;
    size_t n;
    wire_auth_t a;
    uint32_t pid, key;
    wire_param_status_t ps;
    uint8_t z;
    wire_error_t e, e2;
    wire_notification_t notif;
    wire_str_t s;
    wire_rd_t rd;
    static const uint8_t salt[4] = { 9, 8, 7, 6 };

    (void)state;
    wire_put_auth_ok(&b);
    body = one_msg(&b, 'R', false, &n);
    assert_int_equal(wire_parse_auth(body, n, &a), WIRE_OK);
    assert_int_equal(a.code, WIRE_AUTH_OK);

    cm_buf_reset(&b);
    wire_put_auth_cleartext(&b);
    body = one_msg(&b, 'R', false, &n);
    assert_int_equal(wire_parse_auth(body, n, &a), WIRE_OK);
    assert_int_equal(a.code, WIRE_AUTH_CLEARTEXT);

    cm_buf_reset(&b);
    wire_put_auth_md5(&b, salt);
    body = one_msg(&b, 'R', false, &n);
    assert_int_equal(wire_parse_auth(body, n, &a), WIRE_OK);
    assert_int_equal(a.code, WIRE_AUTH_MD5);
    assert_memory_equal(a.md5_salt, salt, 4);

    cm_buf_reset(&b);
    wire_put_auth_sasl(&b, "SCRAM-SHA-256");
    body = one_msg(&b, 'R', false, &n);
    assert_int_equal(wire_parse_auth(body, n, &a), WIRE_OK);
    assert_int_equal(a.code, WIRE_AUTH_SASL);
    assert_true(wire_auth_has_mechanism(&a, "SCRAM-SHA-256"));

    cm_buf_reset(&b);
    wire_put_auth_sasl_continue(&b, "r=abc,s=c2FsdA==,i=4096", 23);
    body = one_msg(&b, 'R', false, &n);
    assert_int_equal(wire_parse_auth(body, n, &a), WIRE_OK);
    assert_int_equal(a.code, WIRE_AUTH_SASL_CONTINUE);
    assert_int_equal(a.sasl_data.len, 23);
    assert_memory_equal(a.sasl_data.p, "r=abc,s=c2FsdA==,i=4096", 23);

    cm_buf_reset(&b);
    wire_put_auth_sasl_final(&b, "v=xyz", 5);
    body = one_msg(&b, 'R', false, &n);
    assert_int_equal(wire_parse_auth(body, n, &a), WIRE_OK);
    assert_int_equal(a.code, WIRE_AUTH_SASL_FINAL);
    assert_memory_equal(a.sasl_data.p, "v=xyz", 5);

    cm_buf_reset(&b);
    wire_put_backend_key(&b, 77, 0xfeedface);
    body = one_msg(&b, 'K', false, &n);
    assert_int_equal(wire_parse_backend_key(body, n, &pid, &key), WIRE_OK);
    assert_int_equal(pid, 77);
    assert_int_equal(key, 0xfeedface);

    cm_buf_reset(&b);
    wire_put_param_status(&b, "server_version", "15.8");
    body = one_msg(&b, 'S', false, &n);
    assert_int_equal(wire_parse_param_status(body, n, &ps), WIRE_OK);
    assert_str(ps.name, "server_version");
    assert_str(ps.value, "15.8");

    cm_buf_reset(&b);
    wire_put_ready(&b, WIRE_TXN_FAILED);
    body = one_msg(&b, 'Z', false, &n);
    assert_int_equal(wire_parse_ready(body, n, &z), WIRE_OK);
    assert_int_equal(z, WIRE_TXN_FAILED);

    cm_buf_reset(&b);
    wire_put_error(&b, false, "FATAL", "08P01", "invalid message", "length 3");
    body = one_msg(&b, 'E', false, &n);
    assert_int_equal(wire_parse_error(body, n, &e), WIRE_OK);
    assert_int_equal(e.n_fields, 5);
    assert_str(wire_error_field(&e, WIRE_FIELD_SEVERITY), "FATAL");
    assert_str(wire_error_field(&e, WIRE_FIELD_SEVERITY_NL), "FATAL");
    assert_str(wire_error_field(&e, WIRE_FIELD_SQLSTATE), "08P01");
    assert_str(wire_error_field(&e, WIRE_FIELD_MESSAGE), "invalid message");
    assert_str(wire_error_field(&e, WIRE_FIELD_DETAIL), "length 3");

    cm_buf_reset(&b);
    wire_put_error(&b, true, "NOTICE", "00000", "hello", NULL);
    body = one_msg(&b, 'N', false, &n);
    assert_int_equal(wire_parse_error(body, n, &e), WIRE_OK);
    assert_int_equal(e.n_fields, 4);
    assert_null(wire_error_field(&e, WIRE_FIELD_DETAIL).p);

    /* wire_put_error_fields re-emits a decoded server error byte for byte. */
    assert_int_equal(wire_parse_error(error_missing, sizeof(error_missing) - 1, &e), WIRE_OK);
    cm_buf_reset(&b);
    wire_put_error_fields(&b, false, &e);
    body = one_msg(&b, 'E', false, &n);
    assert_int_equal(n, sizeof(error_missing) - 1);
    assert_memory_equal(body, error_missing, n);
    assert_int_equal(wire_parse_error(body, n, &e2), WIRE_OK);
    assert_int_equal(e2.n_fields, e.n_fields);

    cm_buf_reset(&b);
    {
        static const char *const unknown[] = { "_pq_.a", "_pq_.b" };

        wire_put_negotiate_version(&b, 0, unknown, 2);
        body = one_msg(&b, 'v', false, &n);
        wire_rd_init(&rd, body, n);
        assert_int_equal(wire_rd_u32(&rd), 0);
        assert_int_equal(wire_rd_u32(&rd), 2);
        assert_str(wire_rd_cstr(&rd), "_pq_.a");
        assert_str(wire_rd_cstr(&rd), "_pq_.b");
        assert_true(wire_rd_done(&rd));
    }

    cm_buf_reset(&b);
    {
        static const char *const cols[] = { "tenant", "n" };
        static const uint32_t types[] = { 25, 20 };

        wire_put_row_description(&b, cols, types, 2);
        body = one_msg(&b, 'T', false, &n);
        wire_rd_init(&rd, body, n);
        assert_int_equal(wire_rd_u16(&rd), 2);
        assert_str(wire_rd_cstr(&rd), "tenant");
        assert_int_equal(wire_rd_u32(&rd), 0);
        assert_int_equal(wire_rd_u16(&rd), 0);
        assert_int_equal(wire_rd_u32(&rd), 25);
        assert_int_equal(wire_rd_u16(&rd), 0xffff);
        assert_int_equal(wire_rd_i32(&rd), -1);
        assert_int_equal(wire_rd_u16(&rd), 0);
        assert_str(wire_rd_cstr(&rd), "n");
        assert_int_equal(wire_rd_u32(&rd), 0);
        assert_int_equal(wire_rd_u16(&rd), 0);
        assert_int_equal(wire_rd_u32(&rd), 20);
        assert_int_equal(wire_rd_u16(&rd), 8);
        assert_int_equal(wire_rd_i32(&rd), -1);
        assert_int_equal(wire_rd_u16(&rd), 0);
        assert_true(wire_rd_done(&rd));

        cm_buf_reset(&b);
        wire_put_row_description(&b, cols, NULL, 1);
        body = one_msg(&b, 'T', false, &n);
        wire_rd_init(&rd, body, n);
        assert_int_equal(wire_rd_u16(&rd), 1);
        assert_str(wire_rd_cstr(&rd), "tenant");
        (void)wire_rd_bytes(&rd, 6);
        assert_int_equal(wire_rd_u32(&rd), 25);
    }

    cm_buf_reset(&b);
    {
        static const char *const vals[] = { "acme", NULL, "" };

        wire_put_data_row(&b, vals, 3);
        body = one_msg(&b, 'D', false, &n);
        wire_rd_init(&rd, body, n);
        assert_int_equal(wire_rd_u16(&rd), 3);
        assert_int_equal(wire_rd_i32(&rd), 4);
        assert_memory_equal(wire_rd_bytes(&rd, 4), "acme", 4);
        assert_int_equal(wire_rd_i32(&rd), -1);
        assert_int_equal(wire_rd_i32(&rd), 0);
        assert_true(wire_rd_done(&rd));
    }

    cm_buf_reset(&b);
    wire_put_command_complete(&b, "SELECT 3");
    body = one_msg(&b, 'C', false, &n);
    assert_int_equal(wire_parse_command_complete(body, n, &s), WIRE_OK);
    assert_str(s, "SELECT 3");

    cm_buf_reset(&b);
    wire_put_notification(&b, 99, "tenant_moved", "acme");
    body = one_msg(&b, 'A', false, &n);
    assert_int_equal(wire_parse_notification(body, n, &notif), WIRE_OK);
    assert_int_equal(notif.pid, 99);
    assert_str(notif.channel, "tenant_moved");
    assert_str(notif.payload, "acme");

    {
        struct {
            void (*put)(cm_buf_t *);
            uint8_t type;
        } empties[] = {
            { wire_put_empty_query, 'I' },   { wire_put_parse_complete, '1' },
            { wire_put_bind_complete, '2' }, { wire_put_close_complete, '3' },
            { wire_put_no_data, 'n' },
        };
        size_t i;

        for (i = 0; i < sizeof(empties) / sizeof(empties[0]); i++) {
            cm_buf_reset(&b);
            empties[i].put(&b);
            (void)one_msg(&b, empties[i].type, false, &n);
            assert_int_equal(n, 0);
        }
    }
    cm_buf_free(&b);
}

static void test_msg_begin_end_append(void **state)
{
    cm_buf_t b = { 0 };
    size_t m;
    wire_hdr_t h;
    const uint8_t *body;
    size_t used, off = 0;

    (void)state;
    /* Encoders append: several messages in one buffer frame independently. */
    wire_put_query(&b, "BEGIN");
    m = wire_msg_begin(&b, 'd');
    assert_int_equal(m, 11);
    cm_buf_append(&b, "1\t2\n", 4);
    wire_msg_end(&b, m);
    wire_put_sync(&b);
    assert_int_equal(wire_msg_next(b.data, b.len, &lim, &h, &body, &used), WIRE_OK);
    assert_int_equal(h.type, 'Q');
    off += used;
    assert_int_equal(wire_msg_next(b.data + off, b.len - off, &lim, &h, &body, &used), WIRE_OK);
    assert_int_equal(h.type, 'd');
    assert_int_equal(h.body_len, 4);
    assert_memory_equal(body, "1\t2\n", 4);
    off += used;
    assert_int_equal(wire_msg_next(b.data + off, b.len - off, &lim, &h, &body, &used), WIRE_OK);
    assert_int_equal(h.type, 'S');
    off += used;
    assert_int_equal(off, b.len);
    cm_buf_free(&b);
}

static void test_rc_str(void **state)
{
    (void)state;
    assert_string_equal(wire_rc_str(WIRE_OK), "ok");
    assert_string_equal(wire_rc_str(WIRE_EPROTO), "protocol violation");
    assert_non_null(wire_rc_str(WIRE_PARTIAL));
    assert_non_null(wire_rc_str(WIRE_ETOOBIG));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rd_basic),
        cmocka_unit_test(test_rd_overruns),
        cmocka_unit_test(test_hdr_decode),
        cmocka_unit_test(test_msg_next),
        cmocka_unit_test(test_startup_table),
        cmocka_unit_test(test_startup_fields),
        cmocka_unit_test(test_startup_too_many_params),
        cmocka_unit_test(test_frontend_table),
        cmocka_unit_test(test_backend_table),
        cmocka_unit_test(test_pipeline),
        cmocka_unit_test(test_bind_formats),
        cmocka_unit_test(test_error_fields),
        cmocka_unit_test(test_backend_fields),
        cmocka_unit_test(test_frontend_auth_fields),
        cmocka_unit_test(test_roundtrip_frontend),
        cmocka_unit_test(test_roundtrip_backend),
        cmocka_unit_test(test_msg_begin_end_append),
        cmocka_unit_test(test_rc_str),
    };

    return cmocka_run_group_tests_name("wire", tests, NULL, NULL);
}
