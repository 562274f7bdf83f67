/*
 * proxy/store.c - a store as the proxy sees it: the parsed libpq
 * connection string, its resolved address, its TLS context and the server
 * parameters learned at the first login.
 */
#include <libpq-fe.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "proxy/proxy.h"
#include "proxy/scram.h"

void px_params_set(px_params_t *ps, const char *name, size_t name_len, const char *value,
                   size_t value_len)
{
    for (size_t i = 0; i < ps->n; i++) {
        if (strlen(ps->v[i].name) == name_len && memcmp(ps->v[i].name, name, name_len) == 0) {
            free(ps->v[i].value);
            ps->v[i].value = cm_xstrndup(value, value_len);
            return;
        }
    }
    if (ps->n == PX_MAX_PARAMS)
        return; /* more than PostgreSQL reports; the rest is not tracked */
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? ps->cap * 2 : 4;
        ps->v = cm_xrealloc(ps->v, ps->cap * sizeof(*ps->v));
    }
    ps->v[ps->n].name = cm_xstrndup(name, name_len);
    ps->v[ps->n].value = cm_xstrndup(value, value_len);
    ps->n++;
}

const char *px_params_get(const px_params_t *ps, const char *name)
{
    for (size_t i = 0; i < ps->n; i++)
        if (strcmp(ps->v[i].name, name) == 0)
            return ps->v[i].value;
    return NULL;
}

void px_params_clear(px_params_t *ps)
{
    for (size_t i = 0; i < ps->n; i++) {
        free(ps->v[i].name);
        free(ps->v[i].value);
    }
    free(ps->v);
    ps->v = NULL;
    ps->n = ps->cap = 0;
}

static void store_clear(px_store_t *s)
{
    free(s->conninfo);
    free(s->host);
    free(s->user);
    free(s->password);
    free(s->dbname);
    free(s->sslmode);
    free(s->sslrootcert);
    free(s->unix_path);
    px_tls_ctx_free(s->tls_ctx);
    if (s->scram_keys != NULL) /* derived from the old password; a login may hold it */
        memset(s->scram_keys, 0, sizeof(*s->scram_keys));
    s->conninfo = s->host = s->user = s->password = s->dbname = NULL;
    s->sslmode = s->sslrootcert = s->unix_path = NULL;
    s->tls_ctx = NULL;
}

