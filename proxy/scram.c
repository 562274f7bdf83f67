/*
 * proxy/scram.c - SCRAM-SHA-256 (RFC 5802, RFC 7677) on both sides, md5
 * auth, PostgreSQL's stored-secret formats and strict base64.
 *
 * Pure functions over memory: no I/O, no libuv, no logging. Messages from the
 * peer are copied into a NUL-terminated buffer after a length cap and an
 * embedded-NUL check, then parsed with a cursor that never passes the NUL.
 * Key material is wiped with OPENSSL_cleanse() when an exchange is freed.
 */
#include "proxy/scram.h"

#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCRAM_PREFIX        "SCRAM-SHA-256$"
#define SCRAM_RAW_NONCE_LEN 18 /* as PostgreSQL: 24 base64 chars, no padding */
#define B64_KEY_LEN         44 /* base64 of PX_SCRAM_KEY_LEN bytes */

static const char E_MALFORMED[] = "malformed SCRAM message";
static const char E_TOO_LONG[] = "malformed SCRAM message: message too long";
static const char E_NUL[] = "malformed SCRAM message: unexpected NUL byte";
static const char E_CBIND[] = "SCRAM channel binding is not supported";
static const char E_AUTHZID[] = "SCRAM authorization identity is not supported";
static const char E_EXT[] = "malformed SCRAM message: unsupported mandatory extension";
static const char E_NONCE[] = "malformed SCRAM message: nonce does not match";
static const char E_CBIND_DATA[] = "malformed SCRAM message: channel binding data does not match";
static const char E_PROOF[] = "malformed SCRAM message: invalid client proof";
static const char E_STATE[] = "unexpected SCRAM message";
static const char E_AUTH[] = "password authentication failed";
static const char E_CRYPTO[] = "SCRAM computation failed";
static const char E_SALT[] = "malformed SCRAM message: invalid salt";
static const char E_ITER[] = "malformed SCRAM message: invalid iteration count";
static const char E_KEYS_MISMATCH[] =
    "store's SCRAM salt or iteration count differ from the stored secret";
static const char E_SERVER_ERR[] = "server reported a SCRAM error";
static const char E_SERVER_SIG[] = "invalid SCRAM server signature";

/* ---- base64 ------------------------------------------------------------ */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

void px_b64_encode(const uint8_t *in, size_t n, char *out)
{
    size_t i = 0;
    char *o = out;

    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
        *o++ = b64_alphabet[(v >> 18) & 63];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = b64_alphabet[(v >> 6) & 63];
        *o++ = b64_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *o++ = b64_alphabet[(v >> 18) & 63];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8);
        *o++ = b64_alphabet[(v >> 18) & 63];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = b64_alphabet[(v >> 6) & 63];
        *o++ = '=';
    }
    *o = '\0';
}

long px_b64_decode(const char *in, size_t n, uint8_t *out, size_t out_cap)
{
    size_t pad = 0, out_len, o = 0;

    if (n % 4 != 0)
        return -1;
    if (n == 0)
        return 0;
    if (in[n - 1] == '=')
        pad = in[n - 2] == '=' ? 2 : 1;
    out_len = n / 4 * 3 - pad;
    if (out_len > out_cap)
        return -1;
    for (size_t i = 0; i < n; i += 4) {
        bool last = i + 4 == n;
        int a = b64_val((unsigned char)in[i]);
        int b = b64_val((unsigned char)in[i + 1]);
        int c = last && pad == 2 ? 0 : b64_val((unsigned char)in[i + 2]);
        int d = last && pad >= 1 ? 0 : b64_val((unsigned char)in[i + 3]);
        uint32_t v;

        if (a < 0 || b < 0 || c < 0 || d < 0)
            return -1;
        /* Canonical form only: the bits the padding drops must be zero. */
        if (last && pad == 2 && (b & 15) != 0)
            return -1;
        if (last && pad == 1 && (c & 3) != 0)
            return -1;
        v = ((uint32_t)a << 18) | ((uint32_t)b << 12) | ((uint32_t)c << 6) | (uint32_t)d;
        out[o++] = (uint8_t)(v >> 16);
        if (!(last && pad == 2))
            out[o++] = (uint8_t)(v >> 8);
        if (!(last && pad >= 1))
            out[o++] = (uint8_t)v;
    }
    BUG_ON(o != out_len, "base64 length %zu != %zu", o, out_len);
    return (long)out_len;
}

/* ---- primitives -------------------------------------------------------- */

int px_random_bytes(void *buf, size_t n)
{
    if (n > INT_MAX)
        return -1;
    return RAND_bytes(buf, (int)n) == 1 ? 0 : -1;
}

