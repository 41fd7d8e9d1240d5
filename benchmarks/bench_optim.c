/*
 * bench_optim.c -- optimizer step throughput against a multi-threaded memcpy measured in the same run.
 *
 *   bench-optim [--n N] [--reps R] [--backend NAME] [--all]
 *
 * Times lowbit_optimizer_step for 8-bit and 32-bit Adam on N float32 parameters (default 2^24; --all adds
 * every other optimizer) and a memcpy of an N-float buffer split over the OpenMP team (as many threads as
 * the library uses; OMP_NUM_THREADS), interleaved rep by rep so that both see the same machine load.
 *
 * Bytes per parameter (write-allocate traffic not counted, as in BENCHMARKS.md):
 *   8-bit, two states (Adam, AdEMAMix's m2 not counted): p read + write 8, g read 4, 2 codes read + write 4 = 16
 *   32-bit, two states: p 8, g 4, m and v read + write 16 = 28;  one-state optimizers: 14 (8-bit), 20 (32-bit)
 * The copy counts its buffer twice (read + write).  "% copy" = GB/s of the step / GB/s of the copy; the
 * median and the best of R reps are both reported (the best is less sensitive to other load on the machine).
 * "cpu" columns use the process CPU time divided by the thread count instead of the wall time: on a machine
 * shared with other jobs they estimate what an idle machine would show (run with OMP_WAIT_POLICY=passive so
 * that threads waiting at a barrier sleep instead of spinning on the clock).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "lowbit.h"

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#define CHECK(call)                                                                                          \
    do {                                                                                                     \
        lowbit_status_t st_ = (call);                                                                        \
        if (st_ != LOWBIT_SUCCESS) {                                                                         \
            fprintf(stderr, "%s: %s (%s)\n", #call, lowbit_status_string(st_), lowbit_last_error());         \
            exit(1);                                                                                         \
        }                                                                                                    \
    } while (0)

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* memcpy of `bytes` split into one contiguous part per thread. */
static void par_copy(char *dst, const char *src, size_t bytes)
{
#ifdef _OPENMP
#pragma omp parallel
    {
        size_t nt = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
        size_t per = (bytes / nt + 63) & ~(size_t)63, lo = id * per, hi = lo + per < bytes ? lo + per : bytes;
        if (lo < hi)
            memcpy(dst + lo, src + lo, hi - lo);
    }
#else
    memcpy(dst, src, bytes);
#endif
}

