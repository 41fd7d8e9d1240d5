/*
 * lowbit-bench -- throughput of lowbit's ops, each reported as a ratio to a limit measured in the same run.
 *
 * For every case (op x format x dtype x block size) it warms up, times many repetitions and reports the
 * median (plus min and p90) time, the achieved GB/s (bytes read + written by the op) and that as a
 * percentage of the copy bandwidth measured in the same run on the same device:
 *
 *   - CPU backend: a memcpy over as many threads as the library's OpenMP team, of a buffer the size of the
 *     op's input (GB/s counts read + written bytes, like the ops);
 *   - other backends: lowbit_buffer_copy of a buffer the size of the op's input, timed like the ops.
 *
 * Inputs and outputs rotate among several buffer sets whose total exceeds the last-level cache, so repeated
 * reps do not read from cache.  GPU ops are timed by enqueueing a batch of K reps on the stream and dividing
 * the host time to lowbit_stream_synchronize by K (or, with --timer event, the time between two
 * lowbit_event records around the batch); CPU ops (which run eagerly) are timed per call.
 *
 * Uses the public API only (lowbit.h), libc, pthreads and libm.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "lowbit.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.1.0"
#endif

#define MAX_LIST 16
#define NOTE_MAX (LOWBIT_REASON_MAX + 256)
#define MiB ((size_t)1 << 20)

typedef enum bench_op { OP_QUANTIZE = 0, OP_DEQUANTIZE = 1, OP_COPY = 2, OP_FILL = 3 } bench_op_t;
static const char *const op_names[] = {"quantize", "dequantize", "copy", "fill"};

typedef struct bench_opts {
    const char *backend;
    int device;
    bench_op_t ops[MAX_LIST];
    int nops;
    lowbit_qformat_t formats[MAX_LIST];
    int nformats;
    lowbit_dtype_t dtypes[MAX_LIST];
    int ndtypes;
    int32_t blocksizes[MAX_LIST];
    int nblocksizes;
    int32_t nested;
    int64_t n;      /* 0 = default for the device */
    int reps;       /* 0 = default */
    int warmup;     /* -1 = default */
    int threads;    /* CPU copy baseline; 0 = the library's default */
    int events;     /* --timer event: lowbit_event records around each batch instead of the host clock */
    const char *json;
    int quick;
} bench_opts_t;

/* One row of the report. */
typedef struct bench_result {
    bench_op_t op;
    lowbit_qformat_t format;
    lowbit_dtype_t dtype;
    int32_t blocksize, nested;
    int64_t n;
    int sets, batch, reps;
    double bytes;                   /* read + written per rep */
    double median_s, min_s, p90_s;
    double gbps;
    double pct_of_copy;             /* < 0: n/a */
    int ok;                         /* 0: not available on the backend (message in note) */
    char note[NOTE_MAX];
} bench_result_t;

typedef struct bench {
    bench_opts_t o;
    lowbit_context_t *ctx;
    lowbit_device_info_t dev;
    cli_pool_t *pool;
    int is_gpu;
    int64_t n;
    size_t tbytes;                  /* bytes of one unquantized tensor of the current dtype */
    int reps, warmup;
    lowbit_event_t *ev0, *ev1;      /* --timer event */
    size_t rotate_bytes;            /* rotation target: buffer sets are added until they exceed it */
    size_t llc;
    int llc_known;
    char copy_why[NOTE_MAX];        /* why the copy baseline is unavailable ("" if measured) */
    bench_result_t *results;
    int nresults, cap;
    int progress_i, progress_total, tty;
    double t_start, t_progress;
    double load_before, load_after; /* 1-minute load average around the run */
    /* buffers of the current dtype */
    int nsets;
    lowbit_buffer_t **in, **out;
    lowbit_qtensor_t *q;
} bench_t;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: lowbit-bench [OPTIONS]\n"
            "\n"
            "Times lowbit ops and reports median time, GB/s (bytes read + written) and %% of the copy\n"
            "bandwidth measured in the same run.\n"
            "\n"
            "  --backend NAME     cuda, hip, opencl or cpu (default: LOWBIT_BACKEND, else the first backend\n"
            "                     with a GPU, else cpu)\n"
            "  --device N         device index within the backend (default: LOWBIT_DEVICE, else 0)\n"
            "  --op LIST          quantize,dequantize (default: both)\n"
            "  --format LIST      8bit,nf4,fp4 (default: all)\n"
            "  --dtype LIST       f32,f16,bf16 (default: all; --quick: f32,f16)\n"
            "  --blocksize LIST   block sizes (default 64,256,4096; --quick: 64,4096); sizes a format does\n"
            "                     not allow (32 for 8-bit) are skipped\n"
            "  --nested B         double-quantize absmax with inner block size B (default 0: off)\n"
            "  --n N              elements per tensor (default 2^26 on the CPU, 2^28 on GPUs; --quick: 2^22 /\n"
            "                     2^26); accepts 2^k and k/M/G suffixes\n"
            "  --reps N           timed samples per case (default 10 on the CPU, 20 on GPUs; --quick: 5)\n"
            "  --warmup N         untimed passes over all buffer sets first (default 2; --quick: 1)\n"
            "  --threads N        threads of the CPU copy baseline (default: as the library's OpenMP team,\n"
            "                     OMP_NUM_THREADS or all CPUs this process may use)\n"
            "  --timer host|event host: host clock around lowbit_stream_synchronize (default); event: device\n"
            "                     time between lowbit_event records around each batch\n"
            "  --json FILE        also write the results as JSON\n"
            "  --quick            a short run (smaller n, fewer cases and reps)\n"
            "  -h, --help         this text\n"
            "  -V, --version      print the version\n");
}

