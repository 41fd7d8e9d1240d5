/*
 * module.cu -- host glue of the CUDA and HIP backend modules (lowbit-cuda.so, lowbit-hip.so): probing,
 * devices, contexts, memory and streams, and the table the runtime loads (backend.h).  The same source is
 * compiled by nvcc and by hipcc; compat.h maps the runtime API.
 *
 * Every entry point makes the context's device current for its duration (the calling thread may differ
 * from the one that created the context) and restores the caller's device afterwards.
 */
#include "gpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const lb_host_t *lbg_host = NULL;

lowbit_status_t lbg_fail(lbgpuError_t e, const char *fn)
{
    /* Clear a non-sticky error so that it does not resurface in a later launch check. */
    (void)lbgpuGetLastError();
    lowbit_status_t st = e == lbgpuErrorMemoryAllocation ? LOWBIT_ERR_OUT_OF_MEMORY : LOWBIT_ERR_DEVICE;
    return lbg_host->error(st, "%s: %s%s: %s", LBGPU_NAME, LBGPU_NAME, fn, lbgpuGetErrorString(e));
}

lowbit_status_t lbg_check_launch(const char *kernel)
{
    lbgpuError_t e = lbgpuGetLastError();
    if (e == lbgpuSuccess)
        return LOWBIT_SUCCESS;
    return lbg_host->error(LOWBIT_ERR_DEVICE, "%s: launch of %s: %s", LBGPU_NAME, kernel, lbgpuGetErrorString(e));
}

lowbit_status_t lbg_scratch(lbg_stream_t *st, size_t bytes, void **p)
{
    if (st->scratch_bytes < bytes) {
        lbgpuError_t e;
        if (st->scratch != NULL) {
            if ((e = lbgpuStreamSynchronize(st->s)) != lbgpuSuccess)
                return lbg_fail(e, "StreamSynchronize");
            (void)lbgpuFree(st->scratch);
            st->scratch = NULL;
            st->scratch_bytes = 0;
        }
        size_t want = bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes + bytes / 4;
        if ((e = lbgpuMalloc(&st->scratch, want)) != lbgpuSuccess) {
            st->scratch = NULL;
            return lbg_fail(e, "Malloc");
        }
        st->scratch_bytes = want;
    }
    *p = st->scratch;
    return LOWBIT_SUCCESS;
}

int64_t lbg_tune_get(const lb_launch_t *l, const char *key, int64_t dflt, int64_t lo, int64_t hi)
{
    int64_t v = lbg_host->tune_get(l->ctx, key, dflt);
    if (v < lo || v > hi) {
        lbg_host->log(LB_LOG_WARN, "%s: tuning parameter %s = %lld is outside [%lld, %lld]; using %lld", LBGPU_NAME,
                      key, (long long)v, (long long)lo, (long long)hi, (long long)dflt);
        v = dflt;
    }
    return v;
}

#define LBG_GUARD(device)                                                                                      \
    lbg_device_guard guard_(device);                                                                           \
    if (guard_.err != lbgpuSuccess)                                                                            \
    return lbg_fail(guard_.err, "SetDevice")

/* ---- probing and devices ------------------------------------------------------------------------------- */

static int lbg_probe(const lb_host_t *host, char *reason, size_t reason_len)
{
    lbg_host = host;
    char scratch[LOWBIT_REASON_MAX];
    if (reason == NULL || reason_len == 0) {
        reason = scratch;
        reason_len = sizeof scratch;
    }
    int n = 0;
    lbgpuError_t e = lbgpuGetDeviceCount(&n);
    if (e != lbgpuSuccess) {
        (void)lbgpuGetLastError();
        snprintf(reason, reason_len, "no %s device: %s", LBGPU_NAME_UPPER, lbgpuGetErrorString(e));
        return 0;
    }
    if (n <= 0) {
        snprintf(reason, reason_len, "no %s device", LBGPU_NAME_UPPER);
        return 0;
    }
    int len = snprintf(reason, reason_len, "%d device(s):", n);
    for (int i = 0; i < n && len >= 0 && (size_t)len < reason_len; i++) {
        lbgpuDeviceProp p;
        const char *name = "?";
        if (lbgpuGetDeviceProperties(&p, i) == lbgpuSuccess)
            name = p.name;
        else
            (void)lbgpuGetLastError();
        int k = snprintf(reason + len, reason_len - (size_t)len, "%s %s", i ? "," : "", name);
        if (k < 0)
            break;
        len += k;
    }
    return n;
}

