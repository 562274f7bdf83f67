/*
 * proxy/tls.c - OpenSSL through memory BIOs, so TLS runs on the loop
 * without OpenSSL ever touching a socket. conn.c feeds ciphertext in,
 * reads plaintext out, and drains the ciphertext OpenSSL produces.
 */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <string.h>

#include "proxy/proxy.h"

struct px_tls_ctx {
    SSL_CTX *ctx;
    bool is_server;
    bool verify_host; /* verify-full */
};

struct px_tls {
    SSL *ssl;
    BIO *rbio; /* ciphertext from the peer */
    BIO *wbio; /* ciphertext to the peer */
    char err[160];
};

static char *tls_errstr(const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256];

    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return cm_xasprintf("%s: %s", what, e ? buf : "unknown error");
}

int px_tls_server_ctx_new(const char *cert, const char *key, const char *ca, px_tls_ctx_t **out,
                          char **err)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    px_tls_ctx_t *t;

    if (ctx == NULL) {
        *err = tls_errstr("cannot create TLS context");
        return -1;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        *err = tls_errstr("cannot load client_tls_cert_file");
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        *err = tls_errstr("cannot load client_tls_key_file");
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        *err = tls_errstr("client_tls_key_file does not match the certificate");
        goto fail;
    }
    if (ca != NULL && ca[0] != '\0' && SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        *err = tls_errstr("cannot load client_tls_ca_file");
        goto fail;
    }
    t = cm_xcalloc(1, sizeof(*t));
    t->ctx = ctx;
    t->is_server = true;
    *out = t;
    return 0;
fail:
    SSL_CTX_free(ctx);
    return -1;
}

int px_tls_client_ctx_new(const char *sslmode, const char *rootcert, px_tls_ctx_t **out, char **err)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    bool verify = strcmp(sslmode, "verify-ca") == 0 || strcmp(sslmode, "verify-full") == 0;
    px_tls_ctx_t *t;

    if (ctx == NULL) {
        *err = tls_errstr("cannot create TLS context");
        return -1;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (verify) {
        int ok = rootcert != NULL && rootcert[0] != '\0'
                     ? SSL_CTX_load_verify_locations(ctx, rootcert, NULL)
                     : SSL_CTX_set_default_verify_paths(ctx);

        if (ok != 1) {
            *err = tls_errstr("cannot load sslrootcert");
            SSL_CTX_free(ctx);
            return -1;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    t = cm_xcalloc(1, sizeof(*t));
    t->ctx = ctx;
    t->verify_host = strcmp(sslmode, "verify-full") == 0;
    *out = t;
    return 0;
}

void px_tls_ctx_free(px_tls_ctx_t *ctx)
{
    if (ctx == NULL)
        return;
    SSL_CTX_free(ctx->ctx);
    free(ctx);
}

static px_tls_t *tls_new(px_tls_ctx_t *ctx)
{
    px_tls_t *t = cm_xcalloc(1, sizeof(*t));

    t->ssl = SSL_new(ctx->ctx);
    BUG_ON(t->ssl == NULL, "SSL_new failed");
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    BUG_ON(t->rbio == NULL || t->wbio == NULL, "BIO_new failed");
    SSL_set_bio(t->ssl, t->rbio, t->wbio); /* the SSL owns both BIOs now */
    return t;
}

px_tls_t *px_tls_new_server(px_tls_ctx_t *ctx)
{
    px_tls_t *t = tls_new(ctx);

    SSL_set_accept_state(t->ssl);
    return t;
}

px_tls_t *px_tls_new_client(px_tls_ctx_t *ctx, const char *hostname)
{
    px_tls_t *t = tls_new(ctx);

    SSL_set_connect_state(t->ssl);
    if (hostname != NULL && hostname[0] != '\0' && hostname[0] != '/') {
        SSL_set_tlsext_host_name(t->ssl, hostname);
        if (ctx->verify_host) {
            X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);

            X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            if (X509_VERIFY_PARAM_set1_host(vp, hostname, 0) != 1)
                X509_VERIFY_PARAM_set1_ip_asc(vp, hostname);
        }
    }
    return t;
}

void px_tls_free(px_tls_t *t)
{
    if (t == NULL)
        return;
    SSL_free(t->ssl);
    free(t);
}

int px_tls_feed(px_tls_t *t, const void *data, size_t len)
{
    if (len == 0)
        return 0;
    if (BIO_write(t->rbio, data, (int)len) != (int)len) {
        snprintf(t->err, sizeof(t->err), "cannot buffer TLS input");
        return -1;
    }
    return 0;
}

int px_tls_read(px_tls_t *t, void *buf, size_t len)
{
    int n;
    char tmp[1];

    if (buf == NULL || len == 0) {
        /* Only drive the handshake. */
        if (SSL_is_init_finished(t->ssl))
            return 0;
        buf = tmp;
        len = 0;
        n = SSL_do_handshake(t->ssl);
        if (n == 1)
            return 0;
    } else {
        n = SSL_read(t->ssl, buf, (int)CM_MIN(len, (size_t)1 << 30));
        if (n > 0)
            return n;
    }
    switch (SSL_get_error(t->ssl, n)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        ERR_clear_error();
        return 0;
    case SSL_ERROR_ZERO_RETURN:
        snprintf(t->err, sizeof(t->err), "TLS connection closed by peer");
        return -1;
    default: {
        unsigned long e = ERR_get_error();

        snprintf(t->err, sizeof(t->err), "TLS error: %s",
                 e ? ERR_reason_error_string(e) : "protocol error");
        ERR_clear_error();
        return -1;
    }
    }
}

int px_tls_write(px_tls_t *t, const void *data, size_t len)
{
    const uint8_t *p = data;

    while (len > 0) {
        int n = SSL_write(t->ssl, p, (int)CM_MIN(len, (size_t)1 << 30));

        if (n <= 0) {
            int e = SSL_get_error(t->ssl, n);

            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                /* Handshake not finished: OpenSSL keeps nothing; the caller
                 * retries after more input. Memory BIOs never block writes. */
                snprintf(t->err, sizeof(t->err), "TLS write before handshake completed");
            } else {
                snprintf(t->err, sizeof(t->err), "TLS write failed");
            }
            ERR_clear_error();
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

void px_tls_drain(px_tls_t *t, cm_buf_t *out)
{
    size_t pending = BIO_ctrl_pending(t->wbio);

    if (pending == 0)
        return;
    cm_buf_reserve(out, pending);
    out->len += (size_t)BIO_read(t->wbio, out->data + out->len, (int)pending);
}

bool px_tls_handshake_done(px_tls_t *t)
{
    return SSL_is_init_finished(t->ssl);
}

const char *px_tls_error(px_tls_t *t)
{
    return t->err[0] ? t->err : "TLS error";
}
