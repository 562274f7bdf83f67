/*
 * proxy/main.c - command line, configuration, signals and the loop.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "config/cfg.h"
#include "proxy/proxy.h"

static void usage(FILE *f)
{
    fprintf(f,
            "pgshift %s - move tenants of a PostgreSQL event store between servers, live\n"
            "\n"
            "Usage: pgshift [-c FILE] [-o section.key=value ...]\n"
            "\n"
            "  -c, --config FILE   configuration file (see config/pgshift.ini)\n"
            "  -o, --set KEY=VALUE override one configuration key; repeatable\n"
            "      --check         validate the configuration and exit\n"
            "  -v, --verbose       log at debug level\n"
            "  -V, --version       print the version and exit\n"
            "  -h, --help          print this help and exit\n"
            "\n"
            "Signals: SIGTERM drains (stop accepting, let transactions finish up to\n"
            "shutdown_timeout_ms), SIGINT stops at once, SIGHUP reloads the configuration.\n",
            PGSHIFT_VERSION);
}

static void on_signal(uv_signal_t *h, int signum)
{
    px_proxy_t *p = h->data;
    char *err = NULL;

    switch (signum) {
    case SIGHUP:
        if (px_proxy_reload(p, &err) < 0) {
            LOG_ERROR(NULL, "reload failed, keeping the running configuration: %s", err);
            free(err);
        }
        return;
    case SIGTERM:
        px_proxy_shutdown(p, false);
        return;
    case SIGINT:
        px_proxy_shutdown(p, true);
        return;
    default:
        return;
    }
}

static void free_overrides(char **overrides, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(overrides[i]);
    free(overrides);
}

static int write_pidfile(const char *path)
{
    FILE *f;

    if (path[0] == '\0')
        return 0;
    f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "%d\n", (int)getpid());
    return fclose(f);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "set", required_argument, NULL, 'o' },
        { "check", no_argument, NULL, 'C' },
        { "verbose", no_argument, NULL, 'v' },
        { "version", no_argument, NULL, 'V' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *cfg_path = NULL;
    char **overrides = NULL;
    size_t n_overrides = 0;
    bool check_only = false, verbose = false;
    cfg_t *cfg = NULL;
    char *err = NULL;
    px_proxy_t proxy;
    uv_loop_t loop;
    int opt, rc;

    while ((opt = getopt_long(argc, argv, "c:o:vVh", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            cfg_path = optarg;
            break;
        case 'o':
            if (strchr(optarg, '=') == NULL) {
                fprintf(stderr, "pgshift: -o expects key=value, got \"%s\"\n", optarg);
                return 2;
            }
            overrides = cm_xrealloc(overrides, (n_overrides + 1) * sizeof(*overrides));
            overrides[n_overrides++] = cm_xstrdup(optarg);
            break;
        case 'C':
            check_only = true;
            break;
        case 'v':
            verbose = true;
            break;
        case 'V':
            printf("pgshift %s\n", PGSHIFT_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "pgshift: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (cfg_path != NULL) {
        if (cfg_load_file(cfg_path, &cfg, &err) < 0) {
            fprintf(stderr, "pgshift: %s\n", err);
            free(err);
            free_overrides(overrides, n_overrides);
            return 1;
        }
    } else {
        cfg = cfg_new_default();
    }
    for (size_t i = 0; i < n_overrides; i++) {
        char *kv = cm_xstrdup(overrides[i]);
        char *eq = strchr(kv, '=');

        *eq = '\0';
        if (cfg_set(cfg, kv, eq + 1, &err) < 0) {
            fprintf(stderr, "pgshift: -o %s: %s\n", overrides[i], err);
            free(err);
            free(kv);
            cfg_unref(cfg);
            free_overrides(overrides, n_overrides);
            return 1;
        }
        free(kv);
    }
    if (cfg_validate(cfg, &err) < 0) {
        fprintf(stderr, "pgshift: %s%s%s\n", cfg_path ? cfg_path : "", cfg_path ? ": " : "", err);
        return 1;
    }
    if (check_only) {
        printf("configuration ok\n");
        cfg_unref(cfg);
        free_overrides(overrides, n_overrides);
        return 0;
    }
    {
        int lvl = cm_log_level_parse(cfg->log_level);

        cm_log_set_level(verbose ? CM_LOG_DEBUG : lvl >= 0 ? lvl : CM_LOG_INFO);
    }
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    if (px_proxy_init(&proxy, &loop, cfg, &err) < 0) {
        fprintf(stderr, "pgshift: %s\n", err);
        return 1;
    }
    proxy.cfg_path = cfg_path ? cm_xstrdup(cfg_path) : NULL;
    proxy.overrides = overrides;
    proxy.n_overrides = n_overrides;
    if (px_proxy_listen(&proxy, &err) < 0) {
        fprintf(stderr, "pgshift: %s\n", err);
        return 1;
    }
    if (px_http_start(&proxy, &err) < 0) {
        fprintf(stderr, "pgshift: %s\n", err);
        return 1;
    }
    if (write_pidfile(proxy.cfg->pidfile) < 0)
        LOG_WARN(NULL, "cannot write pidfile %s", proxy.cfg->pidfile);
    uv_signal_init(&loop, &proxy.sig_term);
    uv_signal_init(&loop, &proxy.sig_int);
    uv_signal_init(&loop, &proxy.sig_hup);
    proxy.sig_term.data = proxy.sig_int.data = proxy.sig_hup.data = &proxy;
    uv_signal_start(&proxy.sig_term, on_signal, SIGTERM);
    uv_signal_start(&proxy.sig_int, on_signal, SIGINT);
    uv_signal_start(&proxy.sig_hup, on_signal, SIGHUP);
    LOG_INFO(NULL, "pgshift %s started (pid %d), default store %s", PGSHIFT_VERSION, (int)getpid(),
             proxy.default_store->name);

    rc = uv_run(&loop, UV_RUN_DEFAULT);
    /* Let close callbacks of the last handles run. */
    uv_run(&loop, UV_RUN_NOWAIT);
    (void)rc;
    if (proxy.cfg->pidfile[0] != '\0')
        unlink(proxy.cfg->pidfile);
    px_proxy_destroy(&proxy);
    uv_loop_close(&loop);
    return 0;
}
