/*
 * int8.cu -- LLM.int8() for CUDA and HIP (spec/bitsandbytes.md 4.1 - 4.5): row / column int8 quantization
 * with threshold outliers, the int8 x int8 -> int32 GEMM, the int32 -> float dequantization and the fused
 * forward.
 *
 * STATUS: compiled for sm_90 and gfx90a, NOT YET RUN on a GPU (written in a session without device time).
 *
 * Every value follows lib/cpu_int8.c's header (the definition), element by element, so results are meant to
 * be bit-identical to the CPU backend:
 *   rows     stat = max |x| over the row's non-outlier, non-NaN elements (an integer max over the bits);
 *            scale = 127.0f / stat (IEEE division; pre = 2^64 when it overflows); q = rint((x * pre) * scale)
 *            clamped to +-127, NaN -> 0; outliers (|x| >= thr > 0) -> 0, and every column holding an outlier
 *            in any row -> 0 in all rows (flags from a first kernel); a row with stat 0 -> zeros.
 *            The outlier list (ascending, -1 padded) and count come from one CTA's prefix sums over the flags.
 *   cols     the same per column of A with its outliers set to 0 (one thread per column).
 *   gemm     exact integer products: cuBLASLt (CUDA: int8 inputs, CUBLAS_COMPUTE_32I, int32 C, the row-major
 *            product computed as C^T = W X^T in column-major, i.e. the "TN" case), or, when cuBLASLt finds no
 *            algorithm for the shapes / alignments (and always on HIP, which links no BLAS), a simple tiled
 *            kernel of this file.  K <= 131071 (lowbit.h), so no sum overflows int32.
 *   dequant  out = T(fmaf(((float)C * row_stat) * col_stat, fl32(1/16129), bias)) (+ s of the forward).
 *   matmul   CA, SCA = rows(X, threshold) into stream scratch, C = gemm(CA, CB), then one kernel per output
 *            element: s = sum over the outlier columns j (ascending) of fmaf(X[r,j], Wd[c,j], s),
 *            Wd = ((float)CB[c,j] * SCB[c]) * fl32(1/127), out = T(dequant value + s) (s added only when
 *            there is an outlier column).  The outlier count stays on the device: nothing synchronizes.
 *
 * Alignment: any (buffer views at odd offsets, as the tests use): when some operand of a launch is not
 * aligned to its element size, that launch reads and writes user memory byte by byte (gpu.h lbg_ld32 & co.,
 * a uniform flag); cuBLASLt is told the actual alignments and the fallback kernel runs when it has no
 * algorithm for them.
 */
#include "gpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(LBGPU_CUDA)
#include <cublasLt.h>
#endif

#define LBG_I8_INV_16129 6.200012e-05f       /* fl32(1/16129) = 0x38820610 */
#define LBG_I8_INV_127 7.874015718698502e-3f /* fl32(1/127) */

/* Excluded from the statistics: NaN, or an outlier (thr > 0). */
__device__ __forceinline__ bool lbg_iexcluded(float ax, float thr)
{
    return ax != ax || (thr > 0.0f && ax >= thr);
}

/* The multipliers of a stat > 0 (possibly inf): q = rint((x * pre) * scale). */
__device__ __forceinline__ void lbg_iscale(float stat, float *pre, float *scale)
{
    float s = 127.0f / stat;
    float p = 1.0f;
    if (isinf(s)) {
        p = 0x1p64f;
        s = 127.0f / lb_mul(stat, p);
    }
    *pre = p;
    *scale = s;
}

/* rint(y) as an int8 code: ties to even, clamped to [-127, 127], NaN -> 0. */
__device__ __forceinline__ int8_t lbg_icode(float y)
{
    if (y != y)
        return 0;
    float r = rintf(y);
    r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
    return (int8_t)r;
}

/* ---- quantization kernels ------------------------------------------------------------------------------ */

/* flags[c] = 1 for every column holding an element with |x| >= thr (flags zeroed before). */
template <int DT>
__global__ void __launch_bounds__(256) lbg_i8_mark_kernel(const void *A, int64_t rows, int64_t cols, float thr,
                                                         int *flags, int ua)
{
    const int64_t n = rows * cols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        if (fabsf(lbg_load_elem<DT>(A, i, ua != 0)) >= thr)
            flags[i % cols] = 1; /* racing writes of the same value */
}

