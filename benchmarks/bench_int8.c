/*
 * bench_int8 -- lowbit_int8_gemm (C[M,N] = X[M,K] W[N,K]^T, int8 -> int32) against OpenBLAS cblas_sgemm on
 * the same shape, in the same run.
 *
 * For each shape both products are warmed up, then timed alternately (int8, sgemm, int8, sgemm, ...) so that
 * both see the same machine state (turbo, other load); the report gives the median and the best of the
 * repetitions, GOP/s counting 2 M N K operations for both, and the ratio of the medians (> 1: int8 faster).
 * sgemm computes the same product on float copies of the same integers (row-major X times W transposed), with
 * OpenBLAS's own threading; lowbit uses its OpenMP team.  A sample of the int8 results is checked against an
 * exact int64 dot product, so a fast wrong kernel cannot pass unnoticed.
 *
 * Uses the public API only (lowbit.h), plus cblas when built with OpenBLAS (HAVE_OPENBLAS; without it only
 * the lowbit column is printed).
 *
 *   bench_int8 [--backend NAME] [--reps N] [--warmup N] [--shape MxNxK]... [--quick]
 *
 * Default shapes: 512x4096x4096 (the reference comparison), 32x4096x4096 and 1x4096x4096.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef HAVE_OPENBLAS
#include <cblas.h>
#endif

#include "lowbit.h"

#define MAX_SHAPES 16
#define MAX_REPS 101

typedef struct shape {
    int64_t M, N, K;
} shape_t;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int check(lowbit_status_t st, const char *what)
{
    if (st == LOWBIT_SUCCESS)
        return 0;
    fprintf(stderr, "bench_int8: %s: %s (%s)\n", what, lowbit_status_string(st), lowbit_last_error());
    return 1;
}

static void usage(FILE *f)
{
    fprintf(f, "Usage: bench_int8 [--backend NAME] [--reps N] [--warmup N] [--shape MxNxK]... [--quick]\n"
               "  Times lowbit_int8_gemm against OpenBLAS cblas_sgemm on the same shapes (median of N\n"
               "  alternating repetitions after warm-up; default 9 reps, 2 warm-up runs).\n"
               "  Default shapes: 512x4096x4096, 32x4096x4096, 1x4096x4096 (--quick: 512x4096x4096 only).\n");
}

/* One shape: returns 0 on success. */
static int run_shape(lowbit_context_t *ctx, shape_t s, int reps, int warmup)
{
    const int64_t M = s.M, N = s.N, K = s.K;
    const size_t xb = (size_t)(M * K), wb = (size_t)(N * K), cb = (size_t)(M * N) * 4;
    int8_t *X = malloc(xb), *W = malloc(wb);
    int32_t *C = malloc(cb);
    if (X == NULL || W == NULL || C == NULL) {
        fprintf(stderr, "bench_int8: out of host memory\n");
        return 1;
    }
    for (size_t i = 0; i < xb; i++)
        X[i] = (int8_t)(uint8_t)rng_next();
    for (size_t i = 0; i < wb; i++)
        W[i] = (int8_t)(uint8_t)rng_next();
    lowbit_buffer_t *bx = NULL, *bw = NULL, *bc = NULL;
    int err = check(lowbit_buffer_alloc(ctx, xb, 0, &bx), "alloc X") ||
              check(lowbit_buffer_alloc(ctx, wb, 0, &bw), "alloc W") ||
              check(lowbit_buffer_alloc(ctx, cb, 0, &bc), "alloc C") ||
              check(lowbit_buffer_upload(ctx, NULL, bx, 0, X, xb), "upload X") ||
              check(lowbit_buffer_upload(ctx, NULL, bw, 0, W, wb), "upload W");
    double ti[MAX_REPS], ts[MAX_REPS];
    int have_sgemm = 0;
#ifdef HAVE_OPENBLAS
    float *Xf = malloc(xb * sizeof(float)), *Wf = malloc(wb * sizeof(float));
    float *Cf = malloc((size_t)(M * N) * sizeof(float));
    if (Xf == NULL || Wf == NULL || Cf == NULL) {
        fprintf(stderr, "bench_int8: out of host memory for the sgemm operands\n");
        err = 1;
    } else {
        for (size_t i = 0; i < xb; i++)
            Xf[i] = X[i];
        for (size_t i = 0; i < wb; i++)
            Wf[i] = W[i];
        have_sgemm = 1;
    }
#define SGEMM()                                                                                                \
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, Xf, (int)K, Wf, (int)K, 0.0f, \
                Cf, (int)N)
