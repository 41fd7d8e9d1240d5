/*
 * event.c -- timing events.  Backends with device events (CUDA, HIP, OpenCL profiling) time on the device;
 * otherwise recording synchronizes the stream and reads the host's monotonic clock, which is exact for the
 * CPU backend, whose work is complete when each call returns.
 */
#include "config.h"

#include <stdlib.h>
#include <time.h>

#include "runtime.h"
#include "validate.h"

struct lowbit_event {
    lowbit_context_t *ctx;
    void *bevent;    /* backend event, or NULL for host timing */
    double host_ms;  /* host timing: monotonic clock at record */
    int recorded;
};

static double lb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

LOWBIT_API lowbit_status_t lowbit_event_create(lowbit_context_t *ctx, lowbit_event_t **event_p)
{
    lb_error_clear();
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS)
        return st;
    if (event_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "event_p: must not be NULL");
    lowbit_event_t *ev = calloc(1, sizeof *ev);
    if (ev == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "event: out of host memory");
    ev->ctx = ctx;
    if (ctx->be->event_create != NULL && (st = ctx->be->event_create(ctx->bctx, &ev->bevent)) != LOWBIT_SUCCESS) {
        free(ev);
        return st;
    }
    *event_p = ev;
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_event_record(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                               lowbit_event_t *event)
{
    lb_error_clear();
    void *bs = NULL;
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS || (st = lb_stream_resolve(ctx, stream, &bs)) != LOWBIT_SUCCESS)
        return st;
    if (event == NULL || event->ctx != ctx)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "event: %s", event == NULL ? "must not be NULL"
                                                                                : "belongs to another context");
    if (event->bevent != NULL)
        st = ctx->be->event_record(ctx->bctx, bs, event->bevent);
    else if ((st = ctx->be->stream_sync(ctx->bctx, bs)) == LOWBIT_SUCCESS)
        event->host_ms = lb_now_ms();
    if (st == LOWBIT_SUCCESS)
        event->recorded = 1;
    return st;
}

LOWBIT_API lowbit_status_t lowbit_event_elapsed(lowbit_context_t *ctx, const lowbit_event_t *start,
                                                const lowbit_event_t *end, float *ms_p)
{
    lb_error_clear();
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS)
        return st;
    if (start == NULL || end == NULL || ms_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL",
                        start == NULL ? "start" : end == NULL ? "end" : "ms_p");
    if (start->ctx != ctx || end->ctx != ctx)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "event: belongs to another context");
    if (!start->recorded || !end->recorded)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: has not been recorded", start->recorded ? "end" : "start");
    if (start->bevent != NULL)
        return ctx->be->event_elapsed(ctx->bctx, start->bevent, end->bevent, ms_p);
    *ms_p = (float)(end->host_ms - start->host_ms);
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_event_destroy(lowbit_event_t *event)
{
    lb_error_clear();
    if (event == NULL)
        return LOWBIT_SUCCESS;
    if (event->bevent != NULL)
        event->ctx->be->event_destroy(event->ctx->bctx, event->bevent);
    free(event);
    return LOWBIT_SUCCESS;
}
