/*
 * tools/pgshift-ctl.c - the operator's command-line client for pgshift's
 * admin console.
 *
 * It connects with libpq to the admin port (a PostgreSQL-protocol console,
 * database "pgshift"), sends one admin command built from its arguments, and
 * prints the answer as an aligned table, JSON or CSV. `watch` follows a
 * migration live: WATCH MIGRATION when the server streams status rows, or a
 * redrawn progress bar over SHOW MIGRATION polls when it does not.
 *
 * What it deliberately does not do: interpret the admin commands' results
 * beyond the few status fields the progress bar shows, or keep any state
 * between runs. Everything the server says is printed as it came.
 *
 * Exit codes: 0 success; 1 the server refused the command; 2 pgshift could
 * not be reached or the connection broke; 3 `watch` saw the migration end
 * ABORTED or FAILED; 4 `watch --timeout` expired; 64 bad usage; 130 ^C.
 */
#include <errno.h>
#include <getopt.h>
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "common/cm.h"

#ifndef PGSHIFT_VERSION
#define PGSHIFT_VERSION "unknown"
#endif

#define EXIT_REFUSED  1
#define EXIT_CONN     2
#define EXIT_MIG_DEAD 3
#define EXIT_TIMEOUT  4
#define EXIT_USAGE    64
#define EXIT_SIGINT   130

#define DEFAULT_HOST            "127.0.0.1"
#define DEFAULT_PORT            "6433"
#define DEFAULT_USER            "admin"
#define DEFAULT_DBNAME          "pgshift"
#define DEFAULT_CONNECT_TIMEOUT "5"
#define MAX_CONN_PARAMS         64

typedef enum out_fmt {
    OUT_TABLE, /* psql-like aligned table */
    OUT_JSON,  /* one JSON array of objects per result set (NDJSON rows for watch) */
    OUT_CSV,   /* RFC 4180, header line first */
} out_fmt_t;

typedef struct opts {
    const char *host;     /* -h; NULL = default or from conninfo */
    const char *port;     /* -p */
    const char *user;     /* -U */
    const char *dbname;   /* -d */
    const char *conninfo; /* -c: a libpq key=value string or URI */
    out_fmt_t fmt;
    bool is_expanded;     /* -x: one "column | value" block per row */
    bool is_quiet;        /* -q: no "(N rows)" footer, no command tags */
    long timeout_s;       /* watch --timeout; 0 = none */
    long interval_ms;     /* watch polling interval */
    const char *until;    /* watch --until PHASE|ready */
    bool want_poll;       /* watch --poll: skip WATCH MIGRATION */
    const char *pause_ms; /* pause --timeout MS (whole proxy) */
} opts_t;

static volatile sig_atomic_t interrupted;

/* ---- small helpers ---------------------------------------------------------- */

static void die_usage(const char *fmt, ...) PRINTF_LIKE(1, 2);

static void die_usage(const char *fmt, ...)
{
    va_list ap;

    fputs("pgshift-ctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry \"pgshift-ctl --help\" for more information.\n", stderr);
    exit(EXIT_USAGE);
}

static uint64_t wall_ms(void)
{
    return cm_now_ms();
}

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* True when s is a non-empty string of decimal digits (a migration id). */
static bool is_id(const char *s)
{
    if (s == NULL || *s == '\0' || strlen(s) > 19)
        return false;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9')
            return false;
    return true;
}

static const char *check_id(const char *cmd, const char *s)
{
    if (s == NULL)
        die_usage("%s: missing migration id", cmd);
    if (!is_id(s))
        die_usage("%s: migration id must be a positive integer, not \"%s\"", cmd, s);
    return s;
}

/* True for an SQL number literal: -?digits(.digits)? */
static bool is_number(const char *s)
{
    const char *p = s;
    bool digits = false;

    if (*p == '-' || *p == '+')
        p++;
    while (*p >= '0' && *p <= '9') {
        p++;
        digits = true;
    }
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') {
            p++;
            digits = true;
        }
    }
    return digits && *p == '\0';
}

static bool is_ident(const char *s)
{
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_'))
        return false;
    for (s++; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_' ||
              (*s >= '0' && *s <= '9')))
            return false;
    return true;
}

/*
 * Append s as an SQL string literal: '...' with every quote doubled. The
 * admin console reads standard-conforming literals, so backslashes are plain
 * characters and need nothing.
 */
static void append_literal(cm_buf_t *b, const char *s)
{
    cm_buf_append_u8(b, '\'');
    for (; *s; s++) {
        if (*s == '\'')
            cm_buf_append_u8(b, '\'');
        cm_buf_append_u8(b, (uint8_t)*s);
    }
    cm_buf_append_u8(b, '\'');
}

static void append_str(cm_buf_t *b, const char *s)
{
    cm_buf_append(b, s, strlen(s));
}

/* The buffer as a NUL-terminated string; the buffer keeps ownership. */
static const char *buf_cstr(cm_buf_t *b)
{
    cm_buf_append_u8(b, '\0');
    b->len--;
    return (const char *)b->data;
}

/* Display width of a UTF-8 string: code points, which is right for most text. */
static size_t text_width(const char *s)
{
    size_t n = 0;

    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

static void put_padded(FILE *f, const char *s, size_t width, bool right)
{
    size_t w = text_width(s);

    if (right)
        for (; w < width; w++)
            fputc(' ', f);
    fputs(s, f);
    if (!right)
        for (; w < width; w++)
            fputc(' ', f);
}

static void put_repeat(FILE *f, char c, size_t n)
{
    while (n-- > 0)
        fputc(c, f);
}

/* ---- output ----------------------------------------------------------------- */

static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;

        switch (ch) {
        case '"':
            fputs("\\\"", f);
            break;
        case '\\':
            fputs("\\\\", f);
            break;
        case '\n':
            fputs("\\n", f);
            break;
        case '\r':
            fputs("\\r", f);
            break;
        case '\t':
            fputs("\\t", f);
            break;
        default:
            if (ch < 0x20 || ch == 0x7f)
                fprintf(f, "\\u%04x", ch);
            else
                fputc(ch, f);
        }
    }
    fputc('"', f);
}