/* One CTA (256 threads) per row: stats[r] and q[r, :].  flags (or NULL) marks the columns zeroed entirely. */
template <int DT>
__global__ void __launch_bounds__(256) lbg_i8_rows_kernel(const void *A, int64_t rows, int64_t cols, float thr,
                                                         const int *flags, int8_t *q, float *stats, int ua)
{
    __shared__ int red[256];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const int64_t base = r * cols;
        int m = 0; /* bits of max |x| (values >= 0: integer order is float order) */
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            const float ax = fabsf(lbg_load_elem<DT>(A, base + c, ua != 0));
            const int b = (int)__float_as_uint(ax);
            if (!lbg_iexcluded(ax, thr) && b > m)
                m = b;
        }
        __syncthreads(); /* red is reused from the previous row */
        red[threadIdx.x] = m;
        __syncthreads();
        for (int h = 128; h > 0; h >>= 1) {
            if ((int)threadIdx.x < h && red[threadIdx.x + h] > red[threadIdx.x])
                red[threadIdx.x] = red[threadIdx.x + h];
            __syncthreads();
        }
        const float stat = __int_as_float(red[0]);
        if (threadIdx.x == 0)
            lbg_st32(stats, r, __float_as_uint(stat), ua != 0);
        if (stat == 0.0f) {
            for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
                q[base + c] = 0;
            continue;
        }
        float pre, scale;
        lbg_iscale(stat, &pre, &scale);
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            const float x = lbg_load_elem<DT>(A, base + c, ua != 0);
            const bool out = (thr > 0.0f && fabsf(x) >= thr) || (flags != NULL && flags[c] != 0);
            q[base + c] = out ? (int8_t)0 : lbg_icode(lb_mul(lb_mul(x, pre), scale));
        }
    }
}

/* One CTA: list = ascending indices c with flags[c] != 0, then -1 up to cols entries; *count = their number.
 * flags NULL: none.  blockDim.x = 1024 (a power of two). */
__global__ void __launch_bounds__(1024) lbg_i8_list_kernel(const int *flags, int64_t cols, int *list, int *count,
                                                          int ua)
{
    __shared__ int sc[1024];
    __shared__ int base_s;
    if (threadIdx.x == 0)
        base_s = 0;
    __syncthreads();
    for (int64_t c0 = 0; c0 < cols; c0 += blockDim.x) {
        const int64_t c = c0 + threadIdx.x;
        const int f = (flags != NULL && c < cols && flags[c] != 0) ? 1 : 0;
        sc[threadIdx.x] = f;
        __syncthreads();
        for (int off = 1; off < (int)blockDim.x; off <<= 1) { /* inclusive scan (Hillis-Steele) */
            const int v = (int)threadIdx.x >= off ? sc[threadIdx.x - off] : 0;
            __syncthreads();
            sc[threadIdx.x] += v;
            __syncthreads();
        }
        const int base = base_s;
        if (f)
            lbg_st32(list, base + sc[threadIdx.x] - 1, (uint32_t)c, ua != 0);
        __syncthreads(); /* every thread has read base_s */
        if (threadIdx.x == blockDim.x - 1)
            base_s = base + sc[threadIdx.x];
        __syncthreads();
    }
    const int total = base_s;
    for (int64_t c = total + (int64_t)threadIdx.x; c < cols; c += blockDim.x)
        lbg_st32(list, c, 0xffffffffu, ua != 0);
    if (threadIdx.x == 0)
        lbg_st32(count, 0, (uint32_t)total, ua != 0);
}

/* One thread per column: col_stats[c], q[:, c] (outlier elements -> 0). */
template <int DT>
__global__ void __launch_bounds__(256) lbg_i8_cols_kernel(const void *A, int64_t rows, int64_t cols, float thr, int8_t *q,
                                                         float *stats, int ua)
{
    for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += (int64_t)gridDim.x * blockDim.x) {
        float m = 0.0f;
        for (int64_t r = 0; r < rows; r++) {
            const float ax = fabsf(lbg_load_elem<DT>(A, r * cols + c, ua != 0));
            if (!lbg_iexcluded(ax, thr) && ax > m)
                m = ax;
        }
        lbg_st32(stats, c, __float_as_uint(m), ua != 0);
        float pre = 1.0f, scale = 0.0f;
        if (m > 0.0f)
            lbg_iscale(m, &pre, &scale);
        for (int64_t r = 0; r < rows; r++) {
            const float x = lbg_load_elem<DT>(A, r * cols + c, ua != 0);
            const bool zero = m == 0.0f || (thr > 0.0f && fabsf(x) >= thr);
            q[r * cols + c] = zero ? (int8_t)0 : lbg_icode(lb_mul(lb_mul(x, pre), scale));
        }
    }
}