CLI_NORETURN CLI_PRINTF(1, 2) static void usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "lowbit-bench: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'lowbit-bench --help'.\n");
    exit(2);
}

static int parse_list(const char *arg, char **items, char *storage, size_t storage_len)
{
    int n;
    snprintf(storage, storage_len, "%s", arg);
    n = cli_split_list(storage, items, MAX_LIST);
    if (n <= 0)
        usage_error("invalid or too long list '%s'", arg);
    return n;
}

static void parse_args(bench_opts_t *o, int argc, char **argv)
{
    static const struct option opts[] = {{"backend", required_argument, NULL, 'b'},
                                         {"device", required_argument, NULL, 'd'},
                                         {"op", required_argument, NULL, 'o'},
                                         {"format", required_argument, NULL, 'f'},
                                         {"dtype", required_argument, NULL, 't'},
                                         {"blocksize", required_argument, NULL, 'B'},
                                         {"nested", required_argument, NULL, 'N'},
                                         {"n", required_argument, NULL, 'n'},
                                         {"reps", required_argument, NULL, 'r'},
                                         {"warmup", required_argument, NULL, 'w'},
                                         {"threads", required_argument, NULL, 'T'},
                                         {"json", required_argument, NULL, 'j'},
                                         {"timer", required_argument, NULL, 'E'},
                                         {"quick", no_argument, NULL, 'q'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"version", no_argument, NULL, 'V'},
                                         {0}};
    char storage[1024], *items[MAX_LIST];
    int c, i, k;
    int64_t v;

    memset(o, 0, sizeof *o);
    o->device = -1;
    o->warmup = -1;
    while ((c = getopt_long(argc, argv, "hV", opts, NULL)) != -1) {
        switch (c) {
        case 'b': o->backend = optarg; break;
        case 'd':
            if (cli_parse_i64(optarg, &v) || v < 0 || v > 1000000)
                usage_error("invalid --device '%s'", optarg);
            o->device = (int)v;
            break;
        case 'o':
            k = parse_list(optarg, items, storage, sizeof storage);
            for (o->nops = 0, i = 0; i < k; i++) {
                if (!strcmp(items[i], "quantize"))
                    o->ops[o->nops++] = OP_QUANTIZE;
                else if (!strcmp(items[i], "dequantize"))
                    o->ops[o->nops++] = OP_DEQUANTIZE;
                else
                    usage_error("unknown op '%s' (quantize, dequantize)", items[i]);
            }
            break;
        case 'f':
            k = parse_list(optarg, items, storage, sizeof storage);
            for (o->nformats = 0, i = 0; i < k; i++)
                if (cli_parse_qformat(items[i], &o->formats[o->nformats++]))
                    usage_error("unknown format '%s' (8bit, nf4, fp4)", items[i]);
            break;
        case 't':
            k = parse_list(optarg, items, storage, sizeof storage);
            for (o->ndtypes = 0, i = 0; i < k; i++)
                if (cli_parse_dtype(items[i], &o->dtypes[o->ndtypes++]))
                    usage_error("unknown dtype '%s' (f32, f16, bf16)", items[i]);
            break;
        case 'B':
            k = parse_list(optarg, items, storage, sizeof storage);
            for (o->nblocksizes = 0, i = 0; i < k; i++) {
                if (cli_parse_i64(items[i], &v) || v < 1 || v > (1 << 20))
                    usage_error("invalid block size '%s'", items[i]);
                o->blocksizes[o->nblocksizes++] = (int32_t)v;
            }
            break;
        case 'N':
            if (cli_parse_i64(optarg, &v) || v < 0 || v > (1 << 20))
                usage_error("invalid --nested '%s'", optarg);
            o->nested = (int32_t)v;
            break;
        case 'n':
            if (cli_parse_i64(optarg, &v) || v < 1)
                usage_error("invalid --n '%s'", optarg);
            o->n = v;
            break;
        case 'r':
            if (cli_parse_i64(optarg, &v) || v < 1 || v > 100000)
                usage_error("invalid --reps '%s'", optarg);
            o->reps = (int)v;
            break;
        case 'w':
            if (cli_parse_i64(optarg, &v) || v < 0 || v > 100000)
                usage_error("invalid --warmup '%s'", optarg);
            o->warmup = (int)v;
            break;
        case 'T':
            if (cli_parse_i64(optarg, &v) || v < 1 || v > 4096)
                usage_error("invalid --threads '%s'", optarg);
            o->threads = (int)v;
            break;
        case 'j': o->json = optarg; break;
        case 'E':
            if (!strcmp(optarg, "event") || !strcmp(optarg, "events"))
                o->events = 1;
            else if (!strcmp(optarg, "host"))
                o->events = 0;
            else
                usage_error("invalid --timer '%s' (host, event)", optarg);
            break;
        case 'q': o->quick = 1; break;
        case 'h': usage(stdout); exit(0);
        case 'V': printf("lowbit-bench %s (library %s)\n", PACKAGE_VERSION, lowbit_version_string()); exit(0);
        default: fprintf(stderr, "Try 'lowbit-bench --help'.\n"); exit(2);
        }
    }
    if (optind < argc)
        usage_error("unexpected argument '%s'", argv[optind]);
}