static void csv_field(FILE *f, const char *s)
{
    if (strpbrk(s, ",\"\r\n") == NULL) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

/* True for the numeric type oids (int2/4/8, float4/8, numeric, oid). */
static bool is_numeric_type(Oid t)
{
    return t == 20 || t == 21 || t == 23 || t == 26 || t == 700 || t == 701 || t == 1700;
}

/*
 * Right-align a column when its type is numeric, or when the console sends
 * text (it does, for everything) but every non-empty value is a number.
 */
static bool column_is_numeric(const PGresult *r, int col)
{
    bool any = false;

    if (is_numeric_type(PQftype(r, col)))
        return true;
    for (int i = 0; i < PQntuples(r); i++) {
        if (PQgetisnull(r, i, col) || *PQgetvalue(r, i, col) == '\0')
            continue;
        if (!is_number(PQgetvalue(r, i, col)))
            return false;
        any = true;
    }
    return any;
}

static void print_json_row(FILE *f, const PGresult *r, int row)
{
    fputc('{', f);
    for (int j = 0; j < PQnfields(r); j++) {
        if (j > 0)
            fputs(", ", f);
        json_string(f, PQfname(r, j));
        fputs(": ", f);
        if (PQgetisnull(r, row, j))
            fputs("null", f);
        else
            json_string(f, PQgetvalue(r, row, j));
    }
    fputc('}', f);
}

static void print_csv_header(FILE *f, const PGresult *r)
{
    for (int j = 0; j < PQnfields(r); j++) {
        if (j > 0)
            fputc(',', f);
        csv_field(f, PQfname(r, j));
    }
    fputs("\r\n", f);
}

static void print_csv_row(FILE *f, const PGresult *r, int row)
{
    for (int j = 0; j < PQnfields(r); j++) {
        if (j > 0)
            fputc(',', f);
        if (!PQgetisnull(r, row, j))
            csv_field(f, PQgetvalue(r, row, j));
    }
    fputs("\r\n", f);
}

static void print_expanded(FILE *f, const PGresult *r)
{
    int n_cols = PQnfields(r), n_rows = PQntuples(r);
    size_t wname = 0, wval = 0;

    for (int j = 0; j < n_cols; j++)
        wname = CM_MAX(wname, text_width(PQfname(r, j)));
    for (int i = 0; i < n_rows; i++)
        for (int j = 0; j < n_cols; j++)
            wval = CM_MAX(wval, text_width(PQgetvalue(r, i, j)));
    for (int i = 0; i < n_rows; i++) {
        char head[48];
        size_t hl;

        hl = (size_t)snprintf(head, sizeof(head), "-[ RECORD %d ]", i + 1);
        fputs(head, f);
        if (wname + 3 + wval > hl)
            put_repeat(f, '-', wname + 3 + wval - hl);
        fputc('\n', f);
        for (int j = 0; j < n_cols; j++) {
            put_padded(f, PQfname(r, j), wname, false);
            fputs(" | ", f);
            fputs(PQgetvalue(r, i, j), f);
            fputc('\n', f);
        }
    }
    if (n_rows == 0)
        fputs("(0 rows)\n", f);
}

static void print_table(FILE *f, const PGresult *r, bool quiet)
{
    int n_cols = PQnfields(r), n_rows = PQntuples(r);
    size_t *w = cm_xcalloc((size_t)n_cols, sizeof(*w));
    bool *right = cm_xcalloc((size_t)n_cols, sizeof(*right));

    for (int j = 0; j < n_cols; j++) {
        w[j] = text_width(PQfname(r, j));
        right[j] = column_is_numeric(r, j);
        for (int i = 0; i < n_rows; i++)
            w[j] = CM_MAX(w[j], text_width(PQgetvalue(r, i, j)));
    }
    /* Header: names centred as psql does, which reads well over numbers too. */
    for (int j = 0; j < n_cols; j++) {
        size_t nw = text_width(PQfname(r, j)), left = (w[j] - nw) / 2;

        fputs(j == 0 ? " " : " | ", f);
        put_repeat(f, ' ', left);
        fputs(PQfname(r, j), f);
        if (j + 1 < n_cols)
            put_repeat(f, ' ', w[j] - nw - left);
    }
    fputc('\n', f);
    for (int j = 0; j < n_cols; j++) {
        put_repeat(f, '-', w[j] + 2);
        if (j + 1 < n_cols)
            fputc('+', f);
    }
    fputc('\n', f);
    for (int i = 0; i < n_rows; i++) {
        for (int j = 0; j < n_cols; j++) {
            fputs(j == 0 ? " " : " | ", f);
            if (j + 1 == n_cols && !right[j])
                fputs(PQgetvalue(r, i, j), f); /* no trailing blanks */
            else
                put_padded(f, PQgetvalue(r, i, j), w[j], right[j]);
        }
        fputc('\n', f);
    }
    if (!quiet)
        fprintf(f, "(%d row%s)\n", n_rows, n_rows == 1 ? "" : "s");
    free(w);
    free(right);
}

/* Print one complete result set in the chosen format. */
static void print_result(const opts_t *o, const PGresult *r)
{
    switch (o->fmt) {
    case OUT_JSON:
        fputc('[', stdout);
        for (int i = 0; i < PQntuples(r); i++) {
            fputs(i == 0 ? "\n  " : ",\n  ", stdout);
            print_json_row(stdout, r, i);
        }
        fputs(PQntuples(r) > 0 ? "\n]\n" : "]\n", stdout);
        break;
    case OUT_CSV:
        print_csv_header(stdout, r);
        for (int i = 0; i < PQntuples(r); i++)
            print_csv_row(stdout, r, i);
        break;
    case OUT_TABLE:
        if (o->is_expanded)
            print_expanded(stdout, r);
        else
            print_table(stdout, r, o->is_quiet);
        break;
    }
}

/* A command that returned no rows: its tag (e.g. "RELOAD"). */
static void print_tag(const opts_t *o, const PGresult *r)
{
    const char *tag = PQcmdStatus((PGresult *)r);

    switch (o->fmt) {
    case OUT_JSON:
        fputs("{\"command\": ", stdout);
        json_string(stdout, tag);
        fputs("}\n", stdout);
        break;
    case OUT_CSV:
        break; /* CSV carries data only */
    case OUT_TABLE:
        if (!o->is_quiet)
            printf("%s\n", tag);
        break;
    }
}

/* "message [SQLSTATE]" plus DETAIL and HINT, on stderr. */
static void print_error(const PGresult *r, PGconn *c)
{
    const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *detail = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL) : NULL;
    const char *hint = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_HINT) : NULL;

    if (msg == NULL) {
        const char *m = r ? PQresultErrorMessage(r) : "";

        if (*m == '\0')
            m = PQerrorMessage(c);
        fprintf(stderr, "pgshift-ctl: error: %s", *m ? m : "unknown error\n");
        if (m[strlen(m) - 1] != '\n')
            fputc('\n', stderr);
        return;
    }
    fprintf(stderr, "pgshift-ctl: error: %s [%s]\n", msg, state ? state : "?????");
    if (detail)
        fprintf(stderr, "detail: %s\n", detail);
    if (hint)
        fprintf(stderr, "hint: %s\n", hint);
}