bool px_const_time_eq(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

static int hmac_sha256(const uint8_t *key, size_t key_len, const void *data, size_t len,
                       uint8_t out[PX_SCRAM_KEY_LEN])
{
    unsigned int out_len = 0;

    if (key_len > INT_MAX)
        return -1;
    if (HMAC(EVP_sha256(), key, (int)key_len, data, len, out, &out_len) == NULL ||
        out_len != PX_SCRAM_KEY_LEN)
        return -1;
    return 0;
}

static int sha256(const void *data, size_t len, uint8_t out[PX_SCRAM_KEY_LEN])
{
    unsigned int out_len = 0;

    if (EVP_Digest(data, len, out, &out_len, EVP_sha256(), NULL) != 1 ||
        out_len != PX_SCRAM_KEY_LEN)
        return -1;
    return 0;
}

/* SaltedPassword = Hi(password, salt, i) = PBKDF2-HMAC-SHA-256. */
static int salted_password(const char *password, const uint8_t *salt, size_t salt_len,
                           int iterations, uint8_t out[PX_SCRAM_KEY_LEN])
{
    size_t pw_len = strlen(password);

    if (pw_len > INT_MAX || salt_len > INT_MAX || iterations < 1)
        return -1;
    if (PKCS5_PBKDF2_HMAC(password, (int)pw_len, salt, (int)salt_len, iterations, EVP_sha256(),
                          PX_SCRAM_KEY_LEN, out) != 1)
        return -1;
    return 0;
}

static int client_key_from_salted(const uint8_t salted[PX_SCRAM_KEY_LEN],
                                  uint8_t out[PX_SCRAM_KEY_LEN])
{
    return hmac_sha256(salted, PX_SCRAM_KEY_LEN, "Client Key", 10, out);
}

static int server_key_from_salted(const uint8_t salted[PX_SCRAM_KEY_LEN],
                                  uint8_t out[PX_SCRAM_KEY_LEN])
{
    return hmac_sha256(salted, PX_SCRAM_KEY_LEN, "Server Key", 10, out);
}

/* ---- stored secrets ---------------------------------------------------- */

/* Parse a positive decimal int in s[0..n): no sign, no leading zero. */
static bool parse_pos_int(const char *s, size_t n, int *out)
{
    long long v = 0;

    if (n == 0 || n > 10 || s[0] == '0')
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v < 1 || v > INT_MAX)
        return false;
    *out = (int)v;
    return true;
}

int px_scram_secret_parse(const char *text, px_scram_secret_t *out)
{
    const char *p, *colon, *dollar, *colon2;
    long n;

    if (strncmp(text, SCRAM_PREFIX, strlen(SCRAM_PREFIX)) != 0)
        return -1;
    p = text + strlen(SCRAM_PREFIX);
    colon = strchr(p, ':');
    if (colon == NULL || !parse_pos_int(p, (size_t)(colon - p), &out->iterations))
        return -1;
    p = colon + 1;
    dollar = strchr(p, '$');
    if (dollar == NULL)
        return -1;
    n = px_b64_decode(p, (size_t)(dollar - p), out->salt, sizeof(out->salt));
    if (n < 1)
        return -1;
    out->salt_len = (size_t)n;
    p = dollar + 1;
    colon2 = strchr(p, ':');
    if (colon2 == NULL)
        return -1;
    if (px_b64_decode(p, (size_t)(colon2 - p), out->stored_key, PX_SCRAM_KEY_LEN) !=
        PX_SCRAM_KEY_LEN)
        return -1;
    p = colon2 + 1;
    if (px_b64_decode(p, strlen(p), out->server_key, PX_SCRAM_KEY_LEN) != PX_SCRAM_KEY_LEN)
        return -1;
    return 0;
}

int px_scram_secret_from_password(const char *password, const uint8_t *salt, size_t salt_len,
                                  int iterations, px_scram_secret_t *out)
{
    uint8_t salted[PX_SCRAM_KEY_LEN], client_key[PX_SCRAM_KEY_LEN];
    int rc = -1;

    if (salt_len < 1 || salt_len > PX_SCRAM_MAX_SALT_LEN || iterations < 1)
        return -1;
    memset(out, 0, sizeof(*out));
    out->iterations = iterations;
    memcpy(out->salt, salt, salt_len);
    out->salt_len = salt_len;
    if (salted_password(password, salt, salt_len, iterations, salted) == 0 &&
        client_key_from_salted(salted, client_key) == 0 &&
        sha256(client_key, PX_SCRAM_KEY_LEN, out->stored_key) == 0 &&
        server_key_from_salted(salted, out->server_key) == 0)
        rc = 0;
    OPENSSL_cleanse(salted, sizeof(salted));
    OPENSSL_cleanse(client_key, sizeof(client_key));
    return rc;
}

int px_scram_secret_generate(const char *password, px_scram_secret_t *out)
{
    uint8_t salt[PX_SCRAM_DEFAULT_SALT_LEN];

    if (px_random_bytes(salt, sizeof(salt)) != 0)
        return -1;
    return px_scram_secret_from_password(password, salt, sizeof(salt), PX_SCRAM_DEFAULT_ITERATIONS,
                                         out);
}

