/*
 * common/log.c - leveled logging to stderr with a wall-clock timestamp.
 */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

int cm_log_level = CM_LOG_INFO;

static const char *const level_names[] = { "FATAL", "ERROR", "WARNING", "LOG", "DEBUG", "NOISE" };

void cm_log_set_level(int level)
{
    cm_log_level = level;
}

int cm_log_level_parse(const char *name)
{
    static const char *const names[] = { "fatal", "error", "warning", "info", "debug", "noise" };

    for (size_t i = 0; i < CM_ARRAY_LEN(names); i++)
        if (strcasecmp(name, names[i]) == 0)
            return (int)i;
    if (strcasecmp(name, "warn") == 0)
        return CM_LOG_WARN;
    return -1;
}

void cm_log(int level, const char *ctx, const char *fmt, ...)
{
    char line[2048];
    char ts[32];
    struct timeval tv;
    struct tm tm;
    va_list ap;
    int n;

    gettimeofday(&tv, NULL);
    localtime_r(&tv.tv_sec, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%d %H:%M:%S", &tm);
    if (level < 0 || level > CM_LOG_NOISE)
        level = CM_LOG_INFO;
    n = snprintf(line, sizeof(line), "%s.%03d %s %s%s", ts, (int)(tv.tv_usec / 1000),
                 level_names[level], ctx ? ctx : "", ctx ? " " : "");
    if (n < 0 || (size_t)n >= sizeof(line))
        n = 0;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line);
}