static void notice_cb(void *arg, const PGresult *r)
{
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY);
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);

    (void)arg;
    fprintf(stderr, "%s: %s\n", sev ? sev : "NOTICE", msg ? msg : PQresultErrorMessage(r));
}

/* ---- connection --------------------------------------------------------------- */

typedef struct params {
    const char *kw[MAX_CONN_PARAMS + 1];
    const char *val[MAX_CONN_PARAMS + 1];
    int n;
} params_t;

static void param_set(params_t *p, const char *kw, const char *val)
{
    for (int i = 0; i < p->n; i++) {
        if (strcmp(p->kw[i], kw) == 0) {
            p->val[i] = val;
            return;
        }
    }
    BUG_ON(p->n >= MAX_CONN_PARAMS, "too many connection parameters");
    p->kw[p->n] = kw;
    p->val[p->n] = val;
    p->n++;
}

static const char *param_get(const params_t *p, const char *kw)
{
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->kw[i], kw) == 0)
            return p->val[i];
    return NULL;
}

/*
 * Connect to the admin console. Precedence: the defaults of this tool, then
 * the -c connection string, then -h/-p/-U/-d. Explicit defaults keep PGHOST
 * and friends (usually the application's settings) out of the way; the
 * password still comes from PGPASSWORD or ~/.pgpass through libpq. Exits with
 * EXIT_CONN and an explanation when pgshift cannot be reached.
 */
static PGconn *ctl_connect(const opts_t *o)
{
    PQconninfoOption *parsed = NULL;
    const char *user = getenv("PGUSER");
    params_t p = { .n = 0 };
    PGconn *c;

    param_set(&p, "host", DEFAULT_HOST);
    param_set(&p, "port", DEFAULT_PORT);
    param_set(&p, "user", user && *user ? user : DEFAULT_USER);
    param_set(&p, "dbname", DEFAULT_DBNAME);
    param_set(&p, "connect_timeout", DEFAULT_CONNECT_TIMEOUT);
    param_set(&p, "application_name", "pgshift-ctl");
    if (o->conninfo != NULL) {
        char *err = NULL;

        parsed = PQconninfoParse(o->conninfo, &err);
        if (parsed == NULL) {
            fprintf(stderr, "pgshift-ctl: invalid connection string: %s",
                    err ? err : "out of memory\n");
            PQfreemem(err);
            exit(EXIT_USAGE);
        }
        for (PQconninfoOption *opt = parsed; opt->keyword != NULL; opt++)
            if (opt->val != NULL && *opt->val != '\0')
                param_set(&p, opt->keyword, opt->val);
    }
    if (o->host)
        param_set(&p, "host", o->host);
    if (o->port)
        param_set(&p, "port", o->port);
    if (o->user)
        param_set(&p, "user", o->user);
    if (o->dbname)
        param_set(&p, "dbname", o->dbname);
    p.kw[p.n] = NULL;
    p.val[p.n] = NULL;

    c = PQconnectdbParams(p.kw, p.val, 0);
    if (c == NULL) {
        fputs("pgshift-ctl: out of memory\n", stderr);
        exit(EXIT_CONN);
    }
    if (PQstatus(c) != CONNECTION_OK) {
        const char *m = PQerrorMessage(c);
        const char *host = param_get(&p, "host"), *port = param_get(&p, "port");

        fprintf(stderr, "pgshift-ctl: cannot connect to the pgshift admin console at %s:%s\n%s",
                host ? host : "?", port ? port : "?", m);
        if (*m && m[strlen(m) - 1] != '\n')
            fputc('\n', stderr);
        if (strstr(m, "password") != NULL || strstr(m, "authentication") != NULL)
            fprintf(stderr,
                    "hint: the user (%s) must be in admin_users and in pgshift's "
                    "auth_file; set PGPASSWORD or a ~/.pgpass line\n",
                    param_get(&p, "user"));
        else if (strstr(m, "does not exist") != NULL)
            fputs("hint: the admin console's database is \"pgshift\"\n", stderr);
        else
            fputs("hint: is pgshift running, and is this its admin_port? Use -h/-p or -c "
                  "to point elsewhere\n",
                  stderr);
        PQfinish(c);
        PQconninfoFree(parsed);
        exit(EXIT_CONN);
    }
    PQconninfoFree(parsed);
    PQsetNoticeReceiver(c, notice_cb, NULL);
    return c;
}

static NORETURN void die_conn_lost(PGconn *c)
{
    const char *m = PQerrorMessage(c);

    fprintf(stderr, "pgshift-ctl: lost the connection to pgshift: %s", *m ? m : "closed\n");
    if (*m && m[strlen(m) - 1] != '\n')
        fputc('\n', stderr);
    PQfinish(c);
    exit(EXIT_CONN);
}

/*
 * Wait for the next result of the running query, until deadline_ms
 * (0 = forever) or ^C. Returns the result (caller PQclear()s) or NULL when
 * the query is done; sets *stopped instead when time ran out or the user
 * interrupted. Exits on a broken connection.
 */
static PGresult *next_result(PGconn *c, uint64_t deadline_ms, bool *stopped)
{
    *stopped = false;
    while (PQisBusy(c)) {
        struct pollfd pfd = { .fd = PQsocket(c), .events = POLLIN };
        int wait = -1, n;

        if (interrupted) {
            *stopped = true;
            return NULL;
        }
        if (deadline_ms != 0) {
            uint64_t now = wall_ms();

            if (now >= deadline_ms) {
                *stopped = true;
                return NULL;
            }
            wait = (int)CM_MIN(deadline_ms - now, 1000u);
        }
        n = poll(&pfd, 1, wait);
        if (n < 0 && errno != EINTR)
            die_conn_lost(c);
        if (n > 0 && !PQconsumeInput(c))
            die_conn_lost(c);
    }
    return PQgetResult(c);
}

