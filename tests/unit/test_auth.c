/*
 * tests/unit/test_auth.c - proxy/scram.c and proxy/authfile.c: RFC 7677's
 * SCRAM-SHA-256 example, secrets produced by a real PostgreSQL 15, full
 * client <-> server exchanges, malformed and truncated messages on both
 * sides, md5 against an independent reference, and auth_file parsing.
 */
#include <openssl/evp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* cmocka.h needs the headers above first. */
#include <cmocka.h>

#include "proxy/authfile.h"
#include "proxy/scram.h"

/* ---- helpers ----------------------------------------------------------- */

static void b64_to(const char *b64, uint8_t *out, size_t want)
{
    assert_int_equal(px_b64_decode(b64, strlen(b64), out, want), (long)want);
}

static px_scram_secret_t parse_secret(const char *text)
{
    px_scram_secret_t s;

    assert_int_equal(px_scram_secret_parse(text, &s), 0);
    return s;
}

/* One complete exchange; returns the server's final rc. */
static int exchange_cached(const px_scram_secret_t *secret, const char *password,
                           px_scram_keycache_t *cache, const char **err)
{
    px_scram_server_t *s = px_scram_server_new(secret);
    px_scram_client_t *c = px_scram_client_new(password);
    char *first, *sfirst = NULL, *cfinal = NULL, *sfinal = NULL;
    int rc;

    if (cache != NULL)
        px_scram_client_set_cache(c, cache);
    first = px_scram_client_first(c);
    assert_non_null(first);
    assert_int_equal(px_scram_server_first(s, first, strlen(first), &sfirst, err), 0);
    assert_int_equal(px_scram_client_final(c, sfirst, strlen(sfirst), &cfinal, err), 0);
    rc = px_scram_server_final(s, cfinal, strlen(cfinal), &sfinal, err);
    if (rc == 0) {
        assert_non_null(sfinal);
        assert_int_equal(px_scram_client_verify(c, sfinal, strlen(sfinal), err), 0);
    } else {
        assert_null(sfinal);
        assert_false(px_scram_server_is_protocol_error(s));
    }
    free(first);
    free(sfirst);
    free(cfinal);
    free(sfinal);
    px_scram_client_free(c);
    px_scram_server_free(s);
    return rc;
}

static int exchange(const px_scram_secret_t *secret, const char *password, const char **err)
{
    return exchange_cached(secret, password, NULL, err);
}

/*
 * The key cache of store logins: filled only once the server proved the
 * keys, reused while salt and count match, replaced when they change, and a
 * cache of another password (same salt) fails the exchange instead of
 * logging in.
 */
static void test_client_key_cache(void **state)
{
    px_scram_keycache_t cache = { 0 };
    px_scram_secret_t a, b;
    uint8_t salt_a[16] = { 1 }, salt_b[16] = { 2 };
    const char *err = NULL;
    px_scram_keycache_t saved;

    (void)state;
    assert_int_equal(px_scram_secret_from_password("pencil", salt_a, sizeof(salt_a), 4096, &a), 0);
    assert_int_equal(px_scram_secret_from_password("pencil", salt_b, sizeof(salt_b), 4096, &b), 0);
    assert_int_equal(exchange_cached(&a, "pencil", &cache, &err), 0);
    assert_true(cache.is_valid);
    assert_memory_equal(cache.stored_key, a.stored_key, PX_SCRAM_KEY_LEN);
    assert_memory_equal(cache.server_key, a.server_key, PX_SCRAM_KEY_LEN);
    /* Reused: the cached keys log in even with a password that no longer matches. */
    assert_int_equal(exchange_cached(&a, "not-pencil", &cache, &err), 0);
    /* Another salt: derived again from the password, and cached. */
    assert_int_equal(exchange_cached(&b, "pencil", &cache, &err), 0);
    assert_true(cache.is_valid);
    assert_memory_equal(cache.stored_key, b.stored_key, PX_SCRAM_KEY_LEN);
    /* A wrong password with an empty cache fails and caches nothing valid. */
    memset(&cache, 0, sizeof(cache));
    assert_int_not_equal(exchange_cached(&a, "wrong", &cache, &err), 0);
    assert_false(cache.is_valid);
    /* Keys of another password under the same salt: the server refuses them. */
    saved = cache;
    saved.is_valid = true;
    assert_int_not_equal(exchange_cached(&a, "pencil", &saved, &err), 0);
}

/* ---- RFC 7677 section 3 ------------------------------------------------ */

#define RFC_CNONCE "rOprNGfwEbeRWgbNEkqO"
#define RFC_SNONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_SALT   "W22ZaJ0SNY7soEsUEjb6gQ=="
#define RFC_C1     "n,,n=user,r=" RFC_CNONCE
#define RFC_S1     "r=" RFC_CNONCE RFC_SNONCE ",s=" RFC_SALT ",i=4096"
#define RFC_C2_NP  "c=biws,r=" RFC_CNONCE RFC_SNONCE
#define RFC_C2     RFC_C2_NP ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define RFC_S2     "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

static px_scram_secret_t rfc_secret(void)
{
    uint8_t salt[16];
    px_scram_secret_t sec;

    b64_to(RFC_SALT, salt, sizeof(salt));
    assert_int_equal(px_scram_secret_from_password("pencil", salt, sizeof(salt), 4096, &sec), 0);
    return sec;
}

static px_scram_server_t *rfc_server(void)
{
    px_scram_secret_t sec = rfc_secret();
    px_scram_server_t *s = px_scram_server_new(&sec);

    px_scram_server_set_nonce(s, RFC_SNONCE);
    return s;
}

/* A server that has answered RFC_C1 and waits for the final message. */
static px_scram_server_t *rfc_server_after_first(void)
{
    px_scram_server_t *s = rfc_server();
    char *reply = NULL;
    const char *err = NULL;

    assert_int_equal(px_scram_server_first(s, RFC_C1, strlen(RFC_C1), &reply, &err), 0);
    assert_string_equal(reply, RFC_S1);
    free(reply);
    return s;
}

static void test_rfc7677(void **state)
{
    px_scram_server_t *s = rfc_server();
    px_scram_client_t *c = px_scram_client_new("pencil");
    px_scram_secret_t sec = rfc_secret();
    char *c1, *s1 = NULL, *c2 = NULL, *s2 = NULL;
    const char *err = NULL;
    uint8_t key[PX_SCRAM_KEY_LEN];

    (void)state;
    px_scram_client_set_nonce(c, RFC_CNONCE);
    px_scram_client_set_user(c, "user");
    c1 = px_scram_client_first(c);
    assert_string_equal(c1, RFC_C1);
    assert_int_equal(px_scram_server_first(s, c1, strlen(c1), &s1, &err), 0);
    assert_string_equal(s1, RFC_S1);
    assert_int_equal(px_scram_client_final(c, s1, strlen(s1), &c2, &err), 0);
    assert_string_equal(c2, RFC_C2);
    assert_int_equal(px_scram_server_final(s, c2, strlen(c2), &s2, &err), 0);
    assert_string_equal(s2, RFC_S2);
    assert_int_equal(px_scram_client_verify(c, s2, strlen(s2), &err), 0);

    /* The recovered ClientKey hashes to the StoredKey. */
    assert_int_equal(px_scram_server_client_key(s, key), 0);
    {
        uint8_t h[EVP_MAX_MD_SIZE];
        unsigned int h_len = 0;

        assert_int_equal(EVP_Digest(key, sizeof(key), h, &h_len, EVP_sha256(), NULL), 1);
        assert_int_equal(h_len, PX_SCRAM_KEY_LEN);
        assert_memory_equal(h, sec.stored_key, PX_SCRAM_KEY_LEN);
    }
    free(c1);
    free(s1);
    free(c2);
    free(s2);
    px_scram_client_free(c);
    px_scram_server_free(s);

    /* A second exchange driven by keys only (no password) gives the same proof. */
    c = px_scram_client_new_keys(key, &sec);
    px_scram_client_set_nonce(c, RFC_CNONCE);
    px_scram_client_set_user(c, "user");
    c1 = px_scram_client_first(c);
    assert_string_equal(c1, RFC_C1);
    assert_int_equal(px_scram_client_final(c, RFC_S1, strlen(RFC_S1), &c2, &err), 0);
    assert_string_equal(c2, RFC_C2);
    assert_int_equal(px_scram_client_verify(c, RFC_S2, strlen(RFC_S2), &err), 0);
    free(c1);
    free(c2);
    px_scram_client_free(c);
}

