/*
 * gemm4.cu -- 4-bit (NF4/FP4) weight-only products for CUDA and HIP (lowbit.h "4-bit weight-only matrix
 * products"; spec/bitsandbytes.md 5): y = x W^T + bias, and the input gradient dx = dy W.
 *
 * STATUS: compiled for sm_90 and gfx90a, NOT YET RUN on a GPU (written in a session without device time).
 *
 * Weight values are those of lib/cpu_gemm4.c (and of lowbit_dequantize_blockwise): flat element e = n*K + k
 * in byte e/2, high nibble for even e; w = fl32(code[nibble] * absmax_j), j = e / blocksize, with a nested
 * absmax_j = fl32(fl32(nested_code[q_j] * nested_absmax[j / nested_blocksize]) + offset).  The products
 * accumulate in float32 with fmaf; the GPU's summation order is its own (documented per path below), so
 * results agree with the CPU within float32 accumulation error, not bit for bit.
 *
 * Forward, M < gemm4.cublas_min_m (every M on HIP, which links no BLAS): the GEMV kernel.  One warp per
 * output (m, n): the warp walks the weight row n in chunks of 32 weights (one 16-byte load of packed
 * nibbles per lane per chunk when K % 32 == 0, the data is 16-byte aligned, x is 16-byte aligned and
 * blocksize >= 32 -- "vector path"; otherwise one nibble per lane per step -- "scalar path"), decodes them
 * against the 16-entry code table in shared memory and the chunk's absmax (nested absmax reconstructed on
 * the fly), and accumulates lane-locally with fmaf (vector path: 4 partial sums by element index % 4,
 * combined (s0 + s1) + (s2 + s3); scalar path: one chain); then a butterfly shuffle sum over the warp (every
 * lane ends with the same bits); lane 0 adds the bias and rounds once to the dtype.  Each (m, n) is computed
 * the same way whatever M is, so a row of a batch equals lowbit_gemv_4bit of that row bit for bit (as the
 * tests require) as long as both go through this kernel.
 *
 * Forward, M >= gemm4.cublas_min_m (CUDA only): W is dequantized to a float32 temporary (quant.cu's
 * dequantize kernel, the same bits as w above), x converted to float32 if needed, one cublasGemmEx with
 * CUBLAS_COMPUTE_32F_PEDANTIC (no TF32, no reduced precision), then an epilogue adds the bias and rounds.
 * Rows of such a batch may differ in the last bits from the GEMV of the same row (different summation
 * order).  Temporaries: N*K*4 + M*K*4 (16-bit x) + M*N*4 bytes of stream scratch.
 *
 * Input gradient, M < cublas_min_m (every M on HIP): one thread per (m, k), s = fmaf(dy[m,n], w[n,k], s) for
 * n = 0 .. N-1 in order: exactly the CPU's definition (bit-identical, barring a compiler that would not
 * honour fmaf).  Larger M on CUDA: float32 temporaries and cublasGemmEx as for the forward.
 *
 * Alignment: any (buffer views at odd offsets): when an operand is not aligned to its element size the
 * kernels read and write it byte by byte (gpu.h lbg_ld32 & co.; a uniform flag per launch), and the cuBLAS
 * path is skipped when the absmax arrays are unaligned (quant.cu's dequantize refuses them).  Block sizes
 * must be powers of two (UNSUPPORTED otherwise, like quant.cu).
 */
#include "gpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(LBGPU_CUDA)
#include <cublasLt.h>
#include <cublas_v2.h>
#endif

typedef struct lbg_g4params {
    const void *x;          /* x [M, K] (forward) or dy [M, N] (input gradient), dtype */
    void *y;                /* y [M, N] or dx [M, K], dtype */
    const void *bias;       /* [N] dtype, or NULL */
    const uint8_t *data;    /* packed nibbles */
    const float *absmax;    /* plain */
    const uint8_t *qabsmax; /* nested: codes */
    const float *absmax2;   /* nested: their absmax */
    const float *offset;    /* nested: one float */
    int64_t M, N, K;
    int log2b, log2nbs, nested;
    int ua;                 /* some operand is not aligned to its element size: byte-wise access (gpu.h) */
    float code[16];
    float ncode[256];
} lbg_g4params;

