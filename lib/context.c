/* context.c -- contexts: one device of one backend, with its default stream and tuning table. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"
#include "tune.h"
#include "validate.h"

/* LOWBIT_DEVICE, else the backend's first GPU device, else 0. */
static lowbit_status_t lb_default_device(const lb_entry_t *e, int *device_p)
{
    const char *env = getenv("LOWBIT_DEVICE");
    if (env != NULL && *env != '\0') {
        char *end;
        errno = 0;
        long v = strtol(env, &end, 10);
        if (errno != 0 || *end != '\0' || v < 0 || v > 1 << 20)
            return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "LOWBIT_DEVICE=%s is not a device index", env);
        *device_p = (int)v;
        return LOWBIT_SUCCESS;
    }
    *device_p = 0;
    for (int d = 0; d < e->device_count; d++) {
        lowbit_device_info_t info;
        memset(&info, 0, sizeof info);
        if (e->be->device_info(d, &info) == LOWBIT_SUCCESS && info.is_gpu) {
            *device_p = d;
            break;
        }
    }
    return LOWBIT_SUCCESS;
}

static void lb_arch_key(const lb_entry_t *e, const lowbit_device_info_t *info, char *out, size_t len)
{
    if (strchr(info->arch, ':') != NULL)
        snprintf(out, len, "%s", info->arch);
    else
        snprintf(out, len, "%s:%s", e->name, info->arch);
}

LOWBIT_API lowbit_status_t lowbit_context_create(const char *backend, int device, lowbit_context_t **ctx_p)
{
    lb_error_clear();
    if (ctx_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "ctx_p: must not be NULL");
    if (device < -1)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "device: %d is negative (use -1 for the default)", device);
    lowbit_status_t st;
    lb_entry_t *e = lb_registry_find(backend, &st);
    if (e == NULL)
        return st;
    if (device == -1 && (st = lb_default_device(e, &device)) != LOWBIT_SUCCESS)
        return st;
    if (device >= e->device_count)
        return lb_error(LOWBIT_ERR_NO_DEVICE, "device: %d is outside [0, %d) for backend %s", device,
                        e->device_count, e->name);

    lowbit_context_t *ctx = calloc(1, sizeof *ctx);
    lowbit_stream_t *stream = calloc(1, sizeof *stream);
    if (ctx == NULL || stream == NULL) {
        st = lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "context: out of host memory");
        goto err_free;
    }
    ctx->entry = e;
    ctx->be = e->be;
    ctx->device = device;
    if ((st = e->be->device_info(device, &ctx->info)) != LOWBIT_SUCCESS)
        goto err_free;
    snprintf(ctx->info.backend, sizeof ctx->info.backend, "%s", e->name);
    ctx->info.index = device;
    if ((st = e->be->context_create(device, &ctx->bctx)) != LOWBIT_SUCCESS)
        goto err_free;
    char key[LOWBIT_NAME_MAX];
    lb_arch_key(e, &ctx->info, key, sizeof key);
    if ((st = lb_tune_create(key, &ctx->tune)) != LOWBIT_SUCCESS)
        goto err_backend;
    if ((st = e->be->stream_create(ctx->bctx, NULL, &stream->bstream)) != LOWBIT_SUCCESS)
        goto err_tune;
    stream->ctx = ctx;
    stream->is_default = 1;
    ctx->default_stream = stream;
    lb_log(LB_LOG_DEBUG, "context on %s device %d (%s, %s)", e->name, device, ctx->info.name, key);
    *ctx_p = ctx;
    return LOWBIT_SUCCESS;

err_tune:
    lb_tune_destroy(ctx->tune);
err_backend:
    e->be->context_destroy(ctx->bctx);
err_free:
    free(stream);
    free(ctx);
    return st;
}

LOWBIT_API lowbit_status_t lowbit_context_destroy(lowbit_context_t *ctx)
{
    lb_error_clear();
    if (ctx == NULL)
        return LOWBIT_SUCCESS;
    lowbit_status_t st = ctx->be->stream_sync(ctx->bctx, ctx->default_stream->bstream);
    int bufs = atomic_load(&ctx->live_buffers), streams = atomic_load(&ctx->live_streams);
    if (bufs > 0 || streams > 0)
        lb_log(LB_LOG_WARN, "context destroyed with %d buffer(s) and %d stream(s) not freed", bufs, streams);
    ctx->be->stream_destroy(ctx->bctx, ctx->default_stream->bstream);
    free(ctx->default_stream);
    lb_tune_destroy(ctx->tune);
    ctx->be->context_destroy(ctx->bctx);
    free(ctx);
    return st;
}

LOWBIT_API lowbit_status_t lowbit_context_device_info(const lowbit_context_t *ctx, lowbit_device_info_t *info_p)
{
    lb_error_clear();
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS)
        return st;
    if (info_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "info_p: must not be NULL");
    lowbit_device_info_t info = ctx->info;
    /* free memory changes: ask again */
    lowbit_device_info_t fresh;
    memset(&fresh, 0, sizeof fresh);
    if (ctx->be->device_info(ctx->device, &fresh) == LOWBIT_SUCCESS)
        info.free_memory = fresh.free_memory;
    *info_p = info;
    return LOWBIT_SUCCESS;
}
