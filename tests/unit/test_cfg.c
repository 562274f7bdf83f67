/*
 * tests/unit/test_cfg.c - the config module: table defaults, every value
 * type, ini syntax errors, stores, derived defaults, overrides, restart
 * detection, SHOW CONFIG listing, and that the sample file and the docs list
 * every key of the table. Run from the repository root.
 */
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

#include "config/cfg.h"

/* A valid prefix: one store and an auth_type that needs no auth_file. Ends on line 4. */
#define BASE "[stores]\nmain = dbname=app\n[pgshift]\nauth_type = trust\n"

static cfg_t *parse_ok(const char *text)
{
    cfg_t *c = NULL;
    char *err = NULL;

    if (cfg_parse_text(text, "t.ini", &c, &err) != 0) {
        print_error("unexpected error: %s\n", err);
        free(err);
        fail();
    }
    assert_non_null(c);
    assert_null(err);
    return c;
}

/* Parses text that must fail; returns the owned error. */
static char *parse_err(const char *text)
{
    cfg_t *c = (cfg_t *)0x1;
    char *err = NULL;

    assert_int_equal(cfg_parse_text(text, "t.ini", &c, &err), -1);
    assert_ptr_equal(c, (cfg_t *)0x1); /* untouched */
    assert_non_null(err);
    return err;
}

static void expect_err(const char *text, const char *want)
{
    char *err = parse_err(text);

    assert_string_equal(err, want);
    free(err);
}

/* ---- defaults ----------------------------------------------------------- */

static void test_defaults(void **state)
{
    cfg_t *c = parse_ok(BASE);

    (void)state;
    assert_int_equal(c->refcount, 1);
    assert_string_equal(c->path, "t.ini");
    assert_string_equal(c->listen_addr, "127.0.0.1");
    assert_int_equal(c->listen_port, 6432);
    assert_int_equal(c->admin_port, 6433);
    assert_int_equal(c->http_port, 9930);
    assert_string_equal(c->unix_socket_dir, "");
    assert_int_equal(c->auth_type, CFG_AUTH_TRUST);
    assert_string_equal(c->auth_file, "");
    assert_string_equal(c->admin_users, "");
    assert_false(c->tenant_from_user);
    assert_string_equal(c->log_level, "info");
    assert_string_equal(c->pidfile, "");
    assert_int_equal(c->max_client_conn, 10000);
    assert_int_equal(c->max_message_len, 67108864);
    assert_int_equal(c->pkt_buf_len, 16384);
    assert_int_equal(c->max_buffer_len, 1048576);
    assert_int_equal(c->client_login_timeout_ms, 60000);
    assert_int_equal(c->client_idle_timeout_ms, 0);
    assert_int_equal(c->server_connect_timeout_ms, 15000);
    assert_int_equal(c->shutdown_timeout_ms, 30000);
    assert_int_equal(c->pause_timeout_ms, 10000);
    assert_int_equal(c->statement_cache_size, 4096);
    assert_int_equal(c->key_map_size, 1000000);
    assert_int_equal(c->client_tls_mode, CFG_TLS_DISABLE);
    assert_string_equal(c->client_tls_cert_file, "");
    assert_string_equal(c->client_tls_key_file, "");
    assert_string_equal(c->client_tls_ca_file, "");
    assert_string_equal(c->tenant_tables, "events,event_outbox,snapshots,projection_checkpoints");
    assert_string_equal(c->tenant_column, "tenant_id");
    assert_string_equal(c->key_columns, "aggregate_id");
    assert_string_equal(c->position_column, "global_position");
    assert_string_equal(c->row_key, "event_id");
    assert_int_equal(c->mig_batch_size, 1000);
    assert_int_equal(c->mig_max_bulk_copy_rate, 10000);
    assert_int_equal(c->mig_dual_write_timeout_minutes, 30);
    assert_int_equal(c->mig_cutover_max_lag_events, 100);
    assert_int_equal(c->mig_cutover_timeout_ms, 500);
    assert_true(c->mig_position_mapping_enabled);
    assert_true(c->mig_verify_consistency);
    assert_true(c->mig_migrate_subscriptions);
    assert_false(c->mig_auto_cutover);
    cfg_unref(c);
}

/* The default auth_type is scram-sha-256 (only visible with an auth_file). */
static void test_default_auth_type(void **state)
{
    cfg_t *c = parse_ok("[stores]\nmain = dbname=app\n[pgshift]\nauth_file = users.txt\n");

    (void)state;
    assert_int_equal(c->auth_type, CFG_AUTH_SCRAM);
    cfg_unref(c);
}

static void test_new_default(void **state)
{
    cfg_t *c = cfg_new_default();

    (void)state;
    assert_int_equal(c->refcount, 1);
    assert_int_equal(c->n_stores, 1);
    assert_string_equal(c->default_store, c->stores[0].name);
    assert_string_equal(c->control_store, c->stores[0].name);
    assert_string_equal(c->database, "postgres");
    assert_int_equal(c->listen_port, 6432);
    assert_int_equal(c->auth_type, CFG_AUTH_TRUST);
    cfg_unref(c);
}

typedef struct each_rec {
    size_t n;
    size_t n_stores;
    char lines[128][320];
} each_rec_t;