/* ------------------------------------------------------------------------------------------------------ */

static bench_result_t *new_result(bench_t *b)
{
    bench_result_t *r;
    if (b->nresults == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 64;
        b->results = realloc(b->results, sizeof *b->results * (size_t)b->cap);
        if (!b->results)
            cli_die("out of host memory");
    }
    r = &b->results[b->nresults++];
    memset(r, 0, sizeof *r);
    r->pct_of_copy = -1;
    return r;
}

static void progress(bench_t *b, const char *what)
{
    double now = cli_now(), el = now - b->t_start;
    if (b->tty) {
        fprintf(stderr, "\r\033[K[%d/%d %.0fs] %s", b->progress_i, b->progress_total, el, what);
    } else if (now - b->t_progress >= 10.0) {
        /* Logs get a line every 10 s at most, so short runs stay quiet. */
        fprintf(stderr, "lowbit-bench: [%d/%d %.0fs] %s\n", b->progress_i, b->progress_total, el, what);
        b->t_progress = now;
    }
}

static void progress_done(bench_t *b)
{
    if (b->tty)
        fprintf(stderr, "\r\033[K");
}

/* Element bytes of the quantized tensor: codes + absmax (+ nested absmax and offset). */
static size_t q_bytes(const lowbit_qtensor_sizes_t *s)
{
    return s->data_bytes + s->absmax_bytes + s->nested_absmax_bytes + s->nested_offset_bytes;
}

/* Runs one rep of `op` on buffer set `set`. */
static lowbit_status_t run_op(bench_t *b, bench_op_t op, lowbit_dtype_t dtype, int set)
{
    switch (op) {
    case OP_QUANTIZE: return lowbit_quantize_blockwise(b->ctx, NULL, b->in[set], &b->q[set], NULL);
    case OP_DEQUANTIZE: return lowbit_dequantize_blockwise(b->ctx, NULL, &b->q[set], dtype, b->out[set]);
    case OP_FILL: return lowbit_buffer_fill(b->ctx, NULL, b->out[set], (uint8_t)set);
    case OP_COPY: return lowbit_buffer_copy(b->ctx, NULL, b->out[set], 0, b->in[set], 0, b->tbytes);
    }
    return LOWBIT_ERR_INTERNAL;
}

static const char *op_call(bench_op_t op)
{
    switch (op) {
    case OP_QUANTIZE: return "lowbit_quantize_blockwise";
    case OP_DEQUANTIZE: return "lowbit_dequantize_blockwise";
    case OP_FILL: return "lowbit_buffer_fill";
    case OP_COPY: return "lowbit_buffer_copy";
    default: return "?";
    }
}

/* Times `op` over the buffer sets.  Returns 0, or -1 when the backend does not implement it (note set). */
static int time_op(bench_t *b, bench_op_t op, lowbit_dtype_t dtype, bench_result_t *r)
{
    double *samples = cli_xmalloc(sizeof(double) * (size_t)b->reps), t0;
    int i, j, k = 1, set = 0;
    lowbit_status_t st;

    /* The first call tells whether the backend has the op at all. */
    st = run_op(b, op, dtype, 0);
    if (st == LOWBIT_ERR_UNSUPPORTED) {
        snprintf(r->note, sizeof r->note, "not available on %s: %s", b->dev.backend, lowbit_last_error());
        free(samples);
        return -1;
    }
    if (st != LOWBIT_SUCCESS)
        cli_die_status(op_call(op), st);
    CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(b->ctx, NULL));
    for (i = 0; i < b->warmup; i++)
        for (j = 0; j < b->nsets; j++)
            CLI_CHECK(op_call(op), run_op(b, op, dtype, j));
    CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(b->ctx, NULL));

    if (b->is_gpu) {
        /* Enqueue K reps per sample so launch latency and the synchronize round trip are amortized:
         * K is chosen for samples of about 2 ms. */
        double t1;
        t0 = cli_now();
        CLI_CHECK(op_call(op), run_op(b, op, dtype, 0));
        CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(b->ctx, NULL));
        t1 = cli_now() - t0;
        k = t1 > 0 ? (int)ceil(2e-3 / t1) : 256;
        k = k < 1 ? 1 : k > 256 ? 256 : k;
    }
    for (i = 0; i < b->reps; i++) {
        float ms = 0;
        if (b->ev0)
            CLI_CHECK("lowbit_event_record", lowbit_event_record(b->ctx, NULL, b->ev0));
        t0 = cli_now();
        for (j = 0; j < k; j++) {
            CLI_CHECK(op_call(op), run_op(b, op, dtype, set));
            set = (set + 1) % b->nsets;
        }
        if (b->ev0) {
            CLI_CHECK("lowbit_event_record", lowbit_event_record(b->ctx, NULL, b->ev1));
            CLI_CHECK("lowbit_event_elapsed", lowbit_event_elapsed(b->ctx, b->ev0, b->ev1, &ms));
            samples[i] = 1e-3 * (double)ms / k;
        } else {
            CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(b->ctx, NULL));
            samples[i] = (cli_now() - t0) / k;
        }
    }
    cli_order_stats(samples, b->reps, &r->median_s, &r->min_s, &r->p90_s);
    r->batch = k;
    free(samples);
    return 0;
}

