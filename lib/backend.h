/*
 * backend.h -- the contract between the lowbit runtime and a backend (internal; not installed).
 *
 * A backend is a table of functions.  The CPU backend is compiled into liblowbit; GPU backends are modules
 * (lowbit-cuda.so, ...) that export one symbol, LB_MODULE_SYMBOL, returning their table.  The runtime has
 * already validated every argument (sizes, dtypes, overlaps, buffer capacities) before calling an op, so ops
 * only launch work; they return LOWBIT_ERR_DEVICE / OUT_OF_MEMORY on runtime failures, after recording a
 * message with host->error().
 *
 * Optional slots may be NULL; the default behaviour is given with each.  An op slot that is NULL makes the
 * public entry point return LOWBIT_ERR_UNSUPPORTED with a message naming the backend and the op.
 */
#ifndef LOWBIT_BACKEND_H
#define LOWBIT_BACKEND_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "lowbit.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever this header changes incompatibly; a module built against another version is refused. */
#define LB_BACKEND_API_VERSION 2u
#define LB_MODULE_SYMBOL "lowbit_backend_module"

/* A buffer as a backend sees it: the native handle of the root allocation plus a byte range in it. */
typedef struct lb_mem {
    void *handle;  /* device pointer (CUDA/HIP), cl_mem (OpenCL), host pointer (CPU) of the root allocation */
    size_t offset; /* byte offset of the range within the root allocation */
    size_t bytes;  /* bytes in the range */
} lb_mem_t;

/* For backends whose handles are addresses (CPU, CUDA, HIP). */
#define LB_PTR(m) ((void *)((char *)(m)->handle + (m)->offset))

/* Services the runtime offers to backends (modules cannot link against the core's hidden symbols). */
typedef enum lb_log_level { LB_LOG_ERROR = 0, LB_LOG_WARN = 1, LB_LOG_INFO = 2, LB_LOG_DEBUG = 3 } lb_log_level_t;