static lowbit_status_t lbg_device_info(int index, lowbit_device_info_t *info)
{
    lbgpuDeviceProp p;
    lbgpuError_t e = lbgpuGetDeviceProperties(&p, index);
    if (e != lbgpuSuccess)
        return lbg_fail(e, "GetDeviceProperties");
    lowbit_device_info_t d;
    memset(&d, 0, sizeof d);
    snprintf(d.backend, sizeof d.backend, "%s", LBGPU_NAME);
    snprintf(d.name, sizeof d.name, "%s", p.name);
    lbgpu_arch_name(&p, d.arch, sizeof d.arch);
    int dv = 0, rv = 0;
    if (lbgpuDriverGetVersion(&dv) != lbgpuSuccess)
        (void)lbgpuGetLastError();
    if (lbgpuRuntimeGetVersion(&rv) != lbgpuSuccess)
        (void)lbgpuGetLastError();
#if defined(LBGPU_HIP)
    /* HIP versions are major * 10^7 + minor * 10^5 + patch */
    snprintf(d.driver, sizeof d.driver, "HIP driver %d.%d.%d, runtime %d.%d.%d", dv / 10000000, dv / 100000 % 100,
             dv % 100000, rv / 10000000, rv / 100000 % 100, rv % 100000);
#else
    snprintf(d.driver, sizeof d.driver, "CUDA driver %d.%d, runtime %d.%d", dv / 1000, dv % 1000 / 10, rv / 1000,
             rv % 1000 / 10);
#endif
    d.index = index;
    d.is_gpu = 1;
    d.compute_units = p.multiProcessorCount;
    d.total_memory = (uint64_t)p.totalGlobalMem;
    {
        LBG_GUARD(index);
        size_t free_b = 0, total_b = 0;
        if (lbgpuMemGetInfo(&free_b, &total_b) == lbgpuSuccess)
            d.free_memory = (uint64_t)free_b;
        else
            (void)lbgpuGetLastError();
    }
    d.fp16 = 1;
    d.bf16 = lbgpu_native_bf16(&p);
    /* Kernels index elements with int64_t and blocks with int64_t; 2^40 keeps every derived byte count and
     * grid-stride sum far from overflow. */
    d.max_elements = (int64_t)1 << 40;
    *info = d;
    return LOWBIT_SUCCESS;
}

/* ---- contexts ------------------------------------------------------------------------------------------ */

static lowbit_status_t lbg_context_create(int device, void **bctx_p)
{
    LBG_GUARD(device);
    lbgpuDeviceProp p;
    lbgpuError_t e = lbgpuGetDeviceProperties(&p, device);
    if (e != lbgpuSuccess)
        return lbg_fail(e, "GetDeviceProperties");
    int cma = 0;
    if (lbgpuDeviceGetAttribute(&cma, lbgpuDevAttrConcurrentManagedAccess, device) != lbgpuSuccess) {
        (void)lbgpuGetLastError();
        cma = 0;
    }
    lbg_ctx_t *c = (lbg_ctx_t *)calloc(1, sizeof *c);
    if (c == NULL)
        return lbg_host->error(LOWBIT_ERR_OUT_OF_MEMORY, "%s: context: out of host memory", LBGPU_NAME);
    c->device = device;
    c->sm_count = p.multiProcessorCount > 0 ? p.multiProcessorCount : 1;
    c->warp = p.warpSize > 0 ? p.warpSize : LBGPU_WARP;
    c->max_threads = p.maxThreadsPerBlock > 0 ? p.maxThreadsPerBlock : 1024;
    c->concurrent_managed = cma != 0;
    *bctx_p = c;
    return LOWBIT_SUCCESS;
}

static void lbg_context_destroy(void *bctx)
{
    free(bctx);
}

/* ---- memory -------------------------------------------------------------------------------------------- */

static lowbit_status_t lbg_mem_alloc(void *bctx, size_t bytes, unsigned flags, void **handle_p)
{
    lbg_ctx_t *c = (lbg_ctx_t *)bctx;
    LBG_GUARD(c->device);
    void *p = NULL;
    lbgpuError_t e;
    if (flags & LOWBIT_MEM_PAGED) {
        /* Asking for more managed memory than the device has free can hang the GPU: refuse it here. */
        size_t free_b = 0, total_b = 0;
        if ((e = lbgpuMemGetInfo(&free_b, &total_b)) != lbgpuSuccess)
            return lbg_fail(e, "MemGetInfo");
        if (bytes > free_b)
            return lbg_host->error(LOWBIT_ERR_OUT_OF_MEMORY,
                                   "%s: paged allocation of %zu bytes refused: only %zu bytes are free on device %d",
                                   LBGPU_NAME, bytes, free_b, c->device);
        if ((e = lbgpuMallocManaged(&p, bytes)) != lbgpuSuccess)
            return lbg_fail(e, "MallocManaged");
    } else {
        if ((e = lbgpuMalloc(&p, bytes)) != lbgpuSuccess)
            return lbg_fail(e, "Malloc");
    }
    *handle_p = p;
    return LOWBIT_SUCCESS;
}