/* ---- the copy baseline ---- */

/* The copy baseline of non-CPU backends: lowbit_buffer_copy in[set] -> out[set], timed exactly like the
 * ops.  Caveat: the runtime falls back to a copy through host memory for a backend without a device copy,
 * and the public API does not say when it does (see BENCHMARKS.md, "API gaps"). */
static int bench_device_copy(bench_t *b, bench_result_t *r)
{
    if (time_op(b, OP_COPY, r->dtype, r) != 0) {
        snprintf(b->copy_why, sizeof b->copy_why, "copy baseline unavailable on %.31s (%.*s)", b->dev.backend,
                 NOTE_MAX - 64, r->note);
        return -1;
    }
    return 0;
}

/* On the CPU backend buffers are host memory: copy in[set] -> out[set] with a thread pool the size of the
 * library's OpenMP team, per call like the CPU ops. */
static int bench_host_copy(bench_t *b, bench_result_t *r)
{
    double *samples = cli_xmalloc(sizeof(double) * (size_t)b->reps), t0;
    void **src = cli_xmalloc(sizeof(void *) * (size_t)b->nsets), **dst = cli_xmalloc(sizeof(void *) * (size_t)b->nsets);
    size_t off;
    int i, j, set = 0;

    for (j = 0; j < b->nsets; j++) {
        CLI_CHECK("lowbit_buffer_native", lowbit_buffer_native(b->in[j], &src[j], &off));
        CLI_CHECK("lowbit_buffer_native", lowbit_buffer_native(b->out[j], &dst[j], &off));
    }
    for (i = 0; i < b->warmup + 1; i++)
        for (j = 0; j < b->nsets; j++)
            cli_pool_memcpy(b->pool, dst[j], src[j], b->tbytes);
    for (i = 0; i < b->reps; i++) {
        t0 = cli_now();
        cli_pool_memcpy(b->pool, dst[set], src[set], b->tbytes);
        samples[i] = cli_now() - t0;
        set = (set + 1) % b->nsets;
    }
    cli_order_stats(samples, b->reps, &r->median_s, &r->min_s, &r->p90_s);
    r->batch = 1;
    free(samples);
    free(src);
    free(dst);
    return 0;
}

/* ---- one dtype: buffers, baseline, cases ---- */

static void free_sets(bench_t *b)
{
    int j;
    CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(b->ctx, NULL));
    for (j = 0; j < b->nsets; j++) {
        CLI_CHECK("lowbit_buffer_free", lowbit_buffer_free(b->in[j]));
        CLI_CHECK("lowbit_buffer_free", lowbit_buffer_free(b->out[j]));
    }
    free(b->in);
    free(b->out);
    free(b->q);
    b->in = b->out = NULL;
    b->q = NULL;
    b->nsets = 0;
}

/* Number of buffer sets of `set_bytes` each that together exceed the rotation target. */
static int rotation_sets(const bench_t *b, size_t set_bytes)
{
    size_t sets = (b->rotate_bytes + set_bytes - 1) / set_bytes;
    if (sets < 1)
        sets = 1;
    if (sets > 64)
        sets = 64;
    return (int)sets;
}