/* ---- GEMM fallback: C[M,N] = X[M,K] W[N,K]^T, 16 x 16 outputs per CTA, K in slices of 64 ------------- */

#define LBG_I8_T 16
#define LBG_I8_KT 64

__global__ void __launch_bounds__(256) lbg_i8_gemm_kernel(const int8_t *X, const int8_t *W, int32_t *C, int64_t M,
                                                         int64_t N, int64_t K, int ua)
{
    __shared__ int8_t xs[LBG_I8_T][LBG_I8_KT];
    __shared__ int8_t ws[LBG_I8_T][LBG_I8_KT];
    const int tx = (int)(threadIdx.x % LBG_I8_T), ty = (int)(threadIdx.x / LBG_I8_T);
    for (int64_t tm = blockIdx.y; tm * LBG_I8_T < M; tm += gridDim.y)
        for (int64_t tn = blockIdx.x; tn * LBG_I8_T < N; tn += gridDim.x) {
            const int64_t m0 = tm * LBG_I8_T, n0 = tn * LBG_I8_T;
            uint32_t acc = 0; /* modulo 2^32 (no sum overflows for K <= 131071 anyway) */
            for (int64_t k0 = 0; k0 < K; k0 += LBG_I8_KT) {
                __syncthreads();
                for (int i = (int)threadIdx.x; i < LBG_I8_T * LBG_I8_KT; i += (int)blockDim.x) {
                    const int rr = i / LBG_I8_KT, kk = i % LBG_I8_KT;
                    const int64_t k = k0 + kk;
                    xs[rr][kk] = (m0 + rr < M && k < K) ? X[(m0 + rr) * K + k] : (int8_t)0;
                    ws[rr][kk] = (n0 + rr < N && k < K) ? W[(n0 + rr) * K + k] : (int8_t)0;
                }
                __syncthreads();
#pragma unroll 16
                for (int kk = 0; kk < LBG_I8_KT; kk++)
                    acc += (uint32_t)((int32_t)xs[ty][kk] * (int32_t)ws[tx][kk]);
            }
            if (m0 + ty < M && n0 + tx < N)
                lbg_st32(C, (m0 + ty) * N + n0 + tx, acc, ua != 0);
        }
}

/* ---- dequantization (and the forward's outlier part) --------------------------------------------------- */

typedef struct lbg_i8deq {
    const int32_t *C;
    const float *rs, *cs;
    const void *bias; /* [N] of DT or NULL */
    void *out;        /* [M, N] of DT */
    int64_t M, N;
    /* forward only (count NULL otherwise): outliers of X [M, K] (DT) against CB [N, K], SCB [N] */
    const int *count, *list;
    const void *X;
    const int8_t *CB;
    int64_t K;
    int ua; /* some operand is not aligned to its element size */
} lbg_i8deq;

template <int DT> __global__ void __launch_bounds__(256) lbg_i8_deq_kernel(const lbg_i8deq d)
{
    const int64_t n = d.M * d.N;
    const bool ua = d.ua != 0;
    const int nout = d.count != NULL ? *d.count : 0; /* count and list: our scratch (aligned) */
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / d.N, c = i % d.N;
        const float cs = lbg_ldf(d.cs, c, ua);
        const float p = lb_mul(lb_mul((float)(int32_t)lbg_ld32(d.C, i, ua), lbg_ldf(d.rs, r, ua)), cs);
        const float b = d.bias != NULL ? lbg_load_elem<DT>(d.bias, c, ua) : 0.0f;
        float v = fmaf(p, LBG_I8_INV_16129, b);
        if (nout > 0) {
            float s = 0.0f;
            for (int j = 0; j < nout; j++) {
                const int64_t col = d.list[j];
                const float wd = lb_mul(lb_mul((float)d.CB[c * d.K + col], cs), LBG_I8_INV_127);
                s = fmaf(lbg_load_elem<DT>(d.X, r * d.K + col, ua), wd, s);
            }
            v = lb_add(v, s);
        }
        lbg_store_elem<DT>(d.out, i, v, ua);
    }
}

