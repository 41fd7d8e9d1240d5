/*
 * ocl.h -- internals of the OpenCL backend module (lowbit-opencl.so).
 *
 *   ocl_backend.c  the module table: probe, devices, contexts, memory, streams
 *   ocl_program.c  error reporting, the per-context program/kernel cache and code-table cache
 *   ocl_quant.c    blockwise quantize / dequantize launches
 *   ocl_q8.c       the exact bucket table for 8-bit round-to-nearest
 *   ocl_optim.c    optimizer steps
 *   ocl_gemm4.c    4-bit weight-only products (GEMV, GEMM, input gradient)
 *   ocl_int8.c     LLM.int8(): row/column quantization, int8 GEMM, dequantization, the fused forward
 *   ocl_event.c    timing events (queue markers with profiling)
 *   quantize.cl    the quantization kernels, embedded at build time by build-aux/cl2c.sh (kernels_cl.c)
 *   common.cl      helpers (conversions, exact division, accumulators) prepended to every program
 *   optim.cl       the optimizer kernels
 *   gemm4.cl       the 4-bit product kernel
 *   int8.cl        the LLM.int8() kernels
 *
 * Tuning keys (host->tune_get; the default is used when the table has no entry or an invalid value):
 *   opencl.quantize.threads          work-group size of the quantize kernel (power of two)
 *   opencl.quantize.vpt              consecutive values per work-item chunk (2, 4, 8, 16; default 16 bytes)
 *   opencl.quantize.dequant_threads  work-group size of the dequantize kernel
 *   opencl.quantize.dequant_vpt      values per work-item of the dequantize kernel
 *   opencl.quantize.sum_threads      work-group size of the absmax partial sums (nested quantization)
 *   opencl.quantize.sum_groups       number of partial sums (nested quantization)
 *   opencl.quantize.max_groups       most work-groups per launch (larger problems loop inside the kernel)
 *   opencl.optim.threads             work-group size of the optimizer kernels (power of two, 32 ... 256)
 *   opencl.optim.max_groups          most work-groups per optimizer launch (each owns 256-element blocks)
 *   opencl.gemm4.gemv_cols           outputs per work-group of the M = 1 product (power of two)
 *   opencl.gemm4.rows, .cols         output tile of a work-group for M > 1 and the input gradient
 *   opencl.gemm4.kc                  reduction elements staged in local memory per step (power of two >= 8)
 *   opencl.int8.threads              work-group size of the int8 quantization / dequantization kernels
 *   opencl.int8.gemm_rows, _cols     output tile of the int8 GEMM work-group (powers of two <= 64)
 *   opencl.int8.gemm_kc              int8 columns staged per step of the GEMM (multiple of 4)
 */
#ifndef LOWBIT_OCL_H
#define LOWBIT_OCL_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#include <CL/cl.h>
#include <pthread.h>

#include "backend.h"

/* The kernel sources, NUL-terminated (generated kernels_cl.c). */
extern const unsigned char lb_ocl_src_quantize[];
extern const unsigned char lb_ocl_src_common[];
extern const unsigned char lb_ocl_src_optim[];
extern const unsigned char lb_ocl_src_gemm4[];
extern const unsigned char lb_ocl_src_int8[];
#define LB_OCL_SRC(name) ((const char *)lb_ocl_src_##name)

typedef struct lb_ocl_device {
    cl_platform_id platform;
    cl_device_id id;
    cl_device_type type;
    char name[LOWBIT_NAME_MAX];
    char platform_name[64];
    char driver[64];
    int compute_units;
    uint64_t global_mem;
    uint64_t max_alloc;
    size_t max_wg;
    uint64_t local_mem; /* CL_DEVICE_LOCAL_MEM_SIZE */
    int fp16;      /* cl_khr_fp16 */
    int fp64;      /* cl_khr_fp64 */
    int cr_divide; /* CL_FP_CORRECTLY_ROUNDED_DIVIDE_SQRT: -cl-fp32-correctly-rounded-divide-sqrt works */
    int denorms;   /* CL_FP_DENORM for float */
} lb_ocl_device_t;

/* A built program with its one kernel.  clSetKernelArg + enqueue on a shared cl_kernel must not interleave
 * between threads, hence the lock (held only while setting arguments and enqueueing). */
typedef struct lb_ocl_kernel {
    struct lb_ocl_kernel *next;
    char *key; /* kernel name + "\n" + build options */
    cl_program program;
    cl_kernel kernel;
    size_t max_wg; /* CL_KERNEL_WORK_GROUP_SIZE */
    pthread_mutex_t lock;
} lb_ocl_kernel_t;

/* A code table uploaded once and reused while calls pass the same contents; 256-entry tables also get
 * the bucket table of ocl_q8.c when one fits in local memory. */
#define LB_OCL_TABLES 8
typedef struct lb_ocl_table {
    cl_mem mem; /* NULL = unused slot */
    cl_mem q8b; /* NULL = none */
    uint32_t q8b_buckets;
    size_t count;
    uint64_t last_use;
    float values[256];
} lb_ocl_table_t;

/* What a call holds of a cached table: its own references, dropped with lb_ocl_table_put. */
typedef struct lb_ocl_tab {
    cl_mem code;
    cl_mem q8b;
    uint32_t q8b_buckets;
} lb_ocl_tab_t;