static void run_dtype(bench_t *b, lowbit_dtype_t dtype)
{
    const size_t esize = lowbit_dtype_size(dtype), tbytes = (size_t)b->n * esize;
    void *host = cli_xmalloc_aligned(tbytes);
    bench_result_t *copy = NULL, *r;
    double copy_gbps = -1;
    char what[160];
    int f, k, o, j;

    b->tbytes = tbytes;
    /* A set is input + output + the largest quantized tensor (8-bit codes, about n bytes). */
    b->nsets = rotation_sets(b, 2 * tbytes + (size_t)b->n);
    b->in = cli_xmalloc(sizeof *b->in * (size_t)b->nsets);
    b->out = cli_xmalloc(sizeof *b->out * (size_t)b->nsets);
    b->q = cli_xmalloc(sizeof *b->q * (size_t)b->nsets);
    cli_pool_randn(b->pool, host, b->n, dtype, cli_mix64((uint64_t)dtype + 12345));
    for (j = 0; j < b->nsets; j++) {
        CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(b->ctx, tbytes, 0, &b->in[j]));
        CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(b->ctx, tbytes, 0, &b->out[j]));
        CLI_CHECK("lowbit_buffer_upload", lowbit_buffer_upload(b->ctx, NULL, b->in[j], 0, host, tbytes));
        CLI_CHECK("lowbit_buffer_fill", lowbit_buffer_fill(b->ctx, NULL, b->out[j], 0));
    }
    free(host);

    /* The limit, measured now, on buffers of the op's input size. */
    b->progress_i++;
    snprintf(what, sizeof what, "copy %s (%zu MiB x %d sets)", lowbit_dtype_name(dtype), tbytes / MiB, b->nsets);
    progress(b, what);
    copy = new_result(b);
    copy->op = OP_COPY;
    copy->dtype = dtype;
    copy->n = b->n;
    copy->sets = b->nsets;
    copy->reps = b->reps;
    copy->bytes = 2.0 * (double)tbytes;
    if (strcmp(b->dev.backend, "cpu") != 0 ? bench_device_copy(b, copy) : bench_host_copy(b, copy)) {
        snprintf(copy->note, sizeof copy->note, "%s", b->copy_why);
    } else {
        copy->ok = 1;
        copy->gbps = copy->bytes / copy->median_s / 1e9;
        copy->pct_of_copy = 100.0;
        copy_gbps = copy->gbps;
    }

    /* A write-only reference every backend has: lowbit_buffer_fill.  Not a copy, so never the % base. */
    b->progress_i++;
    snprintf(what, sizeof what, "fill %s", lowbit_dtype_name(dtype));
    progress(b, what);
    r = new_result(b);
    r->op = OP_FILL;
    r->dtype = dtype;
    r->n = b->n;
    r->sets = b->nsets;
    r->reps = b->reps;
    r->bytes = (double)tbytes;
    if (time_op(b, OP_FILL, dtype, r) == 0) {
        r->ok = 1;
        r->gbps = r->bytes / r->median_s / 1e9;
        r->pct_of_copy = copy_gbps > 0 ? 100.0 * r->gbps / copy_gbps : -1;
    }

    for (f = 0; f < b->o.nformats; f++)
        for (k = 0; k < b->o.nblocksizes; k++) {
            lowbit_qformat_t fmt = b->o.formats[f];
            int32_t bs = b->o.blocksizes[k];
            lowbit_qtensor_sizes_t sizes;
            lowbit_status_t st = lowbit_qtensor_sizes(fmt, b->n, bs, b->o.nested, &sizes);
            int avail = 1;
            char why[NOTE_MAX] = "";

            if (st == LOWBIT_ERR_UNSUPPORTED) {
                /* e.g. 8-bit with B=32: not a valid case, not a missing kernel. */
                snprintf(why, sizeof why, "skipped: %s", lowbit_last_error());
                for (o = 0; o < b->o.nops; o++) {
                    b->progress_i++;
                    r = new_result(b);
                    r->op = b->o.ops[o];
                    r->format = fmt;
                    r->dtype = dtype;
                    r->blocksize = bs;
                    r->nested = b->o.nested;
                    r->n = b->n;
                    snprintf(r->note, sizeof r->note, "%s", why);
                }
                continue;
            }
            if (st != LOWBIT_SUCCESS)
                cli_die_status("lowbit_qtensor_sizes", st);

            for (j = 0; j < b->nsets; j++)
                CLI_CHECK("lowbit_qtensor_alloc",
                          lowbit_qtensor_alloc(b->ctx, fmt, dtype, b->n, bs, b->o.nested, &b->q[j]));
            /* Valid quantized data for dequantize (and first touch of every page). */
            for (j = 0; j < b->nsets && avail; j++) {
                st = lowbit_quantize_blockwise(b->ctx, NULL, b->in[j], &b->q[j], NULL);
                if (st == LOWBIT_ERR_UNSUPPORTED) {
                    snprintf(why, sizeof why, "not available on %s: %s", b->dev.backend, lowbit_last_error());
                    avail = 0;
                } else if (st != LOWBIT_SUCCESS) {
                    cli_die_status("lowbit_quantize_blockwise", st);
                }
            }
            CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(b->ctx, NULL));

            for (o = 0; o < b->o.nops; o++) {
                bench_op_t op = b->o.ops[o];
                b->progress_i++;
                snprintf(what, sizeof what, "%s %s %s B=%d%s", op_names[op], lowbit_qformat_name(fmt),
                         lowbit_dtype_name(dtype), bs, b->o.nested ? " nested" : "");
                progress(b, what);
                r = new_result(b);
                r->op = op;
                r->format = fmt;
                r->dtype = dtype;
                r->blocksize = bs;
                r->nested = b->o.nested;
                r->n = b->n;
                r->sets = b->nsets;
                r->reps = b->reps;
                r->bytes = (double)tbytes + (double)q_bytes(&sizes);
                if (!avail) {
                    snprintf(r->note, sizeof r->note, "%s", why);
                    continue;
                }
                if (time_op(b, op, dtype, r) == 0) {
                    r->ok = 1;
                    r->gbps = r->bytes / r->median_s / 1e9;
                    r->pct_of_copy = copy_gbps > 0 ? 100.0 * r->gbps / copy_gbps : -1;
                }
            }
            CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(b->ctx, NULL));
            for (j = 0; j < b->nsets; j++)
                CLI_CHECK("lowbit_qtensor_free", lowbit_qtensor_free(&b->q[j]));
        }
    free_sets(b);
}

/* ---- report ---- */

static const char *timing_desc(const bench_t *b)
{
    if (b->ev0)
        return "lowbit_event records around a batch of reps per sample, divided";
    if (b->is_gpu)
        return "host clock around lowbit_stream_synchronize, a batch of reps per sample, divided";
    return "host clock per call";
}

static const char *copy_desc(const bench_t *b, char *buf, size_t len)
{
    if (b->copy_why[0])
        snprintf(buf, len, "%s", b->copy_why);
    else if (!strcmp(b->dev.backend, "cpu"))
        snprintf(buf, len, "host memcpy on %d threads", cli_pool_threads(b->pool));
    else
        snprintf(buf, len, "lowbit_buffer_copy (device to device)");
    return buf;
}

