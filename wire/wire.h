/*
 * wire/wire.h - the PostgreSQL protocol 3.0 as a codec.
 *
 * Bytes in, structs out, and back. No sockets, no libuv, no logging, no
 * globals. Decoders are total functions over untrusted bytes: they never
 * allocate, never abort, and return views (pointer + length) into the
 * caller's buffer, valid as long as that buffer is. Encoders append whole
 * messages to a caller-owned cm_buf_t and never send.
 *
 * Framing is the same in both directions: a type byte, then a 4-byte
 * big-endian length that counts itself but not the type byte. The startup
 * family (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) has no
 * type byte and its own decoder, legal only before authentication.
 */
#ifndef PGSHIFT_WIRE_H
#define PGSHIFT_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/cm.h"

/* Message type bytes, frontend (client -> server). */
#define WIRE_MSG_BIND          'B'
#define WIRE_MSG_CLOSE         'C'
#define WIRE_MSG_COPY_DATA     'd'
#define WIRE_MSG_COPY_DONE     'c'
#define WIRE_MSG_COPY_FAIL     'f'
#define WIRE_MSG_DESCRIBE      'D'
#define WIRE_MSG_EXECUTE       'E'
#define WIRE_MSG_FLUSH         'H'
#define WIRE_MSG_FUNCTION_CALL 'F'
#define WIRE_MSG_PARSE         'P'
#define WIRE_MSG_PASSWORD      'p' /* also SASLInitialResponse, SASLResponse, GSSResponse */
#define WIRE_MSG_QUERY         'Q'
#define WIRE_MSG_SYNC          'S'
#define WIRE_MSG_TERMINATE     'X'

/* Message type bytes, backend (server -> client). */
#define WIRE_MSG_AUTH                   'R'
#define WIRE_MSG_BACKEND_KEY_DATA       'K'
#define WIRE_MSG_BIND_COMPLETE          '2'
#define WIRE_MSG_CLOSE_COMPLETE         '3'
#define WIRE_MSG_COMMAND_COMPLETE       'C'
#define WIRE_MSG_COPY_IN_RESPONSE       'G'
#define WIRE_MSG_COPY_OUT_RESPONSE      'H'
#define WIRE_MSG_COPY_BOTH_RESPONSE     'W'
#define WIRE_MSG_DATA_ROW               'D'
#define WIRE_MSG_EMPTY_QUERY            'I'
#define WIRE_MSG_ERROR_RESPONSE         'E'
#define WIRE_MSG_FUNCTION_CALL_RESPONSE 'V'
#define WIRE_MSG_NEGOTIATE_VERSION      'v'
#define WIRE_MSG_NO_DATA                'n'
#define WIRE_MSG_NOTICE_RESPONSE        'N'
#define WIRE_MSG_NOTIFICATION           'A'
#define WIRE_MSG_PARAMETER_DESCRIPTION  't'
#define WIRE_MSG_PARAMETER_STATUS       'S'
#define WIRE_MSG_PARSE_COMPLETE         '1'
#define WIRE_MSG_PORTAL_SUSPENDED       's'
#define WIRE_MSG_READY_FOR_QUERY        'Z'
#define WIRE_MSG_ROW_DESCRIPTION        'T'

/* Startup-family codes (the int32 after the length). */
#define WIRE_PROTO_V3            196608u /* 3.0 */
#define WIRE_SSL_REQUEST_CODE    80877103u
#define WIRE_GSSENC_REQUEST_CODE 80877104u
#define WIRE_CANCEL_REQUEST_CODE 80877102u

/* Authentication request codes in an 'R' message. */
#define WIRE_AUTH_OK            0
#define WIRE_AUTH_CLEARTEXT     3
#define WIRE_AUTH_MD5           5
#define WIRE_AUTH_SASL          10
#define WIRE_AUTH_SASL_CONTINUE 11
#define WIRE_AUTH_SASL_FINAL    12
#define WIRE_AUTH_KRB5          2 /* obsolete; empty body */
#define WIRE_AUTH_SCM           6 /* obsolete; empty body */
#define WIRE_AUTH_GSS           7
#define WIRE_AUTH_GSS_CONTINUE  8 /* data in wire_auth_t.sasl_data */
#define WIRE_AUTH_SSPI          9