static void each_cb(void *arg, const char *section, const char *name, const char *value,
                    const char *default_value, bool reloadable)
{
    each_rec_t *r = arg;

    assert_true(r->n < CM_ARRAY_LEN(r->lines));
    snprintf(r->lines[r->n++], sizeof(r->lines[0]), "%s.%s=%s|%s|%s", section, name, value,
             default_value, reloadable ? "reload" : "restart");
    if (strcmp(section, "stores") == 0)
        r->n_stores++;
}

/* Every table default is in canonical form: parsing it and printing it gives it back. */
static void test_table_defaults_canonical(void **state)
{
    cfg_t *c = parse_ok("[stores]\nmain = dbname=app\n[pgshift]\nauth_file = u\n"
                        "default_store = main\ncontrol_store = main\ndatabase = app\n");
    each_rec_t *r = calloc(1, sizeof(*r));
    size_t k = 0;

    (void)state;
    cfg_each(c, each_cb, r);
    assert_int_equal(r->n, cfg_n_keys() + 1);
    for (size_t i = 0; i < r->n; i++) {
        const char *section, *name;
        char want[320];

        if (strncmp(r->lines[i], "stores.", 7) == 0)
            continue;
        name = cfg_key_name(k, &section);
        if (strcmp(name, "auth_file") == 0 || strcmp(name, "default_store") == 0 ||
            strcmp(name, "control_store") == 0 || strcmp(name, "database") == 0) {
            k++;
            continue; /* set above, so value != default */
        }
        snprintf(want, sizeof(want), "%s.%s=%s|%s|%s", section, name, cfg_key_default(k),
                 cfg_key_default(k), cfg_key_reload(k) == CFG_RELOAD ? "reload" : "restart");
        assert_string_equal(r->lines[i], want);
        k++;
    }
    assert_int_equal(k, cfg_n_keys());
    free(r);
    cfg_unref(c);
}

/* ---- values of each type ------------------------------------------------ */

static void test_good_values(void **state)
{
    cfg_t *c = parse_ok(BASE "; comment\n# another comment\n\n"
                             "  listen_addr   =   \"0.0.0.0, ::1\"  \n"
                             "listen_port=7000\n"
                             "admin_port = 0\n"
                             "http_port = 65535\n"
                             "unix_socket_dir = /tmp\n"
                             "admin_users = \"admin, ops root\"\n"
                             "tenant_from_user = on\n"
                             "log_level = DEBUG\n"
                             "max_client_conn = +5\n"
                             "max_message_len = 1GB\n"
                             "pkt_buf_len = 8 kB\n"
                             "max_buffer_len = 2048\n"
                             "client_login_timeout_ms = 5s\n"
                             "client_idle_timeout_ms = 2min\n"
                             "server_connect_timeout_ms = 1h\n"
                             "shutdown_timeout_ms = 250ms\n"
                             "pause_timeout_ms = 42\n"
                             "client_tls_mode = Require\n"
                             "client_tls_cert_file = \"/etc/a \\\"b\\\" \\\\c.pem\"\n"
                             "client_tls_key_file = key.pem\n"
                             "[tenancy]\n"
                             "tenant_tables = public.events , outbox\n"
                             "key_columns = aggregate_id, stream_id\n"
                             "tenant_column = org\n"
                             "[migration]\n"
                             "batch_size = 1\n"
                             "max_bulk_copy_rate = 0\n"
                             "position_mapping_enabled = no\n"
                             "verify_consistency = 0\n"
                             "migrate_subscriptions = FALSE\n"
                             "auto_cutover = yes\n"
                             "cutover_timeout_ms = 1s\n");

    (void)state;
    assert_string_equal(c->listen_addr, "0.0.0.0, ::1");
    assert_int_equal(c->listen_port, 7000);
    assert_int_equal(c->admin_port, 0);
    assert_int_equal(c->http_port, 65535);
    assert_string_equal(c->unix_socket_dir, "/tmp");
    assert_string_equal(c->admin_users, "admin, ops root");
    assert_true(c->tenant_from_user);
    assert_string_equal(c->log_level, "debug"); /* canonical spelling */
    assert_int_equal(c->max_client_conn, 5);
    assert_int_equal(c->max_message_len, 1024 * 1024 * 1024);
    assert_int_equal(c->pkt_buf_len, 8192);
    assert_int_equal(c->max_buffer_len, 2048);
    assert_int_equal(c->client_login_timeout_ms, 5000);
    assert_int_equal(c->client_idle_timeout_ms, 120000);
    assert_int_equal(c->server_connect_timeout_ms, 3600000);
    assert_int_equal(c->shutdown_timeout_ms, 250);
    assert_int_equal(c->pause_timeout_ms, 42);
    assert_int_equal(c->client_tls_mode, CFG_TLS_REQUIRE);
    assert_string_equal(c->client_tls_cert_file, "/etc/a \"b\" \\c.pem");
    assert_string_equal(c->tenant_tables, "public.events , outbox");
    assert_string_equal(c->key_columns, "aggregate_id, stream_id");
    assert_string_equal(c->tenant_column, "org");
    assert_int_equal(c->mig_batch_size, 1);
    assert_int_equal(c->mig_max_bulk_copy_rate, 0);
    assert_false(c->mig_position_mapping_enabled);
    assert_false(c->mig_verify_consistency);
    assert_false(c->mig_migrate_subscriptions);
    assert_true(c->mig_auto_cutover);
    assert_int_equal(c->mig_cutover_timeout_ms, 1000);
    cfg_unref(c);
}