/* The float32 value of the bits of one element (16-bit types: the low half), for the vector path's words. */
template <int DT> __device__ __forceinline__ float lbg_gdec(uint32_t raw)
{
    if constexpr (DT == LBG_DT_F32)
        return __uint_as_float(raw);
    else if constexpr (DT == LBG_DT_F16)
        return lbgpu_f16_to_f32((uint16_t)raw);
    else
        return lbgpu_bf16_to_f32((uint16_t)raw);
}

/* absmax_j (nested: two separately rounded operations). */
__device__ __forceinline__ float lbg_gabsmax(const lbg_g4params &p, const float *ncode, float off, int64_t j)
{
    const bool ua = p.ua != 0;
    if (!p.nested)
        return __uint_as_float(lbg_ld32(p.absmax, j, ua));
    return lb_add(lb_mul(ncode[p.qabsmax[j]], __uint_as_float(lbg_ld32(p.absmax2, j >> p.log2nbs, ua))), off);
}

/* Nibble of flat element e. */
__device__ __forceinline__ int lbg_gnib(const uint8_t *data, int64_t e)
{
    const uint32_t b = data[e >> 1];
    return (int)((e & 1) ? (b & 15u) : (b >> 4));
}

/* Copies the code tables to shared memory (every thread of the CTA takes part: a barrier) and returns the
 * nested absmax offset (0 when not nested). */
__device__ __forceinline__ float lbg_gtables(const lbg_g4params &p, float *code, float *ncode)
{
    for (int i = (int)threadIdx.x; i < 256; i += (int)blockDim.x) {
        if (i < 16)
            code[i] = p.code[i];
        ncode[i] = p.ncode[i];
    }
    __syncthreads();
    return p.nested ? __uint_as_float(lbg_ld32(p.offset, 0, p.ua != 0)) : 0.0f;
}

/* ---- forward GEMV: one warp per (m, n) -------------------------------------------------------------- */