/* ---- host ---------------------------------------------------------------------------------------------- */

static int lbg_idt(lowbit_dtype_t d)
{
    return d == LOWBIT_F32 ? LBG_DT_F32 : d == LOWBIT_F16 ? LBG_DT_F16 : d == LOWBIT_BF16 ? LBG_DT_BF16 : -1;
}

/* Row quantization into q / stats; flags: K ints of scratch (thr > 0) or NULL. */
static lowbit_status_t lbg_i8_rows(const lb_launch_t *l, int dt, const void *A, int64_t rows, int64_t cols, float thr,
                                   int *flags, int8_t *q, float *stats, int ua)
{
    lbg_ctx_t *c = (lbg_ctx_t *)l->bctx;
    lbg_stream_t *st = (lbg_stream_t *)l->bstream;
    lowbit_status_t ret;
    if (thr > 0.0f) {
        lbgpuError_t e = lbgpuMemsetAsync(flags, 0, (size_t)cols * sizeof(int), st->s);
        if (e != lbgpuSuccess)
            return lbg_fail(e, "MemsetAsync");
        const unsigned g = lbg_grid(c, rows * cols, 256, 16);
        (void)lbgpuGetLastError();
        if (dt == LBG_DT_F32)
            lbg_i8_mark_kernel<LBG_DT_F32><<<g, 256, 0, st->s>>>(A, rows, cols, thr, flags, ua);
        else if (dt == LBG_DT_F16)
            lbg_i8_mark_kernel<LBG_DT_F16><<<g, 256, 0, st->s>>>(A, rows, cols, thr, flags, ua);
        else
            lbg_i8_mark_kernel<LBG_DT_BF16><<<g, 256, 0, st->s>>>(A, rows, cols, thr, flags, ua);
        if ((ret = lbg_check_launch("int8 outlier-column kernel")) != LOWBIT_SUCCESS)
            return ret;
    } else {
        flags = NULL;
    }
    const unsigned g = lbg_grid(c, rows, 1, 16);
    (void)lbgpuGetLastError();
    if (dt == LBG_DT_F32)
        lbg_i8_rows_kernel<LBG_DT_F32><<<g, 256, 0, st->s>>>(A, rows, cols, thr, flags, q, stats, ua);
    else if (dt == LBG_DT_F16)
        lbg_i8_rows_kernel<LBG_DT_F16><<<g, 256, 0, st->s>>>(A, rows, cols, thr, flags, q, stats, ua);
    else
        lbg_i8_rows_kernel<LBG_DT_BF16><<<g, 256, 0, st->s>>>(A, rows, cols, thr, flags, q, stats, ua);
    return lbg_check_launch("int8 row quantization kernel");
}

lowbit_status_t lbg_int8_quantize_rows(const lb_launch_t *l, const lb_int8_quant_args_t *a)
{
    lbg_stream_t *st = (lbg_stream_t *)l->bstream;
    const int dt = lbg_idt(a->dtype);
    if (dt < 0)
        return lbg_host->error(LOWBIT_ERR_UNSUPPORTED, "%s: int8_quantize_rows: dtype %d", LBGPU_NAME, (int)a->dtype);
    if (a->rows <= 0 || a->cols <= 0)
        return LOWBIT_SUCCESS;
    const size_t es = dt == LBG_DT_F32 ? 4 : 2;
    const int ua = !lbg_is_aligned(LB_PTR(&a->A), es) || !lbg_is_aligned(LB_PTR(&a->stats), 4) ||
                   (a->has_outliers &&
                    (!lbg_is_aligned(LB_PTR(&a->outlier_cols), 4) || !lbg_is_aligned(LB_PTR(&a->outlier_count), 4)));
    int *flags = NULL;
    lowbit_status_t ret;
    if (a->threshold > 0.0f) {
        void *scr = NULL;
        if ((ret = lbg_scratch(st, (size_t)a->cols * sizeof(int), &scr)) != LOWBIT_SUCCESS)
            return ret;
        flags = (int *)scr;
    }
    if ((ret = lbg_i8_rows(l, dt, LB_PTR(&a->A), a->rows, a->cols, a->threshold, flags, (int8_t *)LB_PTR(&a->q),
                           (float *)LB_PTR(&a->stats), ua)) != LOWBIT_SUCCESS)
        return ret;
    if (!a->has_outliers)
        return LOWBIT_SUCCESS;
    (void)lbgpuGetLastError();
    lbg_i8_list_kernel<<<1, 1024, 0, st->s>>>(flags, a->cols, (int *)LB_PTR(&a->outlier_cols),
                                              (int *)LB_PTR(&a->outlier_count), ua);
    return lbg_check_launch("int8 outlier-list kernel");
}