/*
 * Send sql and print every result it produces. Returns the exit code:
 * 0, or EXIT_REFUSED when the server answered an error.
 */
static int run_command(PGconn *c, const opts_t *o, const char *sql)
{
    PGresult *r;
    bool stopped;
    int rc = 0;

    if (!PQsendQuery(c, sql))
        die_conn_lost(c);
    while ((r = next_result(c, 0, &stopped)) != NULL) {
        ExecStatusType st = PQresultStatus(r);

        switch (st) {
        case PGRES_TUPLES_OK:
            print_result(o, r);
            break;
        case PGRES_COMMAND_OK:
            print_tag(o, r);
            break;
        case PGRES_EMPTY_QUERY:
            break;
        case PGRES_FATAL_ERROR:
        case PGRES_NONFATAL_ERROR:
            print_error(r, c);
            rc = EXIT_REFUSED;
            break;
        case PGRES_COPY_IN:
        case PGRES_COPY_OUT:
        case PGRES_COPY_BOTH:
            fputs("pgshift-ctl: the server started a COPY, which the admin console never "
                  "does\n",
                  stderr);
            PQclear(r);
            PQfinish(c);
            exit(EXIT_CONN);
        case PGRES_BAD_RESPONSE:
        case PGRES_SINGLE_TUPLE:
        case PGRES_PIPELINE_SYNC:
        case PGRES_PIPELINE_ABORTED:
        default:
            fprintf(stderr, "pgshift-ctl: unexpected result from pgshift: %s\n", PQresStatus(st));
            rc = EXIT_REFUSED;
            break;
        }
        PQclear(r);
    }
    if (stopped) {
        fputs("\npgshift-ctl: interrupted\n", stderr);
        PQfinish(c);
        exit(EXIT_SIGINT);
    }
    if (PQstatus(c) != CONNECTION_OK)
        die_conn_lost(c);
    return rc;
}

/* ---- watch ------------------------------------------------------------------ */

/* Phase order, so `--until DUAL_WRITE` also stops at any later phase. */
static const char *const phase_order[] = { "PENDING", "BULK_COPY", "DUAL_WRITE", "CUTOVER",
                                           "COMPLETED" };

static int phase_rank(const char *phase)
{
    for (size_t i = 0; i < CM_ARRAY_LEN(phase_order); i++)
        if (strcasecmp(phase, phase_order[i]) == 0)
            return (int)i;
    return -1;
}

static bool phase_is_terminal(const char *phase)
{
    return strcasecmp(phase, "COMPLETED") == 0 || strcasecmp(phase, "ABORTED") == 0 ||
           strcasecmp(phase, "FAILED") == 0;
}

static bool phase_is_failure(const char *phase)
{
    return strcasecmp(phase, "ABORTED") == 0 || strcasecmp(phase, "FAILED") == 0;
}

static bool is_true(const char *v)
{
    return v != NULL &&
           (strcasecmp(v, "t") == 0 || strcasecmp(v, "true") == 0 || strcasecmp(v, "yes") == 0 ||
            strcasecmp(v, "on") == 0 || strcmp(v, "1") == 0);
}

/*
 * The status fields the progress bar needs, from a SHOW MIGRATION or WATCH
 * row. Both shapes are understood: one wide row (a column per field) and
 * "field | value" rows. Strings are borrowed from the result.
 */
typedef struct mig_status {
    const char *phase;
    const char *progress; /* percent, maybe with a '%' */
    const char *copied;
    const char *total;
    const char *rate;
    const char *eta;
    const char *paused;
    const char *ready;
    const char *lag;
    const char *last_error;
} mig_status_t;

static const char *pick(const PGresult *r, int row, const char *const *names)
{
    int n_cols = PQnfields(r);

    /* Field/value shape: two columns, the first naming the field. */
    if (n_cols == 2 && row < 0) {
        for (const char *const *n = names; *n; n++)
            for (int i = 0; i < PQntuples(r); i++)
                if (strcasecmp(PQgetvalue(r, i, 0), *n) == 0)
                    return PQgetisnull(r, i, 1) ? NULL : PQgetvalue(r, i, 1);
        return NULL;
    }
    for (const char *const *n = names; *n; n++) {
        int j = PQfnumber(r, *n);

        if (j >= 0 && row >= 0 && row < PQntuples(r))
            return PQgetisnull(r, row, j) ? NULL : PQgetvalue(r, row, j);
    }
    return NULL;
}

/* row < 0: the result is in field/value shape. */
static void status_from(const PGresult *r, int row, mig_status_t *s)
{
    static const char *const n_phase[] = { "phase", "state", NULL };
    static const char *const n_progress[] = { "progress", "progress_percent", "progress_pct",
                                              "percent", NULL };
    static const char *const n_copied[] = { "events_copied", "copied", "rows_copied", NULL };
    static const char *const n_total[] = { "events_total", "total", "rows_total", NULL };
    static const char *const n_rate[] = { "rate", "events_per_s", "rate_events_per_s",
                                          "events_per_second", NULL };
    static const char *const n_eta[] = { "eta", "estimated_completion", "estimated_completion_at",
                                         NULL };
    static const char *const n_paused[] = { "paused", "is_paused", NULL };
    static const char *const n_ready[] = { "ready", "cutover_ready", "ready_for_cutover", NULL };
    static const char *const n_lag[] = { "lag_events", "events_behind", "lag", NULL };
    static const char *const n_err[] = { "last_error", "error", NULL };

    s->phase = pick(r, row, n_phase);
    s->progress = pick(r, row, n_progress);
    s->copied = pick(r, row, n_copied);
    s->total = pick(r, row, n_total);
    s->rate = pick(r, row, n_rate);
    s->eta = pick(r, row, n_eta);
    s->paused = pick(r, row, n_paused);
    s->ready = pick(r, row, n_ready);
    s->lag = pick(r, row, n_lag);
    s->last_error = pick(r, row, n_err);
}

/* Does this status satisfy --until? (Terminal phases always stop.) */
static bool until_reached(const opts_t *o, const mig_status_t *s)
{
    if (o->until == NULL || s->phase == NULL)
        return false;
    if (strcasecmp(o->until, "ready") == 0)
        return is_true(s->ready) || phase_rank(s->phase) >= phase_rank("CUTOVER");
    if (phase_rank(o->until) >= 0 && phase_rank(s->phase) >= 0)
        return phase_rank(s->phase) >= phase_rank(o->until);
    return strcasecmp(o->until, s->phase) == 0;
}