static void test_bool_spellings(void **state)
{
    static const char *const yes[] = { "true", "on", "yes", "1", "TRUE", "Yes" };
    static const char *const no[] = { "false", "off", "no", "0", "Off" };
    char text[256];

    (void)state;
    for (size_t i = 0; i < CM_ARRAY_LEN(yes); i++) {
        cfg_t *c;

        snprintf(text, sizeof(text), BASE "tenant_from_user = %s\n", yes[i]);
        c = parse_ok(text);
        assert_true(c->tenant_from_user);
        cfg_unref(c);
    }
    for (size_t i = 0; i < CM_ARRAY_LEN(no); i++) {
        cfg_t *c;

        snprintf(text, sizeof(text), BASE "[migration]\nverify_consistency = %s\n", no[i]);
        c = parse_ok(text);
        assert_false(c->mig_verify_consistency);
        cfg_unref(c);
    }
}

static void test_enum_values(void **state)
{
    static const struct {
        const char *v;
        cfg_auth_type_t want;
    } auth[] = { { "trust", CFG_AUTH_TRUST },
                 { "md5", CFG_AUTH_MD5 },
                 { "scram-sha-256", CFG_AUTH_SCRAM } };
    char text[256];

    (void)state;
    for (size_t i = 0; i < CM_ARRAY_LEN(auth); i++) {
        cfg_t *c;

        snprintf(text, sizeof(text),
                 "[stores]\nmain = dbname=app\n[pgshift]\nauth_file = f\nauth_type = %s\n",
                 auth[i].v);
        c = parse_ok(text);
        assert_int_equal(c->auth_type, auth[i].want);
        cfg_unref(c);
    }
    for (int i = 0; i < 3; i++) {
        static const char *const names[] = { "disable", "allow", "require" };
        cfg_t *c;

        snprintf(text, sizeof(text),
                 BASE "client_tls_mode = %s\nclient_tls_cert_file = c\nclient_tls_key_file = k\n",
                 names[i]);
        c = parse_ok(text);
        assert_int_equal(c->client_tls_mode, i);
        cfg_unref(c);
    }
}

/* Each bad value, on line 5 after BASE, with its exact message. */
static void test_bad_values(void **state)
{
    static const struct {
        const char *line;
        const char *err;
    } cases[] = {
        { "listen_port = abc", "t.ini:5: listen_port: \"abc\" is not an integer" },
        { "listen_port = 12x", "t.ini:5: listen_port: \"12x\" is not an integer" },
        { "listen_port = ", "t.ini:5: listen_port: \"\" is not an integer" },
        { "listen_port = 0x10", "t.ini:5: listen_port: \"0x10\" is not an integer" },
        { "listen_port = 1.5", "t.ini:5: listen_port: \"1.5\" is not an integer" },
        { "listen_port = \" 7\"", "t.ini:5: listen_port: \" 7\" is not an integer" },
        { "listen_port = 0", "t.ini:5: listen_port: 0 is out of range 1..65535" },
        { "listen_port = 65536", "t.ini:5: listen_port: 65536 is out of range 1..65535" },
        { "admin_port = -1", "t.ini:5: admin_port: -1 is out of range 0..65535" },
        { "http_port = 99999999999999999999999",
          "t.ini:5: http_port: 99999999999999999999999 is out of range 0..65535" },
        { "max_client_conn = 0", "t.ini:5: max_client_conn: 0 is out of range 1..1000000" },
        { "max_message_len = 12 parsecs",
          "t.ini:5: max_message_len: \"12 parsecs\" is not a size (bytes, or kB/MB/GB)" },
        { "max_message_len = MB",
          "t.ini:5: max_message_len: \"MB\" is not a size (bytes, or kB/MB/GB)" },
        { "max_message_len = 2GB", "t.ini:5: max_message_len: 2GB is out of range 1kB..1GB" },
        { "pkt_buf_len = 0", "t.ini:5: pkt_buf_len: 0 is out of range 1kB..64MB" },
        { "pkt_buf_len = -4kB", "t.ini:5: pkt_buf_len: -4kB is out of range 1kB..64MB" },
        { "max_buffer_len = 9999999999999GB",
          "t.ini:5: max_buffer_len: 9999999999999GB is out of range 1kB..1GB" },
        { "tenant_from_user = maybe", "t.ini:5: tenant_from_user: \"maybe\" is not a boolean "
                                      "(true/false/on/off/yes/no/1/0)" },
        { "tenant_from_user = 2",
          "t.ini:5: tenant_from_user: \"2\" is not a boolean (true/false/on/off/yes/no/1/0)" },
        { "client_tls_mode = prefer",
          "t.ini:5: client_tls_mode: \"prefer\" is not one of disable, allow, require" },
        { "log_level = verbose",
          "t.ini:5: log_level: \"verbose\" is not one of fatal, error, warning, info, debug, "
          "noise" },
        { "client_login_timeout_ms = 5 days",
          "t.ini:5: client_login_timeout_ms: \"5 days\" is not a duration (milliseconds, or "
          "ms/s/min/h)" },
        { "client_login_timeout_ms = 0",
          "t.ini:5: client_login_timeout_ms: 0 is out of range 1..2147483647" },
        { "client_idle_timeout_ms = 1000h",
          "t.ini:5: client_idle_timeout_ms: 1000h is out of range 0..2147483647" },
        { "unix_socket_dir = run",
          "t.ini:5: unix_socket_dir: \"run\": must be an absolute path or empty" },
        { "default_store = 1st",
          "t.ini:5: default_store: \"1st\": must be an identifier [A-Za-z_][A-Za-z0-9_]*" },
        { "listen_port = \"7000", "t.ini:5: listen_port: unterminated quoted value" },
        { "listen_port = \"7000\" x", "t.ini:5: listen_port: text after the closing quote" },
    };

    (void)state;
    for (size_t i = 0; i < CM_ARRAY_LEN(cases); i++) {
        char text[512];

        snprintf(text, sizeof(text), BASE "%s\n", cases[i].line);
        expect_err(text, cases[i].err);
    }
    expect_err("[stores]\nmain = dbname=app\n[pgshift]\nauth_type = password\n",
               "t.ini:4: auth_type: \"password\" is not one of trust, md5, scram-sha-256");
}