static void fmt_us(char *buf, size_t len, double s)
{
    double us = s * 1e6;
    snprintf(buf, len, us < 10 ? "%.2f" : us < 1000 ? "%.1f" : "%.0f", us);
}

static void print_table(const bench_t *b)
{
    cli_table_t *t = cli_table_new(12, "lllrrrrrrrrl");
    int i;
    cli_table_row(t);
    cli_table_cell(t, "op");
    cli_table_cell(t, "format");
    cli_table_cell(t, "dtype");
    cli_table_cell(t, "block");
    cli_table_cell(t, "sets");
    cli_table_cell(t, "batch");
    cli_table_cell(t, "median µs");
    cli_table_cell(t, "min µs");
    cli_table_cell(t, "p90 µs");
    cli_table_cell(t, "GB/s");
    cli_table_cell(t, "%% copy");
    cli_table_cell(t, "note");
    for (i = 0; i < b->nresults; i++) {
        const bench_result_t *r = &b->results[i];
        char m[32], mn[32], p[32];
        int qop = r->op == OP_QUANTIZE || r->op == OP_DEQUANTIZE;
        cli_table_row(t);
        cli_table_cell(t, "%s", op_names[r->op]);
        cli_table_cell(t, "%s", qop ? lowbit_qformat_name(r->format) : "-");
        cli_table_cell(t, "%s", lowbit_dtype_name(r->dtype));
        if (qop && r->nested)
            cli_table_cell(t, "%d/%d", r->blocksize, r->nested);
        else if (qop)
            cli_table_cell(t, "%d", r->blocksize);
        else
            cli_table_cell(t, "-");
        if (!r->ok) {
            int c;
            for (c = 0; c < 7; c++)
                cli_table_cell(t, "-");
            cli_table_cell(t, "%s", r->note);
            continue;
        }
        fmt_us(m, sizeof m, r->median_s);
        fmt_us(mn, sizeof mn, r->min_s);
        fmt_us(p, sizeof p, r->p90_s);
        cli_table_cell(t, "%d", r->sets);
        cli_table_cell(t, "%d", r->batch);
        cli_table_cell(t, "%s", m);
        cli_table_cell(t, "%s", mn);
        cli_table_cell(t, "%s", p);
        cli_table_cell(t, r->gbps < 10 ? "%.2f" : "%.1f", r->gbps);
        if (r->pct_of_copy >= 0)
            cli_table_cell(t, "%.0f%%", r->pct_of_copy);
        else
            cli_table_cell(t, "n/a");
        cli_table_cell(t, "%s", r->op == OP_FILL ? "write-only reference" : "");
    }
    cli_table_print(t, stdout, "");
    cli_table_free(t);
}

static void json_num(FILE *f, const char *key, double v, int comma)
{
    fprintf(f, "\"%s\": ", key);
    if (isfinite(v))
        fprintf(f, "%.6g", v);
    else
        fputs("null", f);
    if (comma)
        fputs(", ", f);
}

static void write_json(const bench_t *b, const char *path, int argc, char **argv)
{
    FILE *f = fopen(path, "w");
    char date[64], cpu[LOWBIT_REASON_MAX + 256];
    const lowbit_device_info_t *v = &b->dev;
    int i;
    if (!f)
        cli_die("cannot write %s: %s", path, strerror(errno));
    fprintf(f, "{\n  \"tool\": \"lowbit-bench\",\n  \"version\": ");
    cli_json_string(f, lowbit_version_string());
    fprintf(f, ",\n  \"date\": \"%s\",\n  \"command\": ", cli_utc_now(date, sizeof date));
    {
        /* argv joined by blanks, as typed (no shell quoting). */
        size_t len = 1;
        char *cmd;
        for (i = 0; i < argc; i++)
            len += strlen(argv[i]) + 1;
        cmd = cli_xmalloc(len);
        cmd[0] = '\0';
        for (i = 0; i < argc; i++) {
            if (i)
                strcat(cmd, " ");
            strcat(cmd, argv[i]);
        }
        cli_json_string(f, cmd);
        free(cmd);
    }
    fprintf(f, ",\n  \"device\": {\"backend\": ");
    cli_json_string(f, v->backend);
    fprintf(f, ", \"index\": %d, \"name\": ", v->index);
    cli_json_string(f, v->name);
    fprintf(f, ", \"arch\": ");
    cli_json_string(f, v->arch);
    fprintf(f, ", \"driver\": ");
    cli_json_string(f, v->driver);
    fprintf(f, ", \"is_gpu\": %s, \"compute_units\": %d, \"total_memory\": %llu, \"fp16\": %s, \"bf16\": %s},\n",
            v->is_gpu ? "true" : "false", v->compute_units, (unsigned long long)v->total_memory,
            v->fp16 ? "true" : "false", v->bf16 ? "true" : "false");
    fprintf(f, "  \"host\": {\"cpu_model\": ");
    cli_json_string(f, cli_cpu_model(cpu, sizeof cpu));
    fprintf(f, ", \"copy_threads\": %d, \"llc_bytes\": %zu, ", cli_pool_threads(b->pool), b->llc);
    json_num(f, "loadavg_before", b->load_before, 1);
    json_num(f, "loadavg_after", b->load_after, 0);
    fprintf(f, "},\n");
    fprintf(f, "  \"settings\": {\"n\": %lld, \"reps\": %d, \"warmup\": %d, \"rotate_bytes\": %zu, \"nested\": %d, "
               "\"timing\": \"%s\"},\n",
            (long long)b->n, b->reps, b->warmup, b->rotate_bytes, b->o.nested, timing_desc(b));
    fprintf(f, "  \"copy_baseline\": ");
    cli_json_string(f, copy_desc(b, cpu, sizeof cpu));
    fprintf(f, ",\n  \"cases\": [");
    for (i = 0; i < b->nresults; i++) {
        const bench_result_t *r = &b->results[i];
        int qop = r->op == OP_QUANTIZE || r->op == OP_DEQUANTIZE;
        fprintf(f, "%s\n    {\"op\": \"%s\", \"format\": ", i ? "," : "", op_names[r->op]);
        if (qop)
            cli_json_string(f, lowbit_qformat_name(r->format));
        else
            fputs("null", f);
        fprintf(f, ", \"dtype\": \"%s\", \"blocksize\": %d, \"nested_blocksize\": %d, \"n\": %lld, ",
                lowbit_dtype_name(r->dtype), qop ? r->blocksize : 0, qop ? r->nested : 0, (long long)r->n);
        fprintf(f, "\"status\": \"%s\", ", r->ok ? "ok" : (strncmp(r->note, "skipped", 7) ? "unavailable" : "skipped"));
        if (r->ok) {
            fprintf(f, "\"sets\": %d, \"batch\": %d, \"reps\": %d, ", r->sets, r->batch, r->reps);
            json_num(f, "bytes", r->bytes, 1);
            json_num(f, "median_us", r->median_s * 1e6, 1);
            json_num(f, "min_us", r->min_s * 1e6, 1);
            json_num(f, "p90_us", r->p90_s * 1e6, 1);
            json_num(f, "gbps", r->gbps, 1);
            json_num(f, "pct_of_copy", r->pct_of_copy >= 0 ? r->pct_of_copy : NAN, 0);
        } else {
            fputs("\"median_us\": null, \"gbps\": null, \"pct_of_copy\": null, \"message\": ", f);
            cli_json_string(f, r->note);
        }
        fputc('}', f);
    }
    fprintf(f, "\n  ]\n}\n");
    if (ferror(f) | fclose(f))
        cli_die("cannot write %s: %s", path, strerror(errno));
}