/* Transaction status in ReadyForQuery. */
#define WIRE_TXN_IDLE   'I'
#define WIRE_TXN_INTXN  'T'
#define WIRE_TXN_FAILED 'E'

/* Error and notice field codes. */
#define WIRE_FIELD_SEVERITY    'S'
#define WIRE_FIELD_SEVERITY_NL 'V' /* never localized */
#define WIRE_FIELD_SQLSTATE    'C'
#define WIRE_FIELD_MESSAGE     'M'
#define WIRE_FIELD_DETAIL      'D'
#define WIRE_FIELD_HINT        'H'

typedef enum wire_rc {
    WIRE_OK = 0,  /* *out filled; *used = bytes consumed */
    WIRE_PARTIAL, /* need more bytes; nothing consumed, *out untouched */
    WIRE_EPROTO,  /* malformed: reply 08P01 if possible, then close */
    WIRE_ETOOBIG, /* declared length > lim->max_msg_len */
} wire_rc_t;

typedef struct wire_limits {
    size_t max_msg_len;     /* largest body a peer may declare, in bytes */
    size_t max_startup_len; /* largest startup-family packet (PostgreSQL: 10000) */
} wire_limits_t;

/* A view into the caller's buffer. `p` is not NUL-terminated unless noted. */
typedef struct wire_str {
    const char *p;
    size_t len;
} wire_str_t;

/* ---- bounded reader: sticky `bad` on overrun, check once at the end ---- */

typedef struct wire_rd {
    const uint8_t *p;
    const uint8_t *end;
    bool bad;
} wire_rd_t;

void wire_rd_init(wire_rd_t *rd, const uint8_t *p, size_t len);
uint8_t wire_rd_u8(wire_rd_t *rd);
uint16_t wire_rd_u16(wire_rd_t *rd);
uint32_t wire_rd_u32(wire_rd_t *rd);
int32_t wire_rd_i32(wire_rd_t *rd);
/* A NUL-terminated string; the view excludes the NUL, which is present at p[len]. */
wire_str_t wire_rd_cstr(wire_rd_t *rd);
const uint8_t *wire_rd_bytes(wire_rd_t *rd, size_t n);
/* True when nothing overran and every byte was consumed (pq_getmsgend). */
bool wire_rd_done(const wire_rd_t *rd);

/* ---- framing ---- */

#define WIRE_HDR_LEN 5 /* type byte + int32 length */

typedef struct wire_hdr {
    uint8_t type;
    uint32_t body_len; /* length field minus 4: bytes after the header */
} wire_hdr_t;

/*
 * Decode the header of a typed message (either direction) from buf[0..len).
 * Returns WIRE_PARTIAL with fewer than 5 bytes, WIRE_EPROTO when the length
 * field is < 4, WIRE_ETOOBIG when the body exceeds lim->max_msg_len.
 */
wire_rc_t wire_hdr_decode(const uint8_t *buf, size_t len, const wire_limits_t *lim,
                          wire_hdr_t *out);

/*
 * Decode one whole typed message from buf[0..len): as wire_hdr_decode, but
 * WIRE_PARTIAL until the body is complete too. On WIRE_OK *body points into
 * buf (borrowed) and *used = WIRE_HDR_LEN + hdr->body_len. The body is not
 * validated: pass it to wire_validate or a wire_parse_* decoder.
 */
wire_rc_t wire_msg_next(const uint8_t *buf, size_t len, const wire_limits_t *lim, wire_hdr_t *hdr,
                        const uint8_t **body, size_t *used);

/* ---- startup family (frontend, before authentication) ---- */