char *px_scram_secret_format(const px_scram_secret_t *s)
{
    char salt[PX_B64_ENC_LEN(PX_SCRAM_MAX_SALT_LEN)];
    char stored[PX_B64_ENC_LEN(PX_SCRAM_KEY_LEN)], server[PX_B64_ENC_LEN(PX_SCRAM_KEY_LEN)];

    BUG_ON(s->salt_len > PX_SCRAM_MAX_SALT_LEN, "salt_len %zu", s->salt_len);
    px_b64_encode(s->salt, s->salt_len, salt);
    px_b64_encode(s->stored_key, PX_SCRAM_KEY_LEN, stored);
    px_b64_encode(s->server_key, PX_SCRAM_KEY_LEN, server);
    return cm_xasprintf(SCRAM_PREFIX "%d:%s$%s:%s", s->iterations, salt, stored, server);
}

static bool is_md5_secret(const char *s)
{
    if (strncmp(s, "md5", 3) != 0 || strlen(s) != PX_MD5_LEN - 1)
        return false;
    return strspn(s + 3, "0123456789abcdef") == PX_MD5_LEN - 4;
}

px_secret_kind_t px_secret_kind(const char *secret)
{
    px_scram_secret_t tmp;
    px_secret_kind_t kind = PX_SECRET_PLAIN;

    if (strncmp(secret, SCRAM_PREFIX, strlen(SCRAM_PREFIX)) == 0)
        kind = px_scram_secret_parse(secret, &tmp) == 0 ? PX_SECRET_SCRAM : PX_SECRET_BAD;
    else if (is_md5_secret(secret))
        kind = PX_SECRET_MD5;
    OPENSSL_cleanse(&tmp, sizeof(tmp));
    return kind;
}

/* ---- message parsing --------------------------------------------------- */

/* Copy an untrusted message into a NUL-terminated heap string. */
static char *copy_msg(const char *msg, size_t len, const char **err)
{
    if (len > PX_SCRAM_MAX_MSG_LEN) {
        *err = E_TOO_LONG;
        return NULL;
    }
    if (len == 0) {
        *err = E_MALFORMED;
        return NULL;
    }
    if (memchr(msg, '\0', len) != NULL) {
        *err = E_NUL;
        return NULL;
    }
    return cm_xstrndup(msg, len);
}

/* A nonce: printable ASCII except ',' (RFC 5802 "printable"), non-empty. */
static bool valid_nonce(const char *p, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x21 || c > 0x7e || c == ',')
            return false;
    }
    return true;
}

/* A saslname: '=' only as "=2C" or "=3D". Empty is allowed, as libpq sends
 * "n=" (PostgreSQL takes the user from the startup packet). */
static bool valid_saslname(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '=') {
            if (n - i < 3 ||
                !((p[i + 1] == '2' && p[i + 2] == 'C') || (p[i + 1] == '3' && p[i + 2] == 'D')))
                return false;
            i += 2;
        }
    }
    return true;
}

/*
 * Read "<attr>=<value>" at *pp, where value runs to the next ',' or the end.
 * *pp moves to the ',' or NUL after the value. A cursor over a
 * NUL-terminated string never passes its NUL.
 */
static bool read_attr(const char **pp, char attr, const char **val, size_t *val_len)
{
    const char *p = *pp;
    size_t n;

    if (p[0] != attr || p[1] != '=')
        return false;
    p += 2;
    n = strcspn(p, ",");
    *val = p;
    *val_len = n;
    *pp = p + n;
    return true;
}

/* Read any extension attribute "<letter>=<value>"; value may not be empty. */
static bool read_ext_attr(const char **pp, char *attr)
{
    const char *val;
    size_t n;
    char a = (*pp)[0];

    if (!((a >= 'a' && a <= 'z') || (a >= 'A' && a <= 'Z')))
        return false;
    if (!read_attr(pp, a, &val, &n) || n == 0)
        return false;
    *attr = a;
    return true;
}

/* Build "first,second,third" for AuthMessage. Returns owned. */
static char *auth_message(const char *a, const char *b, const char *c, size_t *len)
{
    char *m = cm_xasprintf("%s,%s,%s", a, b, c);

    *len = strlen(m);
    return m;
}

/* ---- server side ------------------------------------------------------- */

typedef enum sv_state {
    SV_INIT,   /* waiting for client-first-message */
    SV_FIRST,  /* server-first-message sent, waiting for client-final-message */
    SV_OK,     /* authenticated */
    SV_FAILED, /* over, with an error */
} sv_state_t;

