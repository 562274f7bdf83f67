/*
 * proxy/scram.h - the authentication crypto of pgshift: SCRAM-SHA-256
 * (RFC 5802 / RFC 7677, as PostgreSQL speaks it) on both sides, md5, and
 * PostgreSQL's stored-secret formats.
 *
 * Everything here is a pure function over memory: no sockets, no libuv, no
 * logging, no globals. Every message handed in is untrusted and is bounds
 * checked; nothing reads past (msg, len) and embedded NUL bytes are refused.
 *
 * Stored secrets come in three kinds (see px_secret_kind()):
 *   plain      the password itself; SCRAM needs a derived secret, made once
 *              per user with px_scram_secret_from_password() (random salt,
 *              PX_SCRAM_DEFAULT_ITERATIONS) and cached by the caller.
 *   md5        "md5" + 32 hex digits: md5 auth only. It cannot do SCRAM
 *              (the SCRAM keys are not derivable from it): the caller must
 *              refuse SCRAM for such users, or use md5 auth.
 *   SCRAM      "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>": SCRAM
 *              only; md5 auth is impossible with it.
 *
 * SASLprep: passwords are used as raw bytes. For ASCII this is exactly what
 * PostgreSQL does (SASLprep is the identity on printable ASCII, and PostgreSQL
 * falls back to the raw bytes when a control character makes SASLprep fail).
 * For non-ASCII passwords pgshift does NOT normalise (no NFKC, no mapping of
 * non-ASCII spaces or soft hyphens): a password already in NFKC without such
 * characters gives the same keys as PostgreSQL, others do not. pgshift is
 * consistent with itself either way (its client and its derived secrets use
 * the same rule).
 *
 * Channel binding: pgshift offers only SCRAM-SHA-256 (never -PLUS), so the
 * server side accepts the gs2 headers "n,," and "y,," and refuses "p=..." and
 * an authorization identity ("a=..."), as PostgreSQL does.
 */
#ifndef PGSHIFT_PX_SCRAM_H
#define PGSHIFT_PX_SCRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/cm.h"

#define PX_SCRAM_KEY_LEN            32   /* SHA-256 output */
#define PX_SCRAM_MAX_SALT_LEN       64   /* bytes, decoded */
#define PX_SCRAM_DEFAULT_ITERATIONS 4096 /* PostgreSQL's scram_iterations default */
#define PX_SCRAM_DEFAULT_SALT_LEN   16   /* PostgreSQL's SCRAM_DEFAULT_SALT_LEN */
#define PX_SCRAM_MAX_MSG_LEN        4096 /* longest SCRAM message either side accepts */
#define PX_SCRAM_MECHANISM          "SCRAM-SHA-256"
#define PX_MD5_LEN                  36 /* "md5" + 32 hex + NUL */

/* What kind of stored secret a string is. */
typedef enum px_secret_kind {
    PX_SECRET_PLAIN, /* a clear-text password */
    PX_SECRET_MD5,   /* "md5" + exactly 32 lower-case hex digits (PostgreSQL's test) */
    PX_SECRET_SCRAM, /* a well-formed SCRAM-SHA-256$... secret */
    PX_SECRET_BAD,   /* starts with "SCRAM-SHA-256$" but does not parse */
} px_secret_kind_t;

/* Classify a stored secret. Borrows secret. */
px_secret_kind_t px_secret_kind(const char *secret);

/* PostgreSQL's SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64> */
typedef struct px_scram_secret {
    int iterations;                       /* >= 1 */
    uint8_t salt[PX_SCRAM_MAX_SALT_LEN];  /* decoded salt */
    size_t salt_len;                      /* 1..PX_SCRAM_MAX_SALT_LEN bytes */
    uint8_t stored_key[PX_SCRAM_KEY_LEN]; /* H(ClientKey) */
    uint8_t server_key[PX_SCRAM_KEY_LEN]; /* HMAC(SaltedPassword, "Server Key") */
} px_scram_secret_t;

/* Parse a stored SCRAM secret strictly (canonical base64, exact key lengths,
 * nothing trailing). Borrows text. 0, or -1 with *out unspecified. */
int px_scram_secret_parse(const char *text, px_scram_secret_t *out) MUST_CHECK;

/* Derive the secret PostgreSQL would store for password (raw bytes, see the
 * SASLprep note above) with the given salt and iteration count. salt_len
 * must be 1..PX_SCRAM_MAX_SALT_LEN and iterations >= 1. Borrows everything.
 * 0, or -1 on bad arguments or a crypto failure. */