lowbit_status_t lbg_int8_quantize_cols(const lb_launch_t *l, const lb_int8_quant_args_t *a)
{
    lbg_ctx_t *c = (lbg_ctx_t *)l->bctx;
    lbg_stream_t *st = (lbg_stream_t *)l->bstream;
    const int dt = lbg_idt(a->dtype);
    if (dt < 0)
        return lbg_host->error(LOWBIT_ERR_UNSUPPORTED, "%s: int8_quantize_cols: dtype %d", LBGPU_NAME, (int)a->dtype);
    if (a->rows <= 0 || a->cols <= 0)
        return LOWBIT_SUCCESS;
    const size_t es = dt == LBG_DT_F32 ? 4 : 2;
    const int ua = !lbg_is_aligned(LB_PTR(&a->A), es) || !lbg_is_aligned(LB_PTR(&a->stats), 4);
    const void *A = LB_PTR(&a->A);
    int8_t *q = (int8_t *)LB_PTR(&a->q);
    float *stats = (float *)LB_PTR(&a->stats);
    const unsigned g = lbg_grid(c, a->cols, 256, 16);
    (void)lbgpuGetLastError();
    if (dt == LBG_DT_F32)
        lbg_i8_cols_kernel<LBG_DT_F32><<<g, 256, 0, st->s>>>(A, a->rows, a->cols, a->threshold, q, stats, ua);
    else if (dt == LBG_DT_F16)
        lbg_i8_cols_kernel<LBG_DT_F16><<<g, 256, 0, st->s>>>(A, a->rows, a->cols, a->threshold, q, stats, ua);
    else
        lbg_i8_cols_kernel<LBG_DT_BF16><<<g, 256, 0, st->s>>>(A, a->rows, a->cols, a->threshold, q, stats, ua);
    return lbg_check_launch("int8 column quantization kernel");
}

/* ---- GEMM ---------------------------------------------------------------------------------------------- */

static lowbit_status_t lbg_i8_gemm_fallback(const lb_launch_t *l, const int8_t *X, const int8_t *W, int32_t *C,
                                            int64_t M, int64_t N, int64_t K)
{
    lbg_stream_t *st = (lbg_stream_t *)l->bstream;
    const int64_t tn = (N + LBG_I8_T - 1) / LBG_I8_T, tm = (M + LBG_I8_T - 1) / LBG_I8_T;
    dim3 grid((unsigned)(tn < 65535 ? tn : 65535), (unsigned)(tm < 65535 ? tm : 65535));
    (void)lbgpuGetLastError();
    lbg_i8_gemm_kernel<<<grid, LBG_I8_T * LBG_I8_T, 0, st->s>>>(X, W, C, M, N, K, !lbg_is_aligned(C, 4));
    return lbg_check_launch("int8 GEMM kernel");
}

#if defined(LBGPU_CUDA)
static unsigned lbg_ialign_of(const void *p)
{
    const uintptr_t u = (uintptr_t)p;
    unsigned a = 1;
    while (a < 256 && (u & (uintptr_t)(2 * a - 1)) == 0)
        a *= 2;
    return a;
}

/* cuBLASLt: C^T [N, M] = W [N, K] (stored as column-major [K, N], transposed) x X^T (column-major [K, M]).
 * *done = 0 (and success) when no algorithm fits: the caller then uses the fallback kernel.  workspace:
 * ws_bytes of device memory or NULL. */
