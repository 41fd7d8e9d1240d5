/*
 * tune.c -- tuning parameters of a context: in-process overrides, the user cache file's entries for the
 * context's architecture, the built-in tables (tune_tables.c), and the public lowbit_tune_* functions.
 * Backends ask with host->tune_get(ctx, key, dflt).
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tune.h"

enum { LB_TUNE_OVERRIDES = 64, LB_TUNE_FILE_KEYS = 64 };

typedef struct lb_tune_kv {
    const char *key; /* points into the key table */
    int64_t value;
} lb_tune_kv_t;

struct lb_tune_state {
    char arch_key[LOWBIT_NAME_MAX];
    pthread_mutex_t lock; /* guards the overrides */
    int noverrides;
    lb_tune_kv_t overrides[LB_TUNE_OVERRIDES];
    /* the cache file as it was when the context was created (later reloads do not change a context) */
    int nfile;
    lb_tune_kv_t file[LB_TUNE_FILE_KEYS];
    int file_other, file_rejected, file_loaded;
    char file_path[LOWBIT_PATH_MAX];
    char file_status[LOWBIT_REASON_MAX];
};

/* ---- the process-wide cache file ---------------------------------------------------------------------- */

static pthread_mutex_t lb_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static int lb_cache_done;     /* read (or found disabled / missing) */
static lb_tune_file_t lb_cache;

/* Reads the cache file; called with lb_cache_lock held. */
static void lb_cache_read_locked(void)
{
    char path[LOWBIT_PATH_MAX];
    int disabled;
    lb_tune_file_free(&lb_cache);
    memset(&lb_cache, 0, sizeof lb_cache);
    if (lb_tune_file_path(path, sizeof path, &disabled) != 0) {
        snprintf(lb_cache.status, sizeof lb_cache.status, "none (no HOME or XDG_CACHE_HOME to find it in)");
    } else if (disabled) {
        lb_cache.disabled = 1;
        snprintf(lb_cache.status, sizeof lb_cache.status, "disabled (LOWBIT_TUNING_FILE=0)");
    } else {
        lb_tune_file_read(path, &lb_cache);
        int missing = strncmp(lb_cache.status, "not found", 9) == 0;
        lb_log(lb_cache.loaded || missing ? LB_LOG_INFO : LB_LOG_WARN, "tuning file %s: %s", path,
               lb_cache.status);
        if (!lb_cache.loaded) {
            /* "<what>: <detail>" becomes "<what>: <path>: <detail>" for lowbit info */
            char why[LOWBIT_REASON_MAX];
            snprintf(why, sizeof why, "%s", lb_cache.status);
            char *sep = strstr(why, ": ");
            if (sep != NULL)
                *sep = '\0';
            snprintf(lb_cache.status, sizeof lb_cache.status, "%s: %s%s%s", why, path, sep ? ": " : "",
                     sep ? sep + 2 : "");
        }
    }
    lb_cache_done = 1;
}

/* Copies the cache file's entries for `s->arch_key` into the context (reading the file the first time). */
static void lb_cache_attach(struct lb_tune_state *s)
{
    pthread_mutex_lock(&lb_cache_lock);
    if (!lb_cache_done)
        lb_cache_read_locked();
    for (int i = 0; i < lb_cache.count; i++) {
        const lb_tune_entry_t *e = &lb_cache.entries[i];
        if (strcmp(e->arch, s->arch_key) != 0) {
            s->file_other++;
        } else if (s->nfile < LB_TUNE_FILE_KEYS) {
            s->file[s->nfile].key = lb_tune_key_find(e->key)->key; /* validated when read */
            s->file[s->nfile++].value = e->value;
        }
    }
    s->file_rejected = lb_cache.rejected;
    s->file_loaded = lb_cache.loaded;
    snprintf(s->file_path, sizeof s->file_path, "%s", lb_cache.loaded ? lb_cache.path : "");
    snprintf(s->file_status, sizeof s->file_status, "%s", lb_cache.status);
    pthread_mutex_unlock(&lb_cache_lock);
}