/* splitmix64 -> two uniforms -> Box-Muller */
static double randn(uint64_t *s)
{
    uint64_t z[2];
    for (int k = 0; k < 2; k++) {
        uint64_t x = (*s += 0x9E3779B97F4A7C15ull);
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
        z[k] = x ^ (x >> 31);
    }
    double u1 = ((double)(z[0] >> 11) + 0.5) * 0x1p-53, u2 = (double)(z[1] >> 11) * 0x1p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

typedef struct row {
    const char *name;
    lowbit_optimizer_t kind;
    int bits;
} row_t;

int main(int argc, char **argv)
{
    int64_t n = INT64_C(1) << 24;
    int reps = 15, all = 0;
    const char *backend = "cpu";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--n") && i + 1 < argc) {
            const char *v = argv[++i];
            n = !strncmp(v, "2^", 2) ? INT64_C(1) << atoi(v + 2) : strtoll(v, NULL, 0);
        } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--backend") && i + 1 < argc) {
            backend = argv[++i];
        } else if (!strcmp(argv[i], "--all")) {
            all = 1;
        } else {
            fprintf(stderr, "usage: %s [--n N|2^K] [--reps R] [--backend NAME] [--all]\n", argv[0]);
            return 2;
        }
    }
    if (n <= 0 || reps <= 0)
        return 2;

    lowbit_context_t *ctx = NULL;
    CHECK(lowbit_context_create(backend, -1, &ctx));
    lowbit_device_info_t di;
    CHECK(lowbit_context_device_info(ctx, &di));

    size_t pbytes = (size_t)n * 4;
    char *h = malloc(pbytes), *c1 = malloc(pbytes), *c2 = malloc(pbytes);
    if (!h || !c1 || !c2) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    memset(c1, 1, pbytes);
    memset(c2, 2, pbytes);
    uint64_t seed = 42;
    lowbit_buffer_t *p, *g;
    CHECK(lowbit_buffer_alloc(ctx, pbytes, LOWBIT_MEM_DEFAULT, &p));
    CHECK(lowbit_buffer_alloc(ctx, pbytes, LOWBIT_MEM_DEFAULT, &g));
    float *hf = (float *)h;
    for (int64_t i = 0; i < n; i++)
        hf[i] = (float)(randn(&seed) * 0.1);
    CHECK(lowbit_buffer_upload(ctx, NULL, p, 0, h, pbytes));
    for (int64_t i = 0; i < n; i++)
        hf[i] = (float)(randn(&seed) * 0.01);
    CHECK(lowbit_buffer_upload(ctx, NULL, g, 0, h, pbytes));

    static const row_t rows_all[] = {
        {"adam", LOWBIT_OPT_ADAM, 8},       {"adam", LOWBIT_OPT_ADAM, 32},     {"adamw", LOWBIT_OPT_ADAMW, 8},
        {"lamb", LOWBIT_OPT_LAMB, 8},       {"ademamix", LOWBIT_OPT_ADEMAMIX, 8}, {"lion", LOWBIT_OPT_LION, 8},
        {"sgd", LOWBIT_OPT_SGD, 8},         {"rmsprop", LOWBIT_OPT_RMSPROP, 8}, {"adagrad", LOWBIT_OPT_ADAGRAD, 8},
        {"lars", LOWBIT_OPT_LARS, 8},       {"lion", LOWBIT_OPT_LION, 32},     {"lamb", LOWBIT_OPT_LAMB, 32},
    };
    int nrows = all ? (int)(sizeof rows_all / sizeof rows_all[0]) : 2;

    printf("# bench-optim: %s (%s), n = %lld float32 parameters, %d copy threads, %d reps\n", di.name, backend,
           (long long)n, threads(), reps);
    printf("%-9s %4s %6s %10s %10s %9s %9s %8s %8s %8s %9s\n", "optimizer", "bits", "B/par", "median ms", "best ms",
           "GB/s med", "GB/s best", "%copy md", "%copy bs", "cpu GB/s", "%copy cpu");
    double *ts = malloc(sizeof(double) * (size_t)reps), *tc = malloc(sizeof(double) * (size_t)reps);
    double *us = malloc(sizeof(double) * (size_t)reps), *uc = malloc(sizeof(double) * (size_t)reps);
    for (int r = 0; r < nrows; r++) {
        lowbit_optimizer_config_t cfg;
        CHECK(lowbit_optimizer_config_default(rows_all[r].kind, rows_all[r].bits, &cfg));
        lowbit_optimizer_state_layout_t L;
        CHECK(lowbit_optimizer_state_layout(&cfg, n, &L));
        lowbit_buffer_t *st;
        CHECK(lowbit_buffer_alloc(ctx, L.total_bytes, LOWBIT_MEM_DEFAULT, &st));
        CHECK(lowbit_optimizer_state_init(ctx, NULL, &cfg, n, st));
        int two = rows_all[r].kind == LOWBIT_OPT_ADAM || rows_all[r].kind == LOWBIT_OPT_ADAMW ||
                  rows_all[r].kind == LOWBIT_OPT_LAMB || rows_all[r].kind == LOWBIT_OPT_ADEMAMIX;
        double bpp = 12.0 + (L.state_bits == 8 ? 2.0 : 8.0) * (two ? 2.0 : 1.0);
        int64_t step = 1;
        for (int w = 0; w < 2; w++) { /* warm-up: first touch, table building, thread start */
            CHECK(lowbit_optimizer_step(ctx, NULL, &cfg, LOWBIT_F32, n, p, g, st, step++));
            par_copy(c2, c1, pbytes);
        }
        for (int k = 0; k < reps; k++) {
            double t0 = now_s(), u0 = cpu_s();
            CHECK(lowbit_optimizer_step(ctx, NULL, &cfg, LOWBIT_F32, n, p, g, st, step++));
            CHECK(lowbit_stream_synchronize(ctx, NULL));
            double t1 = now_s(), u1 = cpu_s();
            par_copy(k % 2 ? c1 : c2, k % 2 ? c2 : c1, pbytes);
            double t2 = now_s(), u2 = cpu_s();
            ts[k] = t1 - t0;
            tc[k] = t2 - t1;
            us[k] = (u1 - u0) / threads();
            uc[k] = (u2 - u1) / threads();
        }
        qsort(ts, (size_t)reps, sizeof *ts, cmp_double);
        qsort(tc, (size_t)reps, sizeof *tc, cmp_double);
        qsort(us, (size_t)reps, sizeof *us, cmp_double);
        qsort(uc, (size_t)reps, sizeof *uc, cmp_double);
        double tsm = ts[reps / 2], tsb = ts[0], tcm = tc[reps / 2], tcb = tc[0], usm = us[reps / 2], ucm = uc[reps / 2];
        double gs_m = bpp * (double)n / tsm * 1e-9, gs_b = bpp * (double)n / tsb * 1e-9;
        double gc_m = 2.0 * (double)pbytes / tcm * 1e-9, gc_b = 2.0 * (double)pbytes / tcb * 1e-9;
        double gs_u = bpp * (double)n / usm * 1e-9, gc_u = 2.0 * (double)pbytes / ucm * 1e-9;
        printf("%-9s %4d %6.0f %10.2f %10.2f %9.2f %9.2f %7.1f%% %7.1f%% %8.2f %8.1f%%\n", rows_all[r].name,
               L.state_bits, bpp, tsm * 1e3, tsb * 1e3, gs_m, gs_b, 100.0 * gs_m / gc_m, 100.0 * gs_b / gc_b, gs_u,
               100.0 * gs_u / gc_u);
        if (r == 0 || r == nrows - 1)
            printf("%-9s %4s %6d %10.2f %10.2f %9.2f %9.2f %8s %8s %8.2f\n", "memcpy", "-", 8, tcm * 1e3, tcb * 1e3,
                   gc_m, gc_b, "", "", gc_u);
        fflush(stdout);
        lowbit_buffer_free(st);
    }
    free(ts);
    free(tc);
    free(us);
    free(uc);
    lowbit_buffer_free(p);
    lowbit_buffer_free(g);
    lowbit_context_destroy(ctx);
    free(h);
    free(c1);
    free(c2);
    return 0;
}