struct px_scram_server {
    sv_state_t state;
    bool is_mock;                         /* always fails at the final step */
    bool is_proto_error;                  /* the failure was a protocol violation */
    px_scram_secret_t secret;             /* copy; random keys when mock */
    char gs2_header[4];                   /* "n,," or "y,," */
    char *client_first_bare;              /* owned */
    char *server_first;                   /* owned */
    char *nonce;                          /* owned: client nonce + server nonce */
    char *fixed_nonce;                    /* owned: test hook, or NULL */
    uint8_t client_key[PX_SCRAM_KEY_LEN]; /* recovered on success */
};

px_scram_server_t *px_scram_server_new(const px_scram_secret_t *secret)
{
    px_scram_server_t *s;

    BUG_ON(secret == NULL, "NULL secret: use px_scram_server_new_mock");
    BUG_ON(secret->salt_len < 1 || secret->salt_len > PX_SCRAM_MAX_SALT_LEN ||
               secret->iterations < 1,
           "bad secret");
    s = cm_xcalloc(1, sizeof(*s));
    s->secret = *secret;
    return s;
}

px_scram_server_t *px_scram_server_new_mock(const char *user,
                                            const uint8_t mock_key[PX_SCRAM_KEY_LEN])
{
    px_scram_server_t *s = cm_xcalloc(1, sizeof(*s));
    uint8_t mac[PX_SCRAM_KEY_LEN];

    s->is_mock = true;
    s->secret.iterations = PX_SCRAM_DEFAULT_ITERATIONS;
    s->secret.salt_len = PX_SCRAM_DEFAULT_SALT_LEN;
    if (hmac_sha256(mock_key, PX_SCRAM_KEY_LEN, user, strlen(user), mac) != 0) {
        /* Still a failing exchange; only the salt's stability is lost. */
        if (px_random_bytes(mac, sizeof(mac)) != 0)
            memset(mac, 0x5a, sizeof(mac));
    }
    memcpy(s->secret.salt, mac, PX_SCRAM_DEFAULT_SALT_LEN);
    /* Keys nobody knows: even a lucky proof could not match. */
    if (px_random_bytes(s->secret.stored_key, PX_SCRAM_KEY_LEN) != 0 ||
        px_random_bytes(s->secret.server_key, PX_SCRAM_KEY_LEN) != 0)
        memset(s->secret.stored_key, 0, PX_SCRAM_KEY_LEN);
    return s;
}

void px_scram_server_set_nonce(px_scram_server_t *s, const char *nonce)
{
    BUG_ON(s->state != SV_INIT, "set_nonce after first message");
    BUG_ON(!valid_nonce(nonce, strlen(nonce)), "bad test nonce");
    free(s->fixed_nonce);
    s->fixed_nonce = cm_xstrdup(nonce);
}

static int server_fail(px_scram_server_t *s, const char **err, const char *msg, bool proto)
{
    s->state = SV_FAILED;
    s->is_proto_error = proto;
    *err = msg;
    return -1;
}

static char *make_nonce(void)
{
    uint8_t raw[SCRAM_RAW_NONCE_LEN];
    char *out;

    if (px_random_bytes(raw, sizeof(raw)) != 0)
        return NULL;
    out = cm_xmalloc(PX_B64_ENC_LEN(sizeof(raw)));
    px_b64_encode(raw, sizeof(raw), out);
    return out;
}

int px_scram_server_first(px_scram_server_t *s, const char *msg, size_t len, char **reply,
                          const char **err)
{
    const char *p, *val, *cnonce;
    size_t n, cnonce_len;
    char *buf, *snonce, ext;
    char salt_b64[PX_B64_ENC_LEN(PX_SCRAM_MAX_SALT_LEN)];
    const char *e = E_MALFORMED;
    bool proto = true;

    *reply = NULL;
    if (s->state != SV_INIT)
        return server_fail(s, err, E_STATE, true);
    buf = copy_msg(msg, len, err);
    if (buf == NULL)
        return server_fail(s, err, *err, true);

    /* gs2-header = gs2-cbind-flag "," [authzid] "," */
    p = buf;
    if (p[0] == 'p') {
        e = E_CBIND;
        goto fail;
    }
    if ((p[0] != 'n' && p[0] != 'y') || p[1] != ',')
        goto fail;
    p += 2;
    if (p[0] == 'a') {
        e = E_AUTHZID;
        goto fail;
    }
    if (p[0] != ',')
        goto fail;
    p++;
    memcpy(s->gs2_header, buf, 3);
    s->gs2_header[3] = '\0';

    /* client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions] */
    s->client_first_bare = cm_xstrdup(p);
    if (p[0] == 'm' && p[1] == '=') {
        e = E_EXT;
        goto fail;
    }
    if (!read_attr(&p, 'n', &val, &n) || !valid_saslname(val, n) || *p++ != ',')
        goto fail;
    if (!read_attr(&p, 'r', &cnonce, &cnonce_len) || !valid_nonce(cnonce, cnonce_len))
        goto fail;
    while (*p == ',') {
        p++;
        if (!read_ext_attr(&p, &ext))
            goto fail;
    }
    if (*p != '\0')
        goto fail;

    snonce = s->fixed_nonce ? cm_xstrdup(s->fixed_nonce) : make_nonce();
    if (snonce == NULL) {
        e = E_CRYPTO;
        proto = false;
        goto fail;
    }
    s->nonce = cm_xasprintf("%.*s%s", (int)cnonce_len, cnonce, snonce);
    free(snonce);
    px_b64_encode(s->secret.salt, s->secret.salt_len, salt_b64);
    s->server_first = cm_xasprintf("r=%s,s=%s,i=%d", s->nonce, salt_b64, s->secret.iterations);
    free(buf);
    *reply = cm_xstrdup(s->server_first);
    s->state = SV_FIRST;
    return 0;

fail:
    free(buf);
    return server_fail(s, err, e, proto);
}