static void test_rfc7677_secret_format(void **state)
{
    px_scram_secret_t sec = rfc_secret(), back;
    char *text = px_scram_secret_format(&sec);

    (void)state;
    assert_int_equal(strncmp(text, "SCRAM-SHA-256$4096:" RFC_SALT "$", 19 + 24 + 1), 0);
    assert_int_equal(px_scram_secret_parse(text, &back), 0);
    assert_int_equal(back.iterations, 4096);
    assert_int_equal(back.salt_len, 16);
    assert_memory_equal(back.salt, sec.salt, 16);
    assert_memory_equal(back.stored_key, sec.stored_key, PX_SCRAM_KEY_LEN);
    assert_memory_equal(back.server_key, sec.server_key, PX_SCRAM_KEY_LEN);
    assert_int_equal(px_secret_kind(text), PX_SECRET_SCRAM);
    free(text);
}

/* ---- secrets produced by PostgreSQL 15 --------------------------------- */

/* From a throwaway PostgreSQL 15.x: CREATE ROLE ... PASSWORD '...' with
 * password_encryption scram-sha-256 (u1, u2) and md5 (u3). */
#define PG_U1 /* 'pencil' */                                                                    \
    "SCRAM-SHA-256$4096:sg8NH45JO+h/XvqH4jOlUg==$wRR3cWNIeeDZNQBPWrQmlVKunZm0qMWpJ+cbFFVepfw=:" \
    "bmwc635kWPNt9ZgjlbsvpkGrMvvKUe6ma4LHxUCPMDY="
#define PG_U2 /* 'p\u00e4ssw\u00f6rd' in UTF-8 (already NFKC) */                                \
    "SCRAM-SHA-256$4096:v48D1Fy0C2yqy98XAhZXeQ==$9GQi+TX7Vco/9CdZIrlw7m/llfWbR7oTQvxtiWrVZMQ=:" \
    "4Wdilq+YiAHoc7ZnPRFs07d6tbg2XfhIwBZyQGF99KU="
#define PG_U2_PASSWORD "p\xc3\xa4ssw\xc3\xb6rd"
#define PG_U3          "md59be8ca6530942872ce7292e98ad64683" /* 'pencil', user u3 */

static void check_pg_secret(const char *pg, const char *password)
{
    px_scram_secret_t parsed = parse_secret(pg), mine;
    char *text;

    assert_int_equal(px_scram_secret_from_password(password, parsed.salt, parsed.salt_len,
                                                   parsed.iterations, &mine),
                     0);
    text = px_scram_secret_format(&mine);
    assert_string_equal(text, pg);
    free(text);
    text = px_scram_secret_format(&parsed);
    assert_string_equal(text, pg);
    free(text);
}

static void test_postgres_secrets(void **state)
{
    char md5[PX_MD5_LEN];
    const char *err = NULL;
    px_scram_secret_t u1 = parse_secret(PG_U1);

    (void)state;
    check_pg_secret(PG_U1, "pencil");
    check_pg_secret(PG_U2, PG_U2_PASSWORD);
    px_md5_secret("pencil", "u3", md5);
    assert_string_equal(md5, PG_U3);

    /* The PostgreSQL secret authenticates our client, and only with the password. */
    assert_int_equal(exchange(&u1, "pencil", &err), 0);
    assert_int_equal(exchange(&u1, "pencil ", &err), -1);
    assert_string_equal(err, "password authentication failed");
    {
        px_scram_secret_t u2 = parse_secret(PG_U2);
        assert_int_equal(exchange(&u2, PG_U2_PASSWORD, &err), 0);
    }
}

static void test_secret_generate(void **state)
{
    px_scram_secret_t a, b, back;
    char *text;
    const char *err = NULL;

    (void)state;
    assert_int_equal(px_scram_secret_generate("s3cret", &a), 0);
    assert_int_equal(px_scram_secret_generate("s3cret", &b), 0);
    assert_int_equal(a.iterations, PX_SCRAM_DEFAULT_ITERATIONS);
    assert_int_equal(a.salt_len, PX_SCRAM_DEFAULT_SALT_LEN);
    /* Random salts, so different keys for the same password. */
    assert_memory_not_equal(a.salt, b.salt, a.salt_len);
    assert_memory_not_equal(a.stored_key, b.stored_key, PX_SCRAM_KEY_LEN);
    text = px_scram_secret_format(&a);
    assert_int_equal(strncmp(text, "SCRAM-SHA-256$4096:", 19), 0);
    assert_int_equal(px_scram_secret_parse(text, &back), 0);
    assert_memory_equal(&back.stored_key, &a.stored_key, PX_SCRAM_KEY_LEN);
    assert_memory_equal(&back.server_key, &a.server_key, PX_SCRAM_KEY_LEN);
    assert_memory_equal(&back.salt, &a.salt, a.salt_len);
    free(text);

    /* Full exchanges: derived from a plain password, right and wrong. */
    assert_int_equal(exchange(&a, "s3cret", &err), 0);
    assert_int_equal(exchange(&b, "s3cret", &err), 0);
    assert_int_equal(exchange(&a, "s3creT", &err), -1);
    assert_string_equal(err, "password authentication failed");
    assert_int_equal(exchange(&a, "", &err), -1);

    /* Bad arguments. */
    assert_int_equal(px_scram_secret_from_password("x", a.salt, 0, 4096, &back), -1);
    assert_int_equal(px_scram_secret_from_password("x", a.salt, 65, 4096, &back), -1);
    assert_int_equal(px_scram_secret_from_password("x", a.salt, 16, 0, &back), -1);
}

