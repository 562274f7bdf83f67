/*
 * common/log.h - leveled logging. The macros test the level before they
 * evaluate their arguments, so DEBUG lines cost nothing when off.
 * wire/ and routing/ never log.
 */
#ifndef PGSHIFT_LOG_H
#define PGSHIFT_LOG_H

#include "common/cm.h"

typedef enum cm_log_level {
    CM_LOG_FATAL = 0,
    CM_LOG_ERROR,
    CM_LOG_WARN,
    CM_LOG_INFO,
    CM_LOG_DEBUG,
    CM_LOG_NOISE,
} cm_log_level_t;

extern int cm_log_level; /* the one logging global; set from config */

void cm_log_set_level(int level);
int cm_log_level_parse(const char *name); /* -1 when unknown */
/* ctx may be NULL; otherwise a short prefix such as "C#12 app@127.0.0.1:5000". */
void cm_log(int level, const char *ctx, const char *fmt, ...) PRINTF_LIKE(3, 4);

#define CM_LOG_AT(lvl, ctx, ...)               \
    do {                                       \
        if ((lvl) <= cm_log_level)             \
            cm_log((lvl), (ctx), __VA_ARGS__); \
    } while (0)

#define LOG_ERROR(ctx, ...) CM_LOG_AT(CM_LOG_ERROR, ctx, __VA_ARGS__)
#define LOG_WARN(ctx, ...)  CM_LOG_AT(CM_LOG_WARN, ctx, __VA_ARGS__)
#define LOG_INFO(ctx, ...)  CM_LOG_AT(CM_LOG_INFO, ctx, __VA_ARGS__)
#define LOG_DEBUG(ctx, ...) CM_LOG_AT(CM_LOG_DEBUG, ctx, __VA_ARGS__)
#define LOG_NOISE(ctx, ...) CM_LOG_AT(CM_LOG_NOISE, ctx, __VA_ARGS__)

#endif