typedef struct lb_ocl_ctx {
    const lb_ocl_device_t *dev;
    cl_context context;
    cl_command_queue queue; /* used where the runtime passes no stream */
    char base_options[160]; /* -cl-std, rounding and capability macros common to every program */
    pthread_mutex_t lock;   /* guards kernels and tables */
    lb_ocl_kernel_t *kernels;
    lb_ocl_table_t tables[LB_OCL_TABLES];
    uint64_t table_clock;
} lb_ocl_ctx_t;

typedef struct lb_ocl_stream {
    cl_command_queue queue;
    int wrapped; /* the caller's queue (retained by us, never destroyed by us) */
} lb_ocl_stream_t;

/* ---- ocl_backend.c ---- */

extern const lb_host_t *lb_ocl_host;
cl_command_queue lb_ocl_queue(lb_ocl_ctx_t *c, void *bstream);

/* ---- ocl_program.c ---- */

/* "CL_INVALID_VALUE", ... or "unknown OpenCL error". */
const char *lb_ocl_errname(cl_int err);
/* Records "opencl: <call> failed: <name> (<code>)" and returns `status` (DEVICE, OUT_OF_MEMORY). */
lowbit_status_t lb_ocl_fail_as(lowbit_status_t status, const char *call, cl_int err);
/* As lb_ocl_fail_as, with OUT_OF_MEMORY for allocation failures and DEVICE for everything else. */
lowbit_status_t lb_ocl_fail(const char *call, cl_int err);

/* The one place a program is built from source: (device, source, options) -> built cl_program.
 * A program-binary disk cache keyed by a hash of these (plus device name and driver) belongs here. */
lowbit_status_t lb_ocl_program_build(lb_ocl_ctx_t *c, const char *source, const char *options,
                                     cl_program *program_p);
/* The kernel `name` of common.cl + `source` built with ctx->base_options + " " + options, built at first
 * use and cached in the context for its lifetime. */
lowbit_status_t lb_ocl_kernel_get(lb_ocl_ctx_t *c, const char *source, const char *name, const char *options,
                                  lb_ocl_kernel_t **kernel_p);
void lb_ocl_kernels_release(lb_ocl_ctx_t *c);

typedef struct lb_ocl_arg {
    size_t size;
    const void *value;
} lb_ocl_arg_t;
#define LB_OCL_ARG(x) {sizeof(x), &(x)}

/* Sets the arguments and enqueues a 1-D NDRange of `groups` work-groups of `local` work-items. */
lowbit_status_t lb_ocl_launch(lb_ocl_kernel_t *k, cl_command_queue queue, size_t groups, size_t local,
                              const lb_ocl_arg_t *args, int nargs);

/* Read-only buffers for the table values[0 .. count-1] (count <= 256) from the context's cache; the caller
 * owns one reference to each and drops them with lb_ocl_table_put after enqueueing the kernels. */
lowbit_status_t lb_ocl_table_get(lb_ocl_ctx_t *c, const float *values, size_t count, lb_ocl_tab_t *tab);
void lb_ocl_table_put(lb_ocl_tab_t *tab);
void lb_ocl_tables_release(lb_ocl_ctx_t *c);

/* ---- ocl_q8.c ---- */

/* Builds the bucket table of a 256-entry code (layout in ocl_q8.c) with at most max_buckets buckets.
 * Returns 1 and a malloc'ed array, 0 if the table does not allow one (unsorted, NaN, too many buckets),
 * -1 when out of memory. */
int lb_ocl_q8_buckets(const float *code, size_t max_buckets, uint32_t **words_p, size_t *nwords_p);

/* ---- ocl_quant.c ---- */

lowbit_status_t lb_ocl_quantize(const lb_launch_t *l, const lb_mem_t *in, const lb_qtensor_t *q,
                                const lowbit_quantize_opts_t *opts);
lowbit_status_t lb_ocl_dequantize(const lb_launch_t *l, const lb_qtensor_t *q, lowbit_dtype_t out_dtype,
                                  const lb_mem_t *out);

/* ---- ocl_optim.c ---- */

lowbit_status_t lb_ocl_optimizer_step(const lb_launch_t *l, const lb_optim_args_t *a);

/* ---- ocl_gemm4.c ---- */

lowbit_status_t lb_ocl_gemm_4bit(const lb_launch_t *l, const lb_gemm4_args_t *a);

/* ---- ocl_event.c ---- */

lowbit_status_t lb_ocl_event_create(void *bctx, void **event_p);
lowbit_status_t lb_ocl_event_record(void *bctx, void *bstream, void *event);
lowbit_status_t lb_ocl_event_elapsed(void *bctx, void *start, void *end, float *ms_p);
void lb_ocl_event_destroy(void *bctx, void *event);

/* ---- ocl_int8.c ---- */

lowbit_status_t lb_ocl_int8_quantize_rows(const lb_launch_t *l, const lb_int8_quant_args_t *a);
lowbit_status_t lb_ocl_int8_quantize_cols(const lb_launch_t *l, const lb_int8_quant_args_t *a);
lowbit_status_t lb_ocl_int8_gemm(const lb_launch_t *l, const lb_int8_gemm_args_t *a);
lowbit_status_t lb_ocl_int8_dequant(const lb_launch_t *l, const lb_int8_dequant_args_t *a);
lowbit_status_t lb_ocl_int8_matmul(const lb_launch_t *l, const lb_int8_matmul_args_t *a);

#endif /* LOWBIT_OCL_H */
