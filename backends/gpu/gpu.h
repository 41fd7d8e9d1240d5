/*
 * gpu.h -- what the host glue (module.cu) and the kernels' launchers (quant.cu) share inside one GPU module.
 * Compiled into lowbit-cuda.so by nvcc and into lowbit-hip.so by hipcc; nothing here is exported.
 */
#ifndef LOWBIT_GPU_GPU_H
#define LOWBIT_GPU_GPU_H

#include "compat.h"

#include "backend.h"

#define LBG_HIDDEN __attribute__((visibility("hidden")))

/* The backend context: one device, read-only after creation (so several threads may share it). */
typedef struct lbg_ctx {
    int device;
    int sm_count;           /* multiprocessors (CUs) */
    int warp;               /* warp / wavefront size */
    int max_threads;        /* per block */
    int concurrent_managed; /* managed memory can be prefetched / accessed concurrently */
} lbg_ctx_t;

/* A stream plus its scratch memory (temporaries of composite ops).  A stream is used by one thread at a
 * time (lowbit.h), and work on it is ordered, so reusing the scratch across calls needs no locking. */
typedef struct lbg_stream {
    lbgpuStream_t s;
    int owned; /* 0: the caller's native stream, never destroyed by us */
    void *scratch;
    size_t scratch_bytes;
} lbg_stream_t;

/* The runtime's services, set by probe (called before anything else). */
LBG_HIDDEN extern const lb_host_t *lbg_host;

/* Records "<platform>: <platform><fn>: <error string>" and returns DEVICE (OUT_OF_MEMORY for allocation
 * failures).  `fn` is the API function without its prefix ("Malloc" -> "cudaMalloc" / "hipMalloc"). */
LBG_HIDDEN lowbit_status_t lbg_fail(lbgpuError_t e, const char *fn);

/* Checks the launch of `kernel` just made (lbgpuGetLastError). */
LBG_HIDDEN lowbit_status_t lbg_check_launch(const char *kernel);

/* At least `bytes` of device scratch memory for work queued on `st` (grown on demand; growing waits for
 * the stream first, since queued work may still use the old block). */
LBG_HIDDEN lowbit_status_t lbg_scratch(lbg_stream_t *st, size_t bytes, void **p);

/* Makes `device` current for the calling thread and restores the previous device on scope exit, so the
 * caller's own current device (e.g. PyTorch's) is left as it was. */
struct lbg_device_guard {
    int prev;
    int changed;
    lbgpuError_t err;
    explicit lbg_device_guard(int device) : prev(-1), changed(0), err(lbgpuSuccess)
    {
#if defined(LBGPU_HIP)
        if (hipGetDevice(&prev) != hipSuccess)
            prev = -1;
#else
        if (cudaGetDevice(&prev) != cudaSuccess)
            prev = -1;
#endif
        if (prev != device) {
            err = lbgpuSetDevice(device);
            changed = err == lbgpuSuccess;
        }
    }
    ~lbg_device_guard()
    {
        if (changed && prev >= 0)
            (void)lbgpuSetDevice(prev);
    }
    lbg_device_guard(const lbg_device_guard &) = delete;
    lbg_device_guard &operator=(const lbg_device_guard &) = delete;
};

/* The ops (quant.cu); the caller has made the context's device current. */
LBG_HIDDEN lowbit_status_t lbg_quantize(const lb_launch_t *l, const lb_mem_t *in, const lb_qtensor_t *q,
                                        const lowbit_quantize_opts_t *opts);
LBG_HIDDEN lowbit_status_t lbg_dequantize(const lb_launch_t *l, const lb_qtensor_t *q, lowbit_dtype_t out_dtype,
                                          const lb_mem_t *out);

#endif /* LOWBIT_GPU_GPU_H */