/* Fill s from the connection string; on error s is left cleared. */
static int store_parse(px_store_t *s, const cfg_store_t *cs, char **err)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(cs->conninfo, &perr);
    const char *host = NULL, *port = NULL, *user = NULL, *password = NULL, *dbname = NULL;
    const char *sslmode = NULL, *rootcert = NULL, *hostaddr = NULL;

    if (opts == NULL) {
        *err = cm_xasprintf("store %s: invalid connection string: %s", cs->name,
                            perr ? perr : "out of memory");
        PQfreemem(perr);
        return -1;
    }
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (o->val == NULL)
            continue;
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
        else if (strcmp(o->keyword, "port") == 0)
            port = o->val;
        else if (strcmp(o->keyword, "user") == 0)
            user = o->val;
        else if (strcmp(o->keyword, "password") == 0)
            password = o->val;
        else if (strcmp(o->keyword, "dbname") == 0)
            dbname = o->val;
        else if (strcmp(o->keyword, "sslmode") == 0)
            sslmode = o->val;
        else if (strcmp(o->keyword, "sslrootcert") == 0)
            rootcert = o->val;
    }
    s->conninfo = cm_xstrdup(cs->conninfo);
    s->host = cm_xstrdup(hostaddr ? hostaddr : host ? host : "/var/run/postgresql");
    s->port = port ? atoi(port) : 5432;
    s->user = cm_xstrdup(user ? user : "postgres");
    s->password = password ? cm_xstrdup(password) : NULL;
    s->dbname = cm_xstrdup(dbname ? dbname : s->user);
    s->sslmode = cm_xstrdup(sslmode ? sslmode : "prefer");
    s->sslrootcert = cm_xstrdup(rootcert ? rootcert : "");
    PQconninfoFree(opts);

    if (strchr(s->host, ',') != NULL) {
        *err = cm_xasprintf("store %s: several hosts in one store are not supported", cs->name);
        goto fail;
    }
    if (s->port <= 0 || s->port > 65535) {
        *err = cm_xasprintf("store %s: invalid port", cs->name);
        goto fail;
    }
    if (s->host[0] == '/' || s->host[0] == '@') {
        s->unix_path = cm_xasprintf("%s/.s.PGSQL.%d", s->host, s->port);
        if (strcmp(s->sslmode, "prefer") == 0 || strcmp(s->sslmode, "allow") == 0) {
            free(s->sslmode);
            s->sslmode = cm_xstrdup("disable");
        }
    } else {
        struct addrinfo hints = { 0 }, *res = NULL;
        char portstr[16];
        int rc;

        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        snprintf(portstr, sizeof(portstr), "%d", s->port);
        rc = getaddrinfo(s->host, portstr, &hints, &res);
        if (rc != 0 || res == NULL) {
            *err = cm_xasprintf("store %s: cannot resolve host \"%s\": %s", cs->name, s->host,
                                gai_strerror(rc));
            goto fail;
        }
        memcpy(&s->addr, res->ai_addr, res->ai_addrlen);
        freeaddrinfo(res);
    }
    if (strcmp(s->sslmode, "disable") != 0 && strcmp(s->sslmode, "allow") != 0 &&
        strcmp(s->sslmode, "prefer") != 0 && strcmp(s->sslmode, "require") != 0 &&
        strcmp(s->sslmode, "verify-ca") != 0 && strcmp(s->sslmode, "verify-full") != 0) {
        *err = cm_xasprintf("store %s: invalid sslmode \"%s\"", cs->name, s->sslmode);
        goto fail;
    }
    if (strcmp(s->sslmode, "disable") != 0 && strcmp(s->sslmode, "allow") != 0) {
        if (px_tls_client_ctx_new(s->sslmode, s->sslrootcert, &s->tls_ctx, err) < 0) {
            char *e = *err;

            *err = cm_xasprintf("store %s: %s", cs->name, e);
            free(e);
            goto fail;
        }
    }
    return 0;
fail:
    store_clear(s);
    return -1;
}

int px_store_new(const cfg_store_t *cs, int index, px_store_t **out, char **err)
{
    px_store_t *s = cm_xcalloc(1, sizeof(*s));

    s->index = index;
    cm_list_init(&s->idle);
    cm_list_init(&s->waiters);
    s->name = cm_xstrdup(cs->name);
    if (store_parse(s, cs, err) < 0) {
        free(s->name);
        free(s);
        return -1;
    }
    *out = s;
    return 0;
}

int px_store_update(px_store_t *s, const cfg_store_t *cs, char **err)
{
    px_store_t tmp = { 0 };

    if (strcmp(s->conninfo, cs->conninfo) == 0)
        return 0;
    if (store_parse(&tmp, cs, err) < 0)
        return -1;
    store_clear(s);
    s->conninfo = tmp.conninfo;
    s->host = tmp.host;
    s->port = tmp.port;
    s->user = tmp.user;
    s->password = tmp.password;
    s->dbname = tmp.dbname;
    s->sslmode = tmp.sslmode;
    s->sslrootcert = tmp.sslrootcert;
    s->unix_path = tmp.unix_path;
    s->addr = tmp.addr;
    s->tls_ctx = tmp.tls_ctx;
    px_params_clear(&s->params);
    s->has_params = false;
    return 0;
}

void px_store_free(px_store_t *s)
{
    if (s == NULL)
        return;
    store_clear(s);
    px_params_clear(&s->params);
    free(s->scram_keys);
    free(s->name);
    free(s);
}