typedef enum wire_startup_kind {
    WIRE_STARTUP_MESSAGE,
    WIRE_STARTUP_SSL_REQUEST,
    WIRE_STARTUP_GSSENC_REQUEST,
    WIRE_STARTUP_CANCEL,
} wire_startup_kind_t;

#define WIRE_MAX_STARTUP_PARAMS 64

typedef struct wire_startup {
    wire_startup_kind_t kind;
    uint32_t version;    /* MESSAGE: protocol version as sent */
    uint32_t cancel_pid; /* CANCEL */
    uint32_t cancel_key; /* CANCEL */
    size_t n_params;     /* MESSAGE: name/value pairs (views NUL-terminated) */
    wire_str_t names[WIRE_MAX_STARTUP_PARAMS];
    wire_str_t values[WIRE_MAX_STARTUP_PARAMS];
} wire_startup_t;

/*
 * Decode one startup-family packet. A StartupMessage with a major version
 * other than 3, with more than WIRE_MAX_STARTUP_PARAMS pairs, without the
 * final NUL, or an odd name without value is WIRE_EPROTO. A minor version
 * above 0 is accepted (the caller may answer NegotiateProtocolVersion).
 * The length word counts itself: < 8 is WIRE_EPROTO, > lim->max_startup_len
 * WIRE_ETOOBIG; SSLRequest and GSSENCRequest must be exactly 8 bytes and
 * CancelRequest 16. WIRE_PARTIAL until the whole packet is in buf; on
 * WIRE_OK *used is the packet length (bytes after it, e.g. plaintext
 * following an SSLRequest, are left for the caller to judge).
 */
wire_rc_t wire_startup_decode(const uint8_t *buf, size_t len, const wire_limits_t *lim,
                              wire_startup_t *out, size_t *used);

/* Look a startup parameter up by name; NULL view (p == NULL) when absent. */
wire_str_t wire_startup_param(const wire_startup_t *s, const char *name);

/* ---- frontend messages (client -> server) ---- */

/* True for the typed messages a client may send after authentication. */
bool wire_fe_type_known(uint8_t type);

typedef struct wire_parse {
    wire_str_t name;  /* prepared statement name, "" = unnamed */
    wire_str_t query; /* NUL-terminated */
    uint16_t n_param_types;
    const uint8_t *param_types; /* n_param_types big-endian int32 OIDs */
} wire_parse_t;

typedef struct wire_bind {
    wire_str_t portal;
    wire_str_t stmt;
    uint16_t n_formats;
    const uint8_t *formats; /* n_formats big-endian int16 */
    uint16_t n_params;
    const uint8_t *params; /* n_params x (int32 len, -1 = NULL; bytes); walk with wire_bind_param */
    uint16_t n_result_formats;
    const uint8_t *result_formats;
    size_t params_len; /* bytes at params; wire_bind_param never walks past it */
} wire_bind_t;

typedef struct wire_describe { /* also Close */
    uint8_t what;              /* 'S' statement or 'P' portal */
    wire_str_t name;
} wire_describe_t;

typedef struct wire_execute {
    wire_str_t portal;
    uint32_t max_rows;
} wire_execute_t;

wire_rc_t wire_parse_query(const uint8_t *body, size_t len, wire_str_t *sql);
wire_rc_t wire_parse_parse(const uint8_t *body, size_t len, wire_parse_t *out);
wire_rc_t wire_parse_bind(const uint8_t *body, size_t len, wire_bind_t *out);
/*
 * Parameter i (0-based) of a decoded Bind: *is_null, value view, and its
 * format (0 text, 1 binary) per the Bind's format-code rules (0, 1 or n codes).
 * Returns false when i is out of range. The format is the int16 code as sent;
 * codes other than 0 and 1 are left for the server to reject. wire_parse_bind
 * already refused a format count other than 0, 1 or n_params (WIRE_EPROTO).
 * NULL parameters give val = {NULL, 0}. Each call walks the parameters from
 * the first one: O(i).
 */