static lowbit_status_t lbg_i8_gemm_lt(const lb_launch_t *l, const int8_t *X, const int8_t *W, int32_t *C, int64_t M,
                                      int64_t N, int64_t K, void *ws, size_t ws_bytes, int *done)
{
    lbg_stream_t *st = (lbg_stream_t *)l->bstream;
    *done = 0;
    if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX)
        return LOWBIT_SUCCESS;
    cublasStatus_t s;
    if (st->blaslt == NULL) {
        cublasLtHandle_t h;
        if ((s = cublasLtCreate(&h)) != CUBLAS_STATUS_SUCCESS)
            return lbg_host->error(LOWBIT_ERR_DEVICE, "%s: cublasLtCreate: status %d", LBGPU_NAME, (int)s);
        st->blaslt = (void *)h;
    }
    cublasLtHandle_t h = (cublasLtHandle_t)st->blaslt;
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t ad = NULL, bd = NULL, cd = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    lowbit_status_t ret = LOWBIT_SUCCESS;
    const char *fn = "cublasLtMatmulDescCreate";
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const uint32_t al_a = lbg_ialign_of(W), al_b = lbg_ialign_of(X), al_c = lbg_ialign_of(C);
    const uint64_t wsb = ws != NULL ? (uint64_t)ws_bytes : 0;
    cublasLtMatmulHeuristicResult_t res;
    int nres = 0;
    memset(&res, 0, sizeof res);
#define LBG_LT(call, name)                                                                                     \
    do {                                                                                                       \
        fn = name;                                                                                             \
        if ((s = (call)) != CUBLAS_STATUS_SUCCESS)                                                             \
            goto fail;                                                                                         \
    } while (0)
    LBG_LT(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32I, CUDA_R_32I), "cublasLtMatmulDescCreate");
    LBG_LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta),
           "cublasLtMatmulDescSetAttribute");
    LBG_LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb),
           "cublasLtMatmulDescSetAttribute");
    LBG_LT(cublasLtMatrixLayoutCreate(&ad, CUDA_R_8I, (uint64_t)K, (uint64_t)N, (int64_t)K), "cublasLtMatrixLayoutCreate");
    LBG_LT(cublasLtMatrixLayoutCreate(&bd, CUDA_R_8I, (uint64_t)K, (uint64_t)M, (int64_t)K), "cublasLtMatrixLayoutCreate");
    LBG_LT(cublasLtMatrixLayoutCreate(&cd, CUDA_R_32I, (uint64_t)N, (uint64_t)M, (int64_t)N), "cublasLtMatrixLayoutCreate");
    LBG_LT(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    LBG_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb),
           "cublasLtMatmulPreferenceSetAttribute");
    LBG_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a),
           "cublasLtMatmulPreferenceSetAttribute");
    LBG_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b),
           "cublasLtMatmulPreferenceSetAttribute");
    LBG_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c),
           "cublasLtMatmulPreferenceSetAttribute");
    LBG_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c),
           "cublasLtMatmulPreferenceSetAttribute");
    s = cublasLtMatmulAlgoGetHeuristic(h, op, ad, bd, cd, cd, pref, 1, &res, &nres);
    if (s == CUBLAS_STATUS_SUCCESS && nres > 0) {
        const int32_t one = 1, zero = 0;
        LBG_LT(cublasLtMatmul(h, op, &one, W, ad, X, bd, &zero, C, cd, C, cd, &res.algo, ws, wsb, st->s),
               "cublasLtMatmul");
        *done = 1;
    } else {
        lbg_host->log(LB_LOG_DEBUG, "%s: int8 GEMM %lld x %lld x %lld: no cuBLASLt algorithm (status %d); own kernel",
                      LBGPU_NAME, (long long)M, (long long)N, (long long)K, (int)s);
    }
    goto out;
fail:
    ret = lbg_host->error(s == CUBLAS_STATUS_ALLOC_FAILED ? LOWBIT_ERR_OUT_OF_MEMORY : LOWBIT_ERR_DEVICE,
                          "%s: %s: status %d", LBGPU_NAME, fn, (int)s);