int px_scram_secret_from_password(const char *password, const uint8_t *salt, size_t salt_len,
                                  int iterations, px_scram_secret_t *out) MUST_CHECK;

/* Same, with PX_SCRAM_DEFAULT_SALT_LEN random salt bytes and
 * PX_SCRAM_DEFAULT_ITERATIONS: what the server side uses for a plain stored
 * password. Cache the result per user: it costs 4096 HMACs. */
int px_scram_secret_generate(const char *password, px_scram_secret_t *out) MUST_CHECK;

/* Format a secret the way PostgreSQL stores it. Returns owned, free(). */
char *px_scram_secret_format(const px_scram_secret_t *s);

/* ---- server side: pgshift verifies a client ---------------------------- */

typedef struct px_scram_server px_scram_server_t; /* opaque, heap */

/* New server exchange. Copies *secret (the caller may free it at once);
 * secret must not be NULL. Returns owned, px_scram_server_free(). */
px_scram_server_t *px_scram_server_new(const px_scram_secret_t *secret);

/*
 * New "mock" exchange, as PostgreSQL runs for an unknown user or a user whose
 * secret cannot do SCRAM (md5): the server-first message looks normal and the
 * final step always fails with "password authentication failed", so a client
 * cannot tell a missing user from a wrong password. The salt is
 * HMAC(mock_key, user) so that repeated attempts for one user see the same
 * salt, as they would for a real one; mock_key is a process-wide random key
 * the caller makes once with px_random_bytes(). Borrows both. Returns owned,
 * px_scram_server_free().
 */
px_scram_server_t *px_scram_server_new_mock(const char *user,
                                            const uint8_t mock_key[PX_SCRAM_KEY_LEN]);

/*
 * client-first-message (the SASLInitialResponse data, msg[0..len), not NUL
 * terminated) -> server-first-message. On 0, *reply is owned (free()). On -1,
 * *err is a static string and the exchange is over (every later call fails).
 */
int px_scram_server_first(px_scram_server_t *s, const char *msg, size_t len, char **reply,
                          const char **err) MUST_CHECK;

/*
 * client-final-message (SASLResponse data) -> server-final-message
 * ("v=<ServerSignature>"). On 0 the client is authenticated and *reply is
 * owned (free()). On -1, *err is a static string: "password authentication
 * failed" for a wrong proof (or a mock exchange), "malformed SCRAM message..."
 * for bad syntax or a mismatch with the first message; see
 * px_scram_server_is_protocol_error() to pick the SQLSTATE.
 */
int px_scram_server_final(px_scram_server_t *s, const char *msg, size_t len, char **reply,
                          const char **err) MUST_CHECK;

/* After a failure: true if the client broke the protocol (reply 08P01),
 * false if it gave a wrong password (reply 28P01). */
bool px_scram_server_is_protocol_error(const px_scram_server_t *s);

/* After a successful px_scram_server_final(): the client's ClientKey,
 * recovered from its proof. It lets pgshift log into a store that holds the
 * same SCRAM secret without knowing the password (PgBouncer's SCRAM
 * pass-through; see px_scram_client_new_keys()). 0, or -1 if the exchange
 * has not succeeded. */
int px_scram_server_client_key(const px_scram_server_t *s, uint8_t out[PX_SCRAM_KEY_LEN])
    MUST_CHECK;

/* Test hook: use this server nonce (printable ASCII except ',') instead of
 * a random one. Call before px_scram_server_first(). Borrows nonce. */
void px_scram_server_set_nonce(px_scram_server_t *s, const char *nonce);

/* Wipes the keys and frees; NULL is fine. */
void px_scram_server_free(px_scram_server_t *s);

/* ---- client side: pgshift logs into a store ---------------------------- */

typedef struct px_scram_client px_scram_client_t; /* opaque, heap */

/* New client exchange with a clear-text password (copied; raw bytes, see
 * the SASLprep note). A stored md5 or SCRAM secret is NOT a password; for a
 * SCRAM secret use px_scram_client_new_keys(). Returns owned,
 * px_scram_client_free(). */
px_scram_client_t *px_scram_client_new(const char *password);