bool wire_bind_param(const wire_bind_t *b, uint16_t i, bool *is_null, wire_str_t *val, int *format);
wire_rc_t wire_parse_describe(const uint8_t *body, size_t len, wire_describe_t *out);
wire_rc_t wire_parse_close(const uint8_t *body, size_t len, wire_describe_t *out);
wire_rc_t wire_parse_execute(const uint8_t *body, size_t len, wire_execute_t *out);

/* Password and SASL messages: all type 'p'; which one depends on context. */
wire_rc_t wire_parse_password(const uint8_t *body, size_t len, wire_str_t *password);
wire_rc_t wire_parse_sasl_initial(const uint8_t *body, size_t len, wire_str_t *mechanism,
                                  wire_str_t *data /* p == NULL when length -1 */);
/* SASLResponse: the whole body is the data. Always WIRE_OK. */
wire_rc_t wire_parse_sasl_response(const uint8_t *body, size_t len, wire_str_t *data);

/* ---- backend messages (server -> client) ---- */

typedef struct wire_auth {
    uint32_t code;        /* WIRE_AUTH_* */
    uint8_t md5_salt[4];  /* WIRE_AUTH_MD5 */
    wire_str_t sasl_data; /* SASL_CONTINUE / SASL_FINAL: the data */
    /* WIRE_AUTH_SASL: the mechanism list, NUL-separated, ending with an empty name */
    wire_str_t mechanisms;
} wire_auth_t;

#define WIRE_MAX_FIELDS 32

typedef struct wire_error { /* ErrorResponse and NoticeResponse */
    size_t n_fields;
    uint8_t codes[WIRE_MAX_FIELDS];
    wire_str_t values[WIRE_MAX_FIELDS];
} wire_error_t;

typedef struct wire_param_status {
    wire_str_t name;
    wire_str_t value;
} wire_param_status_t;

typedef struct wire_notification {
    uint32_t pid;
    wire_str_t channel;
    wire_str_t payload;
} wire_notification_t;

typedef struct wire_copy_response { /* CopyIn/CopyOut/CopyBoth */
    uint8_t format;                 /* 0 text, 1 binary */
    uint16_t n_columns;
    const uint8_t *column_formats; /* n_columns big-endian int16 */
} wire_copy_response_t;

/* Unknown request codes are WIRE_EPROTO; GSS_CONTINUE data lands in sasl_data. */
wire_rc_t wire_parse_auth(const uint8_t *body, size_t len, wire_auth_t *out);
/* True when a decoded WIRE_AUTH_SASL request offers the mechanism `name`. */
bool wire_auth_has_mechanism(const wire_auth_t *a, const char *name);
wire_rc_t wire_parse_backend_key(const uint8_t *body, size_t len, uint32_t *pid, uint32_t *key);
wire_rc_t wire_parse_param_status(const uint8_t *body, size_t len, wire_param_status_t *out);
wire_rc_t wire_parse_ready(const uint8_t *body, size_t len, uint8_t *txn_status);
/* Up to WIRE_MAX_FIELDS fields are kept; more is not an error, the rest is skipped. */
wire_rc_t wire_parse_error(const uint8_t *body, size_t len, wire_error_t *out);
wire_str_t wire_error_field(const wire_error_t *e, uint8_t code); /* p == NULL when absent */
wire_rc_t wire_parse_notification(const uint8_t *body, size_t len, wire_notification_t *out);
wire_rc_t wire_parse_copy_response(const uint8_t *body, size_t len, wire_copy_response_t *out);
wire_rc_t wire_parse_command_complete(const uint8_t *body, size_t len, wire_str_t *tag);

/*
 * Validate the body of any message of the given type and direction
 * (is_frontend) without keeping the result: the fuzzers and the proxy use it
 * to reject malformed messages early. Unknown types are WIRE_EPROTO. Types
 * with a wire_parse_* decoder give exactly that decoder's result. 'p' is
 * always WIRE_OK (its meaning depends on the authentication state); CopyData
 * is opaque; DataRow, RowDescription, ParameterDescription, FunctionCall,
 * FunctionCallResponse and NegotiateProtocolVersion have their counts and
 * lengths checked against the body. Returns WIRE_OK or WIRE_EPROTO only.
 */