static void test_bad_tenancy_and_migration(void **state)
{
    (void)state;
    expect_err(BASE "[tenancy]\ntenant_column = tenant-id\n",
               "t.ini:6: tenant_column: \"tenant-id\": must be an identifier "
               "[A-Za-z_][A-Za-z0-9_]*");
    expect_err(BASE "[tenancy]\ntenant_tables = events,,outbox\n",
               "t.ini:6: tenant_tables: \"events,,outbox\": must be a comma-separated list of "
               "[schema.]table names");
    expect_err(BASE "[tenancy]\ntenant_tables = a.b.c\n",
               "t.ini:6: tenant_tables: \"a.b.c\": must be a comma-separated list of "
               "[schema.]table names");
    expect_err(BASE "[tenancy]\nkey_columns = \n", "t.ini:6: key_columns: \"\": must not be empty");
    expect_err(BASE "[tenancy]\nkey_columns = a.b\n",
               "t.ini:6: key_columns: \"a.b\": must be a comma-separated list of identifiers");
    expect_err(BASE "[migration]\nbatch_size = 0\n",
               "t.ini:6: batch_size: 0 is out of range 1..1000000");
    expect_err(BASE "[migration]\nauto_cutover = sure\n",
               "t.ini:6: auto_cutover: \"sure\" is not a boolean (true/false/on/off/yes/no/1/0)");
    expect_err(BASE "[migration]\ncutover_timeout_ms = soon\n",
               "t.ini:6: cutover_timeout_ms: \"soon\" is not a duration (milliseconds, or "
               "ms/s/min/h)");
}

/* ---- ini syntax --------------------------------------------------------- */

static void test_syntax_errors(void **state)
{
    (void)state;
    expect_err(BASE "[pgshif]\n", "t.ini:5: [pgshif]: unknown section");
    expect_err(BASE "[pgshift\n", "t.ini:5: [pgshift: malformed section header");
    expect_err(BASE "listen_prot = 1\n", "t.ini:5: listen_prot: unknown key in [pgshift]");
    expect_err(BASE "[migration]\nlisten_port = 1\n",
               "t.ini:6: listen_port: unknown key in [migration]");
    expect_err(BASE "\nlisten_port = 1\n  listen_port = 2\n",
               "t.ini:7: listen_port: duplicate key (first set on line 6)");
    expect_err(BASE "auth_type = md5\n", "t.ini:5: auth_type: duplicate key (first set on line 4)");
    expect_err(BASE "listen_port 6432\n", "t.ini:5: listen_port 6432: missing '='");
    expect_err(BASE "= 5\n", "t.ini:5: (empty): missing key before '='");
    expect_err("listen_port = 1\n", "t.ini:1: listen_port: key before any [section]");
    /* A key may be set in a section reopened later, but still only once. */
    expect_err(BASE "[tenancy]\n[pgshift]\nauth_type = md5\n",
               "t.ini:7: auth_type: duplicate key (first set on line 4)");
}

static void test_crlf_and_no_final_newline(void **state)
{
    cfg_t *c = parse_ok("[stores]\r\nmain = dbname=app\r\n[pgshift]\r\nauth_type = trust\r\n"
                        "listen_port = 7001");

    (void)state;
    assert_int_equal(c->listen_port, 7001);
    assert_string_equal(c->stores[0].conninfo, "dbname=app");
    cfg_unref(c);
}

/* NULL path: messages still have the FILE:LINE shape. */
static void test_error_without_path(void **state)
{
    cfg_t *c = NULL;
    char *err = NULL;

    (void)state;
    assert_int_equal(cfg_parse_text(BASE "x = 1\n", NULL, &c, &err), -1);
    assert_null(c);
    assert_string_equal(err, "(config):5: x: unknown key in [pgshift]");
    free(err);
}

/* ---- stores --------------------------------------------------------------- */