static double status_percent(const mig_status_t *s)
{
    if (s->progress != NULL && *s->progress)
        return strtod(s->progress, NULL);
    if (s->copied != NULL && s->total != NULL) {
        double c = strtod(s->copied, NULL), t = strtod(s->total, NULL);

        if (t > 0)
            return 100.0 * c / t;
    }
    return -1;
}

/* One line: [#####.....]  42.0%  BULK_COPY  84000/200000 events  9950 ev/s  eta ... */
static void render_status(cm_buf_t *b, const mig_status_t *s)
{
    double pct = status_percent(s);
    char tmp[64];
    int fill;

    cm_buf_reset(b);
    if (pct >= 0) {
        pct = CM_MIN(CM_MAX(pct, 0.0), 100.0);
        fill = (int)(pct / 100.0 * 30.0 + 0.5);
        append_str(b, "[");
        for (int i = 0; i < 30; i++)
            cm_buf_append_u8(b, i < fill ? '#' : '.');
        snprintf(tmp, sizeof(tmp), "] %5.1f%%  ", pct);
        append_str(b, tmp);
    }
    append_str(b, s->phase ? s->phase : "?");
    if (is_true(s->paused))
        append_str(b, " (paused)");
    if (s->copied && s->total) {
        append_str(b, "  ");
        append_str(b, s->copied);
        append_str(b, "/");
        append_str(b, s->total);
        append_str(b, " events");
    }
    if (s->rate && *s->rate) {
        append_str(b, "  ");
        append_str(b, s->rate);
        append_str(b, " ev/s");
    }
    if (s->lag && *s->lag) {
        append_str(b, "  lag ");
        append_str(b, s->lag);
    }
    if (s->ready && *s->ready)
        append_str(b, is_true(s->ready) ? "  ready" : "  not ready");
    if (s->eta && *s->eta) {
        append_str(b, "  eta ");
        append_str(b, s->eta);
    }
    if (s->last_error && *s->last_error) {
        append_str(b, "  last error: ");
        append_str(b, s->last_error);
    }
}

/* How a watch ended, as an exit code, from the last phase seen. */
static int watch_exit(const char *phase)
{
    if (phase != NULL && phase_is_failure(phase))
        return EXIT_MIG_DEAD;
    return 0;
}

/* Print one streamed WATCH row: the header before the first one. */
static void print_watch_row(const opts_t *o, const PGresult *r, size_t **widths, bool *has_header)
{
    int n_cols = PQnfields(r);

    switch (o->fmt) {
    case OUT_JSON:
        print_json_row(stdout, r, 0);
        fputc('\n', stdout);
        break;
    case OUT_CSV:
        if (!*has_header)
            print_csv_header(stdout, r);
        print_csv_row(stdout, r, 0);
        break;
    case OUT_TABLE:
        if (!*has_header) {
            /* Widths from the names and the first row; later rows may overflow. */
            *widths = cm_xcalloc((size_t)n_cols, sizeof(**widths));
            for (int j = 0; j < n_cols; j++) {
                (*widths)[j] =
                    CM_MAX(text_width(PQfname(r, j)), text_width(PQgetvalue(r, 0, j)) + 2);
                fputs(j == 0 ? " " : " | ", stdout);
                put_padded(stdout, PQfname(r, j), (*widths)[j], false);
            }
            fputc('\n', stdout);
            for (int j = 0; j < n_cols; j++) {
                put_repeat(stdout, '-', (*widths)[j] + 2);
                if (j + 1 < n_cols)
                    fputc('+', stdout);
            }
            fputc('\n', stdout);
        }
        for (int j = 0; j < n_cols; j++) {
            fputs(j == 0 ? " " : " | ", stdout);
            put_padded(stdout, PQgetvalue(r, 0, j), (*widths)[j], is_number(PQgetvalue(r, 0, j)));
        }
        fputc('\n', stdout);
        break;
    }
    *has_header = true;
    fflush(stdout);
}

/*
 * WATCH MIGRATION id in single-row mode: each status row is printed as it
 * arrives. Returns -1 when the server does not know WATCH (the caller then
 * polls), otherwise the exit code.
 */