#endif
    for (int r = -warmup; r < reps && !err; r++) {
        double t0 = now_s();
        err = check(lowbit_int8_gemm(ctx, NULL, M, N, K, bx, bw, bc), "lowbit_int8_gemm") ||
              check(lowbit_stream_synchronize(ctx, NULL), "synchronize");
        double t1 = now_s();
        if (r >= 0)
            ti[r] = t1 - t0;
#ifdef HAVE_OPENBLAS
        if (have_sgemm) {
            t0 = now_s();
            SGEMM();
            t1 = now_s();
            if (r >= 0)
                ts[r] = t1 - t0;
        }
#endif
    }
    /* spot check against exact dot products */
    if (!err && !check(lowbit_buffer_download(ctx, NULL, bc, 0, C, cb), "download C")) {
        for (int t = 0; t < 256; t++) {
            int64_t i = (int64_t)(rng_next() % (uint64_t)M), j = (int64_t)(rng_next() % (uint64_t)N), ref = 0;
            for (int64_t k = 0; k < K; k++)
                ref += (int64_t)X[i * K + k] * W[j * K + k];
            if (C[i * N + j] != (int32_t)ref) {
                fprintf(stderr, "bench_int8: WRONG RESULT at (%lld, %lld): %d, expected %lld\n", (long long)i,
                        (long long)j, C[i * N + j], (long long)ref);
                err = 1;
                break;
            }
        }
    }
    if (!err) {
        double ops = 2.0 * (double)M * (double)N * (double)K;
        qsort(ti, (size_t)reps, sizeof ti[0], cmp_double);
        char name[64];
        snprintf(name, sizeof name, "%lldx%lldx%lld", (long long)M, (long long)N, (long long)K);
        printf("%-18s %10.3f %9.1f %9.1f", name, 1e3 * ti[reps / 2], ops / ti[reps / 2] * 1e-9, ops / ti[0] * 1e-9);
        if (have_sgemm) {
            qsort(ts, (size_t)reps, sizeof ts[0], cmp_double);
            printf(" %10.3f %9.1f %9.1f %7.2fx\n", 1e3 * ts[reps / 2], ops / ts[reps / 2] * 1e-9, ops / ts[0] * 1e-9,
                   ts[reps / 2] / ti[reps / 2]);
        } else {
            printf(" %10s %9s %9s %8s\n", "-", "-", "-", "-");
        }
        fflush(stdout);
    }
#ifdef HAVE_OPENBLAS
    free(Xf);
    free(Wf);
    free(Cf);
#endif
    lowbit_buffer_free(bx);
    lowbit_buffer_free(bw);
    lowbit_buffer_free(bc);
    free(X);
    free(W);
    free(C);
    return err;
}

int main(int argc, char **argv)
{
    const char *backend = "cpu";
    int reps = 9, warmup = 2, nshapes = 0;
    shape_t shapes[MAX_SHAPES];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--backend") && i + 1 < argc) {
            backend = argv[++i];
        } else if (!strcmp(a, "--reps") && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (!strcmp(a, "--warmup") && i + 1 < argc) {
            warmup = atoi(argv[++i]);
        } else if (!strcmp(a, "--shape") && i + 1 < argc && nshapes < MAX_SHAPES) {
            long long m, n, k;
            if (sscanf(argv[++i], "%lldx%lldx%lld", &m, &n, &k) != 3 || m < 1 || n < 1 || k < 1) {
                fprintf(stderr, "bench_int8: --shape wants MxNxK, got '%s'\n", argv[i]);
                return 2;
            }
            shapes[nshapes++] = (shape_t){m, n, k};
        } else if (!strcmp(a, "--quick")) {
            shapes[0] = (shape_t){512, 4096, 4096};
            nshapes = 1;
            reps = 5;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (reps < 1 || reps > MAX_REPS || warmup < 0) {
        fprintf(stderr, "bench_int8: --reps must be 1..%d and --warmup >= 0\n", MAX_REPS);
        return 2;
    }
    if (nshapes == 0) {
        shapes[nshapes++] = (shape_t){512, 4096, 4096};
        shapes[nshapes++] = (shape_t){32, 4096, 4096};
        shapes[nshapes++] = (shape_t){1, 4096, 4096};
    }
    lowbit_context_t *ctx = NULL;
    if (check(lowbit_context_create(backend, -1, &ctx), "lowbit_context_create"))
        return 1;
    lowbit_device_info_t info;
    if (check(lowbit_context_device_info(ctx, &info), "lowbit_context_device_info"))
        return 1;
    printf("lowbit %s, backend %s: %s (%d compute units)\n", lowbit_version_string(), info.backend, info.name,
           info.compute_units);
#ifdef HAVE_OPENBLAS
    printf("baseline: OpenBLAS cblas_sgemm (%d threads), same shapes, float copies of the same integers\n",
           openblas_get_num_threads());
#else
    printf("baseline: none (built without OpenBLAS)\n");
#endif
    printf("median of %d alternating repetitions after %d warm-up runs; GOP/s = 2*M*N*K / time\n\n", reps, warmup);
    printf("%-18s %10s %9s %9s %10s %9s %9s %8s\n", "", "int8 gemm", "", "", "sgemm", "", "", "ratio");
    printf("%-18s %10s %9s %9s %10s %9s %9s %8s\n", "M x N x K", "ms", "GOP/s", "best", "ms", "GFLOP/s", "best",
           "(median)");
    int err = 0;
    for (int s = 0; s < nshapes && !err; s++)
        err = run_shape(ctx, shapes[s], reps, warmup);
    lowbit_context_destroy(ctx);
    return err;
}