typedef struct lb_host {
    uint32_t api_version;
    /* Records a thread-local error message and returns `status` (printf format). */
    lowbit_status_t (*error)(lowbit_status_t status, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
    void (*log)(lb_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
    /* Tuning parameter `key` for the context (see tune.h); `dflt` if the table has no entry. */
    int64_t (*tune_get)(const lowbit_context_t *ctx, const char *key, int64_t dflt);
    /* Built-in code tables (lowbit_code_table). */
    const float *(*code)(lowbit_code_t code);
    /* bitsandbytes' 8-bit rounding rule (spec 1.5) on the host: the reference a module checks its own
     * lookup structures against, so no module keeps a copy of it. */
    int (*quantize_8bit_value)(const float *code, float y);
} lb_host_t;

/* What every op receives about where to run. */
typedef struct lb_launch {
    const lowbit_context_t *ctx; /* for host->tune_get */
    void *bctx;                  /* the backend's context (from context_create) */
    void *bstream;               /* the backend's stream (never NULL: the runtime passes the default one) */
} lb_launch_t;

/* A quantized tensor with resolved buffers; code tables are never NULL here (defaults substituted). */
typedef struct lb_qtensor {
    lowbit_qformat_t format;
    lowbit_dtype_t dtype;
    int64_t n;
    int32_t blocksize;
    const float *code;          /* host: 256 floats (8-bit) or 16 floats (NF4/FP4 table) */
    lb_mem_t data;
    lb_mem_t absmax;
    int32_t nested_blocksize;   /* 0 = not nested */
    const float *nested_code;   /* host: 256 floats when nested */
    lb_mem_t nested_absmax;
    lb_mem_t nested_offset;
} lb_qtensor_t;

typedef struct lb_int8_quant_args {
    lowbit_dtype_t dtype;
    int64_t rows, cols;
    float threshold;
    lb_mem_t A, q, stats;
    int has_outliers;           /* outlier_cols/outlier_count given (rows only) */
    lb_mem_t outlier_cols, outlier_count;
} lb_int8_quant_args_t;

typedef struct lb_int8_gemm_args {
    int64_t M, N, K;
    lb_mem_t X, W, C;
} lb_int8_gemm_args_t;

typedef struct lb_int8_dequant_args {
    int64_t M, N;
    lb_mem_t C, row_stats, col_stats;
    int has_bias;
    lb_mem_t bias;
    lowbit_dtype_t out_dtype;
    lb_mem_t out;
} lb_int8_dequant_args_t;

typedef struct lb_int8_matmul_args {
    lowbit_dtype_t dtype;
    int64_t M, N, K;
    float threshold;
    lb_mem_t X, CB, SCB;
    int has_bias;
    lb_mem_t bias, out;
} lb_int8_matmul_args_t;

typedef struct lb_gemm4_args {
    lowbit_dtype_t dtype;
    int64_t M, N, K;
    int grad_input;             /* 0: y = x W^T + bias;  1: dx = dy W */
    lb_mem_t x;                 /* x [M, K], or dy [M, N] when grad_input */
    lb_qtensor_t W;
    int has_bias;
    lb_mem_t bias;
    lb_mem_t y;                 /* y [M, N], or dx [M, K] when grad_input */
} lb_gemm4_args_t;

typedef struct lb_optim_args {
    lowbit_optimizer_config_t cfg;
    lowbit_optimizer_state_layout_t layout;
    lowbit_dtype_t dtype;
    int64_t n;
    int64_t step;
    lb_mem_t param, grad, state;
    const float *qmap1, *qmap2; /* host: signed / unsigned dynamic maps (8-bit states) */
} lb_optim_args_t;

typedef struct lb_backend {
    uint32_t api_version;       /* LB_BACKEND_API_VERSION */
    uint32_t struct_size;       /* sizeof(lb_backend_t) */
    const char *name;           /* "cpu", "cuda", "hip", "opencl" */

    /* Called once, before anything else; `host` stays valid for the life of the process.  Returns the
     * number of usable devices (0 if none) and writes in `reason` why (e.g. "no NVIDIA driver",
     * "2 devices").  Must not fail loudly: a missing driver is a normal outcome. */
    int (*probe)(const lb_host_t *host, char *reason, size_t reason_len);
    lowbit_status_t (*device_info)(int index, lowbit_device_info_t *info);

    lowbit_status_t (*context_create)(int device, void **bctx_p);
    void (*context_destroy)(void *bctx);

    /* Memory.  `handle` is what lb_mem_t.handle will hold.  addressable = 1 if handles of different
     * allocations are addresses in one space (so overlaps between wrapped pointers can be detected). */
    int addressable;
    lowbit_status_t (*mem_alloc)(void *bctx, size_t bytes, unsigned flags, void **handle_p);
    void (*mem_free)(void *bctx, void *handle, unsigned flags);
    /* Copies complete before return. */
    lowbit_status_t (*mem_upload)(void *bctx, void *bstream, const lb_mem_t *dst, const void *src);
    lowbit_status_t (*mem_download)(void *bctx, void *bstream, const lb_mem_t *src, void *dst);
    lowbit_status_t (*mem_fill)(void *bctx, void *bstream, const lb_mem_t *dst, uint8_t value);
    /* Optional (NULL = no-op). */
    lowbit_status_t (*mem_prefetch)(void *bctx, void *bstream, const lb_mem_t *mem, int to_device);

    /* Streams.  native != NULL wraps a caller's stream (not destroyed by stream_destroy). */
    lowbit_status_t (*stream_create)(void *bctx, void *native, void **bstream_p);
    lowbit_status_t (*stream_sync)(void *bctx, void *bstream);
    void (*stream_destroy)(void *bctx, void *bstream);

    /* Optional device-to-device copy, ordered on the stream (NULL: the runtime bounces through host memory). */
    lowbit_status_t (*mem_copy)(void *bctx, void *bstream, const lb_mem_t *dst, const lb_mem_t *src);

    /* Optional timing events (NULL: the runtime synchronizes the stream and reads the host clock).
     * event_elapsed waits for `end` and returns the device time between the two records in ms. */
    lowbit_status_t (*event_create)(void *bctx, void **event_p);
    lowbit_status_t (*event_record)(void *bctx, void *bstream, void *event);
    lowbit_status_t (*event_elapsed)(void *bctx, void *start, void *end, float *ms_p);
    void (*event_destroy)(void *bctx, void *event);

    /* Ops (optional: NULL = LOWBIT_ERR_UNSUPPORTED). */
    lowbit_status_t (*quantize)(const lb_launch_t *l, const lb_mem_t *in, const lb_qtensor_t *q,
                                const lowbit_quantize_opts_t *opts);
    lowbit_status_t (*dequantize)(const lb_launch_t *l, const lb_qtensor_t *q, lowbit_dtype_t out_dtype,
                                  const lb_mem_t *out);
    lowbit_status_t (*int8_quantize_rows)(const lb_launch_t *l, const lb_int8_quant_args_t *a);
    lowbit_status_t (*int8_quantize_cols)(const lb_launch_t *l, const lb_int8_quant_args_t *a);
    lowbit_status_t (*int8_gemm)(const lb_launch_t *l, const lb_int8_gemm_args_t *a);
    lowbit_status_t (*int8_dequant)(const lb_launch_t *l, const lb_int8_dequant_args_t *a);
    lowbit_status_t (*int8_matmul)(const lb_launch_t *l, const lb_int8_matmul_args_t *a);
    lowbit_status_t (*gemm_4bit)(const lb_launch_t *l, const lb_gemm4_args_t *a);
    lowbit_status_t (*optimizer_step)(const lb_launch_t *l, const lb_optim_args_t *a);
} lb_backend_t;

/* The one symbol a module exports (named LB_MODULE_SYMBOL).  Returns the module's table or NULL. */
typedef const lb_backend_t *(*lb_module_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* LOWBIT_BACKEND_H */