static void lbg_mem_free(void *bctx, void *handle, unsigned flags)
{
    (void)flags;
    lbg_ctx_t *c = (lbg_ctx_t *)bctx;
    lbg_device_guard guard(c->device);
    lbgpuError_t e = lbgpuFree(handle);
    if (e != lbgpuSuccess) {
        (void)lbgpuGetLastError();
        lbg_host->log(LB_LOG_WARN, "%s: %sFree: %s", LBGPU_NAME, LBGPU_NAME, lbgpuGetErrorString(e));
    }
}

static lowbit_status_t lbg_mem_upload(void *bctx, void *bstream, const lb_mem_t *dst, const void *src)
{
    lbg_ctx_t *c = (lbg_ctx_t *)bctx;
    lbg_stream_t *st = (lbg_stream_t *)bstream;
    LBG_GUARD(c->device);
    if (dst->bytes == 0)
        return LOWBIT_SUCCESS;
    lbgpuError_t e = lbgpuMemcpyAsync(LB_PTR(dst), src, dst->bytes, lbgpuMemcpyHostToDevice, st->s);
    if (e != lbgpuSuccess)
        return lbg_fail(e, "MemcpyAsync");
    if ((e = lbgpuStreamSynchronize(st->s)) != lbgpuSuccess)
        return lbg_fail(e, "StreamSynchronize");
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lbg_mem_download(void *bctx, void *bstream, const lb_mem_t *src, void *dst)
{
    lbg_ctx_t *c = (lbg_ctx_t *)bctx;
    lbg_stream_t *st = (lbg_stream_t *)bstream;
    LBG_GUARD(c->device);
    if (src->bytes == 0)
        return LOWBIT_SUCCESS;
    lbgpuError_t e = lbgpuMemcpyAsync(dst, LB_PTR(src), src->bytes, lbgpuMemcpyDeviceToHost, st->s);
    if (e != lbgpuSuccess)
        return lbg_fail(e, "MemcpyAsync");
    if ((e = lbgpuStreamSynchronize(st->s)) != lbgpuSuccess)
        return lbg_fail(e, "StreamSynchronize");
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lbg_mem_fill(void *bctx, void *bstream, const lb_mem_t *dst, uint8_t value)
{
    lbg_ctx_t *c = (lbg_ctx_t *)bctx;
    lbg_stream_t *st = (lbg_stream_t *)bstream;
    LBG_GUARD(c->device);
    if (dst->bytes == 0)
        return LOWBIT_SUCCESS;
    lbgpuError_t e = lbgpuMemsetAsync(LB_PTR(dst), value, dst->bytes, st->s);
    return e == lbgpuSuccess ? LOWBIT_SUCCESS : lbg_fail(e, "MemsetAsync");
}

static lowbit_status_t lbg_mem_prefetch(void *bctx, void *bstream, const lb_mem_t *mem, int to_device)
{
    lbg_ctx_t *c = (lbg_ctx_t *)bctx;
    lbg_stream_t *st = (lbg_stream_t *)bstream;
    /* Without concurrent managed access the driver migrates on its own; prefetching is not supported. */
    if (!c->concurrent_managed || mem->bytes == 0)
        return LOWBIT_SUCCESS;
    LBG_GUARD(c->device);
    lbgpuError_t e = lbgpu_prefetch(LB_PTR(mem), mem->bytes, c->device, to_device, st->s);
    return e == lbgpuSuccess ? LOWBIT_SUCCESS : lbg_fail(e, "MemPrefetchAsync");
}

/* ---- streams ------------------------------------------------------------------------------------------- */

static lowbit_status_t lbg_stream_create(void *bctx, void *native, void **bstream_p)
{
    lbg_ctx_t *c = (lbg_ctx_t *)bctx;
    LBG_GUARD(c->device);
    lbg_stream_t *st = (lbg_stream_t *)calloc(1, sizeof *st);
    if (st == NULL)
        return lbg_host->error(LOWBIT_ERR_OUT_OF_MEMORY, "%s: stream: out of host memory", LBGPU_NAME);
    if (native != NULL) {
        st->s = (lbgpuStream_t)native;
        st->owned = 0;
    } else {
        /* Non-blocking: our default stream does not serialize with the legacy NULL stream of other code. */
        lbgpuError_t e = lbgpuStreamCreateWithFlags(&st->s, lbgpuStreamNonBlocking);
        if (e != lbgpuSuccess) {
            free(st);
            return lbg_fail(e, "StreamCreateWithFlags");
        }
        st->owned = 1;
    }
    *bstream_p = st;
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lbg_stream_sync(void *bctx, void *bstream)
{
    lbg_ctx_t *c = (lbg_ctx_t *)bctx;
    lbg_stream_t *st = (lbg_stream_t *)bstream;
    LBG_GUARD(c->device);
    lbgpuError_t e = lbgpuStreamSynchronize(st->s);
    return e == lbgpuSuccess ? LOWBIT_SUCCESS : lbg_fail(e, "StreamSynchronize");
}

static void lbg_stream_destroy(void *bctx, void *bstream)
{
    lbg_ctx_t *c = (lbg_ctx_t *)bctx;
    lbg_stream_t *st = (lbg_stream_t *)bstream;
    if (st == NULL)
        return;
    lbg_device_guard guard(c->device);
    /* Queued work may still use the scratch block. */
    if (lbgpuStreamSynchronize(st->s) != lbgpuSuccess)
        (void)lbgpuGetLastError();
    lbg_blas_release(st);
    if (st->scratch != NULL && lbgpuFree(st->scratch) != lbgpuSuccess)
        (void)lbgpuGetLastError();
    if (st->owned && lbgpuStreamDestroy(st->s) != lbgpuSuccess)
        (void)lbgpuGetLastError();
    free(st);
}

/* ---- device-to-device copies and timing events --------------------------------------------------------- */

static lowbit_status_t lbg_mem_copy(void *bctx, void *bstream, const lb_mem_t *dst, const lb_mem_t *src)
{
    lbg_ctx_t *c = (lbg_ctx_t *)bctx;
    lbg_stream_t *st = (lbg_stream_t *)bstream;
    LBG_GUARD(c->device);
    const size_t bytes = src->bytes < dst->bytes ? src->bytes : dst->bytes;
    if (bytes == 0)
        return LOWBIT_SUCCESS;
    lbgpuError_t e = lbgpuMemcpyAsync(LB_PTR(dst), LB_PTR(src), bytes, lbgpuMemcpyDeviceToDevice, st->s);
    return e == lbgpuSuccess ? LOWBIT_SUCCESS : lbg_fail(e, "MemcpyAsync");
}

static lowbit_status_t lbg_event_create(void *bctx, void **event_p)
{
    lbg_ctx_t *c = (lbg_ctx_t *)bctx;
    LBG_GUARD(c->device);
    lbgpuEvent_t ev;
    lbgpuError_t e = lbgpuEventCreate(&ev);
    if (e != lbgpuSuccess)
        return lbg_fail(e, "EventCreate");
    *event_p = (void *)ev;
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lbg_event_record(void *bctx, void *bstream, void *event)
{
    lbg_ctx_t *c = (lbg_ctx_t *)bctx;
    lbg_stream_t *st = (lbg_stream_t *)bstream;
    LBG_GUARD(c->device);
    lbgpuError_t e = lbgpuEventRecord((lbgpuEvent_t)event, st->s);
    return e == lbgpuSuccess ? LOWBIT_SUCCESS : lbg_fail(e, "EventRecord");
}

static lowbit_status_t lbg_event_elapsed(void *bctx, void *start, void *end, float *ms_p)
{
    lbg_ctx_t *c = (lbg_ctx_t *)bctx;
    LBG_GUARD(c->device);
    lbgpuError_t e = lbgpuEventSynchronize((lbgpuEvent_t)end);
    if (e != lbgpuSuccess)
        return lbg_fail(e, "EventSynchronize");
    float ms = 0.0f;
    if ((e = lbgpuEventElapsedTime(&ms, (lbgpuEvent_t)start, (lbgpuEvent_t)end)) != lbgpuSuccess)
        return lbg_fail(e, "EventElapsedTime");
    *ms_p = ms;
    return LOWBIT_SUCCESS;
}

static void lbg_event_destroy(void *bctx, void *event)
{
    lbg_ctx_t *c = (lbg_ctx_t *)bctx;
    lbg_device_guard guard(c->device);
    if (event != NULL && lbgpuEventDestroy((lbgpuEvent_t)event) != lbgpuSuccess)
        (void)lbgpuGetLastError();
}

/* ---- ops ----------------------------------------------------------------------------------------------- */

static lowbit_status_t lbg_op_quantize(const lb_launch_t *l, const lb_mem_t *in, const lb_qtensor_t *q,
                                       const lowbit_quantize_opts_t *opts)
{
    lbg_ctx_t *c = (lbg_ctx_t *)l->bctx;
    LBG_GUARD(c->device);
    return lbg_quantize(l, in, q, opts);
}

static lowbit_status_t lbg_op_dequantize(const lb_launch_t *l, const lb_qtensor_t *q, lowbit_dtype_t out_dtype,
                                         const lb_mem_t *out)
{
    lbg_ctx_t *c = (lbg_ctx_t *)l->bctx;
    LBG_GUARD(c->device);
    return lbg_dequantize(l, q, out_dtype, out);
}

#define LBG_OP(name, argtype, impl)                                                                            \
    static lowbit_status_t name(const lb_launch_t *l, const argtype *a)                                        \
    {                                                                                                          \
        lbg_ctx_t *c = (lbg_ctx_t *)l->bctx;                                                                   \
        LBG_GUARD(c->device);                                                                                  \
        return impl(l, a);                                                                                     \
    }

/* optim.cu, gemm4.cu, int8.cu: compiled, not yet run on a GPU (backends/README.md) */
LBG_OP(lbg_op_optimizer_step, lb_optim_args_t, lbg_optimizer_step)
LBG_OP(lbg_op_gemm_4bit, lb_gemm4_args_t, lbg_gemm_4bit)
LBG_OP(lbg_op_int8_quantize_rows, lb_int8_quant_args_t, lbg_int8_quantize_rows)
LBG_OP(lbg_op_int8_quantize_cols, lb_int8_quant_args_t, lbg_int8_quantize_cols)
LBG_OP(lbg_op_int8_gemm, lb_int8_gemm_args_t, lbg_int8_gemm)
LBG_OP(lbg_op_int8_dequant, lb_int8_dequant_args_t, lbg_int8_dequant)
LBG_OP(lbg_op_int8_matmul, lb_int8_matmul_args_t, lbg_int8_matmul)
#undef LBG_OP

/* ---- the table ----------------------------------------------------------------------------------------- */

static lb_backend_t lbg_make_table(void)
{
    lb_backend_t b;
    memset(&b, 0, sizeof b); /* op slots not listed stay NULL: the runtime reports UNSUPPORTED */
    b.api_version = LB_BACKEND_API_VERSION;
    b.struct_size = (uint32_t)sizeof(lb_backend_t);
    b.name = LBGPU_NAME;
    b.probe = lbg_probe;
    b.device_info = lbg_device_info;
    b.context_create = lbg_context_create;
    b.context_destroy = lbg_context_destroy;
    b.addressable = 1;
    b.mem_alloc = lbg_mem_alloc;
    b.mem_free = lbg_mem_free;
    b.mem_upload = lbg_mem_upload;
    b.mem_download = lbg_mem_download;
    b.mem_fill = lbg_mem_fill;
    b.mem_prefetch = lbg_mem_prefetch;
    b.stream_create = lbg_stream_create;
    b.stream_sync = lbg_stream_sync;
    b.stream_destroy = lbg_stream_destroy;
    b.mem_copy = lbg_mem_copy;
    b.event_create = lbg_event_create;
    b.event_record = lbg_event_record;
    b.event_elapsed = lbg_event_elapsed;
    b.event_destroy = lbg_event_destroy;
    b.quantize = lbg_op_quantize;
    b.dequantize = lbg_op_dequantize;
    b.int8_quantize_rows = lbg_op_int8_quantize_rows;
    b.int8_quantize_cols = lbg_op_int8_quantize_cols;
    b.int8_gemm = lbg_op_int8_gemm;
    b.int8_dequant = lbg_op_int8_dequant;
    b.int8_matmul = lbg_op_int8_matmul;
    b.gemm_4bit = lbg_op_gemm_4bit;
    b.optimizer_step = lbg_op_optimizer_step;
    return b;
}

/* The one exported symbol.  The table is filled on the first call (a function-local static: initialized
 * once, thread-safely); nothing runs at load time and no GPU runtime call happens before probe. */
extern "C" __attribute__((visibility("default"))) const lb_backend_t *lowbit_backend_module(void)
{
    static const lb_backend_t table = lbg_make_table();
    return &table;
}