/* ------------------------------------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    bench_t b;
    char cpu[LOWBIT_REASON_MAX + 256], sz[32], sz2[32];
    int i, ran = 0, unavailable = 0;
    size_t max_set;

    cli_prog = "lowbit-bench";
    memset(&b, 0, sizeof b);
    parse_args(&b.o, argc, argv);

    CLI_CHECK("lowbit_init", lowbit_init());
    CLI_CHECK("lowbit_context_create", lowbit_context_create(b.o.backend, b.o.device, &b.ctx));
    CLI_CHECK("lowbit_context_device_info", lowbit_context_device_info(b.ctx, &b.dev));
    b.is_gpu = b.dev.is_gpu;
    b.tty = isatty(2);

    /* Defaults that depend on the device. */
    if (!b.o.nops) {
        b.o.ops[b.o.nops++] = OP_QUANTIZE;
        b.o.ops[b.o.nops++] = OP_DEQUANTIZE;
    }
    if (!b.o.nformats) {
        b.o.formats[b.o.nformats++] = LOWBIT_QFORMAT_8BIT;
        b.o.formats[b.o.nformats++] = LOWBIT_QFORMAT_NF4;
        b.o.formats[b.o.nformats++] = LOWBIT_QFORMAT_FP4;
    }
    if (!b.o.ndtypes) {
        b.o.dtypes[b.o.ndtypes++] = LOWBIT_F32;
        b.o.dtypes[b.o.ndtypes++] = LOWBIT_F16;
        if (!b.o.quick)
            b.o.dtypes[b.o.ndtypes++] = LOWBIT_BF16;
    }
    if (!b.o.nblocksizes) {
        b.o.blocksizes[b.o.nblocksizes++] = 64;
        if (!b.o.quick)
            b.o.blocksizes[b.o.nblocksizes++] = 256;
        b.o.blocksizes[b.o.nblocksizes++] = 4096;
    }
    b.n = b.o.n ? b.o.n : (int64_t)1 << (b.is_gpu ? (b.o.quick ? 26 : 28) : (b.o.quick ? 22 : 26));
    b.reps = b.o.reps ? b.o.reps : b.o.quick ? 5 : b.is_gpu ? 20 : 10;
    b.warmup = b.o.warmup >= 0 ? b.o.warmup : b.o.quick ? 1 : 2;

    if (b.dev.max_elements > 0 && b.n > b.dev.max_elements) {
        int64_t n = 1;
        while (n * 2 <= b.dev.max_elements)
            n *= 2;
        cli_warn("--n %lld exceeds what %s:%d accepts (%lld); using %lld", (long long)b.n, b.dev.backend,
                 b.dev.index, (long long)b.dev.max_elements, (long long)n);
        b.n = n;
    }

    /* Rotation target: buffer sets must together exceed the last-level cache.  On the CPU the rule is
     * "rotate only below 64 MiB": the target is max(64 MiB, 2 x LLC).  GPUs do not report their L2 through
     * the API; 256 MiB covers H100 (50 MB) and MI300 (256 MB Infinity Cache would need more: TODO when
     * lowbit_device_info_t reports a cache size). */
    b.llc = cli_llc_bytes();
    if (b.is_gpu) {
        b.rotate_bytes = 256 * MiB;
    } else {
        b.rotate_bytes = 2 * (b.llc ? b.llc : 32 * MiB);
        if (b.rotate_bytes < 64 * MiB)
            b.rotate_bytes = 64 * MiB;
    }

    /* Memory: a set holds input + output + the largest quantized tensor; keep the whole working set within
     * ~70% of free device memory (halving n if needed). */
    for (;;) {
        size_t largest = 0, total;
        for (i = 0; i < b.o.ndtypes; i++)
            if (lowbit_dtype_size(b.o.dtypes[i]) > largest)
                largest = lowbit_dtype_size(b.o.dtypes[i]);
        max_set = 2 * (size_t)b.n * largest + (size_t)b.n + (size_t)b.n / 8 + 4096;
        total = max_set * (size_t)rotation_sets(&b, max_set);
        if (!b.dev.free_memory || total <= b.dev.free_memory / 10 * 7 || b.n <= 1024)
            break;
        cli_warn("n = %lld needs %s but %s:%d has %s free; halving n", (long long)b.n,
                 cli_fmt_bytes((double)total, sz, sizeof sz), b.dev.backend, b.dev.index,
                 cli_fmt_bytes((double)b.dev.free_memory, sz2, sizeof sz2));
        b.n /= 2;
    }

    b.pool = cli_pool_create(b.o.threads ? b.o.threads : cli_default_threads());
    if (!b.is_gpu && !strcmp(b.dev.backend, "cpu") && !b.o.threads && b.dev.compute_units > 0 &&
        b.dev.compute_units != cli_pool_threads(b.pool))
        cli_warn("the library reports %d CPU threads but the copy baseline uses %d (OMP_NUM_THREADS or CPU "
                 "affinity); use --threads to match",
                 b.dev.compute_units, cli_pool_threads(b.pool));
    b.progress_total = b.o.ndtypes * (2 + b.o.nformats * b.o.nblocksizes * b.o.nops);

    printf("lowbit-bench %s on %s:%d — %s (%s, %s, driver %s, %d %s)\n", lowbit_version_string(), b.dev.backend,
           b.dev.index, b.dev.name, b.dev.arch, b.is_gpu ? "GPU" : "CPU", b.dev.driver[0] ? b.dev.driver : "-",
           b.dev.compute_units, b.is_gpu ? "compute units" : "threads");
    b.load_before = cli_loadavg();
    if (!b.is_gpu)
        printf("host CPU: %s; copy baseline threads: %d; last-level cache: %s; load average %.2f\n",
               cli_cpu_model(cpu, sizeof cpu), cli_pool_threads(b.pool),
               b.llc ? cli_fmt_bytes((double)b.llc, sz, sizeof sz) : "unknown", b.load_before);
    printf("n = %lld elements; %d reps after %d warm-up passes; buffer sets rotate until they exceed %s\n",
           (long long)b.n, b.reps, b.warmup, cli_fmt_bytes((double)b.rotate_bytes, sz, sizeof sz));
    if (b.o.events) {
        lowbit_status_t st = lowbit_event_create(b.ctx, &b.ev0);
        if (st == LOWBIT_SUCCESS)
            st = lowbit_event_create(b.ctx, &b.ev1);
        if (st != LOWBIT_SUCCESS)
            cli_die_status("lowbit_event_create", st);
    }
    printf("timing: %s; GB/s = bytes read + written / median time\n", timing_desc(&b));
    fflush(stdout);

    b.t_start = b.t_progress = cli_now();
    for (i = 0; i < b.o.ndtypes; i++)
        run_dtype(&b, b.o.dtypes[i]);
    progress_done(&b);

    printf("copy baseline: %s%s\n", copy_desc(&b, cpu, sizeof cpu), b.copy_why[0] ? ": % copy is n/a" : "");
    b.load_after = cli_loadavg();
    if (!b.is_gpu && b.load_before > 0.5 * (double)cli_default_threads() + 0.5)
        cli_warn("the host was busy (load average %.2f before, %.2f after the run, %d CPUs): CPU timings are "
                 "not reliable",
                 b.load_before, b.load_after, cli_default_threads());
    printf("\n");
    print_table(&b);

    for (i = 0; i < b.nresults; i++) {
        const bench_result_t *r = &b.results[i];
        if (r->op != OP_QUANTIZE && r->op != OP_DEQUANTIZE)
            continue;
        if (r->ok)
            ran++;
        else if (strncmp(r->note, "skipped", 7))
            unavailable++;
    }
    if (b.o.json) {
        write_json(&b, b.o.json, argc, argv);
        printf("\nJSON written to %s\n", b.o.json);
    }

    CLI_CHECK("lowbit_event_destroy", lowbit_event_destroy(b.ev0));
    CLI_CHECK("lowbit_event_destroy", lowbit_event_destroy(b.ev1));
    CLI_CHECK("lowbit_context_destroy", lowbit_context_destroy(b.ctx));
    cli_pool_destroy(b.pool);
    free(b.results);
    if (!ran) {
        fprintf(stderr, "lowbit-bench: no case ran on %s (%d not available)\n", b.dev.backend, unavailable);
        return 1;
    }
    return 0;
}