LOWBIT_API lowbit_status_t lowbit_tune_reload(void)
{
    lb_error_clear();
    pthread_mutex_lock(&lb_cache_lock);
    lb_cache_read_locked();
    pthread_mutex_unlock(&lb_cache_lock);
    return LOWBIT_SUCCESS;
}

/* ---- per-context state -------------------------------------------------------------------------------- */

lowbit_status_t lb_tune_create(const char *arch_key, struct lb_tune_state **state_p)
{
    struct lb_tune_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "tuning table: out of host memory");
    snprintf(s->arch_key, sizeof s->arch_key, "%s", arch_key);
    pthread_mutex_init(&s->lock, NULL);
    lb_cache_attach(s);
    *state_p = s;
    return LOWBIT_SUCCESS;
}

void lb_tune_destroy(struct lb_tune_state *s)
{
    if (s == NULL)
        return;
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static int lb_kv_find(const lb_tune_kv_t *kv, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (strcmp(kv[i].key, key) == 0)
            return i;
    return -1;
}

static lb_tune_target_t lb_target(const lowbit_context_t *ctx)
{
    return (lb_tune_target_t){ctx->tune->arch_key, ctx->info.name, ctx->info.is_gpu};
}

/* Looks `key` up: override, cache file, built-in tables; returns 1 and sets *value when one has it. */
static int lb_tune_value(const lowbit_context_t *ctx, const char *key, int64_t *value)
{
    struct lb_tune_state *s = ctx->tune;
    pthread_mutex_lock(&s->lock);
    int i = lb_kv_find(s->overrides, s->noverrides, key);
    if (i >= 0)
        *value = s->overrides[i].value;
    pthread_mutex_unlock(&s->lock);
    if (i >= 0)
        return 1;
    if ((i = lb_kv_find(s->file, s->nfile, key)) >= 0) {
        *value = s->file[i].value;
        return 1;
    }
    lb_tune_target_t t = lb_target(ctx);
    return lb_tune_builtin_get(&t, key, value, NULL);
}

int64_t lb_tune_lookup(const lowbit_context_t *ctx, const char *key, int64_t dflt)
{
    int64_t v;
    if (ctx != NULL && ctx->tune != NULL && lb_tune_value(ctx, key, &v))
        return v;
    return dflt;
}

/* ---- public API --------------------------------------------------------------------------------------- */

LOWBIT_API lowbit_status_t lowbit_tune_info(const lowbit_context_t *ctx, lowbit_tune_info_t *info_p)
{
    lb_error_clear();
    if (ctx == NULL || info_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL", ctx == NULL ? "ctx" : "info_p");
    lowbit_tune_info_t info;
    memset(&info, 0, sizeof info);
    struct lb_tune_state *s = ctx->tune;
    lb_tune_target_t t = lb_target(ctx);
    snprintf(info.arch_key, sizeof info.arch_key, "%s", s->arch_key);
    lb_tune_builtin_describe(&t, info.table, sizeof info.table);
    int64_t v;
    for (int i = 0; lb_tune_key_at(i) != NULL; i++)
        info.entries += lb_tune_value(ctx, lb_tune_key_at(i)->key, &v);
    pthread_mutex_lock(&s->lock);
    info.overrides = s->noverrides;
    pthread_mutex_unlock(&s->lock);
    snprintf(info.file, sizeof info.file, "%s", s->file_path);
    snprintf(info.file_status, sizeof info.file_status, "%s", s->file_status);
    info.file_entries = s->nfile;
    info.file_other = s->file_other;
    info.file_rejected = s->file_rejected;
    *info_p = info;
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_tune_get(const lowbit_context_t *ctx, const char *key, int64_t *value_p)
{
    lb_error_clear();
    if (ctx == NULL || key == NULL || value_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL",
                        ctx == NULL ? "ctx" : key == NULL ? "key" : "value_p");
    if (lb_tune_key_find(key) == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "key: '%s' is not a tuning parameter", key);
    int64_t v;
    if (!lb_tune_value(ctx, key, &v))
        return lb_error(LOWBIT_ERR_UNSUPPORTED, "key: '%s' has no value for %s (the kernel uses its default)", key,
                        ctx->tune->arch_key);
    *value_p = v;
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_tune_set(lowbit_context_t *ctx, const char *key, int64_t value)
{
    lb_error_clear();
    if (ctx == NULL || key == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL", ctx == NULL ? "ctx" : "key");
    const lb_tune_key_t *k = lb_tune_key_find(key);
    if (k == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "key: '%s' is not a tuning parameter", key);
    if (value < k->min || value > k->max)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "value: %lld is outside [%lld, %lld] for %s", (long long)value,
                        (long long)k->min, (long long)k->max, key);
    struct lb_tune_state *s = ctx->tune;
    lowbit_status_t st = LOWBIT_SUCCESS;
    pthread_mutex_lock(&s->lock);
    int i = lb_kv_find(s->overrides, s->noverrides, k->key);
    if (i < 0 && s->noverrides == LB_TUNE_OVERRIDES) {
        st = lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "tuning: more than %d overrides", LB_TUNE_OVERRIDES);
    } else {
        if (i < 0)
            i = s->noverrides++;
        s->overrides[i] = (lb_tune_kv_t){k->key, value};
    }
    pthread_mutex_unlock(&s->lock);
    if (st == LOWBIT_SUCCESS)
        lb_log(LB_LOG_DEBUG, "tuning: %s = %lld set for %s", k->key, (long long)value, s->arch_key);
    return st;
}

LOWBIT_API lowbit_status_t lowbit_tune_reset(lowbit_context_t *ctx, const char *key)
{
    lb_error_clear();
    if (ctx == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "ctx: must not be NULL");
    if (key != NULL && lb_tune_key_find(key) == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "key: '%s' is not a tuning parameter", key);
    struct lb_tune_state *s = ctx->tune;
    pthread_mutex_lock(&s->lock);
    int i = key == NULL ? -1 : lb_kv_find(s->overrides, s->noverrides, key);
    if (key == NULL)
        s->noverrides = 0;
    else if (i >= 0)
        s->overrides[i] = s->overrides[--s->noverrides];
    pthread_mutex_unlock(&s->lock);
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_tune_save(const lowbit_context_t *ctx, const char *path)
{
    lb_error_clear();
    if (ctx == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "ctx: must not be NULL");
    char dpath[LOWBIT_PATH_MAX];
    int disabled = 0;
    if (path == NULL && (lb_tune_file_path(dpath, sizeof dpath, &disabled) != 0 || disabled))
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "path: NULL and %s", disabled ? "LOWBIT_TUNING_FILE=0"
                                                                                    : "no HOME to find the cache in");
    if (path != NULL && *path == '\0')
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "path: empty");
    struct lb_tune_state *s = ctx->tune;
    lb_tune_entry_t add[LB_TUNE_OVERRIDES];
    char now[32];
    time_t t = time(NULL);
    struct tm tm;
    strftime(now, sizeof now, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    pthread_mutex_lock(&s->lock);
    int n = s->noverrides;
    for (int i = 0; i < n; i++) {
        lb_tune_entry_t *e = &add[i];
        memset(e, 0, sizeof *e);
        snprintf(e->arch, sizeof e->arch, "%s", s->arch_key);
        snprintf(e->key, sizeof e->key, "%s", s->overrides[i].key);
        e->value = s->overrides[i].value;
        snprintf(e->device, sizeof e->device, "%s", ctx->info.name);
        snprintf(e->driver, sizeof e->driver, "%s", ctx->info.driver);
        snprintf(e->version, sizeof e->version, "%s", PACKAGE_VERSION);
        snprintf(e->tuned, sizeof e->tuned, "%s", now);
    }
    pthread_mutex_unlock(&s->lock);
    return lb_tune_file_merge(path != NULL ? path : dpath, add, n);
}