int px_scram_server_final(px_scram_server_t *s, const char *msg, size_t len, char **reply,
                          const char **err)
{
    const char *p, *val, *proof_b64 = NULL;
    size_t n, proof_len = 0, without_proof_len = 0, am_len;
    char *buf, *am = NULL, ext;
    char cbind[PX_B64_ENC_LEN(3)], sig_b64[PX_B64_ENC_LEN(PX_SCRAM_KEY_LEN)];
    uint8_t proof[PX_SCRAM_KEY_LEN], sig[PX_SCRAM_KEY_LEN], key[PX_SCRAM_KEY_LEN];
    uint8_t stored[PX_SCRAM_KEY_LEN];
    const char *e = E_MALFORMED;
    bool proto = true;

    *reply = NULL;
    if (s->state != SV_FIRST)
        return server_fail(s, err, E_STATE, true);
    buf = copy_msg(msg, len, err);
    if (buf == NULL)
        return server_fail(s, err, *err, true);

    /* client-final-message = "c=" base64(gs2-header) ",r=" nonce ["," ext] ",p=" proof */
    p = buf;
    if (!read_attr(&p, 'c', &val, &n))
        goto fail;
    px_b64_encode((const uint8_t *)s->gs2_header, 3, cbind);
    if (n != strlen(cbind) || memcmp(val, cbind, n) != 0) {
        e = E_CBIND_DATA;
        goto fail;
    }
    if (*p++ != ',' || !read_attr(&p, 'r', &val, &n))
        goto fail;
    if (n != strlen(s->nonce) || memcmp(val, s->nonce, n) != 0) {
        e = E_NONCE;
        goto fail;
    }
    while (*p == ',') {
        if (p[1] == 'p' && p[2] == '=') {
            without_proof_len = (size_t)(p - buf);
            p++;
            if (!read_attr(&p, 'p', &proof_b64, &proof_len))
                goto fail;
            break;
        }
        p++;
        if (!read_ext_attr(&p, &ext))
            goto fail;
    }
    if (proof_b64 == NULL || *p != '\0')
        goto fail;
    if (px_b64_decode(proof_b64, proof_len, proof, sizeof(proof)) != PX_SCRAM_KEY_LEN) {
        e = E_PROOF;
        goto fail;
    }
    buf[without_proof_len] = '\0';

    /* ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); check H(ClientKey). */
    am = auth_message(s->client_first_bare, s->server_first, buf, &am_len);
    if (hmac_sha256(s->secret.stored_key, PX_SCRAM_KEY_LEN, am, am_len, sig) != 0) {
        e = E_CRYPTO;
        proto = false;
        goto fail;
    }
    for (size_t i = 0; i < PX_SCRAM_KEY_LEN; i++)
        key[i] = proof[i] ^ sig[i];
    if (sha256(key, PX_SCRAM_KEY_LEN, stored) != 0) {
        e = E_CRYPTO;
        proto = false;
        goto fail;
    }
    if (!px_const_time_eq(stored, s->secret.stored_key, PX_SCRAM_KEY_LEN) || s->is_mock) {
        e = E_AUTH;
        proto = false;
        goto fail;
    }
    if (hmac_sha256(s->secret.server_key, PX_SCRAM_KEY_LEN, am, am_len, sig) != 0) {
        e = E_CRYPTO;
        proto = false;
        goto fail;
    }
    px_b64_encode(sig, PX_SCRAM_KEY_LEN, sig_b64);
    *reply = cm_xasprintf("v=%s", sig_b64);
    memcpy(s->client_key, key, PX_SCRAM_KEY_LEN);
    s->state = SV_OK;
    OPENSSL_cleanse(key, sizeof(key));
    free(am);
    free(buf);
    return 0;

fail:
    OPENSSL_cleanse(key, sizeof(key));
    free(am);
    free(buf);
    return server_fail(s, err, e, proto);
}