template <int DT, int VEC>
__global__ void __launch_bounds__(1024) lbg_gemv4_kernel(const lbg_g4params p)
{
    __shared__ float code[16];
    __shared__ float ncode[256];
    const float off = lbg_gtables(p, code, ncode);
    const int wpb = (int)(blockDim.x / LBGPU_WARP);
    const int lane = lbgpu_lane();
    const int64_t n = (int64_t)blockIdx.x * wpb + (int64_t)(threadIdx.x / LBGPU_WARP);
    /* no early return: every lane of the warp takes part in the shuffles; a warp past N computes nothing */
    const bool rowok = n < p.N;
    const int64_t K = p.K;
    for (int64_t m = blockIdx.y; m < p.M; m += gridDim.y) {
        float r = 0.0f;
        if (VEC) {
            /* K % 32 == 0: chunk c covers k = 32c .. 32c+31, bytes (n*K + 32c)/2 .. +15, one absmax block */
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            const int64_t nch = rowok ? K >> 5 : 0;
            for (int64_t c = lane; c < nch; c += LBGPU_WARP) {
                const int64_t e0 = n * K + (c << 5);
                const uint4 wq = *reinterpret_cast<const uint4 *>(p.data + (e0 >> 1));
                const float am = lbg_gabsmax(p, ncode, off, e0 >> p.log2b);
                const uint32_t words[4] = {wq.x, wq.y, wq.z, wq.w};
                float xv[32];
                const char *xrow = static_cast<const char *>(p.x) + (m * K + (c << 5)) * (DT == LBG_DT_F32 ? 4 : 2);
                if constexpr (DT == LBG_DT_F32) {
#pragma unroll
                    for (int v = 0; v < 8; ++v) {
                        const float4 f = reinterpret_cast<const float4 *>(xrow)[v];
                        xv[4 * v] = f.x;
                        xv[4 * v + 1] = f.y;
                        xv[4 * v + 2] = f.z;
                        xv[4 * v + 3] = f.w;
                    }
                } else {
#pragma unroll
                    for (int v = 0; v < 4; ++v) {
                        const uint4 u = reinterpret_cast<const uint4 *>(xrow)[v];
                        const uint32_t h[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
                        for (int t = 0; t < 4; ++t) {
                            xv[8 * v + 2 * t] = lbg_gdec<DT>(h[t] & 0xffffu);
                            xv[8 * v + 2 * t + 1] = lbg_gdec<DT>(h[t] >> 16);
                        }
                    }
                }
#pragma unroll
                for (int t = 0; t < 16; ++t) { /* byte t: element 2t high nibble, 2t+1 low nibble */
                    const uint32_t b = (words[t >> 2] >> (8 * (t & 3))) & 0xffu;
                    const float w0 = lb_mul(code[b >> 4], am), w1 = lb_mul(code[b & 15u], am);
                    if (t & 1) {
                        s2 = fmaf(xv[2 * t], w0, s2);
                        s3 = fmaf(xv[2 * t + 1], w1, s3);
                    } else {
                        s0 = fmaf(xv[2 * t], w0, s0);
                        s1 = fmaf(xv[2 * t + 1], w1, s1);
                    }
                }
            }
            r = lb_add(lb_add(s0, s1), lb_add(s2, s3));
        } else {
            const int64_t kend = rowok ? K : 0;
            int64_t jcur = -1;
            float am = 0.0f;
            for (int64_t k = lane; k < kend; k += LBGPU_WARP) {
                const int64_t e = n * K + k;
                const int64_t j = e >> p.log2b;
                if (j != jcur) {
                    am = lbg_gabsmax(p, ncode, off, j);
                    jcur = j;
                }
                const float w = lb_mul(code[lbg_gnib(p.data, e)], am);
                r = fmaf(lbg_load_elem<DT>(p.x, m * K + k, p.ua != 0), w, r);
            }
        }
#pragma unroll
        for (int o = LBGPU_WARP >> 1; o > 0; o >>= 1)
            r = lb_add(r, lbgpu_shfl_xor(r, o));
        if (rowok && lane == 0) {
            if (p.bias != NULL)
                r = lb_add(r, lbg_load_elem<DT>(p.bias, n, p.ua != 0));
            lbg_store_elem<DT>(p.y, m * p.N + n, r, p.ua != 0);
        }
    }
}

/* ---- input gradient: one thread per (m, k), sequential over n (the CPU's order) -------------------- */

template <int DT>
__global__ void __launch_bounds__(256) lbg_g4grad_kernel(const lbg_g4params p)
{
    __shared__ float code[16];
    __shared__ float ncode[256];
    const float off = lbg_gtables(p, code, ncode);
    const int64_t K = p.K, N = p.N;
    const int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= K)
        return;
    for (int64_t m = blockIdx.y; m < p.M; m += gridDim.y) {
        float s = 0.0f;
        for (int64_t n = 0; n < N; n++) {
            const int64_t e = n * K + k;
            const float w = lb_mul(code[lbg_gnib(p.data, e)], lbg_gabsmax(p, ncode, off, e >> p.log2b));
            s = fmaf(lbg_load_elem<DT>(p.x, m * N + n, p.ua != 0), w, s);
        }
        lbg_store_elem<DT>(p.y, m * K + k, s, p.ua != 0);
    }
}

/* ---- helpers of the cuBLAS path ------------------------------------------------------------------------ */

/* dst[i] = float(src[i]) */
template <int DT>
__global__ void __launch_bounds__(256) lbg_gto_f32_kernel(const void *src, float *dst, int64_t n, int ua)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = lbg_load_elem<DT>(src, i, ua != 0);
}

/* out[m, c] = dtype(acc[m, c] + bias[c]) (bias may be NULL) */
template <int DT>
__global__ void __launch_bounds__(256) lbg_gepilogue_kernel(const float *acc, const void *bias, void *out, int64_t rows,
                                                           int64_t cols, int ua)
{
    const int64_t n = rows * cols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float r = acc[i];
        if (bias != NULL)
            r = lb_add(r, lbg_load_elem<DT>(bias, i % cols, ua != 0));
        lbg_store_elem<DT>(out, i, r, ua != 0);
    }
}

/* ---- host ---------------------------------------------------------------------------------------------- */

#if defined(LBGPU_CUDA)
static const char *lbg_cublas_name(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
        return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
        return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED:
        return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
        return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
        return "CUBLAS_STATUS_NOT_SUPPORTED";
    default:
        return "cuBLAS error";
    }
}

static lowbit_status_t lbg_cublas_fail(cublasStatus_t s, const char *fn)
{
    return lbg_host->error(s == CUBLAS_STATUS_ALLOC_FAILED ? LOWBIT_ERR_OUT_OF_MEMORY : LOWBIT_ERR_DEVICE,
                           "%s: %s: %s (%d)", LBGPU_NAME, fn, lbg_cublas_name(s), (int)s);
}