/* New client exchange from keys instead of a password: client_key (from
 * px_scram_server_client_key()) and the secret it belongs to. The store must
 * hold the same secret: px_scram_client_final() fails when its salt or
 * iteration count differ. Copies both. */
px_scram_client_t *px_scram_client_new_keys(const uint8_t client_key[PX_SCRAM_KEY_LEN],
                                            const px_scram_secret_t *secret);

/*
 * Keys derived from a password for one salt and iteration count, so that
 * later logins to the same store skip PBKDF2 (4096 HMACs on the loop
 * thread). Zero-filled is empty. Owned by the caller (one per store).
 */
typedef struct px_scram_keycache {
    bool is_valid;
    int iterations;
    uint8_t salt[PX_SCRAM_MAX_SALT_LEN];
    size_t salt_len;
    uint8_t client_key[PX_SCRAM_KEY_LEN];
    uint8_t stored_key[PX_SCRAM_KEY_LEN];
    uint8_t server_key[PX_SCRAM_KEY_LEN];
} px_scram_keycache_t;

/* Password mode: use and fill `cache` (kept; it must outlive c). */
void px_scram_client_set_cache(px_scram_client_t *c, px_scram_keycache_t *cache);

/* client-first-message "n,,n=,r=<nonce>". Returns owned (free()), or NULL
 * if the random generator fails (the exchange is then over). Call once. */
char *px_scram_client_first(px_scram_client_t *c);

/* server-first-message (AuthenticationSASLContinue data) -> client-final-
 * message. On 0, *client_final is owned (free()); on -1, *err is static.
 * With a password this runs PBKDF2 with the server's iteration count (the
 * store is trusted; 4096 iterations take a few milliseconds). */
int px_scram_client_final(px_scram_client_t *c, const char *server_first, size_t len,
                          char **client_final, const char **err) MUST_CHECK;

/* server-final-message (AuthenticationSASLFinal data): 0 if the server
 * proved it knows the secret, -1 with *err otherwise. */
int px_scram_client_verify(px_scram_client_t *c, const char *server_final, size_t len,
                           const char **err) MUST_CHECK;

/* Test hook: use this client nonce (printable ASCII except ',') instead of
 * a random one. Call before px_scram_client_first(). Borrows nonce. */
void px_scram_client_set_nonce(px_scram_client_t *c, const char *nonce);

/* Test hook: send "n=<user>" (saslname-escaped) instead of PostgreSQL's
 * empty "n=". PostgreSQL ignores this name. Borrows user. */
void px_scram_client_set_user(px_scram_client_t *c, const char *user);

/* Wipes the password and keys and frees; NULL is fine. */
void px_scram_client_free(px_scram_client_t *c);

/* ---- md5 and helpers --------------------------------------------------- */

/* md5 secret as PostgreSQL stores it: "md5" + hex(md5(password || user)).
 * out gets PX_MD5_LEN bytes including the NUL. */
void px_md5_secret(const char *password, const char *user, char out[PX_MD5_LEN]);

/* md5 auth response: "md5" + hex(md5(hex(md5(password || user)) || salt)).
 * The first argument may be a clear password or a stored md5 secret (then
 * its hex part is used as is, like PostgreSQL and PgBouncer do). */
void px_md5_response(const char *password_or_md5secret, const char *user, const uint8_t salt[4],
                     char out[PX_MD5_LEN]);

/* Check a client's md5 response against a stored plain or md5 secret, in
 * constant time. A SCRAM secret (or anything else) gives false. */
bool px_md5_check(const char *stored, const char *user, const uint8_t salt[4],
                  const char *client_response);

/* n bytes from OpenSSL's CSPRNG (RAND_bytes). 0, or -1. */
int px_random_bytes(void *buf, size_t n) MUST_CHECK;

/* Constant-time comparison of n bytes. */
bool px_const_time_eq(const void *a, const void *b, size_t n);

/* Strict base64 (RFC 4648, with padding, no whitespace). encode writes
 * 4*ceil(n/3) chars plus a NUL into out, which must hold
 * PX_B64_ENC_LEN(n) bytes. decode returns the decoded length, or -1 when the
 * input is not canonical base64 or would not fit in out_cap. */
#define PX_B64_ENC_LEN(n) ((((n) + 2) / 3) * 4 + 1)
void px_b64_encode(const uint8_t *in, size_t n, char *out);
long px_b64_decode(const char *in, size_t n, uint8_t *out, size_t out_cap) MUST_CHECK;

#endif