static void test_stores_order(void **state)
{
    cfg_t *c = parse_ok("[stores]\n"
                        "zeta = host=10.0.0.1 dbname=z\n"
                        "alpha = \"host=10.0.0.2 dbname=a password='p w'\"\n"
                        "_m1 = postgresql://u@h:5433/m\n"
                        "[pgshift]\nauth_type = trust\n");

    (void)state;
    assert_int_equal(c->n_stores, 3);
    assert_string_equal(c->stores[0].name, "zeta");
    assert_string_equal(c->stores[1].name, "alpha");
    assert_string_equal(c->stores[2].name, "_m1");
    assert_string_equal(c->stores[1].conninfo, "host=10.0.0.2 dbname=a password='p w'");
    assert_ptr_equal(cfg_store_find(c, "alpha"), &c->stores[1]);
    assert_null(cfg_store_find(c, "beta"));
    assert_string_equal(c->default_store, "zeta");
    cfg_unref(c);
}

static void test_store_errors(void **state)
{
    char *err;

    (void)state;
    expect_err("[pgshift]\nauth_type = trust\n",
               "t.ini: stores: at least one store is required in [stores]");
    expect_err("[stores]\na = dbname=x\nb = dbname=y\na = dbname=z\n",
               "t.ini:4: a: duplicate key (first set on line 2)");
    expect_err("[stores]\nmy-store = dbname=x\n",
               "t.ini:2: my-store: store names must be identifiers [A-Za-z_][A-Za-z0-9_]*");
    err = parse_err("[stores]\na = dbname=x nonsense_option=1\n");
    assert_true(strncmp(err, "t.ini:2: a: bad connection string: ", 35) == 0);
    assert_non_null(strstr(err, "nonsense_option"));
    free(err);
    err = parse_err("[stores]\na = host='unterminated\n");
    assert_true(strncmp(err, "t.ini:2: a: bad connection string: ", 35) == 0);
    free(err);
}

/* ---- derived defaults and cross-key validation -------------------------- */

static void test_derived_defaults(void **state)
{
    static const struct {
        const char *conninfo;
        const char *db;
    } cases[] = {
        { "host=h dbname=orders user=u", "orders" },
        { "host=h user=alice", "alice" },
        { "host=h", "postgres" },
        { "postgresql://bob@h:5432/ledger", "ledger" },
        { "postgresql://bob@h:5432", "bob" },
        { "dbname='postgresql://x@h/inner'", "inner" },
    };
    char text[256];

    (void)state;
    for (size_t i = 0; i < CM_ARRAY_LEN(cases); i++) {
        cfg_t *c;

        snprintf(text, sizeof(text),
                 "[stores]\nfirst = %s\nsecond = dbname=other\n[pgshift]\n"
                 "auth_type = trust\n",
                 cases[i].conninfo);
        c = parse_ok(text);
        assert_string_equal(c->default_store, "first");
        assert_string_equal(c->control_store, "first");
        assert_string_equal(c->database, cases[i].db);
        cfg_unref(c);
    }
}

static void test_explicit_stores(void **state)
{
    cfg_t *c = parse_ok("[stores]\na = dbname=one\nb = dbname=two\nc = dbname=three\n"
                        "[pgshift]\nauth_type = trust\ndefault_store = b\n");

    (void)state;
    assert_string_equal(c->default_store, "b");
    assert_string_equal(c->control_store, "b");
    assert_string_equal(c->database, "two");
    cfg_unref(c);

    c = parse_ok("[stores]\na = dbname=one\nb = dbname=two\n"
                 "[pgshift]\nauth_type = trust\ndefault_store = b\ncontrol_store = a\n"
                 "database = public_name\n");
    assert_string_equal(c->default_store, "b");
    assert_string_equal(c->control_store, "a");
    assert_string_equal(c->database, "public_name");
    cfg_unref(c);

    expect_err("[stores]\na = dbname=one\n[pgshift]\nauth_type = trust\ndefault_store = zz\n",
               "t.ini:5: default_store: no store named \"zz\" in [stores]");
    expect_err("[stores]\na = dbname=one\n[pgshift]\nauth_type = trust\n\ncontrol_store = b\n",
               "t.ini:6: control_store: no store named \"b\" in [stores]");
}

static void test_cross_key_rules(void **state)
{
    cfg_t *c;

    (void)state;
    /* The default auth_type (scram-sha-256) needs an auth_file. */
    expect_err("[stores]\na = dbname=x\n", "t.ini: auth_file: required unless auth_type = trust");
    expect_err("[stores]\na = dbname=x\n[pgshift]\nauth_type = md5\n",
               "t.ini: auth_file: required unless auth_type = trust");
    c = parse_ok("[stores]\na = dbname=x\n[pgshift]\nauth_type = md5\nauth_file = /u.txt\n");
    assert_int_equal(c->auth_type, CFG_AUTH_MD5);
    cfg_unref(c);
    expect_err(BASE "client_tls_mode = allow\nclient_tls_key_file = k\n",
               "t.ini: client_tls_cert_file: required when client_tls_mode is allow or require");
    expect_err(BASE "client_tls_mode = require\nclient_tls_cert_file = c\n",
               "t.ini: client_tls_key_file: required when client_tls_mode is allow or require");
    c = parse_ok(BASE "client_tls_mode = disable\nclient_tls_cert_file = c\n");
    cfg_unref(c);
    expect_err(BASE "admin_port = 6432\n", "t.ini:5: admin_port: same as listen_port");
    expect_err(BASE "http_port = 6433\n", "t.ini:5: http_port: same as listen_port or admin_port");
    c = parse_ok(BASE "admin_port = 0\nhttp_port = 0\n");
    assert_int_equal(c->admin_port, 0);
    cfg_unref(c);
    expect_err(BASE "listen_addr = \"\"\n",
               "t.ini:5: listen_addr: empty, and no unix_socket_dir: nothing to listen on");
    c = parse_ok(BASE "listen_addr =\nunix_socket_dir = /run/pgshift\n");
    assert_string_equal(c->listen_addr, "");
    cfg_unref(c);
}