static int watch_stream(PGconn *c, const opts_t *o, const char *id, uint64_t deadline)
{
    char *sql = cm_xasprintf("WATCH MIGRATION %s", id);
    char *last_phase = NULL;
    size_t *widths = NULL;
    bool has_header = false, stopped = false, done = false;
    int rc = 0;
    PGresult *r;

    if (!PQsendQuery(c, sql))
        die_conn_lost(c);
    free(sql);
    if (!PQsetSingleRowMode(c))
        fputs("pgshift-ctl: warning: single-row mode unavailable; rows may arrive late\n", stderr);
    while (!done && (r = next_result(c, deadline, &stopped)) != NULL) {
        ExecStatusType st = PQresultStatus(r);

        if (st == PGRES_SINGLE_TUPLE) {
            mig_status_t s;

            print_watch_row(o, r, &widths, &has_header);
            status_from(r, 0, &s);
            if (s.phase != NULL) {
                free(last_phase);
                last_phase = cm_xstrdup(s.phase);
                /* The server ends the stream at a terminal phase; --until ends it early. */
                if (until_reached(o, &s))
                    done = true;
            }
        } else if (st == PGRES_FATAL_ERROR || st == PGRES_NONFATAL_ERROR) {
            const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
            const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);

            if (!has_header && state != NULL && strcmp(state, "42601") == 0 && msg != NULL &&
                strncasecmp(msg, "unknown", 7) == 0) {
                rc = -1; /* this pgshift has no WATCH */
            } else {
                print_error(r, c);
                rc = EXIT_REFUSED;
            }
        }
        /* PGRES_TUPLES_OK (the end of the rows) and COMMAND_OK need nothing. */
        PQclear(r);
    }
    free(widths);
    if (done) {
        /* Leaving is how a WATCH ends early: the server stops on its own. */
        PQfinish(c);
        rc = watch_exit(last_phase);
        free(last_phase);
        return rc;
    }
    if (stopped) {
        PQfinish(c);
        free(last_phase);
        if (interrupted)
            return EXIT_SIGINT;
        fprintf(stderr, "pgshift-ctl: watch: timed out after %lds\n", o->timeout_s);
        return EXIT_TIMEOUT;
    }
    if (PQstatus(c) != CONNECTION_OK)
        die_conn_lost(c);
    if (rc == 0)
        rc = watch_exit(last_phase);
    free(last_phase);
    if (rc != -1)
        PQfinish(c);
    return rc;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

    while (!interrupted && nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/*
 * The fallback: SHOW MIGRATION id every interval, one progress line redrawn
 * in place on a terminal (a new line per change otherwise), until the phase
 * is terminal or --until holds.
 */
static int watch_poll(PGconn *c, const opts_t *o, const char *id, uint64_t deadline)
{
    char *sql = cm_xasprintf("SHOW MIGRATION %s", id);
    bool tty = isatty(STDOUT_FILENO) && o->fmt == OUT_TABLE;
    cm_buf_t line = { 0 }, prev = { 0 };
    int rc = 0;

    for (;;) {
        PGresult *r = PQexec(c, sql);
        mig_status_t s;

        if (r == NULL || PQstatus(c) != CONNECTION_OK) {
            if (tty)
                fputc('\n', stdout);
            PQclear(r);
            die_conn_lost(c);
        }
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            if (tty && prev.len)
                fputc('\n', stdout);
            print_error(r, c);
            PQclear(r);
            rc = EXIT_REFUSED;
            break;
        }
        if (PQntuples(r) == 0) {
            fprintf(stderr, "pgshift-ctl: SHOW MIGRATION %s returned no row\n", id);
            PQclear(r);
            rc = EXIT_REFUSED;
            break;
        }
        /* Field/value shape when there are two columns named like that. */
        status_from(r, (PQnfields(r) == 2 && PQfnumber(r, "phase") < 0) ? -1 : 0, &s);
        if (o->fmt == OUT_JSON) {
            print_json_row(stdout, r, 0);
            fputc('\n', stdout);
        } else if (o->fmt == OUT_CSV) {
            if (prev.len == 0)
                print_csv_header(stdout, r);
            print_csv_row(stdout, r, 0);
            cm_buf_append_u8(&prev, 1);
        } else {
            render_status(&line, &s);
            if (tty) {
                fputs("\r\033[K", stdout);
                fwrite(line.data, 1, line.len, stdout);
            } else if (line.len != prev.len || memcmp(line.data, prev.data, line.len) != 0) {
                fwrite(line.data, 1, line.len, stdout);
                fputc('\n', stdout);
            }
            cm_buf_reset(&prev);
            cm_buf_append(&prev, line.data, line.len);
        }
        fflush(stdout);
        if (s.phase != NULL && (phase_is_terminal(s.phase) || until_reached(o, &s))) {
            rc = watch_exit(s.phase);
            PQclear(r);
            break;
        }
        PQclear(r);
        if (deadline != 0 && wall_ms() + (uint64_t)o->interval_ms > deadline) {
            if (tty)
                fputc('\n', stdout);
            fprintf(stderr, "pgshift-ctl: watch: timed out after %lds\n", o->timeout_s);
            rc = EXIT_TIMEOUT;
            tty = false;
            break;
        }
        sleep_ms(o->interval_ms);
        if (interrupted) {
            rc = EXIT_SIGINT;
            break;
        }
    }
    if (tty)
        fputc('\n', stdout);
    free(sql);
    cm_buf_free(&line);
    cm_buf_free(&prev);
    PQfinish(c);
    return rc;
}

static int cmd_watch(const opts_t *o, const char *id)
{
    uint64_t deadline = o->timeout_s > 0 ? wall_ms() + (uint64_t)o->timeout_s * 1000 : 0;
    PGconn *c = ctl_connect(o);
    int rc;

    if (!o->want_poll) {
        rc = watch_stream(c, o, id, deadline);
        if (rc != -1)
            return rc;
        if (PQstatus(c) != CONNECTION_OK)
            die_conn_lost(c);
        fputs("pgshift-ctl: this pgshift has no WATCH MIGRATION; polling SHOW MIGRATION\n", stderr);
    }
    return watch_poll(c, o, id, deadline);
}

/* ---- command line -------------------------------------------------------------- */

static void usage(FILE *f)
{
    fputs("pgshift-ctl - command-line client for pgshift's admin console\n"
          "\n"
          "Usage: pgshift-ctl [OPTION]... COMMAND [ARG]...\n"
          "\n"
          "Commands:\n"
          "  show stores|clients|servers|pools|stats|config|version\n"
          "  show routes|tenants|migrations\n"
          "  show migration ID          one migration: phase, progress, rate, errors\n"
          "  show audit ID              the audit log of a migration (same as: audit ID)\n"
          "  migrate TENANT STORE [KEY=VALUE]...\n"
          "                             start moving TENANT to STORE; prints the migration\n"
          "                             id. Keys: batch_size, max_bulk_copy_rate,\n"
          "                             cutover_max_lag_events, cutover_timeout_ms, ...\n"
          "  watch ID                   follow a migration live until it ends\n"
          "  pause ID [REASON]          pause a migration\n"
          "  resume ID                  resume a paused migration\n"
          "  abort ID [REASON]          abort a migration\n"
          "  pause [--timeout MS]       without ID: pause the whole proxy (PAUSE)\n"
          "  resume                     without ID: resume the whole proxy (RESUME)\n"
          "  cutover ID                 switch the migrating tenant to its target\n"
          "  verify ID                  compare a migrated tenant on both stores\n"
          "  audit ID                   the audit log of a migration\n"
          "  route TENANT STORE         set a tenant's route (tenant without data only)\n"
          "  reload                     reload pgshift's config file\n"
          "  shutdown                   stop pgshift\n"
          "  raw \"COMMAND\"              send any admin command as it is\n"
          "\n"
          "Connection (defaults: 127.0.0.1, port 6433, user $PGUSER or admin, database\n"
          "pgshift; the password from PGPASSWORD or ~/.pgpass, as libpq reads them):\n"
          "  -h, --host HOST            pgshift's address\n"
          "  -p, --port PORT            pgshift's admin_port\n"
          "  -U, --user USER            an admin user (admin_users in pgshift.ini)\n"
          "  -d, --dbname NAME          the console's database name\n"
          "  -c, --conninfo STRING      a libpq connection string or URI; -h/-p/-U/-d\n"
          "                             given as well override its fields\n"
          "\n"
          "Output:\n"
          "      --json                 JSON (an array of objects; one object per line\n"
          "                             for watch)\n"
          "      --csv                  CSV with a header line\n"
          "  -x, --expanded             one block per row (automatic for show migration)\n"
          "  -q, --quiet                no row counts or command tags\n"
          "\n"
          "watch:\n"
          "      --until PHASE|ready    stop once the migration reaches PHASE (or a\n"
          "                             later one), or is ready for cutover\n"
          "      --timeout SECONDS      give up after SECONDS (exit code 4)\n"
          "      --interval MS          polling interval when polling (default 1000)\n"
          "      --poll                 poll SHOW MIGRATION even if WATCH is available\n"
          "\n"
          "  -V, --version              print the version and exit\n"
          "  -?, --help                 show this help and exit\n"
          "\n"
          "Exit codes: 0 ok, 1 the server refused the command, 2 pgshift unreachable or\n"
          "connection lost, 3 watched migration ended ABORTED or FAILED, 4 watch timed\n"
          "out, 64 usage error.\n",
          f);
}