wire_rc_t wire_validate(uint8_t type, bool is_frontend, const uint8_t *body, size_t len);

/* ---- encoders: append one whole message to out ---- */

/* Start a typed message; returns the offset to pass to wire_msg_end. */
size_t wire_msg_begin(cm_buf_t *out, uint8_t type);
/* Patch the length of the message started at `start`. */
void wire_msg_end(cm_buf_t *out, size_t start);

void wire_put_startup(cm_buf_t *out, const char *const *names, const char *const *values, size_t n);
void wire_put_ssl_request(cm_buf_t *out);
void wire_put_cancel(cm_buf_t *out, uint32_t pid, uint32_t key);
void wire_put_query(cm_buf_t *out, const char *sql);
void wire_put_parse(cm_buf_t *out, const char *name, const char *query, uint16_t n_types,
                    const uint8_t *types /* raw big-endian OIDs, may be NULL when 0 */);
void wire_put_describe(cm_buf_t *out, uint8_t what, const char *name);
void wire_put_close(cm_buf_t *out, uint8_t what, const char *name);
void wire_put_sync(cm_buf_t *out);
void wire_put_flush(cm_buf_t *out);
void wire_put_terminate(cm_buf_t *out);
void wire_put_password(cm_buf_t *out, const char *password);
void wire_put_sasl_initial(cm_buf_t *out, const char *mechanism, const void *data, size_t len);
void wire_put_sasl_response(cm_buf_t *out, const void *data, size_t len);

void wire_put_auth_ok(cm_buf_t *out);
void wire_put_auth_cleartext(cm_buf_t *out);
void wire_put_auth_md5(cm_buf_t *out, const uint8_t salt[4]);
void wire_put_auth_sasl(cm_buf_t *out, const char *mechanism /* one, e.g. SCRAM-SHA-256 */);
void wire_put_auth_sasl_continue(cm_buf_t *out, const void *data, size_t len);
void wire_put_auth_sasl_final(cm_buf_t *out, const void *data, size_t len);
void wire_put_backend_key(cm_buf_t *out, uint32_t pid, uint32_t key);
void wire_put_param_status(cm_buf_t *out, const char *name, const char *value);
void wire_put_ready(cm_buf_t *out, uint8_t txn_status);
/* ErrorResponse (is_notice false) or NoticeResponse with S, V, C, M and optional D. */
void wire_put_error(cm_buf_t *out, bool is_notice, const char *severity, const char *sqlstate,
                    const char *message, const char *detail /* may be NULL */);
/*
 * ErrorResponse or NoticeResponse carrying the fields of `e` in order
 * (borrows e; each value must not contain a NUL byte). Re-emits a decoded
 * message byte for byte when no field was skipped.
 */
void wire_put_error_fields(cm_buf_t *out, bool is_notice, const wire_error_t *e);
void wire_put_negotiate_version(cm_buf_t *out, uint32_t newest_minor, const char *const *unknown,
                                size_t n_unknown);
/* RowDescription of n text columns (type oid 25 unless types != NULL). */
void wire_put_row_description(cm_buf_t *out, const char *const *names, const uint32_t *types,
                              size_t n);
/* DataRow of n text values; NULL pointers are SQL NULL. */
void wire_put_data_row(cm_buf_t *out, const char *const *values, size_t n);
void wire_put_command_complete(cm_buf_t *out, const char *tag);
void wire_put_empty_query(cm_buf_t *out);
void wire_put_parse_complete(cm_buf_t *out);
void wire_put_bind_complete(cm_buf_t *out);
void wire_put_close_complete(cm_buf_t *out);
void wire_put_no_data(cm_buf_t *out);
void wire_put_notification(cm_buf_t *out, uint32_t pid, const char *channel, const char *payload);

const char *wire_rc_str(wire_rc_t rc);

#endif