bool px_scram_server_is_protocol_error(const px_scram_server_t *s)
{
    return s->state == SV_FAILED && s->is_proto_error;
}

int px_scram_server_client_key(const px_scram_server_t *s, uint8_t out[PX_SCRAM_KEY_LEN])
{
    if (s->state != SV_OK)
        return -1;
    memcpy(out, s->client_key, PX_SCRAM_KEY_LEN);
    return 0;
}

void px_scram_server_free(px_scram_server_t *s)
{
    if (s == NULL)
        return;
    free(s->client_first_bare);
    free(s->server_first);
    free(s->nonce);
    free(s->fixed_nonce);
    OPENSSL_cleanse(s, sizeof(*s));
    free(s);
}

/* ---- client side ------------------------------------------------------- */

typedef enum cl_state {
    CL_INIT,   /* nothing sent */
    CL_FIRST,  /* client-first-message sent */
    CL_FINAL,  /* client-final-message sent, server signature expected */
    CL_OK,     /* server verified */
    CL_FAILED, /* over, with an error */
} cl_state_t;

struct px_scram_client {
    cl_state_t state;
    char *password;                       /* owned, or NULL in keys mode */
    bool has_keys;                        /* keys mode: client_key + secret */
    uint8_t client_key[PX_SCRAM_KEY_LEN]; /* keys mode */
    px_scram_secret_t secret;             /* keys mode */
    char *fixed_nonce;                    /* owned: test hook, or NULL */
    char *user;                           /* owned, saslname-escaped; NULL means "" */
    char *nonce;                          /* owned: our client nonce */
    char *client_first_bare;              /* owned */
    uint8_t server_sig[PX_SCRAM_KEY_LEN]; /* expected ServerSignature */
    px_scram_keycache_t *cache;           /* password mode: kept, may be NULL */
};

void px_scram_client_set_cache(px_scram_client_t *c, px_scram_keycache_t *cache)
{
    c->cache = cache;
}

px_scram_client_t *px_scram_client_new(const char *password)
{
    px_scram_client_t *c = cm_xcalloc(1, sizeof(*c));

    c->password = cm_xstrdup(password);
    return c;
}

px_scram_client_t *px_scram_client_new_keys(const uint8_t client_key[PX_SCRAM_KEY_LEN],
                                            const px_scram_secret_t *secret)
{
    px_scram_client_t *c = cm_xcalloc(1, sizeof(*c));

    c->has_keys = true;
    memcpy(c->client_key, client_key, PX_SCRAM_KEY_LEN);
    c->secret = *secret;
    return c;
}

void px_scram_client_set_nonce(px_scram_client_t *c, const char *nonce)
{
    BUG_ON(c->state != CL_INIT, "set_nonce after first message");
    BUG_ON(!valid_nonce(nonce, strlen(nonce)), "bad test nonce");
    free(c->fixed_nonce);
    c->fixed_nonce = cm_xstrdup(nonce);
}

void px_scram_client_set_user(px_scram_client_t *c, const char *user)
{
    cm_buf_t b = { 0 };

    BUG_ON(c->state != CL_INIT, "set_user after first message");
    for (const char *p = user; *p; p++) {
        if (*p == ',')
            cm_buf_append(&b, "=2C", 3);
        else if (*p == '=')
            cm_buf_append(&b, "=3D", 3);
        else
            cm_buf_append_u8(&b, (uint8_t)*p);
    }
    cm_buf_append_u8(&b, 0);
    free(c->user);
    c->user = (char *)b.data;
}

char *px_scram_client_first(px_scram_client_t *c)
{
    BUG_ON(c->state != CL_INIT, "client_first called twice");
    c->nonce = c->fixed_nonce ? cm_xstrdup(c->fixed_nonce) : make_nonce();
    if (c->nonce == NULL) {
        c->state = CL_FAILED;
        return NULL;
    }
    c->client_first_bare = cm_xasprintf("n=%s,r=%s", c->user ? c->user : "", c->nonce);
    c->state = CL_FIRST;
    return cm_xasprintf("n,,%s", c->client_first_bare);
}

static int client_fail(px_scram_client_t *c, const char **err, const char *msg)
{
    c->state = CL_FAILED;
    *err = msg;
    return -1;
}