static void test_secret_parse_bad(void **state)
{
    static const char *const bad[] = {
        "",
        "SCRAM-SHA-256$",
        "SCRAM-SHA-1$4096:sg8NH45JO+h/XvqH4jOlUg==$wRR3cWNIeeDZNQBPWrQmlVKunZm0qMWpJ+cbFFVepfw=:"
        "bmwc635kWPNt9ZgjlbsvpkGrMvvKUe6ma4LHxUCPMDY=",
        "SCRAM-SHA-256$0:sg8NH45JO+h/XvqH4jOlUg==$wRR3cWNIeeDZNQBPWrQmlVKunZm0qMWpJ+cbFFVepfw=:"
        "bmwc635kWPNt9ZgjlbsvpkGrMvvKUe6ma4LHxUCPMDY=",
        "SCRAM-SHA-256$-1:sg8NH45JO+h/XvqH4jOlUg==$wRR3cWNIeeDZNQBPWrQmlVKunZm0qMWpJ+cbFFVepfw=:"
        "bmwc635kWPNt9ZgjlbsvpkGrMvvKUe6ma4LHxUCPMDY=",
        "SCRAM-SHA-256$04096:sg8NH45JO+h/XvqH4jOlUg==$wRR3cWNIeeDZNQBPWrQmlVKunZm0qMWpJ+cbFFVepfw=:"
        "bmwc635kWPNt9ZgjlbsvpkGrMvvKUe6ma4LHxUCPMDY=",
        "SCRAM-SHA-256$2147483648:sg8NH45JO+h/XvqH4jOlUg==$"
        "wRR3cWNIeeDZNQBPWrQmlVKunZm0qMWpJ+cbFFVepfw=:bmwc635kWPNt9ZgjlbsvpkGrMvvKUe6ma4LHxUCPMDY=",
        "SCRAM-SHA-256$4096:$wRR3cWNIeeDZNQBPWrQmlVKunZm0qMWpJ+cbFFVepfw=:"
        "bmwc635kWPNt9ZgjlbsvpkGrMvvKUe6ma4LHxUCPMDY=",
        "SCRAM-SHA-256$4096:sg8NH45JO+h/XvqH4jOlUg=$wRR3cWNIeeDZNQBPWrQmlVKunZm0qMWpJ+cbFFVepfw=:"
        "bmwc635kWPNt9ZgjlbsvpkGrMvvKUe6ma4LHxUCPMDY=",
        "SCRAM-SHA-256$4096:sg8NH45JO+h/XvqH4jOlUg==$wRR3cWNIeeDZNQBPWrQmlVKunZm0qMWpJ+cbFFVepfw:"
        "bmwc635kWPNt9ZgjlbsvpkGrMvvKUe6ma4LHxUCPMDY=",
        /* a 31-byte StoredKey */
        "SCRAM-SHA-256$4096:sg8NH45JO+h/XvqH4jOlUg==$wRR3cWNIeeDZNQBPWrQmlVKunZm0qMWpJ+cbFFVepQ==:"
        "bmwc635kWPNt9ZgjlbsvpkGrMvvKUe6ma4LHxUCPMDY=",
        "SCRAM-SHA-256$4096:sg8NH45JO+h/XvqH4jOlUg==$wRR3cWNIeeDZNQBPWrQmlVKunZm0qMWpJ+cbFFVepfw=:"
        "bmwc635kWPNt9ZgjlbsvpkGrMvvKUe6ma4LHxUCPMDY= ",
        "SCRAM-SHA-256$4096:sg8NH45JO+h/XvqH4jOlUg==$wRR3cWNIeeDZNQBPWrQmlVKunZm0qMWpJ+cbFFVepfw=:"
        "bmwc635kWPNt9ZgjlbsvpkGrMvvKUe6ma4LHxUCPMDY=:",
        "SCRAM-SHA-256$4096:sg8NH45JO+h/XvqH4jOlUg==$wRR3cWNIeeDZNQBPWrQmlVKunZm0qMWpJ+cbFFVepfw=",
        "SCRAM-SHA-256$4096:sg8NH45JO+h/XvqH4jOlUg==",
        "SCRAM-SHA-256$4096",
        /* a 65-byte salt */
        "SCRAM-SHA-256$4096:"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=$"
        "wRR3cWNIeeDZNQBPWrQmlVKunZm0qMWpJ+cbFFVepfw=:bmwc635kWPNt9ZgjlbsvpkGrMvvKUe6ma4LHxUCPMDY=",
    };
    px_scram_secret_t s;

    (void)state;
    for (size_t i = 0; i < CM_ARRAY_LEN(bad); i++) {
        if (px_scram_secret_parse(bad[i], &s) != 0)
            continue;
        fail_msg("accepted bad secret #%zu: %s", i, bad[i]);
    }
    assert_int_equal(px_secret_kind(PG_U1), PX_SECRET_SCRAM);
    assert_int_equal(px_secret_kind(bad[3]), PX_SECRET_BAD);
    assert_int_equal(px_secret_kind(bad[2]), PX_SECRET_PLAIN); /* not our prefix */
    assert_int_equal(px_secret_kind(PG_U3), PX_SECRET_MD5);
    assert_int_equal(px_secret_kind("md59BE8CA6530942872CE7292E98AD64683"), PX_SECRET_PLAIN);
    assert_int_equal(px_secret_kind("md59be8ca6530942872ce7292e98ad6468"), PX_SECRET_PLAIN);
    assert_int_equal(px_secret_kind("pencil"), PX_SECRET_PLAIN);
    /* A 64-byte salt is the maximum and parses. */
    assert_int_equal(px_scram_secret_parse("SCRAM-SHA-256$1:"
                                           "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                                           "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==$"
                                           "wRR3cWNIeeDZNQBPWrQmlVKunZm0qMWpJ+cbFFVepfw=:"
                                           "bmwc635kWPNt9ZgjlbsvpkGrMvvKUe6ma4LHxUCPMDY=",
                                           &s),
                     0);
    assert_int_equal(s.salt_len, 64);
    assert_int_equal(s.iterations, 1);
}

/* ---- base64 ------------------------------------------------------------ */

static void test_base64(void **state)
{
    static const struct {
        const char *raw, *b64;
    } vec[] = { { "", "" },        { "f", "Zg==" },        { "fo", "Zm8=" },
                { "foo", "Zm9v" }, { "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" },
                { "n,,", "biws" }, { "y,,", "eSws" },      { "foobar", "Zm9vYmFy" } };
    static const char *const bad[] = { "Zg=",  "Zg",   "Z===", "Zh==",  "Zm9=", "Zm8==",
                                       "=Zm9", "Zm=v", "Zm9 ", "Zm9\n", "Zm-v", "Zm9v=" };
    char enc[64];
    uint8_t dec[64];

    (void)state;
    for (size_t i = 0; i < CM_ARRAY_LEN(vec); i++) {
        size_t n = strlen(vec[i].raw);
        px_b64_encode((const uint8_t *)vec[i].raw, n, enc);
        assert_string_equal(enc, vec[i].b64);
        assert_int_equal(px_b64_decode(vec[i].b64, strlen(vec[i].b64), dec, sizeof(dec)), (long)n);
        assert_memory_equal(dec, vec[i].raw, n);
    }
    for (size_t i = 0; i < CM_ARRAY_LEN(bad); i++) {
        if (px_b64_decode(bad[i], strlen(bad[i]), dec, sizeof(dec)) >= 0)
            fail_msg("accepted bad base64 \"%s\"", bad[i]);
    }
    /* Capacity is respected. */
    assert_int_equal(px_b64_decode("Zm9vYmFy", 8, dec, 5), -1);
    assert_int_equal(px_b64_decode("Zm9vYmFy", 8, dec, 6), 6);
    /* Every byte value round-trips. */
    {
        uint8_t all[256], back[256];
        char big[PX_B64_ENC_LEN(256)];
        for (int i = 0; i < 256; i++)
            all[i] = (uint8_t)i;
        for (size_t n = 0; n <= 256; n += 37) {
            px_b64_encode(all, n, big);
            assert_int_equal(strlen(big), PX_B64_ENC_LEN(n) - 1);
            assert_int_equal(px_b64_decode(big, strlen(big), back, sizeof(back)), (long)n);
            assert_memory_equal(all, back, n);
        }
    }
}

/* ---- server side: malformed input --------------------------------------- */

static void expect_first_fails(const char *msg, size_t len, const char *err_want)
{
    px_scram_secret_t sec = parse_secret(PG_U1);
    px_scram_server_t *s = px_scram_server_new(&sec);
    char *reply = (char *)"untouched";
    const char *err = NULL;

    if (px_scram_server_first(s, msg, len, &reply, &err) == 0)
        fail_msg("accepted client-first \"%.*s\"", (int)len, msg);
    assert_null(reply);
    assert_non_null(err);
    if (err_want != NULL)
        assert_string_equal(err, err_want);
    assert_true(px_scram_server_is_protocol_error(s));
    /* The exchange is over. */
    assert_int_equal(px_scram_server_final(s, RFC_C2, strlen(RFC_C2), &reply, &err), -1);
    assert_null(reply);
    px_scram_server_free(s);
}

