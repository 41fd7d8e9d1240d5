/* stream.c -- streams (in-order queues) and the launch description every op receives. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>

#include "runtime.h"
#include "validate.h"

static lowbit_status_t lb_stream_new(lowbit_context_t *ctx, void *native, lowbit_stream_t **stream_p)
{
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS)
        return st;
    if (stream_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "stream_p: must not be NULL");
    lowbit_stream_t *s = calloc(1, sizeof *s);
    if (s == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "stream: out of host memory");
    if ((st = ctx->be->stream_create(ctx->bctx, native, &s->bstream)) != LOWBIT_SUCCESS) {
        free(s);
        return st;
    }
    s->ctx = ctx;
    atomic_fetch_add(&ctx->live_streams, 1);
    *stream_p = s;
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_stream_create(lowbit_context_t *ctx, lowbit_stream_t **stream_p)
{
    lb_error_clear();
    return lb_stream_new(ctx, NULL, stream_p);
}

LOWBIT_API lowbit_status_t lowbit_stream_wrap(lowbit_context_t *ctx, void *native, lowbit_stream_t **stream_p)
{
    lb_error_clear();
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS)
        return st;
    if (native == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "native: must not be NULL (use lowbit_stream_create)");
    return lb_stream_new(ctx, native, stream_p);
}

LOWBIT_API lowbit_status_t lowbit_stream_synchronize(lowbit_context_t *ctx, lowbit_stream_t *stream)
{
    lb_error_clear();
    void *bs = NULL;
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS || (st = lb_stream_resolve(ctx, stream, &bs)) != LOWBIT_SUCCESS)
        return st;
    return ctx->be->stream_sync(ctx->bctx, bs);
}

LOWBIT_API lowbit_status_t lowbit_stream_destroy(lowbit_stream_t *stream)
{
    lb_error_clear();
    if (stream == NULL)
        return LOWBIT_SUCCESS;
    if (stream->is_default)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "stream: the default stream belongs to its context");
    lowbit_context_t *ctx = stream->ctx;
    lowbit_status_t st = ctx->be->stream_sync(ctx->bctx, stream->bstream);
    ctx->be->stream_destroy(ctx->bctx, stream->bstream);
    atomic_fetch_sub(&ctx->live_streams, 1);
    free(stream);
    return st;
}

lowbit_status_t lb_stream_resolve(const lowbit_context_t *ctx, const lowbit_stream_t *stream, void **bstream_p)
{
    if (stream == NULL) {
        *bstream_p = ctx->default_stream->bstream;
        return LOWBIT_SUCCESS;
    }
    if (stream->ctx != ctx)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "stream: belongs to another context");
    *bstream_p = stream->bstream;
    return LOWBIT_SUCCESS;
}

lowbit_status_t lb_launch_init(lowbit_context_t *ctx, lowbit_stream_t *stream, lb_launch_t *l)
{
    l->ctx = ctx;
    l->bctx = ctx->bctx;
    return lb_stream_resolve(ctx, stream, &l->bstream);
}

lowbit_status_t lb_unsupported_op(const lowbit_context_t *ctx, const char *op)
{
    return lb_error(LOWBIT_ERR_UNSUPPORTED, "%s: not implemented by the %s backend (device %s) yet", op,
                    ctx->entry->name, ctx->info.name);
}