int px_scram_client_final(px_scram_client_t *c, const char *server_first, size_t len,
                          char **client_final, const char **err)
{
    const char *p, *nonce, *val;
    size_t nonce_len, n, am_len, our_len;
    char *buf, *without_proof = NULL, *am = NULL, ext;
    char proof_b64[PX_B64_ENC_LEN(PX_SCRAM_KEY_LEN)];
    uint8_t salt[PX_SCRAM_MAX_SALT_LEN], salted[PX_SCRAM_KEY_LEN];
    uint8_t client_key[PX_SCRAM_KEY_LEN], stored_key[PX_SCRAM_KEY_LEN];
    uint8_t server_key[PX_SCRAM_KEY_LEN], sig[PX_SCRAM_KEY_LEN];
    long salt_len;
    int iterations;
    const char *e = E_MALFORMED;

    *client_final = NULL;
    if (c->state != CL_FIRST)
        return client_fail(c, err, E_STATE);
    buf = copy_msg(server_first, len, err);
    if (buf == NULL)
        return client_fail(c, err, *err);

    /* server-first-message = [reserved-mext ","] nonce "," salt "," iteration-count ["," ext] */
    p = buf;
    if (p[0] == 'm' && p[1] == '=') {
        e = E_EXT;
        goto fail;
    }
    if (!read_attr(&p, 'r', &nonce, &nonce_len) || !valid_nonce(nonce, nonce_len))
        goto fail;
    our_len = strlen(c->nonce);
    if (nonce_len <= our_len || memcmp(nonce, c->nonce, our_len) != 0) {
        e = E_NONCE;
        goto fail;
    }
    if (*p++ != ',' || !read_attr(&p, 's', &val, &n))
        goto fail;
    salt_len = px_b64_decode(val, n, salt, sizeof(salt));
    if (salt_len < 1) {
        e = E_SALT;
        goto fail;
    }
    if (*p++ != ',' || !read_attr(&p, 'i', &val, &n))
        goto fail;
    if (!parse_pos_int(val, n, &iterations)) {
        e = E_ITER;
        goto fail;
    }
    while (*p == ',') {
        p++;
        if (!read_ext_attr(&p, &ext))
            goto fail;
    }
    if (*p != '\0')
        goto fail;

    e = E_CRYPTO;
    if (c->has_keys) {
        if ((size_t)salt_len != c->secret.salt_len ||
            memcmp(salt, c->secret.salt, (size_t)salt_len) != 0 ||
            iterations != c->secret.iterations) {
            e = E_KEYS_MISMATCH;
            goto fail;
        }
        memcpy(client_key, c->client_key, PX_SCRAM_KEY_LEN);
        memcpy(stored_key, c->secret.stored_key, PX_SCRAM_KEY_LEN);
        memcpy(server_key, c->secret.server_key, PX_SCRAM_KEY_LEN);
    } else if (c->cache != NULL && c->cache->is_valid && c->cache->iterations == iterations &&
               c->cache->salt_len == (size_t)salt_len &&
               memcmp(c->cache->salt, salt, (size_t)salt_len) == 0) {
        /* Same salt and count as last time: the derived keys are the same. */
        memcpy(client_key, c->cache->client_key, PX_SCRAM_KEY_LEN);
        memcpy(stored_key, c->cache->stored_key, PX_SCRAM_KEY_LEN);
        memcpy(server_key, c->cache->server_key, PX_SCRAM_KEY_LEN);
    } else {
        if (salted_password(c->password, salt, (size_t)salt_len, iterations, salted) != 0 ||
            client_key_from_salted(salted, client_key) != 0 ||
            sha256(client_key, PX_SCRAM_KEY_LEN, stored_key) != 0 ||
            server_key_from_salted(salted, server_key) != 0)
            goto fail;
        if (c->cache != NULL) {
            /* Kept only once the server proves the keys (px_scram_client_verify). */
            c->cache->is_valid = false;
            c->cache->iterations = iterations;
            c->cache->salt_len = (size_t)salt_len;
            memcpy(c->cache->salt, salt, (size_t)salt_len);
            memcpy(c->cache->client_key, client_key, PX_SCRAM_KEY_LEN);
            memcpy(c->cache->stored_key, stored_key, PX_SCRAM_KEY_LEN);
            memcpy(c->cache->server_key, server_key, PX_SCRAM_KEY_LEN);
        }
    }

    /* "biws" is base64("n,,"): pgshift never asks for channel binding. */
    without_proof = cm_xasprintf("c=biws,r=%.*s", (int)nonce_len, nonce);
    am = auth_message(c->client_first_bare, buf, without_proof, &am_len);
    if (hmac_sha256(stored_key, PX_SCRAM_KEY_LEN, am, am_len, sig) != 0)
        goto fail;
    for (size_t i = 0; i < PX_SCRAM_KEY_LEN; i++)
        sig[i] ^= client_key[i]; /* sig is now ClientProof */
    px_b64_encode(sig, PX_SCRAM_KEY_LEN, proof_b64);
    if (hmac_sha256(server_key, PX_SCRAM_KEY_LEN, am, am_len, c->server_sig) != 0)
        goto fail;
    *client_final = cm_xasprintf("%s,p=%s", without_proof, proof_b64);
    c->state = CL_FINAL;
    e = NULL;

fail:
    OPENSSL_cleanse(salted, sizeof(salted));
    OPENSSL_cleanse(client_key, sizeof(client_key));
    OPENSSL_cleanse(stored_key, sizeof(stored_key));
    OPENSSL_cleanse(server_key, sizeof(server_key));
    free(without_proof);
    free(am);
    free(buf);
    if (e != NULL)
        return client_fail(c, err, e);
    return 0;
}