/* ---- overrides ------------------------------------------------------------ */

static void set_ok(cfg_t *c, const char *key, const char *value)
{
    char *err = NULL;

    if (cfg_set(c, key, value, &err) != 0) {
        print_error("cfg_set %s=%s: %s\n", key, value, err);
        free(err);
        fail();
    }
}

static void set_err(cfg_t *c, const char *key, const char *value, const char *want)
{
    char *err = NULL;

    assert_int_equal(cfg_set(c, key, value, &err), -1);
    assert_non_null(err);
    assert_string_equal(err, want);
    free(err);
}

static void test_overrides(void **state)
{
    cfg_t *c = parse_ok("[stores]\na = dbname=one\nb = dbname=two\n[pgshift]\n"
                        "auth_type = trust\nlisten_port = 7000\n");
    char *err = NULL;

    (void)state;
    set_ok(c, "pgshift.listen_port", "7100");
    assert_int_equal(c->listen_port, 7100);
    set_ok(c, "listen_port", "7200");
    assert_int_equal(c->listen_port, 7200);
    set_ok(c, "batch_size", "77"); /* bare key outside [pgshift] */
    assert_int_equal(c->mig_batch_size, 77);
    set_ok(c, "migration.auto_cutover", "on");
    assert_true(c->mig_auto_cutover);
    set_ok(c, "tenancy.tenant_column", "org_id");
    assert_string_equal(c->tenant_column, "org_id");
    set_ok(c, "max_message_len", "2MB");
    assert_int_equal(c->max_message_len, 2 * 1024 * 1024);

    set_err(c, "listen_port", "x", "override: listen_port: \"x\" is not an integer");
    set_err(c, "pgshift.batch_size", "5", "override: pgshift.batch_size: unknown key");
    set_err(c, "nosuch", "5", "override: nosuch: unknown key");
    set_err(c, "bogus.key", "5", "override: bogus.key: unknown section [bogus]");
    set_err(c, "stores.bad-name", "dbname=x",
            "override: stores.bad-name: store names must be identifiers "
            "[A-Za-z_][A-Za-z0-9_]*");
    assert_int_equal(c->listen_port, 7200); /* failed sets change nothing */

    /* Stores: replace one, add one; order kept. */
    set_ok(c, "stores.b", "dbname=deux");
    set_ok(c, "stores.c", "dbname=trois");
    assert_int_equal(c->n_stores, 3);
    assert_string_equal(c->stores[1].conninfo, "dbname=deux");
    assert_string_equal(c->stores[2].name, "c");

    /* Derived defaults follow an override of their source at the next validate. */
    assert_int_equal(cfg_validate(c, &err), 0);
    assert_string_equal(c->default_store, "a");
    assert_string_equal(c->database, "one");
    set_ok(c, "default_store", "b");
    assert_int_equal(cfg_validate(c, &err), 0);
    assert_string_equal(c->default_store, "b");
    assert_string_equal(c->control_store, "b");
    assert_string_equal(c->database, "deux");
    /* An explicit value sticks. */
    set_ok(c, "control_store", "c");
    set_ok(c, "default_store", "a");
    assert_int_equal(cfg_validate(c, &err), 0);
    assert_string_equal(c->control_store, "c");
    assert_string_equal(c->database, "one");
    set_ok(c, "default_store", "zz");
    assert_int_equal(cfg_validate(c, &err), -1);
    assert_string_equal(err, "t.ini: default_store: no store named \"zz\" in [stores]");
    free(err);
    cfg_unref(c);
}

/* ---- restart detection, refcount, listing --------------------------------- */

static void test_restart_needed(void **state)
{
    static const struct {
        const char *line;
        const char *restart; /* NULL: reloadable */
    } cases[] = {
        { "listen_port = 7000", "listen_port" },
        { "listen_addr = 0.0.0.0", "listen_addr" },
        { "admin_port = 7001", "admin_port" },
        { "http_port = 0", "http_port" },
        { "unix_socket_dir = /tmp", "unix_socket_dir" },
        { "max_client_conn = 5", NULL },
        { "client_idle_timeout_ms = 1000", NULL },
        { "max_message_len = 2MB", NULL },
        { "log_level = debug", NULL },
        { "admin_users = bob", NULL },
        { "auth_type = md5\nauth_file = x", NULL },
        { "[tenancy]\ntenant_column = org", "tenant_column" },
        { "[migration]\nbatch_size = 5", NULL },
        { "[stores]\nextra = dbname=x", NULL },
    };
    cfg_t *a = parse_ok(BASE);
    char text[256];

    (void)state;
    assert_null(cfg_restart_needed(a, a));
    for (size_t i = 0; i < CM_ARRAY_LEN(cases); i++) {
        cfg_t *b;

        if (strncmp(cases[i].line, "auth_type", 9) == 0)
            snprintf(text, sizeof(text), "[stores]\nmain = dbname=app\n[pgshift]\n%s\n",
                     cases[i].line);
        else
            snprintf(text, sizeof(text), BASE "%s\n", cases[i].line);
        b = parse_ok(text);
        if (cases[i].restart == NULL)
            assert_null(cfg_restart_needed(a, b));
        else
            assert_string_equal(cfg_restart_needed(a, b), cases[i].restart);
        cfg_unref(b);
    }
    cfg_unref(a);
}