out:
#undef LBG_LT
    if (pref != NULL)
        (void)cublasLtMatmulPreferenceDestroy(pref);
    if (cd != NULL)
        (void)cublasLtMatrixLayoutDestroy(cd);
    if (bd != NULL)
        (void)cublasLtMatrixLayoutDestroy(bd);
    if (ad != NULL)
        (void)cublasLtMatrixLayoutDestroy(ad);
    if (op != NULL)
        (void)cublasLtMatmulDescDestroy(op);
    return ret;
}
#endif

/* C = X W^T with a workspace of ws_bytes at ws (NULL: none). */
static lowbit_status_t lbg_i8_gemm(const lb_launch_t *l, const int8_t *X, const int8_t *W, int32_t *C, int64_t M,
                                   int64_t N, int64_t K, void *ws, size_t ws_bytes)
{
#if defined(LBGPU_CUDA)
    if (lbg_tune_get(l, "int8.gemm.cublaslt", 1, 0, 1) != 0) {
        int done = 0;
        lowbit_status_t ret = lbg_i8_gemm_lt(l, X, W, C, M, N, K, ws, ws_bytes, &done);
        if (ret != LOWBIT_SUCCESS || done)
            return ret;
    }
#else
    (void)ws;
    (void)ws_bytes;
#endif
    return lbg_i8_gemm_fallback(l, X, W, C, M, N, K);
}

static size_t lbg_i8_ws_bytes(const lb_launch_t *l)
{
#if defined(LBGPU_CUDA)
    return (size_t)lbg_tune_get(l, "int8.gemm.workspace_kib", 4096, 0, 1 << 20) * 1024;
#else
    (void)l;
    return 0;
#endif
}

lowbit_status_t lbg_int8_gemm(const lb_launch_t *l, const lb_int8_gemm_args_t *a)
{
    lbg_stream_t *st = (lbg_stream_t *)l->bstream;
    if (a->M <= 0 || a->N <= 0)
        return LOWBIT_SUCCESS;
    const size_t wsb = lbg_i8_ws_bytes(l);
    void *ws = NULL;
    if (wsb > 0) {
        lowbit_status_t ret = lbg_scratch(st, wsb, &ws);
        if (ret != LOWBIT_SUCCESS)
            return ret;
    }
    return lbg_i8_gemm(l, (const int8_t *)LB_PTR(&a->X), (const int8_t *)LB_PTR(&a->W), (int32_t *)LB_PTR(&a->C), a->M,
                       a->N, a->K, ws, wsb);
}

/* ---- dequantization and the forward ------------------------------------------------------------------- */

static lowbit_status_t lbg_i8_launch_deq(const lb_launch_t *l, int dt, const lbg_i8deq *d)
{
    lbg_ctx_t *c = (lbg_ctx_t *)l->bctx;
    lbg_stream_t *st = (lbg_stream_t *)l->bstream;
    const unsigned g = lbg_grid(c, d->M * d->N, 256, 16);
    (void)lbgpuGetLastError();
    if (dt == LBG_DT_F32)
        lbg_i8_deq_kernel<LBG_DT_F32><<<g, 256, 0, st->s>>>(*d);
    else if (dt == LBG_DT_F16)
        lbg_i8_deq_kernel<LBG_DT_F16><<<g, 256, 0, st->s>>>(*d);
    else
        lbg_i8_deq_kernel<LBG_DT_BF16><<<g, 256, 0, st->s>>>(*d);
    return lbg_check_launch("int8 dequantization kernel");
}

lowbit_status_t lbg_int8_dequant(const lb_launch_t *l, const lb_int8_dequant_args_t *a)
{
    const int dt = lbg_idt(a->out_dtype);
    if (dt < 0)
        return lbg_host->error(LOWBIT_ERR_UNSUPPORTED, "%s: int8_dequant: dtype %d", LBGPU_NAME, (int)a->out_dtype);
    if (a->M <= 0 || a->N <= 0)
        return LOWBIT_SUCCESS;
    const size_t es = dt == LBG_DT_F32 ? 4 : 2;
    lbg_i8deq d;
    memset(&d, 0, sizeof d);
    d.ua = !lbg_is_aligned(LB_PTR(&a->C), 4) || !lbg_is_aligned(LB_PTR(&a->row_stats), 4) ||
           !lbg_is_aligned(LB_PTR(&a->col_stats), 4) || !lbg_is_aligned(LB_PTR(&a->out), es) ||
           (a->has_bias && !lbg_is_aligned(LB_PTR(&a->bias), es));
    d.C = (const int32_t *)LB_PTR(&a->C);
    d.rs = (const float *)LB_PTR(&a->row_stats);
    d.cs = (const float *)LB_PTR(&a->col_stats);
    d.bias = a->has_bias ? LB_PTR(&a->bias) : NULL;
    d.out = LB_PTR(&a->out);
    d.M = a->M;
    d.N = a->N;
    return lbg_i8_launch_deq(l, dt, &d);
}