enum {
    OPT_JSON = 256,
    OPT_CSV,
    OPT_UNTIL,
    OPT_TIMEOUT,
    OPT_INTERVAL,
    OPT_POLL,
    OPT_HELP,
};

static long parse_long(const char *what, const char *s, long min, long max)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || *s == '\0' || *end != '\0' || v < min || v > max)
        die_usage("%s must be an integer from %ld to %ld, not \"%s\"", what, min, max, s);
    return v;
}

static const char *const show_objects[] = {
    "stores", "clients", "servers", "pools",   "stats",
    "config", "version", "routes",  "tenants", "migrations"
};

/* Build the SQL of a show command. Owned by the caller. */
static char *build_show(int argc, char **argv, bool *auto_expand)
{
    const char *what = argc > 0 ? argv[0] : NULL;

    if (what == NULL)
        die_usage("show: what? stores, clients, servers, pools, stats, config, version, routes, "
                  "tenants, migrations, migration ID or audit ID");
    if (strcasecmp(what, "migration") == 0) {
        if (argc > 2)
            die_usage("show migration: too many arguments");
        *auto_expand = true;
        return cm_xasprintf("SHOW MIGRATION %s", check_id("show migration", argv[1]));
    }
    if (strcasecmp(what, "audit") == 0) {
        if (argc > 2)
            die_usage("show audit: too many arguments");
        return cm_xasprintf("SHOW AUDIT %s", check_id("show audit", argv[1]));
    }
    for (size_t i = 0; i < CM_ARRAY_LEN(show_objects); i++) {
        if (strcasecmp(what, show_objects[i]) == 0) {
            char *sql, *p;

            if (argc > 1)
                die_usage("show %s: too many arguments", show_objects[i]);
            sql = cm_xasprintf("SHOW %s", show_objects[i]);
            for (p = sql; *p; p++)
                if (*p >= 'a' && *p <= 'z')
                    *p = (char)(*p - 'a' + 'A');
            return sql;
        }
    }
    die_usage("show: unknown object \"%s\" (try: stores, clients, servers, pools, stats, config, "
              "version, routes, tenants, migrations, migration ID, audit ID)",
              what);
    return NULL;
}

/* MIGRATE TENANT 'x' TO 'store' [WITH (k = v, ...)]. Owned by the caller. */
static char *build_migrate(int argc, char **argv)
{
    cm_buf_t b = { 0 };
    char *sql;

    if (argc < 2)
        die_usage("migrate: usage: migrate TENANT STORE [KEY=VALUE]...");
    if (*argv[0] == '\0' || *argv[1] == '\0')
        die_usage("migrate: tenant and store must not be empty");
    append_str(&b, "MIGRATE TENANT ");
    append_literal(&b, argv[0]);
    append_str(&b, " TO ");
    append_literal(&b, argv[1]);
    for (int i = 2; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        char *key;

        if (eq == NULL)
            die_usage("migrate: expected KEY=VALUE, not \"%s\"", argv[i]);
        key = cm_xstrndup(argv[i], (size_t)(eq - argv[i]));
        if (!is_ident(key))
            die_usage("migrate: \"%s\" is not a setting name", key);
        append_str(&b, i == 2 ? " WITH (" : ", ");
        append_str(&b, key);
        append_str(&b, " = ");
        /* Numbers and booleans go bare, anything else as a quoted literal. */
        if (is_number(eq + 1) || strcasecmp(eq + 1, "true") == 0 ||
            strcasecmp(eq + 1, "false") == 0)
            append_str(&b, eq + 1);
        else
            append_literal(&b, eq + 1);
        free(key);
    }
    if (argc > 2)
        append_str(&b, ")");
    sql = cm_xstrdup(buf_cstr(&b));
    cm_buf_free(&b);
    return sql;
}

/* PAUSE/RESUME/ABORT MIGRATION id ['reason'], or PAUSE/RESUME of the proxy. */
static char *build_migration_verb(const char *verb, int argc, char **argv, const opts_t *o)
{
    cm_buf_t b = { 0 };
    char *sql;

    if (argc == 0) {
        if (strcasecmp(verb, "abort") == 0)
            die_usage("abort: missing migration id");
        if (strcasecmp(verb, "pause") == 0 && o->pause_ms != NULL)
            return cm_xasprintf("PAUSE %ld", parse_long("--timeout", o->pause_ms, 0, 3600000));
        return cm_xstrdup(strcasecmp(verb, "pause") == 0 ? "PAUSE" : "RESUME");
    }
    if (argc > 2)
        die_usage("%s: too many arguments (quote the reason)", verb);
    if (strcasecmp(verb, "resume") == 0 && argc > 1)
        die_usage("resume: takes a migration id only");
    check_id(verb, argv[0]);
    append_str(&b, strcasecmp(verb, "pause") == 0   ? "PAUSE"
                   : strcasecmp(verb, "abort") == 0 ? "ABORT"
                                                    : "RESUME");
    append_str(&b, " MIGRATION ");
    append_str(&b, argv[0]);
    if (argc == 2) {
        append_str(&b, " ");
        append_literal(&b, argv[1]);
    }
    sql = cm_xstrdup(buf_cstr(&b));
    cm_buf_free(&b);
    return sql;
}

static char *build_route(int argc, char **argv)
{
    cm_buf_t b = { 0 };
    char *sql;

    if (argc != 2)
        die_usage("route: usage: route TENANT STORE");
    append_str(&b, "ROUTE TENANT ");
    append_literal(&b, argv[0]);
    append_str(&b, " TO ");
    append_literal(&b, argv[1]);
    sql = cm_xstrdup(buf_cstr(&b));
    cm_buf_free(&b);
    return sql;
}

