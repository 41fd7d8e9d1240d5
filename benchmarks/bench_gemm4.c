/*
 * bench-gemm4 -- throughput of the 4-bit GEMV (lowbit_gemv_4bit) as a fraction of the copy bandwidth measured
 * in the same run on the same device.
 *
 * Cases: W [N, K] = 4096 x 4096 and 11008 x 4096 (plus any --shape), NF4, block 64 (--blocksize, --nested),
 * activations f32 and f16 (--dtype).  Bytes per call = packed weight N*K/2 + absmax (4*N*K/B, or N*K/B + the
 * nested part) + x (K * sizeof dtype) + y (N * sizeof dtype).  GB/s = bytes / median time.
 *
 * Baseline: on the CPU backend, memcpy of a buffer of the same byte count split over as many threads as the
 * library's OpenMP team (tools/cli.c pool, workers parked between copies like an OpenMP team); GB/s counts
 * read + written bytes, as lowbit-bench does.  "% copy" = GEMV GB/s / copy GB/s.
 *
 * Cold caches: weights and copy buffers rotate over as many sets as needed to exceed max(64 MiB, 2 x LLC),
 * so a call does not find its weight in the last-level cache ("cold").  --hot also times one set repeatedly
 * (weight resident in the LLC when it fits).
 *
 * Uses the public API only (lowbit.h) plus tools/cli.c.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "lowbit.h"

#define MAX_SHAPES 8

typedef struct opts {
    const char *backend;
    int64_t shapes[MAX_SHAPES][2];
    int nshapes;
    lowbit_dtype_t dtypes[3];
    int ndtypes;
    int32_t blocksize, nested;
    lowbit_qformat_t format;
    int reps, warmup, hot, threads;
} opts_t;

static void usage(FILE *f)
{
    fprintf(f, "Usage: bench-gemm4 [--backend NAME] [--shape NxK]... [--dtype f32,f16,bf16] [--format nf4|fp4]\n"
               "                   [--blocksize B] [--nested NB] [--reps N] [--warmup N] [--threads N] [--hot]\n"
               "Times lowbit_gemv_4bit; defaults: shapes 4096x4096 and 11008x4096, nf4, B=64, f32,f16.\n");
}

/* Copy GB/s (read + written) of the median and of the fastest sample. */
static double copy_gbps(cli_pool_t *pool, unsigned char **src, unsigned char **dst, int sets, size_t bytes, int reps,
                        int warmup, double *best_gbps)
{
    double *t = cli_xmalloc(sizeof(double) * (size_t)reps), med, mn, p90;
    for (int w = 0; w < warmup; w++)
        for (int s = 0; s < sets; s++)
            cli_pool_memcpy(pool, dst[s], src[s], bytes);
    for (int r = 0; r < reps; r++) {
        int s = r % sets;
        double t0 = cli_now();
        cli_pool_memcpy(pool, dst[s], src[s], bytes);
        t[r] = cli_now() - t0;
    }
    cli_order_stats(t, reps, &med, &mn, &p90);
    free(t);
    *best_gbps = 2.0 * (double)bytes / mn / 1e9;
    return 2.0 * (double)bytes / med / 1e9;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {{"backend", required_argument, NULL, 'b'}, {"shape", required_argument, NULL, 's'},
                                       {"dtype", required_argument, NULL, 't'},   {"format", required_argument, NULL, 'f'},
                                       {"blocksize", required_argument, NULL, 'B'}, {"nested", required_argument, NULL, 'N'},
                                       {"reps", required_argument, NULL, 'r'},    {"warmup", required_argument, NULL, 'w'},
                                       {"threads", required_argument, NULL, 'T'}, {"hot", no_argument, NULL, 'H'},
                                       {"help", no_argument, NULL, 'h'},          {0}};
    opts_t o;
    memset(&o, 0, sizeof o);
    o.blocksize = 64;
    o.format = LOWBIT_QFORMAT_NF4;
    o.reps = 30;
    o.warmup = 2;
    cli_prog = "bench-gemm4";
    int c;
    int64_t v;
    char buf[256], *items[8];
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 'b': o.backend = optarg; break;
        case 's': {
            long long n, k;
            if (o.nshapes >= MAX_SHAPES || sscanf(optarg, "%lldx%lld", &n, &k) != 2 || n <= 0 || k <= 0)
                cli_die("invalid --shape '%s' (NxK)", optarg);
            o.shapes[o.nshapes][0] = n, o.shapes[o.nshapes][1] = k, o.nshapes++;
            break;
        }
        case 't': {
            snprintf(buf, sizeof buf, "%s", optarg);
            int n = cli_split_list(buf, items, 3);
            if (n <= 0)
                cli_die("invalid --dtype '%s'", optarg);
            for (o.ndtypes = 0; o.ndtypes < n; o.ndtypes++)
                if (cli_parse_dtype(items[o.ndtypes], &o.dtypes[o.ndtypes]))
                    cli_die("unknown dtype '%s'", items[o.ndtypes]);
            break;
        }
        case 'f':
            if (cli_parse_qformat(optarg, &o.format) || o.format == LOWBIT_QFORMAT_8BIT)
                cli_die("--format must be nf4 or fp4");
            break;
        case 'B': if (cli_parse_i64(optarg, &v)) cli_die("invalid --blocksize"); o.blocksize = (int32_t)v; break;
        case 'N': if (cli_parse_i64(optarg, &v)) cli_die("invalid --nested"); o.nested = (int32_t)v; break;
        case 'r': if (cli_parse_i64(optarg, &v) || v < 1) cli_die("invalid --reps"); o.reps = (int)v; break;
        case 'w': if (cli_parse_i64(optarg, &v) || v < 0) cli_die("invalid --warmup"); o.warmup = (int)v; break;
        case 'T': if (cli_parse_i64(optarg, &v) || v < 1) cli_die("invalid --threads"); o.threads = (int)v; break;
        case 'H': o.hot = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (o.nshapes == 0) {
        o.shapes[0][0] = 4096, o.shapes[0][1] = 4096;
        o.shapes[1][0] = 11008, o.shapes[1][1] = 4096;
        o.nshapes = 2;
    }
    if (o.ndtypes == 0) {
        o.dtypes[0] = LOWBIT_F32, o.dtypes[1] = LOWBIT_F16;
        o.ndtypes = 2;
    }

    lowbit_context_t *ctx;
    CLI_CHECK("lowbit_context_create", lowbit_context_create(o.backend, -1, &ctx));
    lowbit_device_info_t dev;
    CLI_CHECK("lowbit_context_device_info", lowbit_context_device_info(ctx, &dev));
    int is_cpu = strcmp(dev.backend, "cpu") == 0;
    int threads = o.threads ? o.threads : cli_default_threads();
    cli_pool_t *pool = cli_pool_create(threads);
    size_t llc = cli_llc_bytes();
    size_t rotate = (size_t)64 << 20;
    if (2 * llc > rotate)
        rotate = 2 * llc;
    char model[256], t1[64], t2[64];
    printf("bench-gemm4: %s (%s), %d copy threads, LLC %s, rotation target %s, load average %.2f\n", dev.name,
           dev.backend, threads, cli_fmt_bytes((double)llc, t1, sizeof t1), cli_fmt_bytes((double)rotate, t2, sizeof t2),
           cli_loadavg());
    printf("host CPU: %s\n", cli_cpu_model(model, sizeof model));
    if (!is_cpu)
        printf("note: the copy baseline is a host memcpy; on a GPU backend %% copy is not meaningful\n");

    cli_table_t *tab = cli_table_new(11, "lllrrrrrrrr");
    cli_table_row(tab);
    const char *hdr[11] = {"shape NxK", "dtype", "cache", "sets", "MiB/call", "median us", "min us", "GB/s",
                           "copy GB/s", "% copy", "best/best"};
    for (int i = 0; i < 11; i++)
        cli_table_cell(tab, "%s", hdr[i]);

    for (int si = 0; si < o.nshapes; si++) {
        int64_t N = o.shapes[si][0], K = o.shapes[si][1], n = N * K;
        lowbit_qtensor_sizes_t qs;
        CLI_CHECK("lowbit_qtensor_sizes", lowbit_qtensor_sizes(o.format, n, o.blocksize, o.nested, &qs));
        size_t wbytes = qs.data_bytes + qs.absmax_bytes + qs.nested_absmax_bytes + qs.nested_offset_bytes;
        int sets = (int)(rotate / wbytes) + 1;
        /* quantize one random weight, then copy it into every set */
        lowbit_buffer_t *win;
        CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(ctx, (size_t)n * 4, 0, &win));
        float *w = cli_xmalloc_aligned((size_t)n * 4);
        cli_pool_randn(pool, w, n, LOWBIT_F32, 12345 + (uint64_t)si);
        for (int64_t i = 0; i < n; i++)
            w[i] = (float)(w[i] / sqrt((double)K));
        CLI_CHECK("lowbit_buffer_upload", lowbit_buffer_upload(ctx, NULL, win, 0, w, (size_t)n * 4));
        free(w);
        lowbit_qtensor_t *q = cli_xmalloc(sizeof(lowbit_qtensor_t) * (size_t)sets);
        for (int s = 0; s < sets; s++) {
            CLI_CHECK("lowbit_qtensor_alloc",
                      lowbit_qtensor_alloc(ctx, o.format, LOWBIT_F32, n, o.blocksize, o.nested, &q[s]));
            CLI_CHECK("lowbit_quantize_blockwise", lowbit_quantize_blockwise(ctx, NULL, win, &q[s], NULL));
        }
        CLI_CHECK("lowbit_buffer_free", lowbit_buffer_free(win));
        /* copy baseline buffers of the same byte count (host memory) */
        unsigned char **src = cli_xmalloc(sizeof(void *) * (size_t)sets), **dst = cli_xmalloc(sizeof(void *) * (size_t)sets);

        for (int di = 0; di < o.ndtypes; di++) {
            lowbit_dtype_t dt = o.dtypes[di];
            size_t es = lowbit_dtype_size(dt);
            double bytes = (double)wbytes + (double)K * (double)es + (double)N * (double)es;
            lowbit_buffer_t *x, *y;
            CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(ctx, (size_t)K * es, 0, &x));
            CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(ctx, (size_t)N * es, 0, &y));
            void *xh = cli_xmalloc((size_t)K * es);
            cli_pool_randn(pool, xh, K, dt, 777);
            CLI_CHECK("lowbit_buffer_upload", lowbit_buffer_upload(ctx, NULL, x, 0, xh, (size_t)K * es));
            free(xh);
            size_t cbytes = (size_t)bytes;
            for (int s = 0; s < sets; s++) {
                src[s] = cli_xmalloc_aligned(cbytes);
                dst[s] = cli_xmalloc_aligned(cbytes);
                memset(src[s], 1, cbytes);
                memset(dst[s], 2, cbytes);
            }
            for (int hot = 0; hot <= o.hot; hot++) {
                int nsets = hot ? 1 : sets;
                double cbest, copy = copy_gbps(pool, src, dst, nsets, cbytes, o.reps, o.warmup, &cbest);
                double *t = cli_xmalloc(sizeof(double) * (size_t)o.reps), med, mn, p90;
                for (int wu = 0; wu < o.warmup; wu++)
                    for (int s = 0; s < nsets; s++) {
                        CLI_CHECK("lowbit_gemv_4bit", lowbit_gemv_4bit(ctx, NULL, dt, N, K, x, &q[s], NULL, y));
                        CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(ctx, NULL));
                    }
                for (int r = 0; r < o.reps; r++) {
                    double t0 = cli_now();
                    CLI_CHECK("lowbit_gemv_4bit", lowbit_gemv_4bit(ctx, NULL, dt, N, K, x, &q[r % nsets], NULL, y));
                    CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(ctx, NULL));
                    t[r] = cli_now() - t0;
                }
                cli_order_stats(t, o.reps, &med, &mn, &p90);
                free(t);
                double gbps = bytes / med / 1e9, gbps_min = bytes / mn / 1e9;
                cli_table_row(tab);
                cli_table_cell(tab, "%lldx%lld", (long long)N, (long long)K);
                cli_table_cell(tab, "%s", lowbit_dtype_name(dt));
                cli_table_cell(tab, "%s", hot ? "hot" : "cold");
                cli_table_cell(tab, "%d", nsets);
                cli_table_cell(tab, "%.2f", bytes / 1048576.0);
                cli_table_cell(tab, "%.1f", med * 1e6);
                cli_table_cell(tab, "%.1f", mn * 1e6);
                cli_table_cell(tab, "%.2f", gbps);
                cli_table_cell(tab, "%.2f", copy);
                cli_table_cell(tab, "%.1f%%", 100.0 * gbps / copy);
                cli_table_cell(tab, "%.1f%%", 100.0 * gbps_min / cbest);
            }
            for (int s = 0; s < sets; s++) {
                free(src[s]);
                free(dst[s]);
            }
            CLI_CHECK("lowbit_buffer_free", lowbit_buffer_free(x));
            CLI_CHECK("lowbit_buffer_free", lowbit_buffer_free(y));
        }
        free(src);
        free(dst);
        for (int s = 0; s < sets; s++)
            CLI_CHECK("lowbit_qtensor_free", lowbit_qtensor_free(&q[s]));
        free(q);
    }
    cli_table_print(tab, stdout, "  ");
    cli_table_free(tab);
    printf("bytes/call = N*K/2 + absmax + x + y; copy GB/s counts read + written bytes of a same-size memcpy;\n"
           "%% copy = median vs median, best/best = fastest GEMV vs fastest copy (load average now: %.2f)\n",
           cli_loadavg());
    cli_pool_destroy(pool);
    CLI_CHECK("lowbit_context_destroy", lowbit_context_destroy(ctx));
    return 0;
}