static void test_server_first_malformed(void **state)
{
    static const char *const bad[] = {
        "",
        "n",
        "n,",
        "n,,",
        "x,,n=,r=abc",
        "n,x,n=,r=abc",
        "n,,r=abc",       /* missing n= */
        "n,,n=",          /* missing r= */
        "n,,n=,",         /* missing r= */
        "n,,n=,r=",       /* empty nonce */
        "n,,n=,r=a b",    /* nonce not printable */
        "n,,n=,r=ab\x7f", /* nonce not printable */
        "n,,n=,r=\xc3\xa4",
        "n,,n=bad=x,r=abc", /* bad saslname escape */
        "n,,n=a=2,r=abc",
        "n,,n=,r=abc,",    /* empty extension */
        "n,,n=,r=abc,1=2", /* extension name not a letter */
        "n,,n=,r=abc,x=",  /* empty extension value */
        "n,,n=,r=abc,x",
        "n,,n=,x=abc",
        "N,,n=,r=abc",
        " n,,n=,r=abc",
    };
    static const char nul_msg[] = "n,,n=,r=ab\0c";
    char *huge;

    (void)state;
    for (size_t i = 0; i < CM_ARRAY_LEN(bad); i++)
        expect_first_fails(bad[i], strlen(bad[i]), NULL);
    expect_first_fails("p=tls-server-end-point,,n=,r=abc", 32,
                       "SCRAM channel binding is not supported");
    expect_first_fails("n,a=admin,n=,r=abc", 18, "SCRAM authorization identity is not supported");
    expect_first_fails("n,,m=ext,n=,r=abc", 17,
                       "malformed SCRAM message: unsupported mandatory extension");
    expect_first_fails(nul_msg, sizeof(nul_msg) - 1,
                       "malformed SCRAM message: unexpected NUL byte");
    huge = malloc(PX_SCRAM_MAX_MSG_LEN + 2);
    memcpy(huge, "n,,n=,r=", 8);
    memset(huge + 8, 'a', PX_SCRAM_MAX_MSG_LEN + 2 - 8);
    expect_first_fails(huge, PX_SCRAM_MAX_MSG_LEN + 1, "malformed SCRAM message: message too long");
    /* Not NUL-terminated and cut in the nonce: only len bytes are read. */
    memcpy(huge, "n,,n=,r=", 8);
    memset(huge + 8, 'z', 10);
    {
        px_scram_secret_t sec = parse_secret(PG_U1);
        px_scram_server_t *s = px_scram_server_new(&sec);
        char *reply = NULL;
        const char *err = NULL;

        assert_int_equal(px_scram_server_first(s, huge, 12, &reply, &err), 0);
        assert_int_equal(strncmp(reply, "r=zzzz", 6), 0);
        assert_true(reply[6] != 'z'); /* only 4 nonce chars were read */
        free(reply);
        px_scram_server_free(s);
    }
    free(huge);
}

static void test_server_first_good_variants(void **state)
{
    static const char *const good[] = {
        "n,,n=,r=abc",
        "y,,n=,r=abc",
        "n,,n=user,r=abc",
        "n,,n=us=2Cer=3D,r=abc",
        "n,,n=,r=abc,x=ext,Y=more",
        "n,,n=,r=!~#$%&'()*+-./:;<=>?@[]^_`{|}",
    };
    px_scram_secret_t sec = parse_secret(PG_U1);

    (void)state;
    for (size_t i = 0; i < CM_ARRAY_LEN(good); i++) {
        px_scram_server_t *s = px_scram_server_new(&sec);
        char *reply = NULL, want[128];
        const char *err = NULL, *r = strstr(good[i], ",r=") + 3;
        size_t rn = strcspn(r, ",");

        if (px_scram_server_first(s, good[i], strlen(good[i]), &reply, &err) != 0)
            fail_msg("refused \"%s\": %s", good[i], err);
        /* r= starts with the client nonce, then 24 base64 chars of ours. */
        snprintf(want, sizeof(want), "r=%.*s", (int)rn, r);
        assert_int_equal(strncmp(reply, want, strlen(want)), 0);
        assert_int_equal(strcspn(reply + strlen(want), ","), 24);
        assert_string_equal(reply + strlen(want) + 24, ",s=sg8NH45JO+h/XvqH4jOlUg==,i=4096");
        free(reply);
        px_scram_server_free(s);
    }
}

/* The "y,," header must be echoed as c=eSws, not c=biws. */
static void test_server_gs2_y(void **state)
{
    px_scram_server_t *s;
    px_scram_client_t *c = px_scram_client_new("pencil");
    const char *err = NULL;
    char *reply = NULL, *c2 = NULL;
    const char *c1 = "y,,n=user,r=" RFC_CNONCE;
    char msg[256];

    (void)state;
    /* Compute the proof for the y,, exchange with our client: same nonces, so
     * the only difference is the c= attribute, which enters AuthMessage. */
    px_scram_client_set_nonce(c, RFC_CNONCE);
    px_scram_client_set_user(c, "user");
    free(px_scram_client_first(c));
    assert_int_equal(px_scram_client_final(c, RFC_S1, strlen(RFC_S1), &c2, &err), 0);
    px_scram_client_free(c);

    /* The client's c=biws proof does not fit a y,, header: refused. */
    s = rfc_server();
    assert_int_equal(px_scram_server_first(s, c1, strlen(c1), &reply, &err), 0);
    assert_string_equal(reply, RFC_S1);
    free(reply);
    assert_int_equal(px_scram_server_final(s, c2, strlen(c2), &reply, &err), -1);
    assert_string_equal(err, "malformed SCRAM message: channel binding data does not match");
    assert_true(px_scram_server_is_protocol_error(s));
    px_scram_server_free(s);

    /* With c=eSws the syntax is right; the biws-based proof is then wrong. */
    s = rfc_server();
    assert_int_equal(px_scram_server_first(s, c1, strlen(c1), &reply, &err), 0);
    free(reply);
    snprintf(msg, sizeof(msg), "c=eSws%s", c2 + strlen("c=biws"));
    assert_int_equal(px_scram_server_final(s, msg, strlen(msg), &reply, &err), -1);
    assert_string_equal(err, "password authentication failed");
    assert_false(px_scram_server_is_protocol_error(s));
    px_scram_server_free(s);
    free(c2);
}

static void expect_final_fails(const char *msg, size_t len, const char *err_want, bool proto)
{
    px_scram_server_t *s = rfc_server_after_first();
    char *reply = (char *)"untouched";
    const char *err = NULL;
    uint8_t key[PX_SCRAM_KEY_LEN];

    if (px_scram_server_final(s, msg, len, &reply, &err) == 0)
        fail_msg("accepted client-final \"%.*s\"", (int)len, msg);
    assert_null(reply);
    if (err_want != NULL)
        assert_string_equal(err, err_want);
    assert_int_equal(px_scram_server_is_protocol_error(s), proto);
    assert_int_equal(px_scram_server_client_key(s, key), -1);
    px_scram_server_free(s);
}