lowbit_status_t lbg_int8_matmul(const lb_launch_t *l, const lb_int8_matmul_args_t *a)
{
    lbg_stream_t *st = (lbg_stream_t *)l->bstream;
    const int dt = lbg_idt(a->dtype);
    if (dt < 0)
        return lbg_host->error(LOWBIT_ERR_UNSUPPORTED, "%s: int8_matmul: dtype %d", LBGPU_NAME, (int)a->dtype);
    const int64_t M = a->M, N = a->N, K = a->K;
    if (M <= 0 || N <= 0)
        return LOWBIT_SUCCESS;
    const size_t es = dt == LBG_DT_F32 ? 4 : 2;
    const int ua = !lbg_is_aligned(LB_PTR(&a->X), es) || !lbg_is_aligned(LB_PTR(&a->SCB), 4) ||
                   !lbg_is_aligned(LB_PTR(&a->out), es) || (a->has_bias && !lbg_is_aligned(LB_PTR(&a->bias), es));
    const int outl = a->threshold > 0.0f;
    /* scratch: workspace | CA [M, K] | SCA [M] | C [M, N] | flags [K] | list [K] | count */
    const size_t wsb = lbg_i8_ws_bytes(l);
    const size_t o_ca = lbg_pad256(wsb), o_sca = o_ca + lbg_pad256((size_t)M * (size_t)K),
                 o_c = o_sca + lbg_pad256((size_t)M * 4), o_fl = o_c + lbg_pad256((size_t)M * (size_t)N * 4),
                 o_li = o_fl + (outl ? lbg_pad256((size_t)K * 4) : 0),
                 o_cnt = o_li + (outl ? lbg_pad256((size_t)K * 4) : 0), total = o_cnt + (outl ? 256 : 0);
    void *scr = NULL;
    lowbit_status_t ret = lbg_scratch(st, total, &scr);
    if (ret != LOWBIT_SUCCESS)
        return ret;
    char *base = (char *)scr;
    int8_t *CA = (int8_t *)(base + o_ca);
    float *SCA = (float *)(void *)(base + o_sca);
    int32_t *Ci = (int32_t *)(void *)(base + o_c);
    int *flags = outl ? (int *)(void *)(base + o_fl) : NULL;
    int *list = outl ? (int *)(void *)(base + o_li) : NULL;
    int *count = outl ? (int *)(void *)(base + o_cnt) : NULL;
    const void *X = LB_PTR(&a->X);
    const int8_t *CB = (const int8_t *)LB_PTR(&a->CB);

    if ((ret = lbg_i8_rows(l, dt, X, M, K, a->threshold, flags, CA, SCA, ua)) != LOWBIT_SUCCESS)
        return ret;
    if (outl) {
        (void)lbgpuGetLastError();
        lbg_i8_list_kernel<<<1, 1024, 0, st->s>>>(flags, K, list, count, 0);
        if ((ret = lbg_check_launch("int8 outlier-list kernel")) != LOWBIT_SUCCESS)
            return ret;
    }
    if ((ret = lbg_i8_gemm(l, CA, CB, Ci, M, N, K, wsb > 0 ? scr : NULL, wsb)) != LOWBIT_SUCCESS)
        return ret;
    lbg_i8deq d;
    memset(&d, 0, sizeof d);
    d.C = Ci;
    d.rs = SCA;
    d.cs = (const float *)LB_PTR(&a->SCB);
    d.bias = a->has_bias ? LB_PTR(&a->bias) : NULL;
    d.out = LB_PTR(&a->out);
    d.M = M;
    d.N = N;
    d.count = count;
    d.list = list;
    d.X = X;
    d.CB = CB;
    d.K = K;
    d.ua = ua;
    return lbg_i8_launch_deq(l, dt, &d);
}
