/*
 * migrator/pq.c - blocking-looking libpq calls for the migrator threads that
 * a stop latch can interrupt: connect and exec wait in poll() on the libpq
 * socket and the latch together. Never used on the loop thread, except for
 * the first connect in mig_ctl_start.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/log.h"
#include "migrator/migrator_int.h"

int mig_latch_new(void)
{
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

    return fd < 0 ? -errno : fd;
}

void mig_latch_set(int fd)
{
    uint64_t one = 1;

    /* The counter only grows and nobody reads it, so the fd stays readable. */
    while (write(fd, &one, sizeof(one)) < 0 && errno == EINTR)
        ;
}

bool mig_latch_wait(int fd, int ms)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    uint64_t deadline = cm_now_ms() + (uint64_t)(ms > 0 ? ms : 0);

    for (;;) {
        uint64_t now = cm_now_ms();
        int left = now >= deadline ? 0 : (int)(deadline - now);
        int n = poll(&p, 1, left);

        if (n > 0)
            return true;
        if (n == 0)
            return false;
        if (errno != EINTR)
            return false;
    }
}

bool mig_latch_is_set(int fd)
{
    return mig_latch_wait(fd, 0);
}

/*
 * Wait until c's socket is ready for `events` (POLLIN/POLLOUT), the latch
 * is set, or the deadline passes. Returns 1 ready, 0 timeout, -1 latch or
 * poll failure.
 */
static int wait_socket(PGconn *c, short events, int latch, uint64_t deadline)
{
    struct pollfd p[2] = {
        { .fd = PQsocket(c), .events = events },
        { .fd = latch, .events = POLLIN },
    };

    if (p[0].fd < 0)
        return -1;
    for (;;) {
        uint64_t now = cm_now_ms();
        int left, n;

        if (now >= deadline)
            return 0;
        left = (int)CM_MIN(deadline - now, (uint64_t)60000);
        n = poll(p, latch >= 0 ? 2 : 1, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            continue; /* re-check the deadline */
        if (latch >= 0 && (p[1].revents & POLLIN))
            return -1;
        return 1;
    }
}

int mig_pq_wait(PGconn *c, short events, int latch, int timeout_ms)
{
    return wait_socket(c, events, latch, cm_now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0));
}

int mig_pq_wait_readable(PGconn *c, int latch, int timeout_ms)
{
    return wait_socket(c, POLLIN, latch, cm_now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0));
}

char *mig_pq_errmsg(PGconn *c, const PGresult *res)
{
    const char *m = NULL;
    char *s;
    size_t n;

    if (res != NULL)
        m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if ((m == NULL || *m == '\0') && res != NULL)
        m = PQresultErrorMessage(res);
    if ((m == NULL || *m == '\0') && c != NULL)
        m = PQerrorMessage(c);
    if (m == NULL || *m == '\0')
        m = "unknown error";
    s = cm_xstrdup(m);
    n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' '))
        s[--n] = '\0';
    /* One line: libpq breaks its messages with "\n\t". */
    {
        char *w = s;

        for (char *p = s; *p; p++) {
            if (*p == '\n' || *p == '\t' || *p == '\r') {
                if (w > s && w[-1] != ' ')
                    *w++ = ' ';
            } else if (!(*p == ' ' && w > s && w[-1] == ' ')) {
                *w++ = *p;
            }
        }
        *w = '\0';
    }
    return s;
}

/* Server notices (and the FATAL of a shutdown) go to the log, not to stderr. */
static void notice_cb(void *arg, const char *message)
{
    size_t n = strlen(message);

    (void)arg;
    while (n > 0 && message[n - 1] == '\n')
        n--;
    LOG_DEBUG("pq", "server: %.*s", (int)n, message);
}

int mig_pq_connect(const char *conninfo, const char *app_name, int latch, int timeout_ms,
                   PGconn **out, char **err)
{
    /* Our defaults come first: what conninfo says overrides them. */
    const char *keys[] = { "application_name", "dbname", NULL };
    const char *vals[] = { app_name, conninfo, NULL };
    uint64_t deadline = cm_now_ms() + (uint64_t)timeout_ms;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    PGconn *c;

    c = PQconnectStartParams(keys, vals, 1);
    if (c == NULL) {
        *err = cm_xstrdup("out of memory");
        return -ECONNREFUSED;
    }
    if (PQstatus(c) == CONNECTION_BAD)
        goto fail;
    for (;;) {
        int w;

        if (st == PGRES_POLLING_OK)
            break;
        if (st == PGRES_POLLING_FAILED)
            goto fail;
        w = wait_socket(c, st == PGRES_POLLING_READING ? POLLIN : POLLOUT, latch, deadline);
        if (w < 0 && latch >= 0 && mig_latch_is_set(latch)) {
            PQfinish(c);
            return -ECANCELED;
        }
        if (w <= 0) {
            *err = w == 0 ? cm_xstrdup("timeout expired") : mig_pq_errmsg(c, NULL);
            PQfinish(c);
            return -ECONNREFUSED;
        }
        st = PQconnectPoll(c);
    }
    PQsetNoticeProcessor(c, notice_cb, NULL);
    *out = c;
    return 0;

fail:
    *err = mig_pq_errmsg(c, NULL);
    PQfinish(c);
    return -ECONNREFUSED;
}

PGresult *mig_pq_exec(PGconn *c, int latch, int timeout_ms, const char *sql, int n_params,
                      const char *const *params)
{
    uint64_t deadline = cm_now_ms() + (uint64_t)timeout_ms;
    PGresult *keep = NULL, *res;
    int sent;

    if (n_params > 0)
        sent = PQsendQueryParams(c, sql, n_params, NULL, params, NULL, NULL, 0);
    else
        sent = PQsendQuery(c, sql);
    if (!sent)
        return NULL;
    for (;;) {
        while (PQisBusy(c)) {
            if (wait_socket(c, POLLIN, latch, deadline) <= 0)
                goto broken;
            if (!PQconsumeInput(c))
                goto broken;
        }
        res = PQgetResult(c);
        if (res == NULL)
            break;
        if (keep != NULL && mig_pq_ok(keep)) {
            PQclear(keep); /* a failure wins over earlier successes */
            keep = res;
        } else if (keep == NULL) {
            keep = res;
        } else {
            PQclear(res);
        }
    }
    if (keep == NULL || PQstatus(c) == CONNECTION_BAD)
        goto broken;
    return keep;

broken:
    PQclear(keep);
    return NULL;
}

bool mig_pq_ok(const PGresult *res)
{
    ExecStatusType s = PQresultStatus(res);

    return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
}

const char *mig_pq_sqlstate(const PGresult *res)
{
    const char *s = PQresultErrorField(res, PG_DIAG_SQLSTATE);

    return s ? s : "";
}