int px_scram_client_verify(px_scram_client_t *c, const char *server_final, size_t len,
                           const char **err)
{
    const char *p, *val;
    size_t n;
    char *buf, ext;
    uint8_t sig[PX_SCRAM_KEY_LEN];
    const char *e = E_MALFORMED;

    if (c->state != CL_FINAL)
        return client_fail(c, err, E_STATE);
    buf = copy_msg(server_final, len, err);
    if (buf == NULL)
        return client_fail(c, err, *err);

    /* server-final-message = (server-error / verifier) ["," extensions] */
    p = buf;
    if (p[0] == 'e' && p[1] == '=') {
        e = E_SERVER_ERR;
        goto fail;
    }
    if (!read_attr(&p, 'v', &val, &n))
        goto fail;
    if (px_b64_decode(val, n, sig, sizeof(sig)) != PX_SCRAM_KEY_LEN) {
        e = E_SERVER_SIG;
        goto fail;
    }
    while (*p == ',') {
        p++;
        if (!read_ext_attr(&p, &ext))
            goto fail;
    }
    if (*p != '\0')
        goto fail;
    if (!px_const_time_eq(sig, c->server_sig, PX_SCRAM_KEY_LEN)) {
        e = E_SERVER_SIG;
        goto fail;
    }
    free(buf);
    c->state = CL_OK;
    if (c->cache != NULL && c->password != NULL)
        c->cache->is_valid = true; /* the server proved these keys right */
    return 0;

fail:
    free(buf);
    return client_fail(c, err, e);
}

void px_scram_client_free(px_scram_client_t *c)
{
    if (c == NULL)
        return;
    if (c->password != NULL) {
        OPENSSL_cleanse(c->password, strlen(c->password));
        free(c->password);
    }
    free(c->fixed_nonce);
    free(c->user);
    free(c->nonce);
    free(c->client_first_bare);
    OPENSSL_cleanse(c, sizeof(*c));
    free(c);
}

/* ---- md5 --------------------------------------------------------------- */

static void md5_hex(const void *a, size_t a_len, const void *b, size_t b_len, char out[33])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok;

    BUG_ON(ctx == NULL, "EVP_MD_CTX_new failed");
    ok = EVP_DigestInit_ex(ctx, EVP_md5(), NULL) == 1 && EVP_DigestUpdate(ctx, a, a_len) == 1 &&
         EVP_DigestUpdate(ctx, b, b_len) == 1 && EVP_DigestFinal_ex(ctx, md, &md_len) == 1;
    EVP_MD_CTX_free(ctx);
    /* md5 is unavailable only in a FIPS-restricted OpenSSL: a deployment bug. */
    BUG_ON(!ok || md_len != 16, "md5 digest failed");
    for (unsigned int i = 0; i < 16; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[32] = '\0';
}

void px_md5_secret(const char *password, const char *user, char out[PX_MD5_LEN])
{
    memcpy(out, "md5", 3);
    md5_hex(password, strlen(password), user, strlen(user), out + 3);
}

void px_md5_response(const char *password_or_md5secret, const char *user, const uint8_t salt[4],
                     char out[PX_MD5_LEN])
{
    char secret[PX_MD5_LEN];

    if (is_md5_secret(password_or_md5secret))
        memcpy(secret, password_or_md5secret, PX_MD5_LEN);
    else
        px_md5_secret(password_or_md5secret, user, secret);
    memcpy(out, "md5", 3);
    md5_hex(secret + 3, 32, salt, 4, out + 3);
    OPENSSL_cleanse(secret, sizeof(secret));
}

bool px_md5_check(const char *stored, const char *user, const uint8_t salt[4],
                  const char *client_response)
{
    char expect[PX_MD5_LEN];
    bool ok;

    switch (px_secret_kind(stored)) {
    case PX_SECRET_PLAIN:
        if (stored[0] == '\0') /* PostgreSQL never accepts an empty password */
            return false;
        break;
    case PX_SECRET_MD5:
        break;
    case PX_SECRET_SCRAM:
    case PX_SECRET_BAD:
        return false;
    default:
        BUG_ON(1, "bad secret kind");
    }
    if (strnlen(client_response, PX_MD5_LEN) != PX_MD5_LEN - 1)
        return false;
    px_md5_response(stored, user, salt, expect);
    ok = px_const_time_eq(expect, client_response, PX_MD5_LEN - 1);
    OPENSSL_cleanse(expect, sizeof(expect));
    return ok;
}