/* The stream's cuBLAS handle (created on first use, bound to the stream; freed by lbg_blas_release). */
static lowbit_status_t lbg_cublas(lbg_stream_t *st, cublasHandle_t *h_p)
{
    cublasStatus_t s;
    if (st->blas == NULL) {
        cublasHandle_t h;
        if ((s = cublasCreate(&h)) != CUBLAS_STATUS_SUCCESS)
            return lbg_cublas_fail(s, "cublasCreate");
        st->blas = (void *)h;
    }
    cublasHandle_t h = (cublasHandle_t)st->blas;
    if ((s = cublasSetStream(h, st->s)) != CUBLAS_STATUS_SUCCESS)
        return lbg_cublas_fail(s, "cublasSetStream");
    *h_p = h;
    return LOWBIT_SUCCESS;
}
#endif

void lbg_blas_release(lbg_stream_t *st)
{
#if defined(LBGPU_CUDA)
    if (st->blas != NULL)
        (void)cublasDestroy((cublasHandle_t)st->blas);
    if (st->blaslt != NULL)
        (void)cublasLtDestroy((cublasLtHandle_t)st->blaslt);
#endif
    st->blas = NULL;
    st->blaslt = NULL;
}

typedef void (*lbg_g4kernel_t)(const lbg_g4params);
typedef void (*lbg_gconv_t)(const void *, float *, int64_t, int);
typedef void (*lbg_gepi_t)(const float *, const void *, void *, int64_t, int64_t, int);

static lbg_g4kernel_t lbg_gemv_k(int dt, int vec)
{
    if (dt == LBG_DT_F32)
        return vec ? lbg_gemv4_kernel<LBG_DT_F32, 1> : lbg_gemv4_kernel<LBG_DT_F32, 0>;
    if (dt == LBG_DT_F16)
        return vec ? lbg_gemv4_kernel<LBG_DT_F16, 1> : lbg_gemv4_kernel<LBG_DT_F16, 0>;
    return vec ? lbg_gemv4_kernel<LBG_DT_BF16, 1> : lbg_gemv4_kernel<LBG_DT_BF16, 0>;
}

static lbg_g4kernel_t lbg_grad_k(int dt)
{
    return dt == LBG_DT_F32 ? lbg_g4grad_kernel<LBG_DT_F32> : dt == LBG_DT_F16 ? lbg_g4grad_kernel<LBG_DT_F16>
                                                                               : lbg_g4grad_kernel<LBG_DT_BF16>;
}

#if defined(LBGPU_CUDA)
static lbg_gconv_t lbg_conv_k(int dt)
{
    return dt == LBG_DT_F32 ? lbg_gto_f32_kernel<LBG_DT_F32> : dt == LBG_DT_F16 ? lbg_gto_f32_kernel<LBG_DT_F16>
                                                                                : lbg_gto_f32_kernel<LBG_DT_BF16>;
}

static lbg_gepi_t lbg_epi_k(int dt)
{
    return dt == LBG_DT_F32 ? lbg_gepilogue_kernel<LBG_DT_F32> : dt == LBG_DT_F16 ? lbg_gepilogue_kernel<LBG_DT_F16>
                                                                                  : lbg_gepilogue_kernel<LBG_DT_BF16>;
}