static void test_refcount(void **state)
{
    cfg_t *c = parse_ok(BASE);

    (void)state;
    assert_ptr_equal(cfg_ref(c), c);
    assert_int_equal(c->refcount, 2);
    cfg_unref(c);
    assert_int_equal(c->refcount, 1);
    assert_string_equal(c->listen_addr, "127.0.0.1"); /* still alive */
    cfg_unref(c);                                     /* freed: ASan/valgrind see leaks */
    cfg_unref(NULL);
}

static void test_each(void **state)
{
    cfg_t *c = parse_ok("[stores]\n"
                        "p = host=h password=s3cret dbname=app\n"
                        "q = postgresql://u:hunter2@h/db\n"
                        "[pgshift]\nauth_type = trust\nmax_message_len = 65536\n"
                        "[tenancy]\nrow_key = id\n");
    each_rec_t *r = calloc(1, sizeof(*r));
    size_t n_pgshift = 0;

    (void)state;
    cfg_each(c, each_cb, r);
    assert_int_equal(r->n_stores, 2);
    assert_int_equal(r->n, cfg_n_keys() + 2);
    for (size_t i = 0; i < cfg_n_keys(); i++) {
        const char *section;

        cfg_key_name(i, &section);
        n_pgshift += strcmp(section, "pgshift") == 0;
    }
    /* [pgshift] first, then the stores, then [tenancy] and [migration]. */
    assert_string_equal(r->lines[0], "pgshift.listen_addr=127.0.0.1|127.0.0.1|restart");
    assert_string_equal(r->lines[n_pgshift], "stores.p=host=h password=*** dbname=app||reload");
    assert_string_equal(r->lines[n_pgshift + 1], "stores.q=postgresql://u:***@h/db||reload");
    assert_string_equal(r->lines[n_pgshift + 2],
                        "tenancy.tenant_tables=events,event_outbox,snapshots,"
                        "projection_checkpoints|events,event_outbox,snapshots,"
                        "projection_checkpoints|restart");
    for (size_t i = 0; i < r->n; i++) {
        assert_null(strstr(r->lines[i], "s3cret"));
        assert_null(strstr(r->lines[i], "hunter2"));
    }
    /* Values print in the defaults' form; derived values show their result. */
    {
        bool seen_len = false, seen_auth = false, seen_db = false, seen_row = false;

        for (size_t i = 0; i < r->n; i++) {
            seen_len |= strcmp(r->lines[i], "pgshift.max_message_len=64kB|64MB|reload") == 0;
            seen_auth |= strcmp(r->lines[i], "pgshift.auth_type=trust|scram-sha-256|reload") == 0;
            seen_db |= strcmp(r->lines[i], "pgshift.database=app||reload") == 0;
            seen_row |= strcmp(r->lines[i], "tenancy.row_key=id|event_id|restart") == 0;
        }
        assert_true(seen_len);
        assert_true(seen_auth);
        assert_true(seen_db);
        assert_true(seen_row);
    }
    free(r);
    cfg_unref(c);
}

static void test_conninfo_mask(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        { "host=h dbname=d", "host=h dbname=d" },
        { "host=h password=secret dbname=d", "host=h password=*** dbname=d" },
        { "password = 'a b\\' c' host=h", "password = *** host=h" },
        { "  password=x", "  password=***" },
        { "passwordx=1 password=2", "passwordx=1 password=***" },
        { "dbname='host=h password=pw' user=u", "dbname='host=h password=***' user=u" },
        { "postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db" },
        { "postgres://u@h/db?password=pw&sslmode=require",
          "postgres://u@h/db?password=***&sslmode=require" },
        { "postgresql://h/db", "postgresql://h/db" },
        { "postgresql://u:p@h1,h2/db?application_name=a&password=x",
          "postgresql://u:***@h1,h2/db?application_name=a&password=***" },
        { "host=h password='unterminated", "host=h password=***" },
        { "", "" },
    };

    (void)state;
    for (size_t i = 0; i < CM_ARRAY_LEN(cases); i++) {
        char *m = cfg_conninfo_mask(cases[i].in);

        assert_string_equal(m, cases[i].out);
        free(m);
    }
}

static void test_is_admin(void **state)
{
    cfg_t *c = parse_ok(BASE "admin_users = \"alice, bob  carol,dave\"\n");

    (void)state;
    assert_true(cfg_is_admin(c, "alice"));
    assert_true(cfg_is_admin(c, "bob"));
    assert_true(cfg_is_admin(c, "carol"));
    assert_true(cfg_is_admin(c, "dave"));
    assert_false(cfg_is_admin(c, "al"));
    assert_false(cfg_is_admin(c, "alice,"));
    assert_false(cfg_is_admin(c, "Alice"));
    assert_false(cfg_is_admin(c, ""));
    cfg_unref(c);
    c = parse_ok(BASE);
    assert_false(cfg_is_admin(c, "alice"));
    cfg_unref(c);
}