static void no_args(const char *cmd, int argc)
{
    if (argc > 0)
        die_usage("%s takes no arguments", cmd);
}

/*
 * Turn the command words into one admin statement. Owned by the caller.
 * Sets *auto_expand for results that read better vertically.
 */
static char *build_sql(const char *cmd, int argc, char **argv, const opts_t *o, bool *auto_expand)
{
    if (strcasecmp(cmd, "show") == 0)
        return build_show(argc, argv, auto_expand);
    if (strcasecmp(cmd, "migrate") == 0)
        return build_migrate(argc, argv);
    if (strcasecmp(cmd, "pause") == 0 || strcasecmp(cmd, "resume") == 0 ||
        strcasecmp(cmd, "abort") == 0)
        return build_migration_verb(cmd, argc, argv, o);
    if (strcasecmp(cmd, "cutover") == 0 || strcasecmp(cmd, "verify") == 0) {
        if (argc > 1)
            die_usage("%s: too many arguments", cmd);
        return cm_xasprintf("%s %s", strcasecmp(cmd, "cutover") == 0 ? "CUTOVER" : "VERIFY",
                            check_id(cmd, argv[0]));
    }
    if (strcasecmp(cmd, "audit") == 0) {
        if (argc > 1)
            die_usage("audit: too many arguments");
        return cm_xasprintf("SHOW AUDIT %s", check_id(cmd, argv[0]));
    }
    if (strcasecmp(cmd, "route") == 0)
        return build_route(argc, argv);
    if (strcasecmp(cmd, "reload") == 0) {
        no_args(cmd, argc);
        return cm_xstrdup("RELOAD");
    }
    if (strcasecmp(cmd, "shutdown") == 0) {
        no_args(cmd, argc);
        return cm_xstrdup("SHUTDOWN");
    }
    if (strcasecmp(cmd, "raw") == 0) {
        if (argc != 1 || *argv[0] == '\0')
            die_usage("raw: give the whole command as one (quoted) argument");
        return cm_xstrdup(argv[0]);
    }
    die_usage("unknown command \"%s\"", cmd);
    return NULL;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "host", required_argument, NULL, 'h' },
        { "port", required_argument, NULL, 'p' },
        { "user", required_argument, NULL, 'U' },
        { "dbname", required_argument, NULL, 'd' },
        { "conninfo", required_argument, NULL, 'c' },
        { "expanded", no_argument, NULL, 'x' },
        { "quiet", no_argument, NULL, 'q' },
        { "json", no_argument, NULL, OPT_JSON },
        { "csv", no_argument, NULL, OPT_CSV },
        { "until", required_argument, NULL, OPT_UNTIL },
        { "timeout", required_argument, NULL, OPT_TIMEOUT },
        { "interval", required_argument, NULL, OPT_INTERVAL },
        { "poll", no_argument, NULL, OPT_POLL },
        { "version", no_argument, NULL, 'V' },
        { "help", no_argument, NULL, OPT_HELP },
        { NULL, 0, NULL, 0 },
    };
    opts_t o = { .fmt = OUT_TABLE, .interval_ms = 1000 };
    const char *timeout_arg = NULL, *cmd;
    struct sigaction sa;
    bool auto_expand = false;
    char *sql;
    PGconn *c;
    int ch, rc;

    /* "-?" as psql has it; getopt cannot tell it from an unknown option. */
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "-?") == 0) {
            usage(stdout);
            return 0;
        }
    }
    while ((ch = getopt_long(argc, argv, "h:p:U:d:c:xqV", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h':
            o.host = optarg;
            break;
        case 'p':
            parse_long("port", optarg, 1, 65535);
            o.port = optarg;
            break;
        case 'U':
            o.user = optarg;
            break;
        case 'd':
            o.dbname = optarg;
            break;
        case 'c':
            o.conninfo = optarg;
            break;
        case 'x':
            o.is_expanded = true;
            break;
        case 'q':
            o.is_quiet = true;
            break;
        case OPT_JSON:
            o.fmt = OUT_JSON;
            break;
        case OPT_CSV:
            o.fmt = OUT_CSV;
            break;
        case OPT_UNTIL:
            o.until = optarg;
            break;
        case OPT_TIMEOUT:
            timeout_arg = optarg;
            break;
        case OPT_INTERVAL:
            o.interval_ms = parse_long("--interval", optarg, 50, 3600000);
            break;
        case OPT_POLL:
            o.want_poll = true;
            break;
        case 'V':
            printf("pgshift-ctl %s\n", PGSHIFT_VERSION);
            return 0;
        case OPT_HELP:
            usage(stdout);
            return 0;
        default: /* getopt has already said what is wrong */
            fputs("Try \"pgshift-ctl --help\" for more information.\n", stderr);
            exit(EXIT_USAGE);
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    cmd = argv[optind];
    argc -= optind + 1;
    argv += optind + 1;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL); /* no SA_RESTART: poll() and nanosleep() wake up */

    if (strcasecmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcasecmp(cmd, "watch") == 0) {
        if (argc != 1)
            die_usage("watch: usage: watch ID [--until PHASE|ready] [--timeout SECONDS]");
        check_id("watch", argv[0]);
        if (timeout_arg != NULL)
            o.timeout_s = parse_long("--timeout", timeout_arg, 1, 86400 * 7);
        if (o.until != NULL && phase_rank(o.until) < 0 && strcasecmp(o.until, "ready") != 0 &&
            !phase_is_terminal(o.until))
            die_usage("--until: expected a phase (PENDING, BULK_COPY, DUAL_WRITE, CUTOVER, "
                      "COMPLETED, ABORTED, FAILED) or ready, not \"%s\"",
                      o.until);
        return cmd_watch(&o, argv[0]);
    }
    if (timeout_arg != NULL) {
        if (strcasecmp(cmd, "pause") != 0)
            die_usage("--timeout applies to watch and to pause only");
        o.pause_ms = timeout_arg;
    }
    sql = build_sql(cmd, argc, argv, &o, &auto_expand);
    if (auto_expand && o.fmt == OUT_TABLE)
        o.is_expanded = true;
    c = ctl_connect(&o);
    rc = run_command(c, &o, sql);
    free(sql);
    PQfinish(c);
    return rc;
}