/* The large-M path: float32 temporaries and one cublasGemmEx (see the header). */
static lowbit_status_t lbg_gemm4_cublas(const lb_launch_t *l, const lb_gemm4_args_t *a, int dt)
{
    lbg_ctx_t *c = (lbg_ctx_t *)l->bctx;
    lbg_stream_t *st = (lbg_stream_t *)l->bstream;
    const int64_t M = a->M, N = a->N, K = a->K;
    const int64_t in_cols = a->grad_input ? N : K, out_cols = a->grad_input ? K : N;
    if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX)
        return lbg_host->error(LOWBIT_ERR_TOO_LARGE, "%s: gemm_4bit: dimensions beyond cuBLAS' int range", LBGPU_NAME);
    const int ua = !lbg_is_aligned(LB_PTR(&a->x), dt == LBG_DT_F32 ? 4 : 2) ||
                   !lbg_is_aligned(LB_PTR(&a->y), dt == LBG_DT_F32 ? 4 : 2) ||
                   (a->has_bias && !a->grad_input && !lbg_is_aligned(LB_PTR(&a->bias), dt == LBG_DT_F32 ? 4 : 2));
    const int direct_in = dt == LBG_DT_F32 && lbg_is_aligned(LB_PTR(&a->x), 4);
    const int direct_out = dt == LBG_DT_F32 && !(a->has_bias && !a->grad_input) && lbg_is_aligned(LB_PTR(&a->y), 4);
    const size_t wb = lbg_pad256((size_t)N * (size_t)K * 4);
    const size_t xb = direct_in ? 0 : lbg_pad256((size_t)M * (size_t)in_cols * 4);
    const size_t yb = direct_out ? 0 : lbg_pad256((size_t)M * (size_t)out_cols * 4);
    void *scr = NULL;
    lowbit_status_t ret = lbg_scratch(st, wb + xb + yb, &scr);
    if (ret != LOWBIT_SUCCESS)
        return ret;
    float *wf = (float *)scr;
    float *xf = direct_in ? (float *)LB_PTR(&a->x) : (float *)(void *)((char *)scr + wb);
    float *yf = direct_out ? (float *)LB_PTR(&a->y) : (float *)(void *)((char *)scr + wb + xb);

    lb_mem_t wmem;
    wmem.handle = scr;
    wmem.offset = 0;
    wmem.bytes = (size_t)N * (size_t)K * 4;
    if ((ret = lbg_dequantize(l, &a->W, LOWBIT_F32, &wmem)) != LOWBIT_SUCCESS)
        return ret;
    if (!direct_in) {
        const int64_t cnt = M * in_cols;
        (void)lbgpuGetLastError();
        lbg_conv_k(dt)<<<lbg_grid(c, cnt, 256, 8), 256, 0, st->s>>>(LB_PTR(&a->x), xf, cnt, ua);
        if ((ret = lbg_check_launch("gemm_4bit conversion kernel")) != LOWBIT_SUCCESS)
            return ret;
    }
    cublasHandle_t h = NULL;
    if ((ret = lbg_cublas(st, &h)) != LOWBIT_SUCCESS)
        return ret;
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t s;
    /* column-major views of the row-major operands: y^T [N, M] = Wf^T... see the header */
    if (!a->grad_input)
        s = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, wf, CUDA_R_32F, (int)K, xf,
                         CUDA_R_32F, (int)K, &zero, yf, CUDA_R_32F, (int)N, CUBLAS_COMPUTE_32F_PEDANTIC,
                         CUBLAS_GEMM_DEFAULT);
    else /* dx^T [K, M] = Wf (col-major [K, N]) * dy^T (col-major [N, M]) */
        s = cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)K, (int)M, (int)N, &one, wf, CUDA_R_32F, (int)K, xf,
                         CUDA_R_32F, (int)N, &zero, yf, CUDA_R_32F, (int)K, CUBLAS_COMPUTE_32F_PEDANTIC,
                         CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
        return lbg_cublas_fail(s, "cublasGemmEx");
    if (!direct_out) {
        const int64_t cnt = M * out_cols;
        (void)lbgpuGetLastError();
        lbg_epi_k(dt)<<<lbg_grid(c, cnt, 256, 8), 256, 0, st->s>>>(yf, a->has_bias && !a->grad_input ? LB_PTR(&a->bias)
                                                                                                  : NULL,
                                                                 LB_PTR(&a->y), M, out_cols, ua);
        if ((ret = lbg_check_launch("gemm_4bit epilogue kernel")) != LOWBIT_SUCCESS)
            return ret;
    }
    return LOWBIT_SUCCESS;
}
#endif