static void test_load_file(void **state)
{
    cfg_t *c = NULL;
    char *err = NULL;
    char path[] = "/tmp/test_cfg_XXXXXX";
    int fd = mkstemp(path);
    FILE *f;

    (void)state;
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    fputs(BASE "listen_port = 6500\nbogus = 1\n", f);
    fclose(f);
    assert_int_equal(cfg_load_file(path, &c, &err), -1);
    {
        char *want = cm_xasprintf("%s:6: bogus: unknown key in [pgshift]", path);

        assert_string_equal(err, want);
        free(want);
    }
    free(err);
    unlink(path);
    assert_int_equal(cfg_load_file(path, &c, &err), -1);
    assert_non_null(strstr(err, "cannot open"));
    assert_true(strncmp(err, path, strlen(path)) == 0);
    free(err);
}

/* ---- the sample file and the docs ----------------------------------------- */

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    if (f == NULL) {
        print_error("cannot open %s (run from the repository root)\n", path);
        fail();
    }
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/*
 * Finds key k in the sample's lines, inside its [section], as "key = ..." or
 * the commented default ";key = DEFAULT". Returns the line's offset or -1.
 */
static long sample_find(const char *text, size_t k)
{
    const char *section, *name = cfg_key_name(k, &section);
    const char *def = cfg_key_default(k);
    char cur[64] = "";
    const char *p = text;

    while (*p != '\0') {
        const char *eol = strchr(p, '\n');
        size_t len = eol != NULL ? (size_t)(eol - p) : strlen(p);
        char line[512];

        snprintf(line, sizeof(line), "%.*s", (int)len, p);
        if (line[0] == '[') {
            snprintf(cur, sizeof(cur), "%.*s", (int)(strcspn(line + 1, "]")), line + 1);
        } else if (strcmp(cur, section) == 0) {
            size_t n = strlen(name);
            char want[512];

            /* An active line may set any value; a commented one must show the default. */
            if (strncmp(line, name, n) == 0 && strncmp(line + n, " = ", 3) == 0)
                return (long)(p - text);
            snprintf(want, sizeof(want), ";%s =%s%s", name, def[0] != '\0' ? " " : "", def);
            if (strcmp(line, want) == 0)
                return (long)(p - text);
        }
        p += len + (eol != NULL);
    }
    return -1;
}

static void test_sample_has_every_key(void **state)
{
    char *text = slurp("config/pgshift.ini");
    long last = -1;
    cfg_t *c = NULL;
    char *err = NULL;

    (void)state;
    for (size_t k = 0; k < cfg_n_keys(); k++) {
        const char *section, *name = cfg_key_name(k, &section);
        long at = sample_find(text, k);

        if (at < 0) {
            print_error("config/pgshift.ini: [%s] %s missing, or its default is not \"%s\"\n",
                        section, name, cfg_key_default(k));
            fail();
        }
        if (at < last) {
            print_error("config/pgshift.ini: %s is not in table order\n", name);
            fail();
        }
        last = at;
    }
    /* It parses, and has the promised two stores. */
    assert_int_equal(cfg_load_file("config/pgshift.ini", &c, &err), 0);
    assert_null(err);
    assert_int_equal(c->n_stores, 2);
    assert_string_equal(c->default_store, c->stores[0].name);
    cfg_unref(c);
    free(text);
}

static void test_docs_have_every_key(void **state)
{
    char *text = slurp("docs/config.md");

    (void)state;
    for (size_t k = 0; k < cfg_n_keys(); k++) {
        const char *section, *name = cfg_key_name(k, &section);
        const char *def = cfg_key_default(k);
        char want[512];

        snprintf(want, sizeof(want), "\n| %s | `%s` | `%s` | %s |", section, name,
                 def[0] != '\0' ? def : "\"\"",
                 cfg_key_reload(k) == CFG_RELOAD ? "reload" : "restart");
        if (strstr(text, want) == NULL) {
            print_error("docs/config.md: no row starting %s\n", want + 1);
            fail();
        }
    }
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_default_auth_type),
        cmocka_unit_test(test_new_default),
        cmocka_unit_test(test_table_defaults_canonical),
        cmocka_unit_test(test_good_values),
        cmocka_unit_test(test_bool_spellings),
        cmocka_unit_test(test_enum_values),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_bad_tenancy_and_migration),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_crlf_and_no_final_newline),
        cmocka_unit_test(test_error_without_path),
        cmocka_unit_test(test_stores_order),
        cmocka_unit_test(test_store_errors),
        cmocka_unit_test(test_derived_defaults),
        cmocka_unit_test(test_explicit_stores),
        cmocka_unit_test(test_cross_key_rules),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_restart_needed),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_each),
        cmocka_unit_test(test_conninfo_mask),
        cmocka_unit_test(test_is_admin),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_sample_has_every_key),
        cmocka_unit_test(test_docs_have_every_key),
    };

    return cmocka_run_group_tests_name("cfg", tests, NULL, NULL);
}