static void test_server_final_malformed(void **state)
{
    static const struct {
        const char *msg;
        const char *err;
    } bad[] = {
        { "", "malformed SCRAM message" },
        { "r=" RFC_CNONCE RFC_SNONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
          "malformed SCRAM message" },
        { "c=eSws,r=" RFC_CNONCE RFC_SNONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
          "malformed SCRAM message: channel binding data does not match" },
        { "c=biws=,r=" RFC_CNONCE RFC_SNONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
          "malformed SCRAM message: channel binding data does not match" },
        { "c=biws,r=" RFC_CNONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
          "malformed SCRAM message: nonce does not match" },
        { "c=biws,r=" RFC_CNONCE RFC_SNONCE "x,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
          "malformed SCRAM message: nonce does not match" },
        { "c=biws,r=X" RFC_CNONCE RFC_SNONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
          "malformed SCRAM message: nonce does not match" },
        { "c=biws,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", "malformed SCRAM message" },
        { RFC_C2_NP, "malformed SCRAM message" },
        { RFC_C2_NP ",p=", "malformed SCRAM message: invalid client proof" },
        { RFC_C2_NP ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ",
          "malformed SCRAM message: invalid client proof" },
        { RFC_C2_NP ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndQ==",
          "malformed SCRAM message: invalid client proof" }, /* 31 bytes */
        { RFC_C2_NP ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQAAA==",
          "malformed SCRAM message: invalid client proof" }, /* 34 bytes */
        { RFC_C2_NP ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7And!Q=",
          "malformed SCRAM message: invalid client proof" },
        { RFC_C2 ",x=trailing", "malformed SCRAM message" },
        { RFC_C2 ",", "malformed SCRAM message" },
        { RFC_C2_NP ",=x,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
          "malformed SCRAM message" },
        { RFC_C2_NP ",,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", "malformed SCRAM message" },
    };

    (void)state;
    for (size_t i = 0; i < CM_ARRAY_LEN(bad); i++)
        expect_final_fails(bad[i].msg, strlen(bad[i].msg), bad[i].err, true);

    /* Every truncation of the valid message fails without reading past len. */
    for (size_t n = 0; n < strlen(RFC_C2); n++) {
        char *cut = malloc(n ? n : 1);
        memcpy(cut, RFC_C2, n); /* no NUL: ASan catches any over-read */
        expect_final_fails(cut, n, NULL, true);
        free(cut);
    }

    /* A proof with one flipped bit is a wrong password, not a protocol error. */
    for (size_t bit = 0; bit < 8 * PX_SCRAM_KEY_LEN; bit += 13) {
        uint8_t proof[PX_SCRAM_KEY_LEN];
        char b64[PX_B64_ENC_LEN(PX_SCRAM_KEY_LEN)], msg[256];

        b64_to("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", proof, sizeof(proof));
        proof[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        px_b64_encode(proof, sizeof(proof), b64);
        snprintf(msg, sizeof(msg), "%s,p=%s", RFC_C2_NP, b64);
        expect_final_fails(msg, strlen(msg), "password authentication failed", false);
    }

    /* An extension before p= is allowed but enters AuthMessage: proof mismatch. */
    {
        static const char ext[] = RFC_C2_NP ",x=1,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        expect_final_fails(ext, strlen(ext), "password authentication failed", false);
    }

    /* And the untouched message still passes on a fresh exchange. */
    {
        px_scram_server_t *s = rfc_server_after_first();
        char *reply = NULL;
        const char *err = NULL;

        assert_int_equal(px_scram_server_final(s, RFC_C2, strlen(RFC_C2), &reply, &err), 0);
        assert_string_equal(reply, RFC_S2);
        free(reply);
        /* A second final message is out of sequence. */
        assert_int_equal(px_scram_server_final(s, RFC_C2, strlen(RFC_C2), &reply, &err), -1);
        assert_string_equal(err, "unexpected SCRAM message");
        px_scram_server_free(s);
    }
}

static void test_server_out_of_order(void **state)
{
    px_scram_secret_t sec = rfc_secret();
    px_scram_server_t *s = px_scram_server_new(&sec);
    char *reply = NULL;
    const char *err = NULL;

    (void)state;
    assert_int_equal(px_scram_server_final(s, RFC_C2, strlen(RFC_C2), &reply, &err), -1);
    assert_string_equal(err, "unexpected SCRAM message");
    assert_int_equal(px_scram_server_first(s, RFC_C1, strlen(RFC_C1), &reply, &err), -1);
    px_scram_server_free(s);
    px_scram_server_free(NULL);
}

static void test_server_mock(void **state)
{
    uint8_t mock_key[PX_SCRAM_KEY_LEN];
    char *r1 = NULL, *r2 = NULL, *r3 = NULL, *c2 = NULL, *sf = NULL;
    const char *err = NULL;
    px_scram_server_t *a, *b, *other;
    px_scram_client_t *c;

    (void)state;
    assert_int_equal(px_random_bytes(mock_key, sizeof(mock_key)), 0);
    a = px_scram_server_new_mock("ghost", mock_key);
    b = px_scram_server_new_mock("ghost", mock_key);
    other = px_scram_server_new_mock("phantom", mock_key);
    c = px_scram_client_new("anything");
    {
        char *c1 = px_scram_client_first(c);
        assert_int_equal(px_scram_server_first(a, c1, strlen(c1), &r1, &err), 0);
        assert_int_equal(px_scram_server_first(b, c1, strlen(c1), &r2, &err), 0);
        assert_int_equal(px_scram_server_first(other, c1, strlen(c1), &r3, &err), 0);
        free(c1);
    }
    /* Same salt for the same user on every attempt, another for another user. */
    assert_string_equal(strstr(r1, ",s="), strstr(r2, ",s="));
    assert_string_not_equal(strstr(r1, ",s="), strstr(r3, ",s="));
    assert_non_null(strstr(r1, ",i=4096"));
    /* The nonces are random. */
    assert_string_not_equal(r1, r2);
    assert_int_equal(px_scram_client_final(c, r1, strlen(r1), &c2, &err), 0);
    assert_int_equal(px_scram_server_final(a, c2, strlen(c2), &sf, &err), -1);
    assert_null(sf);
    assert_string_equal(err, "password authentication failed");
    assert_false(px_scram_server_is_protocol_error(a));
    free(r1);
    free(r2);
    free(r3);
    free(c2);
    px_scram_client_free(c);
    px_scram_server_free(a);
    px_scram_server_free(b);
    px_scram_server_free(other);
}

/* ---- client side -------------------------------------------------------- */

static px_scram_client_t *rfc_client_after_first(void)
{
    px_scram_client_t *c = px_scram_client_new("pencil");
    char *c1;

    px_scram_client_set_nonce(c, RFC_CNONCE);
    c1 = px_scram_client_first(c);
    assert_string_equal(c1, "n,,n=,r=" RFC_CNONCE);
    free(c1);
    return c;
}

static void test_client_first_default(void **state)
{
    px_scram_client_t *a = px_scram_client_new("x"), *b = px_scram_client_new("x");
    char *fa = px_scram_client_first(a), *fb = px_scram_client_first(b);

    (void)state;
    assert_int_equal(strncmp(fa, "n,,n=,r=", 8), 0);
    assert_int_equal(strlen(fa), 8 + 24);
    assert_string_not_equal(fa, fb);
    for (const char *p = fa + 8; *p; p++)
        assert_true(*p > 0x20 && *p < 0x7f && *p != ',');
    free(fa);
    free(fb);
    px_scram_client_free(a);
    px_scram_client_free(b);

    a = px_scram_client_new("x");
    px_scram_client_set_user(a, "a,b=c");
    px_scram_client_set_nonce(a, "nonce");
    fa = px_scram_client_first(a);
    assert_string_equal(fa, "n,,n=a=2Cb=3Dc,r=nonce");
    free(fa);
    px_scram_client_free(a);
}

static void test_client_server_first_malformed(void **state)
{
    static const struct {
        const char *msg, *err;
    } bad[] = {
        { "", "malformed SCRAM message" },
        { "r=" RFC_CNONCE ",s=" RFC_SALT ",i=4096",
          "malformed SCRAM message: nonce does not match" },
        { "r=rOprNGfwEbeRWgbNEkq0xyz,s=" RFC_SALT ",i=4096",
          "malformed SCRAM message: nonce does not match" },
        { "r=" RFC_CNONCE "a b,s=" RFC_SALT ",i=4096", "malformed SCRAM message" },
        { "r=" RFC_CNONCE "x,i=4096", "malformed SCRAM message" },
        { "r=" RFC_CNONCE "x,s=" RFC_SALT, "malformed SCRAM message" },
        { "r=" RFC_CNONCE "x,s=,i=4096", "malformed SCRAM message: invalid salt" },
        { "r=" RFC_CNONCE "x,s=W22ZaJ0SNY7soEsUEjb6g,i=4096",
          "malformed SCRAM message: invalid salt" },
        { "r=" RFC_CNONCE "x,s=" RFC_SALT ",i=0",
          "malformed SCRAM message: invalid iteration count" },
        { "r=" RFC_CNONCE "x,s=" RFC_SALT ",i=-1",
          "malformed SCRAM message: invalid iteration count" },
        { "r=" RFC_CNONCE "x,s=" RFC_SALT ",i=4096x",
          "malformed SCRAM message: invalid iteration count" },
        { "r=" RFC_CNONCE "x,s=" RFC_SALT ",i=99999999999",
          "malformed SCRAM message: invalid iteration count" },
        { "r=" RFC_CNONCE "x,s=" RFC_SALT ",i=",
          "malformed SCRAM message: invalid iteration count" },
        { "r=" RFC_CNONCE "x,s=" RFC_SALT ",i=4096,", "malformed SCRAM message" },
        { "m=x,r=" RFC_CNONCE "x,s=" RFC_SALT ",i=4096",
          "malformed SCRAM message: unsupported mandatory extension" },
        { "e=other-error", "malformed SCRAM message" },
    };

    (void)state;
    for (size_t i = 0; i < CM_ARRAY_LEN(bad); i++) {
        px_scram_client_t *c = rfc_client_after_first();
        char *out = (char *)"untouched";
        const char *err = NULL;

        if (px_scram_client_final(c, bad[i].msg, strlen(bad[i].msg), &out, &err) == 0)
            fail_msg("client accepted server-first \"%s\"", bad[i].msg);
        assert_null(out);
        assert_string_equal(err, bad[i].err);
        px_scram_client_free(c);
    }
    /* Truncations of the valid message: all fail except those that end
     * inside the iteration count (i=4, i=40, i=409 are well-formed). */
    for (size_t n = 0; n < strlen(RFC_S1); n++) {
        px_scram_client_t *c = rfc_client_after_first();
        char *cut = malloc(n ? n : 1), *out = NULL;
        const char *err = NULL;
        int rc;

        memcpy(cut, RFC_S1, n);
        rc = px_scram_client_final(c, cut, n, &out, &err);
        if (n > strlen(RFC_S1) - 4)
            assert_int_equal(rc, 0);
        else
            assert_int_equal(rc, -1);
        free(out);
        free(cut);
        px_scram_client_free(c);
    }
    /* An extension after i= is allowed. */
    {
        px_scram_client_t *c = rfc_client_after_first();
        char *out = NULL;
        const char *err = NULL;

        assert_int_equal(px_scram_client_final(c, RFC_S1 ",x=1", strlen(RFC_S1 ",x=1"), &out, &err),
                         0);
        free(out);
        px_scram_client_free(c);
    }
}

static void test_client_verify(void **state)
{
    static const struct {
        const char *msg, *err;
    } bad[] = {
        { "", "malformed SCRAM message" },
        { "e=invalid-proof", "server reported a SCRAM error" },
        { "v=", "invalid SCRAM server signature" },
        { "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4", "invalid SCRAM server signature" },
        { "v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", "invalid SCRAM server signature" },
        { "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=,", "malformed SCRAM message" },
        { "x=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", "malformed SCRAM message" },
    };

    (void)state;
    for (size_t i = 0; i < CM_ARRAY_LEN(bad) + 1; i++) {
        px_scram_client_t *c = px_scram_client_new("pencil");
        char *c1, *c2 = NULL;
        const char *err = NULL;
        const char *msg = i < CM_ARRAY_LEN(bad) ? bad[i].msg : RFC_S2 ",x=ext";

        px_scram_client_set_nonce(c, RFC_CNONCE);
        px_scram_client_set_user(c, "user");
        c1 = px_scram_client_first(c);
        assert_int_equal(px_scram_client_final(c, RFC_S1, strlen(RFC_S1), &c2, &err), 0);
        assert_string_equal(c2, RFC_C2);
        if (i < CM_ARRAY_LEN(bad)) {
            assert_int_equal(px_scram_client_verify(c, msg, strlen(msg), &err), -1);
            assert_string_equal(err, bad[i].err);
        } else {
            assert_int_equal(px_scram_client_verify(c, msg, strlen(msg), &err), 0);
        }
        /* Once over, nothing more is accepted. */
        assert_int_equal(px_scram_client_verify(c, RFC_S2, strlen(RFC_S2), &err), -1);
        free(c1);
        free(c2);
        px_scram_client_free(c);
    }
    /* Verify before final is out of order. */
    {
        px_scram_client_t *c = px_scram_client_new("pencil");
        const char *err = NULL;

        assert_int_equal(px_scram_client_verify(c, RFC_S2, strlen(RFC_S2), &err), -1);
        assert_string_equal(err, "unexpected SCRAM message");
        px_scram_client_free(c);
        px_scram_client_free(NULL);
    }
}

/* SCRAM pass-through: authenticate a client, then log into a "store" that
 * holds the same secret with the recovered ClientKey only. */
static void test_client_keys_passthrough(void **state)
{
    px_scram_secret_t sec = parse_secret(PG_U1), other;
    px_scram_server_t *front = px_scram_server_new(&sec), *store;
    px_scram_client_t *user = px_scram_client_new("pencil"), *proxy;
    char *m1, *m2 = NULL, *m3 = NULL, *m4 = NULL;
    const char *err = NULL;
    uint8_t key[PX_SCRAM_KEY_LEN];

    (void)state;
    m1 = px_scram_client_first(user);
    assert_int_equal(px_scram_server_client_key(front, key), -1);
    assert_int_equal(px_scram_server_first(front, m1, strlen(m1), &m2, &err), 0);
    assert_int_equal(px_scram_client_final(user, m2, strlen(m2), &m3, &err), 0);
    assert_int_equal(px_scram_server_final(front, m3, strlen(m3), &m4, &err), 0);
    assert_int_equal(px_scram_server_client_key(front, key), 0);
    free(m1);
    free(m2);
    free(m3);
    free(m4);

    /* Same secret at the store: works. */
    proxy = px_scram_client_new_keys(key, &sec);
    store = px_scram_server_new(&sec);
    m1 = px_scram_client_first(proxy);
    assert_int_equal(px_scram_server_first(store, m1, strlen(m1), &m2, &err), 0);
    assert_int_equal(px_scram_client_final(proxy, m2, strlen(m2), &m3, &err), 0);
    assert_int_equal(px_scram_server_final(store, m3, strlen(m3), &m4, &err), 0);
    assert_int_equal(px_scram_client_verify(proxy, m4, strlen(m4), &err), 0);
    free(m1);
    free(m2);
    free(m3);
    free(m4);
    px_scram_client_free(proxy);
    px_scram_server_free(store);

    /* Same password, another salt at the store: refused before any proof. */
    assert_int_equal(px_scram_secret_generate("pencil", &other), 0);
    proxy = px_scram_client_new_keys(key, &sec);
    store = px_scram_server_new(&other);
    m1 = px_scram_client_first(proxy);
    assert_int_equal(px_scram_server_first(store, m1, strlen(m1), &m2, &err), 0);
    m3 = (char *)"untouched";
    assert_int_equal(px_scram_client_final(proxy, m2, strlen(m2), &m3, &err), -1);
    assert_null(m3);
    assert_string_equal(err, "store's SCRAM salt or iteration count differ from the stored secret");
    free(m1);
    free(m2);
    px_scram_client_free(proxy);
    px_scram_server_free(store);
    px_scram_client_free(user);
    px_scram_server_free(front);
}

/* ---- md5, with an independent RFC 1321 reference ------------------------ */

static uint32_t ref_rol(uint32_t x, int c)
{
    return (x << c) | (x >> (32 - c));
}

/* Tiny straightforward MD5 (RFC 1321), for inputs below 1 KiB. */
static void ref_md5(const uint8_t *msg, size_t len, uint8_t out[16])
{
    static const int r[64] = { 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
                               5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20,
                               4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
                               6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21 };
    uint32_t k[64], h[4] = { 0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476 };
    uint8_t buf[1088] = { 0 };
    size_t n = ((len + 8) / 64 + 1) * 64;
    uint64_t bits = (uint64_t)len * 8;

    assert_true(n <= sizeof(buf));
    for (int i = 0; i < 64; i++) {
        /* k[i] = floor(abs(sin(i + 1)) * 2^32), tabulated to avoid libm. */
        static const uint32_t kt[64] = {
            0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613,
            0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193,
            0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d,
            0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
            0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122,
            0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
            0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244,
            0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
            0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
            0xeb86d391
        };
        k[i] = kt[i];
    }
    memcpy(buf, msg, len);
    buf[len] = 0x80;
    for (int i = 0; i < 8; i++)
        buf[n - 8 + (size_t)i] = (uint8_t)(bits >> (8 * i));
    for (size_t off = 0; off < n; off += 64) {
        uint32_t w[16], a = h[0], b = h[1], c = h[2], d = h[3];

        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)buf[off + 4 * (size_t)i] |
                   ((uint32_t)buf[off + 4 * (size_t)i + 1] << 8) |
                   ((uint32_t)buf[off + 4 * (size_t)i + 2] << 16) |
                   ((uint32_t)buf[off + 4 * (size_t)i + 3] << 24);
        for (int i = 0; i < 64; i++) {
            uint32_t f;
            int g;

            if (i < 16) {
                f = (b & c) | (~b & d);
                g = i;
            } else if (i < 32) {
                f = (d & b) | (~d & c);
                g = (5 * i + 1) % 16;
            } else if (i < 48) {
                f = b ^ c ^ d;
                g = (3 * i + 5) % 16;
            } else {
                f = c ^ (b | ~d);
                g = (7 * i) % 16;
            }
            f = f + a + k[i] + w[g];
            a = d;
            d = c;
            c = b;
            b = b + ref_rol(f, r[i]);
        }
        h[0] += a;
        h[1] += b;
        h[2] += c;
        h[3] += d;
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            out[4 * i + j] = (uint8_t)(h[i] >> (8 * j));
}

static void ref_md5_hex(const void *msg, size_t len, char out[33])
{
    uint8_t d[16];

    ref_md5(msg, len, d);
    for (int i = 0; i < 16; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void ref_md5_response(const char *password, const char *user, const uint8_t salt[4],
                             char out[36])
{
    char cat[512], inner[33];
    size_t pl = strlen(password), ul = strlen(user);

    memcpy(cat, password, pl);
    memcpy(cat + pl, user, ul);
    ref_md5_hex(cat, pl + ul, inner);
    memcpy(cat, inner, 32);
    memcpy(cat + 32, salt, 4);
    memcpy(out, "md5", 3);
    ref_md5_hex(cat, 36, out + 3);
}

static void test_md5(void **state)
{
    static const char *const pw[] = { "pencil", "", "a\"b c", "p\xc3\xa4ssw\xc3\xb6rd",
                                      "a-long-password-of-more-than-sixty-four-bytes-to-cross-one-"
                                      "md5-block-boundary" };
    static const char *const users[] = { "u3", "postgres", "" };
    static const uint8_t salts[][4] = { { 0, 0, 0, 0 },
                                        { 0xde, 0xad, 0xbe, 0xef },
                                        { 1, 2, 3, 4 } };
    char ref[36], got[36], secret[36];
    char hex[33];

    (void)state;
    /* The reference itself, against RFC 1321's test suite. */
    ref_md5_hex("", 0, hex);
    assert_string_equal(hex, "d41d8cd98f00b204e9800998ecf8427e");
    ref_md5_hex("abc", 3, hex);
    assert_string_equal(hex, "900150983cd24fb0d6963f7d28e17f72");
    ref_md5_hex("12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                80, hex);
    assert_string_equal(hex, "57edf4a22be3c955ac49da2e2107b67a");
    /* PostgreSQL's own md5 secret (role u3, password pencil). */
    ref_md5_hex("pencilu3", 8, hex);
    assert_string_equal(hex, PG_U3 + 3);

    for (size_t i = 0; i < CM_ARRAY_LEN(pw); i++) {
        for (size_t j = 0; j < CM_ARRAY_LEN(users); j++) {
            char cat[256];
            snprintf(cat, sizeof(cat), "%s%s", pw[i], users[j]);
            ref_md5_hex(cat, strlen(cat), hex);
            px_md5_secret(pw[i], users[j], secret);
            assert_int_equal(strncmp(secret, "md5", 3), 0);
            assert_string_equal(secret + 3, hex);
            for (size_t k = 0; k < CM_ARRAY_LEN(salts); k++) {
                ref_md5_response(pw[i], users[j], salts[k], ref);
                px_md5_response(pw[i], users[j], salts[k], got);
                assert_string_equal(got, ref);
                /* From the stored md5 secret: same response, user ignored. */
                px_md5_response(secret, "someone-else", salts[k], got);
                assert_string_equal(got, ref);
                if (pw[i][0] != '\0') {
                    assert_true(px_md5_check(pw[i], users[j], salts[k], ref));
                    assert_true(px_md5_check(secret, users[j], salts[k], ref));
                }
            }
        }
    }
    {
        const uint8_t salt[4] = { 9, 8, 7, 6 };
        char resp[36], bad[40];

        px_md5_response("pencil", "u3", salt, resp);
        assert_true(px_md5_check(PG_U3, "u3", salt, resp));
        assert_true(px_md5_check("pencil", "u3", salt, resp));
        assert_false(px_md5_check("pencil", "u4", salt, resp));
        assert_false(px_md5_check("Pencil", "u3", salt, resp));
        assert_false(px_md5_check("", "u3", salt, resp));
        assert_false(px_md5_check(PG_U1, "u3", salt, resp)); /* SCRAM can't do md5 */
        {
            const uint8_t salt2[4] = { 9, 8, 7, 7 };
            assert_false(px_md5_check(PG_U3, "u3", salt2, resp));
        }
        memcpy(bad, resp, 36);
        bad[34] = '\0'; /* truncated */
        assert_false(px_md5_check(PG_U3, "u3", salt, bad));
        snprintf(bad, sizeof(bad), "%sx", resp); /* too long */
        assert_false(px_md5_check(PG_U3, "u3", salt, bad));
        memcpy(bad, resp, 36);
        bad[10] = bad[10] == '0' ? '1' : '0';
        assert_false(px_md5_check(PG_U3, "u3", salt, bad));
        assert_false(px_md5_check(PG_U3, "u3", salt, ""));
    }
}

static void test_random_and_eq(void **state)
{
    uint8_t a[32], b[32];

    (void)state;
    assert_int_equal(px_random_bytes(a, sizeof(a)), 0);
    assert_int_equal(px_random_bytes(b, sizeof(b)), 0);
    assert_memory_not_equal(a, b, sizeof(a));
    assert_true(px_const_time_eq(a, a, sizeof(a)));
    assert_false(px_const_time_eq(a, b, sizeof(a)));
    memcpy(b, a, sizeof(a));
    b[31] ^= 1;
    assert_false(px_const_time_eq(a, b, sizeof(a)));
    assert_true(px_const_time_eq(a, b, 31));
    assert_true(px_const_time_eq(a, b, 0));
}

/* ---- auth_file ---------------------------------------------------------- */

static void test_authfile_good(void **state)
{
    static const char text[] = "; PgBouncer-style auth file\n"
                               "# another comment\n"
                               "\n"
                               "   \t \n"
                               "\"alice\" \"pencil\"\n"
                               "\"bob\"\t\t\"" PG_U3 "\"\r\n"
                               "  \"carol\" \"" PG_U1 "\"   \n"
                               "\"quote\"\"d\" \"pa\"\"ss word\"\"\"\n"
                               "\"old\" \"pw\" \"\" \"extra\"   ; trailing comment\n"
                               "\"semi;colon\" \"#hash\" # comment\n"
                               "\"\"\"\" \"x\"\n"
                               "\"last\" \"no newline\"";
    px_authfile_t *af = NULL;
    char *err = NULL;

    (void)state;
    assert_int_equal(px_authfile_parse(text, "users.txt", &af, &err), 0);
    assert_null(err);
    assert_int_equal(px_authfile_count(af), 8);
    assert_string_equal(px_authfile_find(af, "alice"), "pencil");
    assert_string_equal(px_authfile_find(af, "bob"), PG_U3);
    assert_string_equal(px_authfile_find(af, "carol"), PG_U1);
    assert_string_equal(px_authfile_find(af, "quote\"d"), "pa\"ss word\"");
    assert_string_equal(px_authfile_find(af, "old"), "pw");
    assert_string_equal(px_authfile_find(af, "semi;colon"), "#hash");
    assert_string_equal(px_authfile_find(af, "\""), "x");
    assert_string_equal(px_authfile_find(af, "last"), "no newline");
    assert_null(px_authfile_find(af, "dave"));
    assert_null(px_authfile_find(af, "Alice"));
    assert_null(px_authfile_find(af, ""));
    assert_int_equal(px_secret_kind(px_authfile_find(af, "bob")), PX_SECRET_MD5);
    assert_int_equal(px_secret_kind(px_authfile_find(af, "carol")), PX_SECRET_SCRAM);
    assert_int_equal(px_secret_kind(px_authfile_find(af, "alice")), PX_SECRET_PLAIN);
    px_authfile_free(af);

    /* Empty and comment-only files are valid and empty. */
    assert_int_equal(px_authfile_parse("", "e", &af, &err), 0);
    assert_int_equal(px_authfile_count(af), 0);
    assert_null(px_authfile_find(af, "x"));
    px_authfile_free(af);
    assert_int_equal(px_authfile_parse("# only\n;comments\n", "e", &af, &err), 0);
    assert_int_equal(px_authfile_count(af), 0);
    px_authfile_free(af);
    px_authfile_free(NULL);
}

static void test_authfile_many(void **state)
{
    cm_buf_t b = { 0 };
    px_authfile_t *af = NULL;
    char *err = NULL;

    (void)state;
    /* Inserted in reverse order: lookups go through the sorted table. */
    for (int i = 999; i >= 0; i--) {
        char line[64];
        snprintf(line, sizeof(line), "\"user%d\" \"secret%d\"\n", i, i);
        cm_buf_append(&b, line, strlen(line));
    }
    cm_buf_append_u8(&b, 0);
    assert_int_equal(px_authfile_parse((char *)b.data, "big", &af, &err), 0);
    assert_int_equal(px_authfile_count(af), 1000);
    for (int i = 0; i < 1000; i++) {
        char u[32], s[32];
        snprintf(u, sizeof(u), "user%d", i);
        snprintf(s, sizeof(s), "secret%d", i);
        assert_string_equal(px_authfile_find(af, u), s);
    }
    assert_null(px_authfile_find(af, "user1000"));
    assert_null(px_authfile_find(af, "user"));
    px_authfile_free(af);
    cm_buf_free(&b);
}

static void test_authfile_bad(void **state)
{
    static const struct {
        const char *text, *err;
    } bad[] = {
        { "alice pencil\n", "f.txt:1: expected a quoted user name" },
        { "# c\n\"alice\"\n", "f.txt:2: missing secret after user name" },
        { "\"alice\"   \n", "f.txt:1: missing secret after user name" },
        { "\"alice\"\"pencil\"\n", "f.txt:1: missing secret after user name" },
        { "\"alice\"x \"pencil\"\n", "f.txt:1: expected a blank after user name" },
        { "\"alice\" pencil\n", "f.txt:1: expected a quoted secret" },
        { "\n\n\"alice\" \"pencil\n", "f.txt:3: unterminated quoted string" },
        { "\"alice \"pencil\"\n", "f.txt:1: expected a blank after user name" },
        { "\"alice\" \"pencil\n\"\n", "f.txt:1: unterminated quoted string" },
        { "\"alice\" \"pencil\" x\n", "f.txt:1: unexpected text after secret" },
        { "\"alice\" \"pencil\"\"\"x\n", "f.txt:1: unexpected text after secret" },
        { "\"alice\" \"pencil\" \"a\"\"b\"c\n", "f.txt:1: unexpected text after secret" },
        { "\"alice\" \"pencil\" \"unterminated\n", "f.txt:1: unterminated quoted string" },
        { "\"\" \"pencil\"\n", "f.txt:1: empty user name" },
        { "\"alice\" \"\"\n", "f.txt:1: empty secret" },
        { "\"alice\" \"SCRAM-SHA-256$4096:xx\"\n", "f.txt:1: invalid SCRAM-SHA-256 secret" },
        { "\"a\" \"1\"\n\"b\" \"2\"\r\n;\n\"a\" \"3\"\n",
          "f.txt:4: duplicate user \"a\" (first on line 1)" },
        { "\"b\" \"1\"\n\"a\" \"2\"\n\"b\" \"3\"\n\"a\" \"4\"\n",
          "f.txt:4: duplicate user \"a\" (first on line 2)" },
    };

    (void)state;
    for (size_t i = 0; i < CM_ARRAY_LEN(bad); i++) {
        static int dummy;
        px_authfile_t *af = (px_authfile_t *)&dummy; /* must be reset to NULL */
        char *err = NULL;

        if (px_authfile_parse(bad[i].text, "f.txt", &af, &err) == 0)
            fail_msg("accepted bad auth file #%zu", i);
        assert_null(af);
        assert_non_null(err);
        assert_string_equal(err, bad[i].err);
        free(err);
    }
}

static void test_authfile_load(void **state)
{
    char path[] = "/tmp/pgshift-test-auth-XXXXXX";
    int fd = mkstemp(path);
    px_authfile_t *af = NULL;
    char *err = NULL, *want;
    static const char good[] = "\"alice\" \"pencil\"\n\"bob\" \"" PG_U1 "\"\n";
    static const char withnul[] = "\"alice\" \"pencil\"\n\"bob\" \"x\0y\"\n";

    (void)state;
    assert_true(fd >= 0);
    assert_int_equal(write(fd, good, sizeof(good) - 1), (ssize_t)(sizeof(good) - 1));
    assert_int_equal(px_authfile_load(path, &af, &err), 0);
    assert_int_equal(px_authfile_count(af), 2);
    assert_string_equal(px_authfile_find(af, "bob"), PG_U1);
    px_authfile_free(af);

    /* Errors name the real path and line. */
    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(pwrite(fd, "\"ok\" \"x\"\nbad\n", 13, 0), 13);
    assert_int_equal(px_authfile_load(path, &af, &err), -1);
    assert_null(af);
    want = cm_xasprintf("%s:2: expected a quoted user name", path);
    assert_string_equal(err, want);
    free(want);
    free(err);

    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(pwrite(fd, withnul, sizeof(withnul) - 1, 0), (ssize_t)(sizeof(withnul) - 1));
    assert_int_equal(px_authfile_load(path, &af, &err), -1);
    want = cm_xasprintf("%s:2: NUL byte in file", path);
    assert_string_equal(err, want);
    free(want);
    free(err);
    close(fd);
    unlink(path);

    assert_int_equal(px_authfile_load(path, &af, &err), -1);
    assert_null(af);
    want = cm_xasprintf("%s: No such file or directory", path);
    assert_string_equal(err, want);
    free(want);
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_rfc7677),
        cmocka_unit_test(test_rfc7677_secret_format),
        cmocka_unit_test(test_postgres_secrets),
        cmocka_unit_test(test_secret_generate),
        cmocka_unit_test(test_secret_parse_bad),
        cmocka_unit_test(test_server_first_malformed),
        cmocka_unit_test(test_server_first_good_variants),
        cmocka_unit_test(test_server_gs2_y),
        cmocka_unit_test(test_server_final_malformed),
        cmocka_unit_test(test_server_out_of_order),
        cmocka_unit_test(test_server_mock),
        cmocka_unit_test(test_client_first_default),
        cmocka_unit_test(test_client_server_first_malformed),
        cmocka_unit_test(test_client_verify),
        cmocka_unit_test(test_client_keys_passthrough),
        cmocka_unit_test(test_client_key_cache),
        cmocka_unit_test(test_md5),
        cmocka_unit_test(test_random_and_eq),
        cmocka_unit_test(test_authfile_good),
        cmocka_unit_test(test_authfile_many),
        cmocka_unit_test(test_authfile_bad),
        cmocka_unit_test(test_authfile_load),
    };

    return cmocka_run_group_tests_name("auth", tests, NULL, NULL);
}