lowbit_status_t lbg_gemm_4bit(const lb_launch_t *l, const lb_gemm4_args_t *a)
{
    lbg_ctx_t *c = (lbg_ctx_t *)l->bctx;
    lbg_stream_t *st = (lbg_stream_t *)l->bstream;
    const lb_qtensor_t *W = &a->W;
    if (a->M <= 0 || a->N <= 0 || a->K <= 0)
        return LOWBIT_SUCCESS;
    if (a->dtype != LOWBIT_F32 && a->dtype != LOWBIT_F16 && a->dtype != LOWBIT_BF16)
        return lbg_host->error(LOWBIT_ERR_UNSUPPORTED, "%s: gemm_4bit: dtype %d", LBGPU_NAME, (int)a->dtype);
    const int dt = a->dtype == LOWBIT_F32 ? LBG_DT_F32 : a->dtype == LOWBIT_F16 ? LBG_DT_F16 : LBG_DT_BF16;
    const size_t es = dt == LBG_DT_F32 ? 4 : 2;
    const int nested = W->nested_blocksize > 0;
    if (!lbg_pow2(W->blocksize) || (nested && !lbg_pow2(W->nested_blocksize)))
        return lbg_host->error(LOWBIT_ERR_UNSUPPORTED, "%s: gemm_4bit: block sizes %d / %d are not powers of two",
                               LBGPU_NAME, W->blocksize, W->nested_blocksize);
    const int absmax_aligned = nested ? lbg_is_aligned(LB_PTR(&W->nested_absmax), 4) &&
                                            lbg_is_aligned(LB_PTR(&W->nested_offset), 4)
                                      : lbg_is_aligned(LB_PTR(&W->absmax), 4);
    const int ua = !lbg_is_aligned(LB_PTR(&a->x), es) || !lbg_is_aligned(LB_PTR(&a->y), es) ||
                   (a->has_bias && !a->grad_input && !lbg_is_aligned(LB_PTR(&a->bias), es)) || !absmax_aligned;

#if defined(LBGPU_CUDA)
    /* quant.cu's dequantize (used by the cuBLAS path) refuses unaligned absmax arrays and block sizes below
     * its vector width: the kernels take those */
    const int64_t cublas_min_m = lbg_tune_get(l, "gemm4.cublas_min_m", 16, 2, INT64_C(1) << 40);
    if (a->M >= cublas_min_m && absmax_aligned && W->blocksize >= 16)
        return lbg_gemm4_cublas(l, a, dt);
#endif

    lbg_g4params *p = (lbg_g4params *)calloc(1, sizeof *p);
    if (p == NULL)
        return lbg_host->error(LOWBIT_ERR_OUT_OF_MEMORY, "%s: gemm_4bit: out of host memory", LBGPU_NAME);
    p->x = LB_PTR(&a->x);
    p->y = LB_PTR(&a->y);
    p->bias = a->has_bias && !a->grad_input ? LB_PTR(&a->bias) : NULL;
    p->data = (const uint8_t *)LB_PTR(&W->data);
    p->M = a->M;
    p->N = a->N;
    p->K = a->K;
    p->log2b = lbg_log2(W->blocksize);
    p->nested = nested;
    p->ua = ua;
    memcpy(p->code, W->code, sizeof p->code);
    if (nested) {
        p->qabsmax = (const uint8_t *)LB_PTR(&W->absmax);
        p->absmax2 = (const float *)LB_PTR(&W->nested_absmax);
        p->offset = (const float *)LB_PTR(&W->nested_offset);
        p->log2nbs = lbg_log2(W->nested_blocksize);
        memcpy(p->ncode, W->nested_code, sizeof p->ncode);
    } else {
        p->absmax = (const float *)LB_PTR(&W->absmax);
    }
    const unsigned gy = (unsigned)(a->M < 65535 ? a->M : 65535);
    lowbit_status_t ret;
    (void)lbgpuGetLastError();
    if (!a->grad_input) {
        int wpb = (int)lbg_tune_get(l, "gemm4.gemv.warps_per_cta", 4, 1, 32);
        if (wpb * c->warp > c->max_threads)
            wpb = c->max_threads / c->warp;
        /* the vector path reads x with 16-byte loads and writes through lbg_store_elem (any alignment) */
        const int vec = (a->K % 32) == 0 && W->blocksize >= 32 && lbg_is_aligned(p->data, 16) &&
                        lbg_is_aligned(p->x, 16);
        const int64_t gx = (a->N + wpb - 1) / wpb;
        if (gx > INT32_MAX) {
            free(p);
            return lbg_host->error(LOWBIT_ERR_TOO_LARGE, "%s: gemm_4bit: N = %lld is too large", LBGPU_NAME,
                                   (long long)a->N);
        }
        dim3 grid((unsigned)gx, gy);
        lbg_gemv_k(dt, vec)<<<grid, (unsigned)(wpb * c->warp), 0, st->s>>>(*p);
        ret = lbg_check_launch("gemv_4bit kernel");
    } else {
        const int64_t gx = (a->K + 255) / 256;
        dim3 grid((unsigned)gx, gy);
        lbg_grad_k(dt)<<<grid, 256, 0, st->s>>>(*p);
        ret = lbg_check_launch("gemm_4bit_grad_input kernel");
    }
    free(p);
    return ret;
}
