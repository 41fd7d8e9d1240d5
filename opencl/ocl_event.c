/*
 * ocl_event.c -- timing events: a marker on the queue whose profiling end time is the timestamp.
 *
 * The module creates its queues with CL_QUEUE_PROFILING_ENABLE.  A wrapped caller queue may not have
 * profiling: there an event is recorded by waiting for the queue and reading the host clock (what the
 * runtime does without event slots).  Both records of a pair must be of the same kind.
 */
#include <stdlib.h>
#include <time.h>

#include "ocl.h"

typedef struct lb_ocl_event {
    cl_event ev;    /* the marker (device time), or NULL */
    double host_ms; /* host time when there is no marker */
} lb_ocl_event_t;

static double host_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

lowbit_status_t lb_ocl_event_create(void *bctx, void **event_p)
{
    (void)bctx;
    lb_ocl_event_t *e = calloc(1, sizeof *e);
    if (!e)
        return lb_ocl_host->error(LOWBIT_ERR_OUT_OF_MEMORY, "opencl: out of host memory");
    *event_p = e;
    return LOWBIT_SUCCESS;
}

lowbit_status_t lb_ocl_event_record(void *bctx, void *bstream, void *event)
{
    lb_ocl_event_t *e = event;
    cl_command_queue q = lb_ocl_queue(bctx, bstream);
    cl_command_queue_properties props = 0;
    cl_int err = clGetCommandQueueInfo(q, CL_QUEUE_PROPERTIES, sizeof props, &props, NULL);
    if (err != CL_SUCCESS)
        return lb_ocl_fail("clGetCommandQueueInfo", err);
    if (e->ev) {
        clReleaseEvent(e->ev);
        e->ev = NULL;
    }
    if (!(props & CL_QUEUE_PROFILING_ENABLE)) {
        if ((err = clFinish(q)) != CL_SUCCESS)
            return lb_ocl_fail("clFinish", err);
        e->host_ms = host_now_ms();
        return LOWBIT_SUCCESS;
    }
    err = clEnqueueMarkerWithWaitList(q, 0, NULL, &e->ev);
    if (err != CL_SUCCESS) {
        e->ev = NULL;
        return lb_ocl_fail("clEnqueueMarkerWithWaitList", err);
    }
    /* submit now, so a later wait on it cannot stall behind an unflushed queue */
    err = clFlush(q);
    return err == CL_SUCCESS ? LOWBIT_SUCCESS : lb_ocl_fail("clFlush", err);
}

static lowbit_status_t event_end_ns(cl_event ev, cl_ulong *ns_p)
{
    cl_int err = clWaitForEvents(1, &ev);
    if (err != CL_SUCCESS)
        return lb_ocl_fail("clWaitForEvents", err);
    err = clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_END, sizeof *ns_p, ns_p, NULL);
    return err == CL_SUCCESS ? LOWBIT_SUCCESS : lb_ocl_fail("clGetEventProfilingInfo", err);
}

lowbit_status_t lb_ocl_event_elapsed(void *bctx, void *start, void *end, float *ms_p)
{
    (void)bctx;
    const lb_ocl_event_t *s = start, *e = end;
    if ((s->ev == NULL) != (e->ev == NULL))
        return lb_ocl_host->error(LOWBIT_ERR_INVALID_ARGUMENT, "opencl: events recorded on a queue with "
                                  "profiling and on one without cannot be compared");
    if (!s->ev) {
        *ms_p = (float)(e->host_ms - s->host_ms);
        return LOWBIT_SUCCESS;
    }
    cl_ulong t0, t1;
    lowbit_status_t st;
    if ((st = event_end_ns(e->ev, &t1)) != LOWBIT_SUCCESS || (st = event_end_ns(s->ev, &t0)) != LOWBIT_SUCCESS)
        return st;
    *ms_p = (float)(((double)t1 - (double)t0) * 1e-6);
    return LOWBIT_SUCCESS;
}

void lb_ocl_event_destroy(void *bctx, void *event)
{
    (void)bctx;
    lb_ocl_event_t *e = event;
    if (!e)
        return;
    if (e->ev)
        clReleaseEvent(e->ev);
    free(e);
}
