/* log.c -- logging to stderr, level from LOWBIT_LOG (error, warn, info, debug; default warn). */
#include "config.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

static int lb_level = LB_LOG_WARN;
static pthread_once_t lb_level_once = PTHREAD_ONCE_INIT;

static void lb_level_read(void)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    const char *env = getenv("LOWBIT_LOG");
    if (env == NULL || *env == '\0')
        return;
    for (int i = 0; i < 4; i++)
        if (strcmp(env, names[i]) == 0) {
            lb_level = i;
            return;
        }
    if (strcmp(env, "warning") == 0)
        lb_level = LB_LOG_WARN;
    else
        fprintf(stderr, "lowbit: warning: LOWBIT_LOG=%s is not one of error, warn, info, debug\n", env);
}

int lb_log_enabled(lb_log_level_t level)
{
    pthread_once(&lb_level_once, lb_level_read);
    return (int)level <= lb_level;
}

void lb_log(lb_log_level_t level, const char *fmt, ...)
{
    static const char *const tags[] = {"error", "warning", "info", "debug"};
    if (!lb_log_enabled(level))
        return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* One fprintf per line so lines from several threads do not interleave. */
    fprintf(stderr, "lowbit: %s: %s\n", tags[level], line);
}
