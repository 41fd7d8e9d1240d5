/*
 * gpu.h -- what the host glue (module.cu) and the kernels' launchers (quant.cu, optim.cu, gemm4.cu, int8.cu)
 * share inside one GPU module.
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
    void *blas;   /* CUDA: the stream's cublasHandle_t, created on first use (gemm4.cu); NULL on HIP */
    void *blaslt; /* CUDA: the stream's cublasLtHandle_t, created on first use (int8.cu); NULL on HIP */
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

/* Device loads and stores of 2- and 4-byte values of user memory, which may sit at any byte offset (buffer
 * views).  ua (unaligned) is uniform over a launch: the host sets it when any operand is not aligned to its
 * element size; aligned operands then take the plain typed access. */
__device__ __forceinline__ uint32_t lbg_ld32(const void *p, int64_t i, bool ua)
{
    if (!ua)
        return static_cast<const uint32_t *>(p)[i];
    const uint8_t *b = static_cast<const uint8_t *>(p) + 4 * i;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

__device__ __forceinline__ uint32_t lbg_ld16(const void *p, int64_t i, bool ua)
{
    if (!ua)
        return static_cast<const uint16_t *>(p)[i];
    const uint8_t *b = static_cast<const uint8_t *>(p) + 2 * i;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8;
}

__device__ __forceinline__ void lbg_st32(void *p, int64_t i, uint32_t v, bool ua)
{
    if (!ua) {
        static_cast<uint32_t *>(p)[i] = v;
        return;
    }
    uint8_t *b = static_cast<uint8_t *>(p) + 4 * i;
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
    b[2] = (uint8_t)(v >> 16);
    b[3] = (uint8_t)(v >> 24);
}

__device__ __forceinline__ void lbg_st16(void *p, int64_t i, uint32_t v, bool ua)
{
    if (!ua) {
        static_cast<uint16_t *>(p)[i] = (uint16_t)v;
        return;
    }
    uint8_t *b = static_cast<uint8_t *>(p) + 2 * i;
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
}

/* Element types of user tensors, as the kernels' template arguments. */
enum { LBG_DT_F32 = 0, LBG_DT_F16 = 1, LBG_DT_BF16 = 2 };

/* Element i of a user tensor of type DT as float32, at any alignment (ua above). */
template <int DT> __device__ __forceinline__ float lbg_load_elem(const void *p, int64_t i, bool ua)
{
    if constexpr (DT == LBG_DT_F32)
        return __uint_as_float(lbg_ld32(p, i, ua));
    else if constexpr (DT == LBG_DT_F16)
        return lbgpu_f16_to_f32((uint16_t)lbg_ld16(p, i, ua));
    else
        return lbgpu_bf16_to_f32((uint16_t)lbg_ld16(p, i, ua));
}

/* v rounded once to DT (nearest even, as the CPU) and stored as element i. */
template <int DT> __device__ __forceinline__ void lbg_store_elem(void *p, int64_t i, float v, bool ua)
{
    if constexpr (DT == LBG_DT_F32)
        lbg_st32(p, i, __float_as_uint(v), ua);
    else if constexpr (DT == LBG_DT_F16)
        lbg_st16(p, i, lbgpu_f32_to_f16(v), ua);
    else
        lbg_st16(p, i, lbgpu_f32_to_bf16(v), ua);
}

/* float32 element i (state, statistics, absmax) at any alignment. */
__device__ __forceinline__ float lbg_ldf(const void *p, int64_t i, bool ua)
{
    return __uint_as_float(lbg_ld32(p, i, ua));
}

__device__ __forceinline__ void lbg_stf(void *p, int64_t i, float v, bool ua)
{
    lbg_st32(p, i, __float_as_uint(v), ua);
}

/* ---- host helpers of the launchers ---- */

/* Whether p is aligned to a (a power of two). */
static inline int lbg_is_aligned(const void *p, size_t a)
{
    return ((uintptr_t)p & (a - 1)) == 0;
}

/* Block sizes must be powers of two: the kernels shift (lbg_log2) instead of dividing. */
static inline int lbg_pow2(int64_t v)
{
    return v > 0 && (v & (v - 1)) == 0;
}

/* The smallest k with 2^k >= v (capped at 62, so the shift stays defined). */
static inline int lbg_log2(int64_t v)
{
    int k = 0;
    while (k < 62 && ((int64_t)1 << k) < v)
        k++;
    return k;
}

/* A grid for `units` of work at per_cta units per CTA, capped at ctas_per_sm CTAs per multiprocessor (the
 * kernels loop over the rest), never empty. */
static inline unsigned lbg_grid(const lbg_ctx_t *c, int64_t units, int per_cta, int ctas_per_sm)
{
    int64_t need = (units + per_cta - 1) / per_cta, cap = (int64_t)c->sm_count * ctas_per_sm;
    need = need < cap ? need : cap;
    return (unsigned)(need > 0 ? need : 1);
}

/* b rounded up to 256 bytes: pieces carved from stream scratch keep the alignment the BLAS libraries want. */
static inline size_t lbg_pad256(size_t b)
{
    return (b + 255) & ~(size_t)255;
}

/* The tuning parameter `key` (module.cu): out of [lo, hi], the default with a warning, so a bad tuning file
 * cannot produce an invalid launch. */
LBG_HIDDEN int64_t lbg_tune_get(const lb_launch_t *l, const char *key, int64_t dflt, int64_t lo, int64_t hi);

/* optim.cu */
LBG_HIDDEN lowbit_status_t lbg_optimizer_step(const lb_launch_t *l, const lb_optim_args_t *a);

/* gemm4.cu: forward (GEMV kernel, or dequantize + cuBLAS for large M on CUDA) and input gradient */
LBG_HIDDEN lowbit_status_t lbg_gemm_4bit(const lb_launch_t *l, const lb_gemm4_args_t *a);
/* Frees the stream's BLAS handles (stream_destroy, after the stream is synchronized). */
LBG_HIDDEN void lbg_blas_release(lbg_stream_t *st);

/* int8.cu (LLM.int8) */
LBG_HIDDEN lowbit_status_t lbg_int8_quantize_rows(const lb_launch_t *l, const lb_int8_quant_args_t *a);
LBG_HIDDEN lowbit_status_t lbg_int8_quantize_cols(const lb_launch_t *l, const lb_int8_quant_args_t *a);
LBG_HIDDEN lowbit_status_t lbg_int8_gemm(const lb_launch_t *l, const lb_int8_gemm_args_t *a);
LBG_HIDDEN lowbit_status_t lbg_int8_dequant(const lb_launch_t *l, const lb_int8_dequant_args_t *a);
LBG_HIDDEN lowbit_status_t lbg_int8_matmul(const lb_launch_t *l, const lb_int8_matmul_args_t *a);

#endif /* LOWBIT_GPU_GPU_H */
